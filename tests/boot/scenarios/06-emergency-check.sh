# shellcheck shell=bash disable=SC2034
description="stop-the-boot option + volume not mounted: emergency shell, where persist-prep check prints the problem and exits 1"
manifest=first-boot.json
dracut_settings=(persist_prep_stop_boot=yes)
cmdline="rd.systemd.mask=sysroot-persist.mount"
shell=1
units=(persist-volume) # no report unit: the boot must stop here, and the shell powers off
expect_report=no
timeout=240
# Typed on the console, the way a person would.
send=(
    $'press Control-D to continue\t'
    $'^[^ ]*# *$\tpersist-prep check; echo "@@PPT check-rc=$?"; findmnt /sysroot >/dev/null && echo "@@PPT sysroot=mounted"'
    $'@@PPT check-rc=[0-9]\tsystemctl --force poweroff'
)
# The boot stopped before switch-root with the real root still mounted, so check could look at it.
expect_markers=("check-rc=1" "sysroot=mounted")
expect_console=(
    'Reached target.*Emergency Mode|Entering emergency mode'
    '^not-mounted +storage +/persist +storage /persist: /sysroot/persist is not a mount point'
    '^storage-not-mounted +directory +/var/lib/private'
    '!Starting initrd-switch-root.service'
)
