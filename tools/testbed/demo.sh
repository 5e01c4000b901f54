# tb-description: tools/demo: a guest with an igb SR-IOV VF, the NVMe controller and an NVMe SR-IOV VF passed through
# tb-timeout: 420
# tb-needs: qemu
# tb-run: viaduct qemu
# tb-check: viaduct/devices-bound viaduct/read-* qemu/devices-bound qemu/read-*
# Run by tools/demo with --script (not part of the test suite). DEMO_VMM: viaduct (default),
# qemu (the reference VMM), or auto (viaduct, and QEMU if viaduct could not show the devices,
# said loudly). Lines starting with "DEMO:" are what tools/demo prints.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

vmm=${DEMO_VMM:-viaduct}
say() { echo "DEMO: $*"; }

igb_vf=$(tb_create_vfs "$TB_IGB_PF" 2 0 | head -n1)
nvme_vf=$(tb_nvme_sriov_vf 2>/dev/null)
say "Level 1 (the host): Linux $(uname -r) under QEMU TCG with an emulated Intel IOMMU ($(ls /sys/kernel/iommu_groups | wc -l) IOMMU groups), /dev/kvm from kvm_amd (nested SVM)"
say "  igb NIC PF $TB_IGB_PF: $(cat /sys/bus/pci/devices/$TB_IGB_PF/sriov_numvfs) SR-IOV VFs created, VF $igb_vf goes to the guest"
say "  NVMe controller $TB_NVME goes to the guest whole"
say "  NVMe SR-IOV PF $TB_NVME_SRIOV_PF: VF ${nvme_vf:-(none: nvme virt-mgmt failed)} goes to the guest"
devs=""
for b in $igb_vf $TB_NVME $nvme_vf; do
    if g=$(tb_bind_vfio "$b"); then devs="$devs $b"; say "  $b bound to vfio-pci, IOMMU group $g (/dev/vfio/$g)"
    else say "  !!! $b did not bind to vfio-pci (driver: $(tb_driver "$b"))"; fi
done

