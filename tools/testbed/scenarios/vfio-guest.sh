# tb-description: viaduct assigns an igb VF + the NVMe (MSI-X), then the NVMe again with the guest forced to INTx (pci=nomsi)
# tb-timeout: 420
# The issue's "done when" for passthrough with viaduct as the L2 VMM: the guest binds igbvf
# and nvme, reads disk.img's signature sector, writes "VIADUCT-GUEST-WROTE <signature>" at
# LBA 2048 (tests/vfio_guest.rs finds it in the image on L0), MSI-X counts are non-zero; a
# second guest with pci=nomsi does the same read on INTx. Also viaduct's startup numbers.

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

igb_vf=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
tb_value igb_vf "$igb_vf"
devs=""
for b in $igb_vf $TB_NVME; do
    if g=$(tb_bind_vfio "$b"); then devs="$devs $b"; tb_check "vfio-bind-$b" pass "group $g"
    else tb_check "vfio-bind-$b" fail "driver=$(tb_driver $b)"; fi
done

# The guest side, shared by both runs: WANT_VF=1 when the igb VF is assigned.
guest_script() {
    cat <<GUEST
SIG_NVME='$TB_SIG_NVME'
WANT_VF=$1
GUEST
    cat <<'GUEST'
g_lspci
nv=$(g_find_devs 1b36 0010)
[ -n "$nv" ] && [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "nvme '$nv' driver=$(g_driver $nv)"
if [ "$WANT_VF" = 1 ]; then
    vf=$(g_find_devs 8086 10ca)
    [ -n "$vf" ] && [ "$(g_driver $vf)" = igbvf ] && g_check igbvf-bound pass "$vf" || g_check igbvf-bound fail "vf='$vf' driver=$(g_driver $vf)"
    g_value igbvf_msi_vectors "$(g_msi_vectors $vf)"
fi
g_wait_for /dev/nvme0n1 30
sig=$(dd if=/dev/nvme0n1 bs=512 count=1 2>/dev/null | head -n1)
[ "$sig" = "$SIG_NVME" ] && g_check nvme-read-signature pass "$sig" || g_check nvme-read-signature fail "read '$sig'"
printf 'VIADUCT-GUEST-WROTE %s\n' "$sig" | dd of=/dev/nvme0n1 bs=512 seek=2048 conv=sync,fsync 2>/dev/null
back=$(dd if=/dev/nvme0n1 bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -n1)
[ "$back" = "VIADUCT-GUEST-WROTE $sig" ] && g_check nvme-write pass "LBA 2048" || g_check nvme-write fail "read back '$back'"
sync
# MSI-X: the device's msi_irqs; INTx (pci=nomsi): the IO-APIC line the nvme queues share.
c=$(g_dev_irq_count $nv)
kind=msi
[ "${c:-0}" -gt 0 ] || { c=$(g_irq_count 'IO-APIC.*nvme'); kind=intx; }
g_value nvme_irqs "$c"
g_value nvme_irq_kind "$kind"
g_value nvme_msi_vectors "$(g_msi_vectors $nv)"
[ "${c:-0}" -gt 0 ] && g_check nvme-interrupts pass "$c $kind interrupts, $(g_msi_vectors $nv) MSI vectors" || g_check nvme-interrupts fail "no interrupts"
grep -i nvme /proc/interrupts
GUEST
}

dev_args=""
for b in $devs; do dev_args="$dev_args --device path=/sys/bus/pci/devices/$b"; done
guest_script 1 >/tmp/vfio-guest-msix.sh
tb_run_l2 viaduct-msix 180 /tmp/vfio-guest-msix.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M $dev_args

guest_script 0 >/tmp/vfio-guest-intx.sh
tb_run_l2 viaduct-intx 180 /tmp/vfio-guest-intx.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@ pci=nomsi" --memory 256M --device "$TB_NVME"

# Level 1 as we found it; and the device is assignable again right away.
for b in $devs; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
[ "$(tb_driver "$TB_NVME")" = nvme ] && tb_check nvme-released pass "nvme driver rebound after viaduct" ||
    tb_check nvme-released fail "driver $(tb_driver "$TB_NVME")"
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
true
