# shellcheck shell=bash
# One scenario = one boot. A scenario file (scenarios/NN-name.sh) only sets the variables below
# and may define seed_root/seed_persist; run_scenario turns it into images, an initrd, a boot and a
# verdict. See tests/boot/README.md for the full list.

scenario_defaults() {
    description=""
    dracut_settings=()        # extra dracut.conf lines; each distinct set gets its own cached base
    manifest=base.json        # under manifests/ (or absolute); becomes /etc/persist-prep/manifest.json
    units=(report persist-volume) # unit groups under units/, copied to /etc/systemd/system
    binds=()                  # paths bind-mounted from $bind_storage, as impermanence's initrd mounts
    bind_storage=/persist     # the storage the binds come from
    files=()                  # "SRC:DEST": extra files (SRC relative to tests/boot) in the initrd
    cmdline=""                # extra kernel command line
    shell=0                   # rd.shell value: 1 lets emergency mode give a shell
    send=()                   # "PATTERN<TAB>TEXT": type TEXT on the console once PATTERN appeared
    images_from=""            # reuse the images another scenario's boot left behind
    persist_disk=yes          # attach the persistent volume as vdb
    report_units=(sysroot.mount sysroot-persist.mount persist-prep.service persist-prep-finish.service pp-test-baseline.service)
    stat_paths=()             # extra paths (inside the initrd) the report stats
    timeout=300               # watchdog, seconds
    expect_report=yes         # the report unit must have run to the end
    expect_units=() expect_stats=() expect_order=() expect_summary="" expect_console=()
    expect_markers=() expect_disk=() expect_unchanged_from=""
    control_of=""             # a control: boot that scenario with control_cmdline added; the
    control_cmdline=""        # control passes only when that scenario's checks FAIL then
    cut_boots=()              # "MODE:some|all": boots before the judged one, each with
                              # pp_test.cut=MODE, whose power is cut at the console's "@@PPT cut-now"
    tree_images=()            # "IMAGE:MOUNTPOINT": judge the whole declared tree on these images
    # shellcheck disable=SC2034 # read by check_tree (lib/check.sh)
    tree_names=()             # "NAME=UID:GID": ids of names that resolve only after activation
    # shellcheck disable=SC2034 # read by check_tree (lib/check.sh)
    tree_allow=()             # globs of names the tree judge accepts anywhere (none: all are extras)
    guest_env=()              # "KEY=VALUE" lines added to the guest's /etc/pp-test/scenario.env
    prepare() { :; }          # called before the images are made, in $scenario_dir
    seed_root() { mkdir -p "$1/etc" "$1/persist"; echo 'ID=persist-prep-boot-test' > "$1/etc/os-release"; }
    seed_persist() { :; }
}

# mount_unit PATH : the bind-mount unit for PATH under /sysroot, named as systemd names it.
mount_unit_name() { systemd-escape --path --suffix=mount "/sysroot$1"; }

write_bind_unit() { # write_bind_unit STAGE PATH
    cat > "$1/etc/systemd/system/$(mount_unit_name "$2")" <<UNIT
# Test harness only: bind mount as impermanence generates it for paths needed in the initrd.
# No ordering against persist-prep here: that comes from persist-prep's own drop-in.
[Unit]
Description=Bind /sysroot$bind_storage$2 to /sysroot$2
DefaultDependencies=no
Before=initrd-fs.target

[Mount]
What=/sysroot$bind_storage$2
Where=/sysroot$2
Type=none
Options=bind

[Install]
WantedBy=initrd-fs.target
UNIT
}

