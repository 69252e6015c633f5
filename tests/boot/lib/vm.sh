# shellcheck shell=bash
# Disk images and one QEMU boot per scenario.

# make_image TREE IMG SIZE LABEL : a fresh ext4 image populated from TREE without mounting it
# (mkfs.ext4 -d keeps the tree's owners and modes; the harness runs as root).
make_image() {
    local tree=$1 img=$2 size=$3 label=$4
    rm -f "$img"
    truncate -s "$size" "$img"
    mkfs.ext4 -q -F -L "$label" -d "$tree" "$img"
}

# Console noise that breaks matching: colours and carriage returns.
clean_console() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g; s/\r//g' "$1"; }

# boot_vm DIR CMDLINE TIMEOUT DISK... : boot the kernel with DIR/initrd.img and the given raw disk
# images (vda, vdb, ...) under TCG, console on DIR/console.log. A watchdog kills QEMU at TIMEOUT
# seconds or on a kernel panic. When DIR/send exists (lines "PATTERN<TAB>TEXT"), each TEXT is typed
# on the serial console once PATTERN (an extended regex) has appeared, in order: this is how a
# scenario drives the emergency shell. When DIR/cut exists (an extended regex), the power is cut
# as soon as the console matches it: QEMU gets SIGKILL, so nothing the guest still held in its page
# cache reaches the disks, and neither the guest nor QEMU gets to flush or shut down.
# Prints "ok", "timeout", "panic" or "cut".
boot_vm() {
    local dir=$1 cmdline=$2 timeout=$3 disk
    shift 3
    local drives=()
    # cache=writeback (QEMU's default, spelled out): the guest sees a volatile write cache and so
    # sends flushes exactly as it would to a real disk. A SIGKILL then loses what the guest had not
    # yet written; what QEMU had written is in the host's page cache and survives, like data that
    # reached the platters. See tests/boot/README.md ("Power cuts").
    for disk in "$@"; do drives+=(-drive "file=$disk,if=virtio,format=raw,cache=writeback"); done
    local fifo=$dir/console.in
    rm -f "$fifo"
    : > "$dir/console.log" # exists before QEMU opens it (it waits for the fifo's writer first)
    mkfifo "$fifo"
    # KVM is present but unusable on these machines (KVM internal error, then a hang): TCG only.
    qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
        -display none -monitor none -serial stdio -no-reboot \
        -kernel "$(kernel_image)" -initrd "$dir/initrd.img" "${drives[@]}" \
        -append "$cmdline" < "$fifo" > "$dir/console.log" 2>&1 &
    local qpid=$!
    exec {keep}> "$fifo" # hold the write end so QEMU never reads EOF
    local sends=() i=0 verdict=ok start=$SECONDS cut="" tick=0.5
    [[ -f $dir/send ]] && mapfile -t sends < "$dir/send"
    [[ -f $dir/cut ]] && cut=$(cat "$dir/cut") tick=0.1
    while kill -0 "$qpid" 2> /dev/null; do
        if ((SECONDS - start >= timeout)); then verdict=timeout; break; fi
        if grep -aq 'Kernel panic' "$dir/console.log"; then verdict=panic; break; fi
        if [[ -n $cut ]] && grep -Eaq -- "$cut" "$dir/console.log"; then
            kill -KILL "$qpid"
            verdict="cut"
            break
        fi
        if ((i < ${#sends[@]})); then
            local pattern=${sends[i]%%$'\t'*} text=${sends[i]#*$'\t'}
            # grep -c, not -q: an early exit would kill sed with SIGPIPE and, under pipefail,
            # turn a match into a miss.
            if [[ $(clean_console "$dir/console.log" | grep -Eac -- "$pattern") != 0 ]]; then
                printf '%s\r' "$text" >&"$keep"
                i=$((i + 1))
            fi
        fi
        sleep "$tick"
    done
    if kill -0 "$qpid" 2> /dev/null; then
        kill "$qpid"
        sleep 1
        kill -9 "$qpid" 2> /dev/null
    fi
    wait "$qpid" 2> /dev/null
    exec {keep}>&-
    rm -f "$fifo"
    echo "boot seconds: $((SECONDS - start)) watchdog: $verdict" >> "$dir/console.log"
    echo "$verdict"
}
