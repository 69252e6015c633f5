# shellcheck shell=bash
# Initrd images for the boot tests: one dracut-built base per distinct set of dracut inputs
# (cached under .cache/initrd, keyed on everything that goes into it), plus a small uncompressed
# cpio per scenario that the kernel unpacks over the base (manifest, test units, fixtures).

# Bump when the dracut invocation below changes in a way the key would not see.
BASE_FORMAT=1
BASE_MANIFEST=$BOOT_DIR/manifests/base.json
# Tools the guest-side report and the emergency shell use beyond what the systemd modules bring.
GUEST_TOOLS="stat findmnt mountpoint sync sed head tr cat ls"

# The dracut tree with our module added, so nothing is installed into the host's /usr/lib/dracut.
_dracut_basedir() {
    local dir=$WORK_DIR/dracut-base
    rm -rf "$dir"
    cp -a /usr/lib/dracut "$dir"
    rm -rf "$dir/modules.d/90persist-prep"
    # -L: the module's unit files are symlinks to initrd/, the single source of the units.
    cp -rL "$REPO_DIR/initrd/dracut/90persist-prep" "$dir/modules.d/90persist-prep"
    echo "$dir"
}

# base_initrd SETTING... : prints the path of a base initrd built with these extra dracut.conf
# lines (for example persist_prep_stop_boot=yes), building it when the cache has none.
base_initrd() {
    local kv key out conf basedir
    kv=$(kver) || return 1
    key=$({
        echo "format=$BASE_FORMAT kver=$kv tools=$GUEST_TOOLS"
        dpkg-query -W -f='${Package}=${Version}\n' dracut-core systemd udev
        printf 'setting %s\n' "$@"
        # A setting that names a file (persist_prep_manifest=...): its content is an input too.
        local s f
        for s in "$@"; do
            f=${s#*=} f=${f//\"/}
            [[ $f == /* && -f $f ]] && sha256sum "$f" | cut -d' ' -f1
        done
        sha256sum "$(binary_path)" "$BASE_MANIFEST" | cut -d' ' -f1
        (cd "$REPO_DIR/initrd" && find -L dracut persist-prep*.service stop-boot -type f |
            LC_ALL=C sort | xargs sha256sum)
    } | sha256sum | cut -c1-16)
    out=$CACHE_DIR/initrd/base-$key.img
    if [[ -s $out ]]; then
        touch "$out" # used: a full run prunes the bases it did not use
        echo "$out"
        return 0
    fi
    mkdir -p "$CACHE_DIR/initrd" "$WORK_DIR"
    conf=$WORK_DIR/dracut-conf-$key
    rm -rf "$conf"
    mkdir -p "$conf"
    {
        echo "persist_prep_binary=\"$(binary_path)\""
        echo "persist_prep_manifest=\"$BASE_MANIFEST\""
        printf '%s\n' "$@"
    } > "$conf/persist-prep.conf"
    basedir=$(_dracut_basedir)
    log "building base initrd $key (dracut, once per set of inputs)"
    # -m replaces dracut's module list: a systemd initrd with udev and a block-device root, no
    # crypt/lvm/plymouth, plus our module. --no-hostonly: nothing from this host's configuration.
    if ! dracutbasedir=$basedir dracut --force --no-hostonly --no-hostonly-cmdline --no-early-microcode \
        --conf /dev/null --confdir "$conf" \
        --kver "$kv" --kmoddir "$(kernel_root)/lib/modules/$kv" \
        -m "systemd systemd-initrd dracut-systemd udev-rules rootfs-block fs-lib base persist-prep" \
        --drivers "virtio_pci virtio_blk" --install "$GUEST_TOOLS" \
        --compress zstd "$out.tmp" > "$WORK_DIR/dracut-$key.log" 2>&1; then
        tail -n 20 "$WORK_DIR/dracut-$key.log" >&2
        rm -f "$out.tmp"
        die "dracut failed (log: $WORK_DIR/dracut-$key.log)"
    fi
    grep -q 'Including module: persist-prep' "$WORK_DIR/dracut-$key.log" ||
        die "dracut did not include the persist-prep module (log: $WORK_DIR/dracut-$key.log)"
    mv "$out.tmp" "$out"
    echo "$out"
}

# unpack_initrd IMAGE DIR : the base image's files, for offline verification.
unpack_initrd() {
    local img=$1 dir=$2
    rm -rf "$dir"
    mkdir -p "$dir"
    (set -o pipefail && cd "$dir" && /usr/lib/dracut/skipcpio "$img" | zstd -dcq |
        cpio -idm --quiet --no-absolute-filenames) || die "cannot unpack $img"
    [[ -f $dir/usr/lib/systemd/system/initrd.target ]] || die "no initrd.target in $img"
}

# enable_units STAGE : create the .wants/.requires symlinks their [Install] sections ask for.
enable_units() {
    local stage=$1 unit target kind
    for unit in "$stage"/etc/systemd/system/*.{service,mount,target}; do
        [[ -f $unit ]] || continue
        for kind in WantedBy RequiredBy; do
            # shellcheck disable=SC2013 # words on purpose: one WantedBy= may name several targets
            for target in $(sed -n "s/^$kind=//p" "$unit"); do
                local suffix=wants
                [[ $kind == RequiredBy ]] && suffix=requires
                mkdir -p "$stage/etc/systemd/system/$target.$suffix"
                ln -sfn "../$(basename "$unit")" "$stage/etc/systemd/system/$target.$suffix/$(basename "$unit")"
            done
        done
    done
}

# join_initrd BASE EXTRA OUT : the base followed by the extra archive. The kernel only finds a
# following archive at a 4-byte aligned offset, so zero padding goes in between (the base itself
# stays unpadded, which zstd would reject as trailing garbage when unpacking it for verification).
join_initrd() {
    local size
    size=$(stat -c %s "$1")
    { cat "$1"; head -c $(((512 - size % 512) % 512)) /dev/zero; cat "$2"; } > "$3"
}

# write_cpio STAGE OUT : an uncompressed newc archive of STAGE, every file owned by root.
write_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$2"
}

# verify_units ROOT UNIT... : systemd-analyze verify of initrd.target, initrd-switch-root.target and the given units as they
# sit in ROOT (an unpacked initrd). systemd-analyze exits 0 on ordering cycles and unknown keys,
# so any output at all is a failure. Prints the output; returns non-zero on failure.
verify_units() {
    local root=$1 out rc
    shift
    # Stub for the unit dracut's rootfs generator makes at boot from root=/dev/vda.
    cat > "$root/etc/systemd/system/sysroot.mount" <<'UNIT'
[Unit]
DefaultDependencies=no
Before=initrd-root-fs.target
[Mount]
What=/dev/vda
Where=/sysroot
UNIT
    # initrd.target, then initrd-switch-root.target with the boot transaction's jobs still
    # pending (where an ordering cycle between the two transactions shows), then the units.
    out=$(systemd-analyze verify --man=no --root="$root" \
        "$root/usr/lib/systemd/system/initrd.target" \
        "$root/usr/lib/systemd/system/initrd-switch-root.target" "$@" 2>&1)
    rc=$?
    rm -f "$root/etc/systemd/system/sysroot.mount"
    [[ -z $out ]] || printf '%s\n' "$out"
    [[ $rc == 0 && -z $out ]]
}
