# shellcheck shell=bash disable=SC2034
description="persistent volume's mount masked: clear error naming the storage and the fix, nothing created on the root"
manifest=first-boot.json
# The mount unit is masked, as if fileSystems."/persist" were not neededForBoot. No bind mounts:
# systemd would create their sources itself (root 0755), which is not what this scenario checks.
cmdline="rd.systemd.mask=sysroot-persist.mount"
stat_paths=(/sysroot/persist/var /sysroot/var)
expect_units=(
    "persist-prep.service load=loaded active=failed result=exit-code status=1"
    "sysroot-persist.mount load=masked"
)
expect_stats=("/sysroot/persist/var exists=no" "/sysroot/var exists=no")
expect_summary="created=0 skipped=4"
expect_console=(
    'persist-prep\[[0-9]+\]: storage /persist: /sysroot/persist is not a mount point, so the persistent volume is not mounted'
    'Fix: .*fileSystems\."/persist"\.neededForBoot = true'
)
expect_disk=(
    "root /persist type=directory"
    "root /persist/var absent"
    "root /persist/etc absent"
    "root /var absent"
    "persist /var absent"
    "persist /etc absent"
)
