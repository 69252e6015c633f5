# shellcheck shell=bash disable=SC2034
description="nixos-anywhere-shaped first boot: /nix freshly formatted, storage /nix/persist not there yet, /var/lib/nixos and /var/log bind-mounted from it in the initrd"
manifest=nixos-anywhere.json
# The machine's initrd is built from its own manifest, so the dracut module orders persist-prep
# after /sysroot/nix/persist's mount and before these bind mounts (as the NixOS module does).
dracut_settings=("persist_prep_manifest=\"$BOOT_DIR/manifests/nixos-anywhere.json\"")
units=(report nix-volume)
binds=(/var/lib/nixos /var/log)
bind_storage=/nix/persist
report_units=(sysroot.mount sysroot-nix.mount persist-prep.service persist-prep-finish.service pp-test-baseline.service)
# The target root as the installer leaves it: a mount point for /nix and nothing else. The /nix
# volume is fresh from mkfs (disko): only lost+found.
seed_root() { mkdir -p "$1/etc" "$1/nix"; echo 'ID=persist-prep-boot-test' > "$1/etc/os-release"; }
stat_paths=(/sysroot/nix/persist /sysroot/var/lib/colord)
expect_units=(
    "persist-prep.service load=loaded active=active result=success status=0"
    "sysroot-nix.mount active=active"
    "sysroot-var-lib-nixos.mount active=active"
    "sysroot-var-log.mount active=active"
)
expect_order=(
    "sysroot-nix.mount done < persist-prep.service starting"
    "persist-prep.service done < sysroot-var-lib-nixos.mount starting"
    "persist-prep.service done < sysroot-var-log.mount starting"
)
expect_stats=(
    "/sysroot/nix/persist mount=no type=directory mode=755 uid=0 gid=0"
    "/sysroot/var/lib/nixos mount=yes type=directory mode=755 uid=0 gid=0"
    "/sysroot/var/log mount=yes type=directory mode=2755 uid=0 gid=190"
    "/sysroot/var/lib/colord mount=no type=directory mode=750 uid=997 gid=996"
)
expect_summary="created=5 present=0 failed=0 drift=0 deferred=0"
expect_console=('persist-prep: summary: ' '!Ordering cycle|ordering cycle' '!Dependency failed')
# On the images: the storage was made on the /nix volume (vdb), not on the root under its mount
# point; systemd would have made the bind sources root 0755, so /var/log's 2755 and gid 190 are
# the test. Then the whole tree, and no other name, on both images.
expect_disk=(
    "persist /persist type=directory mode=755 uid=0 gid=0"
    "persist /persist/var/log type=directory mode=2755 uid=0 gid=190"
    "persist /persist/var/lib/nixos type=directory mode=755 uid=0 gid=0"
    "persist /persist/var/lib/private type=directory mode=700 uid=0 gid=0"
    "persist /persist/var/lib/colord type=directory mode=750 uid=997 gid=996"
    "persist /persist/etc type=directory mode=755 uid=0 gid=0"
    "persist /persist/etc/machine-id absent"
    "root /nix/persist absent"
    "root /var/log type=directory mode=2755 uid=0 gid=190"
    "root /var/lib/nixos type=directory mode=755 uid=0 gid=0"
)
tree_images=("persist:/nix" "root:/")