# guest_script NDEV: what the guest shows (DEMO: lines) and checks, for NDEV assigned devices.
guest_script() {
    cat <<GUEST
SIG_NVME='$TB_SIG_NVME'
SIG_SRIOV='$TB_SIG_SRIOV'
NDEV=$1
GUEST
    cat <<'GUEST'
say() { echo "DEMO: $*"; }
say ""
say "Guest (level 2): Linux $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB RAM"
say "PCI functions the guest sees, with the driver the guest bound:"
bound=0 irqs_total=0
for p in /sys/bus/pci/devices/*; do
    b=$(basename "$p"); id="$(cut -c3- $p/vendor):$(cut -c3- $p/device)"
    case "$id" in
    8086:10ca) what="Intel 82576 SR-IOV Virtual Function (igb VF)" ;;
    1b36:0010) what="NVMe controller" ;;
    *) case "$(cut -c3-6 $p/class)" in 0600) what="PCI host bridge (emulated by the VMM)" ;;
       *) what="class $(cut -c3- $p/class) (emulated by the VMM)" ;; esac ;;
    esac
    drv=$(g_driver "$b"); extra=""
    if [ -d "$p/msi_irqs" ]; then
        mode=$(cat "$p"/msi_irqs/* 2>/dev/null | sort -u | tr 'a-z\n' 'A-Z ')
        n=$(g_dev_irq_count "$b"); irqs_total=$((irqs_total + n))
        extra=", ${mode% } $(g_msi_vectors "$b") vectors, $n interrupts so far"
    fi
    [ -d "$p/net" ] && extra="$extra, interface $(ls "$p/net")"
    [ -d "$p/nvme" ] && extra="$extra, $(ls "$p/nvme")"
    say "  $b [$id] $what -> driver: $drv$extra"
    case "$id" in 8086:10ca|1b36:0010) [ "$drv" != none ] && bound=$((bound + 1)) ;; esac
done
[ -n "$(g_find_devs 8086 10ca)" ] && say "  (the igb VF is probed and bound but moves no packets in this emulation: a QEMU igb-model limit, tools/testbed/README.md)"
g_value assigned_bound "$bound"
[ "$bound" = "$NDEV" ] && g_check devices-bound pass "$bound of $NDEV assigned devices have their driver" ||
    g_check devices-bound fail "$bound of $NDEV assigned devices have their driver"

say ""
say "NVMe reads and writes by DMA through two IOMMUs (sector 0 was written by level 0 into its image file):"
g_wait_for /dev/nvme0n1 20; [ "$(g_find_devs 1b36 0010 | wc -l)" -ge 2 ] && g_wait_for /dev/nvme1n1 10
nread=0
for d in /dev/nvme0n1 /dev/nvme1n1; do
    [ -b "$d" ] || continue
    ctrl=${d#/dev/}; ctrl=${ctrl%n1}
    pci=$(basename "$(readlink /sys/class/nvme/$ctrl/device)")
    sig=$(dd if=$d bs=512 count=1 iflag=direct 2>/dev/null | head -n1)
    case "$sig" in
    "$SIG_NVME") img=disk.img; kind="the whole NVMe controller" ;;
    "$SIG_SRIOV") img=sriov.img; kind="the NVMe SR-IOV VF" ;;
    *) img=""; kind="?" ;;
    esac
    if [ -n "$img" ]; then
        nread=$((nread + 1))
        say "  $d (PCI $pci) sector 0: \"$sig\" = level 0's $img: this is $kind"
        g_check "read-$img" pass "$sig"
        printf 'VIADUCT-GUEST-WROTE %s\n' "$sig" | dd of=$d bs=512 seek=2048 conv=sync,fsync 2>/dev/null
        say "  $d: wrote \"VIADUCT-GUEST-WROTE ...\" at LBA 2048 (tools/demo reads it back from $img on level 0)"
    else
        say "  !!! $d (PCI $pci) sector 0: \"$sig\" is no testbed signature"
        g_check "read-$pci" fail "read '$sig'"
    fi
done
sync
g_value nvme_signatures_read "$nread"
say ""
say "Interrupts: $irqs_total MSI/MSI-X interrupts delivered to the guest's passed-through devices before the reads; now:"
for p in /sys/bus/pci/devices/*; do
    b=$(basename "$p")
    [ -d "$p/msi_irqs" ] && say "  $b $(g_driver $b): $(g_dev_irq_count $b) interrupts on $(g_msi_vectors $b) vectors"
done
GUEST
}

# viaduct_guest RUN BDF...: one guest under viaduct with these devices.
viaduct_guest() {
    local run=$1; shift
    guest_script $# >/tmp/demo-$run.sh
    # shellcheck disable=SC2046 # one word per option and its value
    set -- $(for b in "$@"; do echo --device "path=/sys/bus/pci/devices/$b"; done)
    tb_run_l2 "$run" 240 /tmp/demo-$run.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
        --cmdline "@CMDLINE@" --memory 256M "$@"
    boot_line viaduct
}
run_viaduct() {
    say "The guest under viaduct gets the igb VF, the whole NVMe controller and the NVMe SR-IOV VF."
    viaduct_guest viaduct $devs
}
run_qemu() { guest_script "$(echo $devs | wc -w)" >/tmp/demo-qemu.sh; tb_qemu_l2 qemu 240 /tmp/demo-qemu.sh $devs; boot_line QEMU; }
boot_line() { say ""; say "$1 started the guest; its init ran ${TB_L2_INIT_MS:-?} ms after the VMM started (L1 clock, TCG)"; }

case "$vmm" in
viaduct)
    say "VMM: $(viaduct --version 2>/dev/null | head -n1)"
    run_viaduct ;;
qemu)
    say "VMM: QEMU $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') (the reference VMM, as asked with DEMO_VMM=qemu)"
    run_qemu ;;
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
true
