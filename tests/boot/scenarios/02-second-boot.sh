# shellcheck shell=bash disable=SC2034
# The same machine booted again: everything is present, nothing is created or changed.
source "$BOOT_DIR/scenarios/01-first-boot.sh"
description="second boot on the same images: nothing changes, the summary reports all present"
images_from=01-first-boot
expect_summary="created=0 present=4 failed=0 drift=0 deferred=0"
expect_unchanged_from=01-first-boot
