# tb-description: vfio crate host side on real VFIO, no guest: NVMe Identify + LBA 0 read by DMA with MSI-X and INTx, NVMe VF, igb VF, 4 GiB BAR, pre-flight errors
# tb-timeout: 240
# tb-devices: ivshmem
# tb-cargo: --release -p vfio --example nvme_probe
# tb-bin: release/examples/nvme_probe:/usr/bin/vfio-nvme-probe
# The probe's own checks (`@@CHECK NAME`), reported with a prefix per run:
# tb-check: probe-present preflight-not-bound preflight-missing preflight-twice after-sigkill nvme-back
# tb-check: r1-config-ids r1-config-caps r1-bar0-sizing r1-decode-maps-slots r1-bar0-trapped-vs-mmap
# tb-check: r1-msix-routes r1-nvme-disable r1-nvme-enable r1-nvme-identify-dma-msix r1-nvme-io-queues
# tb-check: r1-nvme-read-lba0-dma r1-nvme-read-intx r1-nvme-no-intx r1-probe r1-probe-rc
# tb-check: r2-config-ids r2-config-caps r2-bar0-sizing r2-decode-maps-slots r2-bar0-trapped-vs-mmap
# tb-check: r2-msix-routes r2-nvme-disable r2-nvme-enable r2-nvme-identify-dma-msix r2-nvme-io-queues
# tb-check: r2-nvme-read-lba0-dma r2-nvme-read-intx r2-nvme-no-intx r2-probe r2-probe-rc
# tb-check: nvmevf-setup nvmevf-config-ids nvmevf-config-caps nvmevf-bar0-sizing nvmevf-decode-maps-slots
# tb-check: nvmevf-bar0-trapped-vs-mmap nvmevf-msix-routes nvmevf-nvme-disable nvmevf-nvme-enable
# tb-check: nvmevf-nvme-identify-dma-msix nvmevf-nvme-io-queues nvmevf-nvme-read-lba0-dma
# tb-check: nvmevf-nvme-read-intx nvmevf-nvme-no-intx nvmevf-probe-rc
# tb-check: igbvf-setup igbvf-info-ids igbvf-info-caps igbvf-info-bars igbvf-probe-rc
# tb-check: ivshmem-bar-read-0x* ivshmem-probe-rc
# tb-check: bench-dma-map-*m-4k bench-dma-map-*m-2m bench-dma-rc
# The probe (vfio/examples/nvme_probe.rs) drives the devices through the vfio crate itself;
# `run` builds it (tb-cargo) and puts it into level 1 (tb-bin). tests/vfio_host.rs asserts.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

probe=${TB_VFIO_PROBE:-/usr/bin/vfio-nvme-probe}
# report PREFIX: the probe's output (/tmp/probe.out) as checks and values PREFIX-NAME.
report() {
    local tag name rest
    while read -r tag name rest; do
        case "$tag" in
        @@CHECK) tb_check "$1-$name" "${rest%% *}" "$(echo "$rest" | cut -s -d' ' -f2-)" ;;
        @@VALUE) tb_value "$1-$name" "$rest" ;;
        esac
    done </tmp/probe.out
}
if [ ! -x "$probe" ]; then
    # Not a skip: the run builds the probe unless told --no-build; without it nothing here ran.
    tb_check probe-present fail "no $probe in level 1: cargo build --release -p vfio --example nvme_probe failed or was not run (--no-build)"
