# shellcheck shell=bash disable=SC2034
description="owner unknown at apply (fresh root, no passwd): created root-owned and recorded; finish gives the owner once activation made the user"
manifest=deferred.json
binds=(/var/lib/late)
units+=(fake-nixos-activation)
files=("guest/create-users:/usr/lib/pp-test/create-users")
report_units+=(initrd-nixos-activation.service)
stat_paths=(/run/persist-prep/deferred.json)
expect_units=(
    "persist-prep.service active=active result=success status=0"
    "initrd-nixos-activation.service active=active result=success"
    "persist-prep-finish.service active=active result=success status=0"
)
expect_order=(
    "persist-prep.service done < sysroot-var-lib-late.mount starting"
    "initrd-nixos-activation.service done < persist-prep-finish.service starting"
)
expect_summary="created=0 deferred=1 failed=0"
expect_markers=("deferred-record present=no")
expect_stats=(
    "/sysroot/var/lib/late mount=yes type=directory mode=750 uid=1500 gid=1500"
    "/run/persist-prep/deferred.json exists=no"
)
expect_disk=(
    "persist /var/lib/late type=directory mode=750 uid=1500 gid=1500"
    # The mount point on the root is covered by the bind mount when finish runs; persist-prep
    # leaves it root-owned (logged as "covered by its bind mount now"). Only the source is visible.
    "root /var/lib/late type=directory mode=750 uid=0 gid=0"
)
expect_console=('persist-prep\[[0-9]+\]: gave /sysroot/persist/var/lib/late its owner late:late \(1500:1500\)')
