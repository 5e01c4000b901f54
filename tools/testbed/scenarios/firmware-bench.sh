# tb-description: benchmark (not a test): VMM start to guest init through SeaBIOS from the SYSLINUX/MBR disk on virtio-blk, viaduct vs QEMU -M q35, same L1 boot
# tb-timeout: 1200
# tb-needs: qemu firmware
# tb-devices: fw-disks
# tb-suite: bench
# tb-bench-target: fw_boot_ms <= 0.7
# Both VMMs boot the same disk (level 1's block device of the fw-mbr.img NVMe namespace, as a
# read-only virtio-blk disk) with Debian's bios-256k.bin, 1 vCPU and 256 MiB; the disk's
# guest script reports and the guest powers off. Metrics (medians over the rounds):
#   fw_boot_ms     VMM start to the guest's first init line (L1 clock): firmware, SYSLINUX
#                  loading the kernel and initramfs from the disk, the kernel's boot
#   fw_pre_guest_ms  fw_boot_ms minus the guest's uptime at init: VMM set-up, firmware and
#                  bootloader, before the guest kernel's clock starts
# QEMU runs with its SeaBIOS output on the serial port too (-nographic's fw_cfg flag is not
# set, so SeaBIOS is quiet on the serial line under QEMU; viaduct asks for it: a few lines).

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
true
