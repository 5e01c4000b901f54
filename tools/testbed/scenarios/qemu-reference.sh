# tb-description: QEMU 10 as the L2 VMM (the reference): igb VF + NVMe + NVMe SR-IOV VF passed through
# tb-timeout: 240
# tb-needs: qemu
# tb-run: qemu
# tb-check: nvme-sriov-vf-created vfio-bind-*
# tb-check: qemu/igbvf-bound qemu/nvme-bound qemu/nvme-read-signature qemu/nvme-vf-read-signature
# tb-check: qemu/read-* qemu/nvme-write qemu/nvme-vf-write qemu/nvme-msix-* qemu/igbvf-msix-vectors
# What a correct VMM achieves in L1, measured with QEMU: the guest binds igbvf and nvme, reads
# each disk's signature sector, writes "VIADUCT-GUEST-WROTE <signature>" at LBA 2048 (the
# Rust test finds it in the image files on L0), and the devices' MSI-X vectors count.
# Also the peer numbers for benchmarks: qemu/init_ms and qemu/peak_rss_kb.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

igb_vfs=$(tb_create_vfs "$TB_IGB_PF" 2 0)
igb_vf=$(echo $igb_vfs | cut -d' ' -f1)
tb_value igb_vf "$igb_vf"
nvme_vf=$(tb_nvme_sriov_vf) && tb_check nvme-sriov-vf-created pass "$nvme_vf" ||
    tb_check nvme-sriov-vf-created fail "the testbed.md recipe failed (see console)"
tb_value nvme_vf "$nvme_vf"
devs=""
for b in $igb_vf $TB_NVME $nvme_vf; do
    if g=$(tb_bind_vfio "$b"); then devs="$devs $b"; tb_check "vfio-bind-$b" pass "group $g"
    else tb_check "vfio-bind-$b" fail "driver=$(tb_driver $b)"; fi
done

cat >/tmp/qemu-ref-guest.sh <<GUEST
SIG_NVME='$TB_SIG_NVME'
SIG_SRIOV='$TB_SIG_SRIOV'
GUEST
cat >>/tmp/qemu-ref-guest.sh <<'GUEST'
g_lspci
vf=$(g_find_devs 8086 10ca)
g_value igbvf_bdf "$vf"
[ -n "$vf" ] && [ "$(g_driver $vf)" = igbvf ] && g_check igbvf-bound pass "$vf" || g_check igbvf-bound fail "vf='$vf' driver=$(g_driver $vf)"
nv=$(g_find_devs 1b36 0010)
g_value nvme_bdfs "$(echo $nv)"
n=0; for b in $nv; do [ "$(g_driver $b)" = nvme ] && n=$((n + 1)); done
[ "$n" = 2 ] && g_check nvme-bound pass "$(echo $nv)" || g_check nvme-bound fail "$n of '$(echo $nv)' on nvme"
g_wait_for /dev/nvme0n1 20; g_wait_for /dev/nvme1n1 20
for d in /dev/nvme0n1 /dev/nvme1n1; do
    [ -b "$d" ] || continue
    sig=$(dd if=$d bs=512 count=1 2>/dev/null | head -n1)
    case "$sig" in
    "$SIG_NVME") which=nvme ;;
    "$SIG_SRIOV") which=nvme-vf ;;
    *) g_check "read-$d" fail "unknown signature '$sig'"; continue ;;
    esac
    g_check "$which-read-signature" pass "$d: $sig"
    g_write_check "$which-write" "$d" 2048 "VIADUCT-GUEST-WROTE $sig"
done
sync
for b in $vf $nv; do
    g_value "msi_vectors_$b" "$(g_msi_vectors $b)"
    g_value "irqs_$b" "$(g_dev_irq_count $b)"
done
for b in $nv; do
    c=$(g_dev_irq_count $b)
    [ "$c" -gt 0 ] && g_check "nvme-msix-$b" pass "$c interrupts" || g_check "nvme-msix-$b" fail "no MSI-X interrupts"
done
v=$(g_msi_vectors $vf)
[ "$v" -gt 0 ] && g_check igbvf-msix-vectors pass "$v vectors" || g_check igbvf-msix-vectors fail "no MSI-X vectors allocated"
GUEST

tb_qemu_l2 qemu 180 /tmp/qemu-ref-guest.sh $devs

for b in $devs; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
echo 0 >/sys/bus/pci/devices/$TB_NVME_SRIOV_PF/sriov_numvfs
true
