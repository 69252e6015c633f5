# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source this
# Shared paths and helpers for the boot tests; sourced by every script under tests/boot/.
# Nothing here has side effects beyond defining variables and functions.

BOOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$BOOT_DIR/../.." && pwd)
CACHE_DIR=${PERSIST_PREP_BOOT_CACHE:-$BOOT_DIR/.cache}
WORK_DIR=${PERSIST_PREP_BOOT_WORK:-$BOOT_DIR/.work}

# Debian packages the harness needs on the host (jq: the dracut module derives the ordering from
# the manifest with it, and the tests exercise that path). qemu-utils is listed on purpose: without it,
# installing qemu-system-x86 removes a newer preinstalled qemu-utils instead of replacing it.
HOST_PACKAGES=(dracut-core qemu-system-x86 qemu-utils cpio zstd e2fsprogs kmod udev jq)

# The one place that knows which kernel the tests boot. setup.sh resolves the concrete ABI behind
# Debian's cloud meta package once and records it here, so a kernel ABI bump in the archive is
# picked up by the next setup instead of being hardcoded.
KERNEL_META_PACKAGE=linux-image-cloud-amd64
KVER_FILE=$CACHE_DIR/kernel-version

kver() {
    [[ -s $KVER_FILE ]] || { echo "boot tests: kernel version unknown; run tests/boot/setup first" >&2; return 1; }
    cat "$KVER_FILE"
}
kernel_root() { echo "$CACHE_DIR/kernel/$(kver)"; }
kernel_image() { echo "$(kernel_root)/boot/vmlinuz-$(kver)"; }

# The binary under test: the release musl build, in CARGO_TARGET_DIR when set.
binary_path() {
    echo "${CARGO_TARGET_DIR:-$REPO_DIR/target}/x86_64-unknown-linux-musl/release/persist-prep"
}

log() { printf 'boot: %s\n' "$*" >&2; }
die() { printf 'boot: error: %s\n' "$*" >&2; exit 1; }

# Exit the whole suite as "skipped" (0) unless CI demands every prerequisite.
skip_or_fail() {
    if [[ ${PERSIST_PREP_REQUIRE_ALL:-} == 1 ]]; then
        printf 'boot tests: FAILED prerequisite (PERSIST_PREP_REQUIRE_ALL=1): %s\n' "$*"
        echo "0 passed, 1 failed"
        exit 1
    fi
    printf 'boot tests: SKIPPED: %s\n' "$*"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
}
