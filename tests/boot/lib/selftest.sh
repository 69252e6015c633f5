# shellcheck shell=bash
# Offline self-test of the harness's own judges: each must say FAIL when shown a known-bad input,
# or a passing suite would prove nothing. Prints "PASS|FAIL <reason>".

harness_selftest() (
    local dir=$WORK_DIR/selftest base unpacked problems=()
    rm -rf "$dir"
    mkdir -p "$dir"
    base=$(base_initrd) || { echo "FAIL base initrd"; return; }
    unpacked=$WORK_DIR/unpacked-$(basename "$base" .img)
    [[ -d $unpacked ]] || unpack_initrd "$base" "$unpacked"

    # 1. verify_units passes the units as packed ...
    cp -a "$unpacked" "$dir/root"
    verify_units "$dir/root" "$dir"/root/usr/lib/systemd/system/persist-prep*.service > "$dir/clean.log" 2>&1 ||
        problems+=("verify fails on the shipped units: $(head -n 2 "$dir/clean.log" | tr '\n' ' ')")
    # The stage-2 fallback never runs in these boots (they end before switch-root); verify it here.
    cp "$REPO_DIR/initrd/persist-prep-finish-late.service" "$dir/root/usr/lib/systemd/system/"
    verify_units "$dir/root" "$dir/root/usr/lib/systemd/system/persist-prep-finish-late.service" > "$dir/late.log" 2>&1 ||
        problems+=("verify fails on persist-prep-finish-late.service: $(head -n 2 "$dir/late.log" | tr '\n' ' ')")
    # ... and fails on an unknown key, and on the ordering cycle the field notes warn about.
    printf '[Unit]\nDescription=bad key\nDefaultDependencies=no\n[Service]\nType=oneshot\nExecStart=/bin/true\nNoSuchKey=1\n' \
        > "$dir/root/etc/systemd/system/pp-bad-key.service"
    verify_units "$dir/root" "$dir/root/etc/systemd/system/pp-bad-key.service" > /dev/null 2>&1 &&
        problems+=("verify accepted a unit with an unknown key")
    rm "$dir/root/etc/systemd/system/pp-bad-key.service"
    printf '[Unit]\nDefaultDependencies=no\nAfter=initrd-fs.target\nBefore=initrd-parse-etc.service\n[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=initrd.target\n' \
        > "$dir/root/etc/systemd/system/pp-cycle.service"
    mkdir -p "$dir/root/etc/systemd/system/initrd.target.wants"
    ln -s ../pp-cycle.service "$dir/root/etc/systemd/system/initrd.target.wants/pp-cycle.service"
    verify_units "$dir/root" "$dir/root/etc/systemd/system/pp-cycle.service" > /dev/null 2>&1 &&
        problems+=("verify accepted an ordering cycle through initrd-fs.target")
    rm -rf "$dir/root"

    # 2. The marker and disk judges reject wrong values.
    CHECKS=$dir/checks
    printf 'unit name=a.service active=active starting=20 done=30\nunit name=b.mount starting=10 done=15\nstat path=/x exists=yes mode=755 uid=0\n' > "$dir/markers"
    check_units "$dir/markers" "a.service active=failed"
    check_stats "$dir/markers" "/x mode=700"
    check_order "$dir/markers" "a.service done < b.mount starting"
    mkdir -p "$dir/tree/d"
    chmod 0755 "$dir/tree/d"
    make_image "$dir/tree" "$dir/t.img" 4M t
    check_disk "$dir" "t /d mode=700" "t /missing type=directory" "t /d absent"
    # The tree judge: a declared directory with a wrong mode and a name nobody declared (as a
    # leftover temporary name would be), judged as after a boot and as right after a power cut.
    mkdir -p "$dir/stage/etc/persist-prep" "$dir/t2-tree/s/a" "$dir/t2-tree/s/.a.tmp"
    chmod 0755 "$dir/t2-tree/s" "$dir/t2-tree/s/a"
    printf '{"version":1,"storages":[{"path":"/s","directories":[{"path":"/a","uid":0,"gid":0,"mode":"0750"}]}]}\n' \
        > "$dir/stage/etc/persist-prep/manifest.json"
    make_image "$dir/t2-tree" "$dir/t2.img" 4M t2
    rm -rf "$dir/t2-tree"
    # shellcheck disable=SC2034 # read by check_tree
    local tree_images=("t2:/") tree_names=() tree_allow=()
    check_tree "$dir" "$dir" selftest
    check_tree "$dir" "$dir" selftest-cut --pending-ok
    local judged
    judged=$(grep -c '^FAIL' "$CHECKS")
    ((judged == 8)) || problems+=("only $judged of 8 bad inputs judged FAIL: $(grep '^ok' "$CHECKS" | tr '\n' ';')")

    if ((${#problems[@]})); then echo "FAIL ${problems[*]}"; else echo "PASS verify and judges reject 10 known-bad inputs"; fi
)