# run_scenario FILE : runs in a subshell; leaves $WORK_DIR/NAME/{verdict,checks,console.log,...}.
# The verdict file holds "PASS|FAIL <one-line reason>".
run_scenario() (
    local file=$1 name
    name=$(basename "$file" .sh)
    local dir=$WORK_DIR/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    CHECKS=$dir/checks
    : > "$CHECKS"
    # shellcheck disable=SC2034 # for the scenario file: where it may write (prepare, manifest)
    scenario_dir=$dir
    scenario_defaults
    # shellcheck source=/dev/null
    source "$file"
    if [[ -n $control_of ]]; then
        # A control boots another scenario unchanged except for control_cmdline.
        local control=$control_of extra=$control_cmdline about=$description
        scenario_defaults
        # shellcheck source=/dev/null
        source "$BOOT_DIR/scenarios/$control.sh"
        control_of=$control description=$about cmdline="$cmdline $extra"
        images_from="" expect_unchanged_from=""
    fi
    echo "$description" > "$dir/description"
    prepare > "$dir/prepare.log" 2>&1 || {
        echo "FAIL prepare: $(tail -n 3 "$dir/prepare.log" | tr '\n' ' ')" > "$dir/verdict"
        return
    }
    [[ $manifest == /* ]] || manifest=$BOOT_DIR/manifests/$manifest

    # 1. Disk images.
    if [[ -n $images_from ]]; then
        [[ -s $WORK_DIR/$images_from/root.img ]] || { echo "FAIL needs the images of $images_from (run it first)" > "$dir/verdict"; return; }
        cp --sparse=always "$WORK_DIR/$images_from/root.img" "$WORK_DIR/$images_from/persist.img" "$dir/"
    else
        mkdir -p "$dir/root-tree" "$dir/persist-tree"
        seed_root "$dir/root-tree"
        seed_persist "$dir/persist-tree"
        make_image "$dir/root-tree" "$dir/root.img" 64M root
        make_image "$dir/persist-tree" "$dir/persist.img" 32M persist
    fi

    # 2. Initrd: cached base + this scenario's cpio.
    local base
    base=$(base_initrd "${dracut_settings[@]}") || { echo "FAIL base initrd" > "$dir/verdict"; return; }
    local stage=$dir/stage group unit spec p
    mkdir -p "$stage/etc/systemd/system" "$stage/etc/persist-prep" "$stage/etc/pp-test" "$stage/usr/lib/pp-test"
    cp "$manifest" "$stage/etc/persist-prep/manifest.json"
    for group in "${units[@]}"; do
        # A group is a directory under units/, or an absolute one (units a scenario rendered).
        [[ $group == /* ]] || group=$BOOT_DIR/units/$group
        cp -r "$group"/* "$stage/etc/systemd/system/"
    done
    for p in "${binds[@]}"; do
        write_bind_unit "$stage" "$p"
        report_units+=("$(mount_unit_name "$p")")
        stat_paths+=("/sysroot$p")
    done
    for spec in "${files[@]}"; do
        mkdir -p "$stage$(dirname "${spec#*:}")"
        cp -a "$BOOT_DIR/${spec%%:*}" "$stage${spec#*:}"
    done
    install -m 0755 "$BOOT_DIR/guest/report" "$stage/usr/lib/pp-test/report"
    # The report runs in the switch-root transaction (after NixOS's activation and finish), past
    # the isolate of initrd-switch-root.target, which would stop the boot transaction's services
    # it reports on; keep their state for it (mounts are never stopped by an isolate).
    for unit in "${report_units[@]}"; do
        [[ $unit == *.service ]] || continue
        mkdir -p "$stage/etc/systemd/system/$unit.d"
        printf '# Test harness only: keep the state for the report.\n[Unit]\nIgnoreOnIsolate=yes\n' \
            > "$stage/etc/systemd/system/$unit.d/90-pp-test-report.conf"
    done
    {
        printf 'PPT_SCENARIO=%q\n' "$name"
        printf 'PPT_UNITS=%q\n' "${report_units[*]}"
        printf 'PPT_STAT_PATHS=%q\n' "${stat_paths[*]}"
        printf '%s\n' "${guest_env[@]}"
    } > "$stage/etc/pp-test/scenario.env"
    enable_units "$stage"
    write_cpio "$stage" "$dir/extra.cpio"
    join_initrd "$base" "$dir/extra.cpio" "$dir/initrd.img"

    # 3. Offline: the units as packed in this initrd, through initrd.target's whole graph.
    local key unpacked
    key=$(basename "$base" .img)
    unpacked=$WORK_DIR/unpacked-$key
    [[ -d $unpacked ]] || unpack_initrd "$base" "$unpacked"
    rm -rf "$dir/verify-root"
    cp -a "$unpacked" "$dir/verify-root"
    (cd "$dir/verify-root" && cpio -idmu --quiet --no-absolute-filenames < "$dir/extra.cpio")
    local verify_units_list=("$dir"/verify-root/usr/lib/systemd/system/persist-prep*.service)
    for unit in "$stage"/etc/systemd/system/*.service "$stage"/etc/systemd/system/*.mount; do
        [[ -f $unit ]] && verify_units_list+=("$dir/verify-root/etc/systemd/system/$(basename "$unit")")
    done
    if verify_units "$dir/verify-root" "${verify_units_list[@]}" > "$dir/verify.log" 2>&1; then
        record ok verify "systemd-analyze verify initrd.target"
    else
        record FAIL verify "systemd-analyze verify initrd.target" "$(head -n 3 "$dir/verify.log" | tr '\n' ' ')"
    fi
    rm -rf "$dir/verify-root"

    # 4. Boot.
    local disks=("$dir/root.img") watchdog
    [[ $persist_disk == yes ]] && disks+=("$dir/persist.img")
    ((${#send[@]})) && printf '%s\n' "${send[@]}" > "$dir/send"
    local kcmd="console=ttyS0 root=/dev/vda rootfstype=ext4 rw panic=-1 rd.shell=$shell rd.emergency=poweroff"
    kcmd+=" systemd.show_status=1 systemd.log_color=0 $cmdline"
    local t0=$SECONDS
    cut_boots "$dir" "$kcmd" "${disks[@]}"
    rm -f "$dir/cut"
    watchdog=$(boot_vm "$dir" "$kcmd" "$timeout" "${disks[@]}")
    echo "$((SECONDS - t0))" > "$dir/boot-seconds"
    if [[ $watchdog == ok ]]; then record ok boot "guest powered off by itself"
    else record FAIL boot "guest powered off by itself" "watchdog: $watchdog"; fi

    # 5. Verdict from the console markers and the images.
    markers "$dir/console.log" > "$dir/markers"
    if [[ $expect_report == yes ]]; then
        if grep -q "^end scenario=$name\$" "$dir/markers"; then record ok report "complete"
        else record FAIL report "complete" "no end marker on the console"; fi
    fi
    check_units "$dir/markers" "${expect_units[@]}"
    check_stats "$dir/markers" "${expect_stats[@]}"
    check_order "$dir/markers" "${expect_order[@]}"
    [[ -n $expect_summary ]] && check_summary "$dir/markers" "$expect_summary"
    check_console "$dir/console.log" "${expect_console[@]}"
    check_markers "$dir/markers" "${expect_markers[@]}"
    check_disk "$dir" "${expect_disk[@]}"
    check_fsck "$dir"
    ((${#tree_images[@]})) && check_tree "$dir" "$dir" final
    disk_fingerprint "$dir" "${expect_disk[@]}" > "$dir/fingerprint"
    if [[ -n $expect_unchanged_from ]]; then
        if diff -u "$WORK_DIR/$expect_unchanged_from/fingerprint" "$dir/fingerprint" > "$dir/fingerprint.diff"; then
            record ok unchanged "every checked path as $expect_unchanged_from left it (inode, owner, mode, ctime)"
        else
            record FAIL unchanged "every checked path as $expect_unchanged_from left it" "see $dir/fingerprint.diff"
        fi
    fi
    # persist-prep's own cost in this boot: its start job began .. finished, from the journal.
    local line s d
    line=$(grep -m1 '^unit name=persist-prep.service ' "$dir/markers")
    s=$(field "$line" starting) d=$(field "$line" "done")
    [[ $s =~ ^[0-9]+$ && $d =~ ^[0-9]+$ ]] && echo "$((d - s))" > "$dir/cost-us"
    line=$(grep -m1 '^unit name=pp-test-baseline.service ' "$dir/markers")
    s=$(field "$line" starting) d=$(field "$line" "done")
    [[ $s =~ ^[0-9]+$ && $d =~ ^[0-9]+$ ]] && echo "$((d - s))" > "$dir/baseline-us"

    local total failed first
    total=$(wc -l < "$CHECKS")
    failed=$(grep -c '^FAIL' "$CHECKS")
    first=$(grep -m1 '^FAIL' "$CHECKS")
    if [[ -n $control_of ]]; then
        # A control proves the checks can fail: the boot and the report must work, and some check
        # of what persist-prep should have produced must fail.
        if grep -Eq '^FAIL (boot|report|verify) ' "$CHECKS"; then
            echo "FAIL control: the boot itself failed, so it proves nothing: $(grep -m1 -E '^FAIL (boot|report|verify) ' "$CHECKS")" > "$dir/verdict"
        elif grep -Eq '^FAIL (stat|disk) ' "$CHECKS"; then
            # The attribute checks, not just "the unit did not run": those are what must catch
            # systemd's root 0755 sources.
            echo "PASS control: $control_of's checks failed as they must ($failed of $total, e.g. $(grep -m1 -E '^FAIL (stat|disk) ' "$CHECKS" | cut -d' ' -f2-))" > "$dir/verdict"
        else
            echo "FAIL control: no attribute check of $control_of failed with this change ($failed of $total failed)" > "$dir/verdict"
        fi
    elif ((failed == 0)); then
        echo "PASS $total checks" > "$dir/verdict"
    else
        echo "FAIL $failed of $total checks failed, first: ${first#FAIL }" > "$dir/verdict"
    fi
)

# cut_boots DIR CMDLINE DISK... : the scenario's cut_boots, in order, on the same images: each boot
# gets pp_test.cut=MODE, and its power is cut (SIGKILL of QEMU) once the guest prints "@@PPT
# cut-now". Then the images are judged as the next boot will find them (check_landing).
cut_boots() {
    local dir=$1 kcmd=$2 n=0 spec mode want verdict t0
    shift 2
    for spec in "${cut_boots[@]}"; do
        n=$((n + 1)) mode=${spec%%:*} want=${spec#*:}
        echo '@@PPT cut-now' > "$dir/cut"
        t0=$SECONDS
        verdict=$(boot_vm "$dir" "$kcmd pp_test.cut=$mode" "$timeout" "$@")
        mv "$dir/console.log" "$dir/console-cut$n.log"
        echo "$((SECONDS - t0))" > "$dir/cut$n-seconds"
        local at
        at=$(markers "$dir/console-cut$n.log" | grep -m1 '^cut-now ')
        if [[ $verdict == cut ]]; then record ok cut "boot $n ($mode): power cut at \"${at}\" after $((SECONDS - t0)) s"
        else record FAIL cut "boot $n ($mode): power cut" "the guest never asked for it (watchdog: $verdict)"; fi
        check_landing "$dir" "$n" "$mode" "$want"
    done
}
