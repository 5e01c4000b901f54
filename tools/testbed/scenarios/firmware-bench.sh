# tb-description: benchmark (not a test): VMM start to guest init through SeaBIOS from the SYSLINUX/MBR disk on virtio-blk, viaduct vs QEMU -M q35, same L1 boot
# tb-timeout: 1200
# tb-needs: qemu firmware
# tb-devices: fw-disks
# tb-suite: bench
# tb-run: viaduct-fw-r* qemu-fw-r* viaduct-fw-exits qemu-fw-exits viaduct-fw-profile
# tb-check: mbr-disk profile
# tb-check: viaduct-fw-r*/booted-from-disk qemu-fw-r*/booted-from-disk viaduct-fw-r*/unexpected qemu-fw-r*/unexpected
# tb-check: viaduct-fw-exits/booted-from-disk qemu-fw-exits/booted-from-disk viaduct-fw-exits/unexpected
# tb-check: qemu-fw-exits/unexpected viaduct-fw-profile/booted-from-disk viaduct-fw-profile/unexpected
# tb-bench-target: fw_boot_ms <= 0.7
# Both VMMs boot the same disk (level 1's block device of the fw-mbr.img NVMe namespace, as a
# read-only virtio-blk disk) with Debian's bios-256k.bin, 1 vCPU and 256 MiB; the disk's
# guest script reports and the guest powers off. Metrics (medians over the rounds):
#   fw_boot_ms     VMM start to the guest's first init line (L1 clock): firmware, SYSLINUX
#                  loading the kernel and initramfs from the disk, the kernel's boot
#   fw_pre_guest_ms  fw_boot_ms minus the guest's uptime at init: VMM set-up, firmware and
#                  bootloader, before the guest kernel's clock starts
# Then one more run of each VMM with level 1's KVM exit counters sampled (values
# exits-VMM: all exits, port I/O, MMIO, HLT; sampling costs level 1 CPU, so not in the medians).
# A last viaduct run at --log-level debug (not in the medians: the firmware's debug log costs
# an exit per byte) splits viaduct's time (values profile/*_ms): setup (exec to the vCPUs
# running), post (SeaBIOS's POST, to the MBR at 0x7c00), loader (SYSLINUX reading the kernel
# and initramfs, the kernel's decompression: up to the guest clock's start), guest (the
# kernel's boot to init).
# QEMU runs with its SeaBIOS output on the serial port too (-nographic's fw_cfg flag is not
# set, so SeaBIOS is quiet on the serial line under QEMU; viaduct asks for it: a few lines).
# shellcheck shell=dash  # busybox ash in level 1/2

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { tb_skip "QEMU is not in level 1"; exit 0; }
mbr=$(tb_nvme_by_serial fwmbr001) || { tb_check mbr-disk fail "no NVMe with serial fwmbr001"; exit 0; }
dev=/dev/$(tb_nvme_ctrl "$mbr")n1
tb_check mbr-disk pass "$dev"
bios=/usr/share/seabios/bios-256k.bin
echo 'g_check unexpected fail "the disk guest script runs from the disk"' >/tmp/fw-unused.sh

bench() {
    local vmm=$1 run=$2 up
    tb_settle_memory
    if [ "$vmm" = viaduct ]; then
        tb_run_l2 "$run" 200 /tmp/fw-unused.sh -- viaduct --firmware $bios --memory 256M --cpus 1 \
            --disk path="$dev",readonly=on --log-level info
    else
        tb_run_l2 "$run" 200 /tmp/fw-unused.sh -- qemu-system-x86_64 -M q35 -accel kvm -cpu host -m 256M \
            -smp 1 -nodefaults -display none -no-reboot -serial stdio -bios $bios \
            -drive file="$dev",if=virtio,format=raw,readonly=on
    fi
    [ -n "$TB_L2_INIT_MS" ] || return 0
    tb_bench fw_boot_ms "$vmm" "$TB_L2_INIT_MS"
    up=$(sed -n 's/^init uptime=\([0-9.]*\).*/\1/p' "/tmp/l2/$run/markers" 2>/dev/null | head -n1)
    [ -n "$up" ] && tb_bench fw_pre_guest_ms "$vmm" "$(awk -v i="$TB_L2_INIT_MS" -v u="$up" 'BEGIN {printf "%d", i - u * 1000}')"
}

round=1
while [ "$round" -le "${FW_BENCH_ROUNDS:-3}" ]; do
    bench viaduct "viaduct-fw-r$round"
    bench qemu "qemu-fw-r$round"
    round=$((round + 1))
