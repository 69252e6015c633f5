# shellcheck shell=bash disable=SC2034
description="first boot on an empty persistent volume: non-root owners, non-0755 modes, ordered before the bind mounts"
manifest=first-boot.json
binds=(/var/log /var/lib/private /var/lib/colord)
stat_paths=(/sysroot/persist/etc)
expect_units=(
    "persist-prep.service load=loaded active=active result=success status=0"
    "sysroot-persist.mount active=active"
    "sysroot-var-log.mount active=active"
    "sysroot-var-lib-private.mount active=active"
    "sysroot-var-lib-colord.mount active=active"
)
expect_order=(
    "sysroot-persist.mount done < persist-prep.service starting"
    "persist-prep.service done < sysroot-var-log.mount starting"
    "persist-prep.service done < sysroot-var-lib-private.mount starting"
    "persist-prep.service done < sysroot-var-lib-colord.mount starting"
)
# Seen through the bind mounts, from inside the initrd.
expect_stats=(
    "/sysroot/var/log mount=yes type=directory mode=2755 uid=0 gid=190"
    "/sysroot/var/lib/private mount=yes type=directory mode=700 uid=0 gid=0"
    "/sysroot/var/lib/colord mount=yes type=directory mode=750 uid=997 gid=996"
    "/sysroot/persist/etc type=directory mode=755 uid=0 gid=0"
)
expect_summary="created=4 present=0 failed=0 drift=0 deferred=0"
expect_console=('persist-prep: summary: ' '!Ordering cycle|ordering cycle' '!Dependency failed')
# On the images after power-off. The persistent volume is the storage /persist itself. systemd
# would have created missing sources and mount points as root 0755, so the attributes are the test.
expect_disk=(
    "persist /var type=directory mode=755 uid=0 gid=0"
    "persist /var/log type=directory mode=2755 uid=0 gid=190"
    "persist /var/lib/private type=directory mode=700 uid=0 gid=0"
    "persist /var/lib/colord type=directory mode=750 uid=997 gid=996"
    "persist /etc type=directory mode=755 uid=0 gid=0"
    "persist /etc/machine-id absent"
    "root /var/log type=directory mode=2755 uid=0 gid=190"
    "root /var/lib/private type=directory mode=700 uid=0 gid=0"
    "root /var/lib/colord type=directory mode=750 uid=997 gid=996"
)
