# shellcheck shell=bash disable=SC2034
description="owner names resolvable only from the root's etc/passwd or a persisted var/lib/nixos uid-map: right numeric owners"
manifest=names.json
binds=(/home/alice /var/lib/svc)
seed_root() {
    mkdir -p "$1/etc" "$1/persist"
    printf 'root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\n' > "$1/etc/passwd"
    printf 'root:x:0:\nalice:x:1001:\n' > "$1/etc/group"
}
seed_persist() {
    mkdir -p "$1/var/lib/nixos"
    # alice is in the map too, with another id: /etc/passwd is consulted first.
    echo '{"svc": 1234, "alice": 9999}' > "$1/var/lib/nixos/uid-map"
    echo '{"svc": 2345, "alice": 9999}' > "$1/var/lib/nixos/gid-map"
}
expect_units=("persist-prep.service active=active result=success status=0")
expect_stats=(
    "/sysroot/home/alice mount=yes type=directory mode=700 uid=1001 gid=1001"
    "/sysroot/var/lib/svc mount=yes type=directory mode=750 uid=1234 gid=2345"
)
expect_summary="failed=0 deferred=0"
expect_disk=(
    "persist /home/alice type=directory mode=700 uid=1001 gid=1001"
    "persist /var/lib/svc type=directory mode=750 uid=1234 gid=2345"
    "root /home/alice type=directory mode=700 uid=1001 gid=1001"
    "root /var/lib/svc type=directory mode=750 uid=1234 gid=2345"
)
