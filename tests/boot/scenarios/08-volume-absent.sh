# shellcheck shell=bash disable=SC2034
# Like 03, but the way it usually happens: the volume's disk is not there and the initrd has no
# mount unit for it at all (on NixOS: fileSystems."/persist" without neededForBoot).
source "$BOOT_DIR/scenarios/03-volume-not-mounted.sh"
description="persistent volume absent and no mount unit for it: clear error naming the storage and the fix, nothing created on the root"
cmdline=""
units=(report)
persist_disk=no
expect_units=("persist-prep.service load=loaded active=failed result=exit-code status=1")
# No persist.img is attached, so only the root image can be checked.
expect_disk=(
    "root /persist type=directory"
    "root /persist/var absent"
    "root /persist/etc absent"
    "root /var absent"
)
