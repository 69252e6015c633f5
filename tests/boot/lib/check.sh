# shellcheck shell=bash
# Verdicts: compare what a boot left (console markers, disk images) with a scenario's expectations.
# Every check appends one line "ok|FAIL <kind> <what>[: why]" to $CHECKS (a file).

record() { # record ok|FAIL KIND WHAT [WHY]
    local status=$1 kind=$2 what=$3 why=${4:-}
    printf '%s %s %s%s\n' "$status" "$kind" "$what" "${why:+: $why}" >> "$CHECKS"
}

# markers CONSOLE : the structured lines the guest printed, without the "@@PPT " prefix. A marker
# may share a console line with kernel or systemd output in front of it.
markers() { clean_console "$1" | grep -ao '@@PPT .*' | sed 's/^@@PPT //'; }

# has_fields "k=v k=v ..." "k=v ..." : every wanted field (second) is present in the first.
has_fields() {
    local have=" $1 " f
    for f in $2; do [[ $have == *" $f "* ]] || return 1; done
}

# field "k=v ..." KEY : the value of KEY.
field() { tr ' ' '\n' <<< "$1" | sed -n "s/^$2=//p" | head -n 1; }

# check_reports KIND KEY MARKERS_FILE SPEC...   SPEC: "NAME key=value ...", matched against the
# first "KIND KEY=NAME ..." marker line.
check_reports() {
    local kind=$1 key=$2 mk=$3 spec name want line
    shift 3
    for spec in "$@"; do
        name=${spec%% *} want=${spec#* }
        line=$(grep -m1 "^$kind $key=$name " "$mk")
        if [[ -z $line ]]; then record FAIL "$kind" "$name" "no report"
        elif has_fields "$line" "$want"; then record ok "$kind" "$name $want"
        else record FAIL "$kind" "$name $want" "got ${line#"$kind" "$key"="$name" }"; fi
    done
}

check_units() { check_reports unit name "$@"; }  # SPEC: "unit.service key=value ..."
check_stats() { check_reports stat path "$@"; }  # SPEC: "/path key=value ..." as seen inside the initrd

check_order() { # SPEC: "a.service done < b.mount starting" (journal monotonic times)
    local mk=$1 spec a ea b eb ta tb
    shift
    for spec in "$@"; do
        read -r a ea _ b eb <<< "$spec"
        ta=$(field "$(grep -m1 "^unit name=$a " "$mk")" "$ea")
        tb=$(field "$(grep -m1 "^unit name=$b " "$mk")" "$eb")
        if [[ ! $ta =~ ^[0-9]+$ || ! $tb =~ ^[0-9]+$ ]]; then
            record FAIL order "$spec" "no journal time (${ta:-none}, ${tb:-none})"
        elif ((ta < tb)); then record ok order "$spec ($ta < $tb us)"
        else record FAIL order "$spec" "$ta >= $tb us"; fi
    done
}

# The summary line of `apply`: "persist-prep: summary: 7 created, 0 present, ... in 1.3 ms".
summary_fields() {
    grep -m1 -o 'summary: .*' "$1" | sed 's/^summary: //; s/ in .*//; s/, /\n/g' |
        awk 'NF == 2 {printf "%s=%s ", $2, $1}'
}

check_summary() { # SPEC: "created=7 failed=0 ..."
    local mk=$1 want=$2 have
    have=$(summary_fields "$mk")
    if [[ -z $have ]]; then record FAIL summary "$want" "no summary line from apply"
    elif has_fields "$have" "$want"; then record ok summary "$want"
    else record FAIL summary "$want" "got $have"; fi
}

check_console() { # SPEC: an extended regex that must (or with "!" in front, must not) appear
    local text spec
    text=$(mktemp)
    clean_console "$1" > "$text"
    shift
    for spec in "$@"; do
        if [[ $spec == '!'* ]]; then
            if grep -Eaq -- "${spec#!}" "$text"; then record FAIL console "$spec" "present"
            else record ok console "$spec"; fi
        elif grep -Eaq -- "$spec" "$text"; then record ok console "$spec"
        else record FAIL console "$spec" "absent"; fi
    done
    rm -f "$text"
}

check_markers() { # SPEC: an extended regex matched against whole marker lines
    local mk=$1 spec
    shift
    for spec in "$@"; do
        if grep -Eq -- "^($spec)\$" "$mk"; then record ok marker "$spec"
        else record FAIL marker "$spec" "absent"; fi
    done
}

# disk_stat IMG PATH : "exists=yes type=directory mode=2755 uid=0 gid=190 inode=12 ctime=0x..."
# read from the image with debugfs, without mounting it; "exists=no" when the path is absent.
disk_stat() {
    debugfs -R "stat \"$2\"" "$1" 2> /dev/null | awk '
        /^Inode:/ { for (i = 1; i <= NF; i++) { if ($i == "Inode:") ino = $(i+1); if ($i == "Type:") t = $(i+1); if ($i == "Mode:") m = $(i+1) } }
        /^User:/  { u = $2; g = $4 }
        /^ ?ctime:/ { c = $2 }
        END { if (ino == "") { print "exists=no"; exit }
              sub(/^0+/, "", m); if (m == "") m = "0"
              printf "exists=yes type=%s mode=%s uid=%s gid=%s inode=%s ctime=%s\n", t, m, u, g, ino, c }'
}

check_disk() { # check_disk DIR SPEC...  SPEC: "persist|root /path key=value ..." or "... absent"
    local dir=$1 spec img path want have
    shift
    for spec in "$@"; do
        read -r img path want <<< "$spec"
        [[ $want == absent ]] && want=exists=no
        have=$(disk_stat "$dir/$img.img" "$path")
        if has_fields "$have" "$want"; then record ok disk "$img:$path $want"
        else record FAIL disk "$img:$path $want" "got $have"; fi
    done
}

# disk_fingerprint DIR SPEC... : inode, owner, mode and ctime of every path the scenario checks;
# equal fingerprints before and after a boot mean that boot changed none of them.
disk_fingerprint() {
    local dir=$1 spec img path
    shift
    for spec in "$@"; do
        read -r img path _ <<< "$spec"
        printf '%s:%s %s\n' "$img" "$path" "$(disk_stat "$dir/$img.img" "$path")"
    done
}

check_fsck() { # the guest powered off cleanly: every image is a consistent file system
    local dir=$1 img
    for img in "$dir"/*.img; do
        [[ $img == */initrd.img ]] && continue
        if e2fsck -fn "$img" > /dev/null 2>&1; then record ok fsck "$(basename "$img")"
        else record FAIL fsck "$(basename "$img")" "e2fsck -fn reports problems"; fi
    done
}

