# tb-description: tools/demo: a guest with an igb SR-IOV VF, the NVMe controller and an NVMe SR-IOV VF passed through
# tb-timeout: 420
# tb-needs: qemu
# Run by tools/demo with --script (not part of the test suite). DEMO_VMM: viaduct, qemu, or
# auto (default: viaduct, and QEMU if viaduct could not show the devices, said loudly).
# Lines starting with "DEMO:" are what tools/demo prints.

vmm=${DEMO_VMM:-auto}
say() { echo "DEMO: $*"; }

igb_vf=$(tb_create_vfs "$TB_IGB_PF" 2 0 | head -n1)
nvme_vf=$(tb_nvme_sriov_vf)
say "level 1 (the host): $(uname -r), IOMMU groups: $(ls /sys/kernel/iommu_groups | wc -l)"
say "  igb PF $TB_IGB_PF: $(cat /sys/bus/pci/devices/$TB_IGB_PF/sriov_numvfs) VFs; passing VF $igb_vf through"
say "  NVMe $TB_NVME (whole controller) and NVMe SR-IOV VF $nvme_vf"
devs=""
for b in $igb_vf $TB_NVME $nvme_vf; do
    g=$(tb_bind_vfio "$b") && devs="$devs $b" && say "  $b -> vfio-pci, /dev/vfio/$g"
done

cat >/tmp/demo-guest.sh <<'GUEST'
say() { echo "DEMO: $*"; }
say "guest: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU(s), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
say "guest PCI devices (lspci -nnk):"
lspci -nnk 2>/dev/null | sed 's/^/DEMO:   /'
g_wait_for /dev/nvme0n1 20; g_wait_for /dev/nvme1n1 10
for d in /dev/nvme0n1 /dev/nvme1n1; do
    [ -b "$d" ] || continue
    ctrl=${d#/dev/}; ctrl=${ctrl%n1}
    c=$(basename "$(readlink /sys/class/nvme/$ctrl/device)")
    say "read from $d (PCI $c) sector 0: $(dd if=$d bs=512 count=1 2>/dev/null | head -n1)"
    g_check "read-$c" pass "$(dd if=$d bs=512 count=1 2>/dev/null | head -n1)"
done
say "MSI/MSI-X per device (vectors, interrupts):"
for p in /sys/bus/pci/devices/*; do
    b=$(basename $p)
    [ -d $p/msi_irqs ] && say "  $b $(g_driver $b): $(g_msi_vectors $b) vectors, $(g_dev_irq_count $b) interrupts"
done
n=$(ls /sys/bus/pci/drivers/igbvf /sys/bus/pci/drivers/nvme 2>/dev/null | grep -c '^0000')
g_value assigned_bound "$n"
[ "$n" = 3 ] && g_check devices-bound pass "igbvf + 2 nvme bound" || g_check devices-bound fail "$n of 3 assigned devices have their driver"
GUEST

run_viaduct() {
    set --
    for b in $devs; do set -- "$@" --device "path=/sys/bus/pci/devices/$b"; done
    tb_run_l2 viaduct 120 /tmp/demo-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
        --cmdline "@CMDLINE@" --memory 256M "$@"
}
run_qemu() { tb_qemu_l2 qemu 180 /tmp/demo-guest.sh $devs; }

case "$vmm" in
viaduct) say "VMM: viaduct"; run_viaduct ;;
qemu) say "VMM: QEMU $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') (the reference VMM, as asked with DEMO_VMM=qemu)"; run_qemu ;;
*)
    if command -v viaduct >/dev/null && say "VMM: viaduct" && run_viaduct &&
        grep -q '@@G check devices-bound pass' /tmp/l2/viaduct/console.log; then
        :
    else
        say "!!! viaduct could not show the passed-through devices (see the lines above);"
        say "!!! showing the same guest with QEMU $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') as the VMM instead"
        run_qemu
    fi
    ;;
esac
for b in $devs; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
true