done

# exits PROCESS OUT: until /tmp/fw-bench-stop exists, the last KVM exit counters of
# PROCESS's VM ("exits io_exits mmio_exits halt_exits"), into OUT.
exits() {
    local pid d e
    rm -f "$2"
    while [ ! -e /tmp/fw-bench-stop ]; do
        pid=$(pidof "$1" | cut -d' ' -f1)
        for d in /sys/kernel/debug/kvm/"$pid"-*; do
            [ -n "$pid" ] || break
            e=$(cat "$d/exits" "$d/io_exits" "$d/mmio_exits" "$d/halt_exits" 2>/dev/null | tr '\n' ' ')
            case "$e" in *[!0-9\ ]*) continue ;; esac
            [ "$(echo $e | wc -w)" -eq 4 ] && echo "$e" >"$2"
        done
        sleep 0.5
    done
}
mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
for vmm in viaduct qemu; do
    proc=viaduct; [ "$vmm" = qemu ] && proc=qemu-system-x86_64
    rm -f /tmp/fw-bench-stop
    tb_settle_memory
    exits "$proc" "/tmp/fw-exits-$vmm" &
    sampler=$!
    if [ "$vmm" = viaduct ]; then
        tb_run_l2 viaduct-fw-exits 200 /tmp/fw-unused.sh -- viaduct --firmware $bios --memory 256M --cpus 1 \
            --disk path="$dev",readonly=on --log-level info
    else
        tb_run_l2 qemu-fw-exits 200 /tmp/fw-unused.sh -- qemu-system-x86_64 -M q35 -accel kvm -cpu host -m 256M \
            -smp 1 -nodefaults -display none -no-reboot -serial stdio -bios $bios \
            -drive file="$dev",if=virtio,format=raw,readonly=on
    fi
    touch /tmp/fw-bench-stop; wait "$sampler"
    # shellcheck disable=SC2046 # four numbers
    [ -s "/tmp/fw-exits-$vmm" ] && set -- $(cat "/tmp/fw-exits-$vmm") &&
        tb_value "exits-$vmm" "exits=$1 io=$2 mmio=$3 halt=$4"
done

# fw_ms LOG PATTERN: the log time (ms of the day) of the first line matching PATTERN.
fw_ms() {
    tr -d '\r\000' <"$1" | grep "$2" | head -n1 |
        sed -n 's/.*\[[0-9-]*T\([0-9]*\):\([0-9]*\):\([0-9]*\)\.\([0-9]*\)Z.*/\1 \2 \3 \4/p' |
        awk '{printf "%d", (($1 * 60 + $2) * 60 + $3) * 1000 + $4}'
}
tb_settle_memory
tb_run_l2 viaduct-fw-profile 200 /tmp/fw-unused.sh -- viaduct --firmware $bios --memory 256M --cpus 1 \
    --disk path="$dev",readonly=on --log-level debug
log=/tmp/l2/viaduct-fw-profile/console.log
start=$(fw_ms "$log" 'booting firmware')
setup=$(tr -d '\r' <"$log" | sed -n 's/.*booting firmware.*; \([0-9]*\) ms since viaduct started.*/\1/p' | head -n1)
mbr=$(fw_ms "$log" 'firmware: Booting from 0000:7c00')
up=$(sed -n 's/^init uptime=\([0-9.]*\).*/\1/p' /tmp/l2/viaduct-fw-profile/markers 2>/dev/null | head -n1)
if [ -n "$start" ] && [ -n "$setup" ] && [ -n "$mbr" ] && [ -n "$up" ] && [ -n "$TB_L2_INIT_MS" ]; then
    pre=$(awk -v i="$TB_L2_INIT_MS" -v u="$up" 'BEGIN {printf "%d", i - u * 1000}')
    tb_value profile/setup_ms "$setup"
    tb_value profile/post_ms "$((mbr - start))"
    tb_value profile/loader_ms "$((pre - setup - (mbr - start)))"
    tb_value profile/guest_ms "$(awk -v u="$up" 'BEGIN {printf "%d", u * 1000}')"
    tb_value profile/init_ms "$TB_L2_INIT_MS"
    tb_value profile/firmware_log_lines "$(tr -d '\000' <"$log" | grep -c 'firmware: ')"
else
    tb_check profile fail "no time marks in $log (start=$start setup=$setup mbr=$mbr up=$up)"
fi
true