# shellcheck disable=SC2154 # tree_images, tree_names, tree_allow: scenario variables (lib/scenario.sh)
# check_tree DIR IMGDIR LABEL [--pending-ok] : every directory the scenario's manifest declares,
# with its parents, on the images in IMGDIR (tree_images), by lib/tree-judge: owner and mode of
# each, and no name in them that is neither declared nor seeded (a leftover). One check; the
# judge's full output goes to DIR/tree-LABEL.txt.
check_tree() {
    local dir=$1 imgdir=$2 label=$3 args=() spec out rc
    shift 3
    for spec in "${tree_images[@]}"; do
        args+=(--image "${spec%%:*}=$imgdir/${spec%%:*}.img:${spec#*:}")
        [[ -d $dir/${spec%%:*}-tree ]] && args+=(--seed "${spec%%:*}=$dir/${spec%%:*}-tree")
    done
    for spec in "${tree_names[@]}"; do args+=(--names "$spec"); done
    for spec in "${tree_allow[@]}"; do args+=(--allow "$spec"); done
    out=$dir/tree-${label// /-}.txt
    "$BOOT_DIR/lib/tree-judge" --manifest "$dir/stage/etc/persist-prep/manifest.json" "${args[@]}" "$@" > "$out" 2>&1
    rc=$?
    local stats
    stats=$(sed -n 's/^stats //p' "$out" | tr '\n' ';' | sed 's/;$//; s/;/; /g')
    if ((rc == 0)); then
        record ok tree "$label: every declared directory and parent ${*:+(absent or pending allowed) }as declared, no extra name ($stats)"
    else
        record FAIL tree "$label: every declared directory and parent as declared, no extra name" \
            "$stats; $(sed -n 's/^problem //p' "$out" | head -n 3 | tr '\n' ';')"
    fi
}

# check_landing DIR N MODE some|all : where cut N landed, on copies of the images as the next
# boot's kernel will find them (journal replayed by e2fsck). At every instant a declared path is
# absent or has its final owner and mode (a deferred one: root-owned, its mode), so that is
# checked here too; "some" requires the cut to have landed mid-apply (some but not all declared
# paths on disk), "all" that apply had finished.
check_landing() {
    local dir=$1 n=$2 mode=$3 want=$4 spec cdir=$1/cut$2
    rm -rf "$cdir"
    mkdir -p "$cdir"
    for spec in "${tree_images[@]}"; do
        cp --sparse=always "$dir/${spec%%:*}.img" "$cdir/"
        e2fsck -fy "$cdir/${spec%%:*}.img" > "$cdir/${spec%%:*}.fsck" 2>&1
        echo "rc=$?" >> "$cdir/${spec%%:*}.fsck"
    done
    check_tree "$dir" "$cdir" "cut $n" --pending-ok
    local present declared
    read -r present declared < <(awk '/^stats / {
            for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2] } }
        END { print v["final"] + v["pending"] + v["wrong"], v["declared"] }' "$dir/tree-cut-$n.txt")
    local where="$present of $declared declared paths on disk"
    if [[ $want == some ]] && ((present > 0 && present < declared)); then
        record ok landing "cut $n ($mode) landed mid-apply: $where"
    elif [[ $want == all ]] && ((present == declared && declared > 0)); then
        record ok landing "cut $n ($mode) landed after apply: $where"
    else
        record FAIL landing "cut $n ($mode) landed where asked ($want)" "$where"
    fi
    rm -f "$cdir"/*.img
}
