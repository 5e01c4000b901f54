# tb-description: tool (not in the suite): which ports, MMIO pages and exit reasons a booting guest costs, per VMM
# tb-needs: qemu
# tb-timeout: 600
# tb-run: viaduct qemu
# tb-check: tracepoints
# Run: tools/testbed/run --no-build --qemu --script tools/testbed/experiments/exit-profile.sh
# Boots the same guest under viaduct and QEMU with level 1's kvm_pio, kvm_mmio and kvm_exit
# tracepoints on, and prints per VMM the busiest ports, MMIO pages (4 KiB granules) and exit
# reasons, then the guest's dmesg (as "DMESG" lines, after init, so its serial output counts
# too: subtract about 3.5 port exits per character of it). How the 2026-12-06 profile found
# Linux probing 255 empty PCI buses through 0xCF8/0xCFC (16 500 of 18 000 exits of a boot).
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs none $T 2>/dev/null
[ -d $T/events/kvm ] || T=/sys/kernel/debug/tracing
[ -d $T/events/kvm ] || { tb_check tracepoints fail "no kvm tracepoints in level 1 ($T)"; exit 1; }
echo 'dmesg | sed "s/^/DMESG /"' >/tmp/exit-profile-guest.sh
# profile RUN CMD...: CMD boots the guest; the three tracepoints are on meanwhile.
profile() {
    local run=$1 e
    shift
    echo >$T/trace
    echo 131072 >$T/buffer_size_kb
    for e in kvm_pio kvm_mmio kvm_exit; do echo 1 >$T/events/kvm/$e/enable; done
    "$@"
    for e in kvm_pio kvm_mmio kvm_exit; do echo 0 >$T/events/kvm/$e/enable; done
    echo "== $run: port I/O exits by port"
    grep -o 'pio_[a-z]* at 0x[0-9a-f]*' $T/trace | sort | uniq -c | sort -rn | head -25
    echo "== $run: MMIO exits by 4 KiB page"
    grep -o 'mmio [a-z]* len [0-9]* gpa 0x[0-9a-f]*' $T/trace | awk '{print $2, $5}' |
        sed 's/\(0x[0-9a-f]*\)[0-9a-f][0-9a-f][0-9a-f]$/\1xxx/' | sort | uniq -c | sort -rn | head -15
    echo "== $run: exits by reason"
    grep -o 'reason [A-Za-z_0-9]*' $T/trace | sort | uniq -c | sort -rn | head -15
    tb_value "$run/exits_traced" "$(grep -c 'kvm_exit:' $T/trace)"
}
profile viaduct tb_run_l2 viaduct 150 /tmp/exit-profile-guest.sh -- viaduct --kernel @KERNEL@ \
    --initramfs @INITRD@ --cmdline "@CMDLINE@" --cpus 1 --memory 256M --log-level info
profile qemu tb_qemu_l2 qemu 150 /tmp/exit-profile-guest.sh