else
    # Pre-flight: the NVMe still bound to the nvme driver must be refused with the bind hint.
    tb_bind nvme "$TB_NVME" >/dev/null 2>&1
    out=$("$probe" "$TB_NVME" 2>&1); rc=$?
    case "$out" in
        *"not vfio-pci"*drivers_probe*) [ $rc != 0 ] && tb_check preflight-not-bound pass "$(echo "$out" | grep '@@ERROR' | head -n1)" ;;
        *) tb_check preflight-not-bound fail "rc=$rc $out" ;;
    esac
    out=$("$probe" 0000:0f:00.0 2>&1); rc=$?
    case "$out" in *"no such PCI device"*) tb_check preflight-missing pass "$(echo "$out" | grep '@@ERROR')" ;;
        *) tb_check preflight-missing fail "rc=$rc $out" ;; esac
    out=$("$probe" "$TB_NVME,path=/sys/bus/pci/devices/$TB_NVME" 2>&1); rc=$?
    case "$out" in *"given twice"*) tb_check preflight-twice pass "$(echo "$out" | grep '@@ERROR')" ;;
        *) tb_check preflight-twice fail "rc=$rc $out" ;; esac

    g=$(tb_bind_vfio "$TB_NVME")
    tb_value nvme_group "$g"
    sig=$(echo "$TB_SIG_NVME" | cut -c1-40)
    for round in 1 2; do
        t0=$(tb_now_ms)
        "$probe" "$TB_NVME" "$sig" >/tmp/probe.out 2>/tmp/probe.err; rc=$?
        tb_value "probe${round}_ms" $(($(tb_now_ms) - t0))
        cat /tmp/probe.out /tmp/probe.err
        report "r${round}"
        grep -q '^@@ERROR' /tmp/probe.out && tb_check "r${round}-probe" fail "$(grep '^@@ERROR' /tmp/probe.out)"
        [ $rc = 0 ] && tb_check "r${round}-probe-rc" pass "rc 0" || tb_check "r${round}-probe-rc" fail "rc $rc: $(tail -n2 /tmp/probe.err)"
    done
    # The device is assignable again after a SIGKILLed user.
    "$probe" "$TB_NVME" "$sig" >/tmp/probe.out 2>&1 &
    p=$!; sleep 0.3; kill -KILL $p 2>/dev/null; wait $p 2>/dev/null
    "$probe" "$TB_NVME" "$sig" >/tmp/probe.out 2>&1; rc=$?
    [ $rc = 0 ] && tb_check after-sigkill pass "probe ran again after kill -9" || tb_check after-sigkill fail "rc $rc: $(grep '@@' /tmp/probe.out | tail -n3)"
    tb_bind nvme "$TB_NVME" >/dev/null 2>&1
    [ "$(tb_driver "$TB_NVME")" = nvme ] && tb_check nvme-back pass "nvme driver rebound" || tb_check nvme-back fail "driver $(tb_driver "$TB_NVME")"
fi
true

# The same probe on an SR-IOV VF with a data path (the NVMe VF), an igb VF, and a large
# 64-bit BAR (ivshmem, when this boot has it).
if [ -x "$probe" ]; then
    if nvf=$(tb_nvme_sriov_vf) && g=$(tb_bind_vfio "$nvf"); then
        sig=$(echo "$TB_SIG_SRIOV" | cut -c1-40)
        "$probe" "$nvf" "$sig" >/tmp/probe.out 2>&1; rc=$?
        report nvmevf
        [ $rc = 0 ] && tb_check nvmevf-probe-rc pass "$nvf group $g" || tb_check nvmevf-probe-rc fail "rc $rc: $(grep '@@' /tmp/probe.out | tail -n2)"
        tb_unbind "$nvf"
    else
        tb_check nvmevf-setup fail "NVMe SR-IOV VF recipe or vfio bind failed"
    fi
    echo 0 >/sys/bus/pci/devices/$TB_NVME_SRIOV_PF/sriov_numvfs
    vf=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
    if [ -n "$vf" ] && tb_bind_vfio "$vf" >/dev/null; then
        "$probe" --info "$vf" >/tmp/probe.out 2>&1; rc=$?
        report igbvf
        [ $rc = 0 ] && tb_check igbvf-probe-rc pass "$vf" || tb_check igbvf-probe-rc fail "rc $rc: $(grep '@@' /tmp/probe.out | tail -n2)"
        tb_unbind "$vf"
    else
        tb_check igbvf-setup fail "no igb VF bound to vfio-pci"
    fi
    tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
    if [ -e /sys/bus/pci/devices/$TB_IVSHMEM ] && tb_bind_vfio "$TB_IVSHMEM" >/dev/null; then
        size=$(( $(stat -c %s /sys/bus/pci/devices/$TB_IVSHMEM/resource2) ))
        "$probe" --bar "$TB_IVSHMEM" 2 0 $((size / 4)) $((size / 2)) $((size - 4096)) >/tmp/probe.out 2>&1; rc=$?
        report ivshmem
        [ $rc = 0 ] && tb_check ivshmem-probe-rc pass "BAR2 $size bytes" || tb_check ivshmem-probe-rc fail "rc $rc: $(grep '@@' /tmp/probe.out | tail -n2)"
        tb_unbind "$TB_IVSHMEM"
    fi
fi
true

# DMA-map cost of guest RAM, 4 KiB and 2 MiB pages (values: dma-map-SIZE-PAGES map_ms ...).
if [ -x "$probe" ] && tb_bind_vfio "$TB_NVME" >/dev/null; then
    echo 300 >/proc/sys/vm/nr_hugepages 2>/dev/null
    tb_value hugepages_reserved "$(cat /proc/sys/vm/nr_hugepages)"
    "$probe" --dma-bench "$TB_NVME" 256 512 >/tmp/probe.out 2>&1; rc=$?
    report bench
    [ $rc = 0 ] && tb_check bench-dma-rc pass "rc 0" || tb_check bench-dma-rc fail "rc $rc: $(grep '@@' /tmp/probe.out | tail -n2)"
    echo 0 >/proc/sys/vm/nr_hugepages 2>/dev/null
    tb_bind nvme "$TB_NVME" >/dev/null 2>&1
fi
true
