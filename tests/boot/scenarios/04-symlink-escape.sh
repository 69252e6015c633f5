# shellcheck shell=bash disable=SC2034
description="symlinks planted on the persistent volume point outside it: nothing written outside the storage"
manifest=symlink.json
# var -> / would lead a naive mkdir -p into the initrd's own root; srv -> .. into /sysroot.
seed_persist() {
    ln -s / "$1/var"
    ln -s .. "$1/srv"
}
stat_paths=(/lib/private /usr/lib/private /sysroot/www /sysroot/lib /sysroot/persist/data/ok)
expect_units=("persist-prep.service active=failed result=exit-code status=1")
expect_stats=(
    "/lib/private exists=no"
    "/usr/lib/private exists=no"
    "/sysroot/www exists=no"
    "/sysroot/lib exists=no"
    "/sysroot/persist/data/ok type=directory mode=750 uid=1000 gid=100"
)
expect_summary="failed=2"
expect_console=(
    'persist-prep\[[0-9]+\]: directory /var/lib/private .*: /sysroot/persist/var is a symlink \(-> /\)'
    'persist-prep\[[0-9]+\]: directory /srv/www .*: /sysroot/persist/srv is a symlink \(-> \.\.\)'
)
expect_disk=(
    "persist /var type=symlink"
    "persist /srv type=symlink"
    "persist /data/ok type=directory mode=750 uid=1000 gid=100"
    "root /www absent"
    "root /lib absent"
    "root /private absent"
    "root /var absent"
    "root /srv absent"
    "root /data/ok type=directory mode=750 uid=1000 gid=100"
)
