# tb-description: viaduct gives one guest an igb VF, the whole NVMe and the NVMe SR-IOV VF: every driver binds, both NVMes read their level-0 signature and write, each device counts MSI-X interrupts, no admin command times out
# tb-timeout: 300
# tb-run: trio
# tb-check: setup vfio-bind trio/igbvf-bound trio/nvme-both-bound trio/nvme-read-signature trio/nvme-write
# tb-check: trio/nvmevf-read-signature trio/nvmevf-write trio/read-* trio/msix-* trio/no-timeouts
# Three assigned functions from three IOMMU groups in one guest, two of them SR-IOV VFs.
# Why it is a test of its own: the NVMe VF's admin completions were lost whenever MSI-X was
# enabled on the host only at the guest's first vector unmask (QEMU's NVMe marks a completion
# queue's vector as used only if MSI-X is on when the queue is created, and Linux's nvme
# driver enables the controller before it requests its interrupt). viaduct now enables host
# MSI-X at the guest's MSI-X Enable (vfio/src/interrupts.rs); the nvme driver's
# "QID 0 timeout, completion polled" must not appear. tests/vfio_guest_trio.rs asserts the
# checks and finds both writes in the level-0 images.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

run=trio
igb_vf=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
nvme_vf=$(tb_nvme_sriov_vf 2>/dev/null)
[ -n "$igb_vf" ] && [ -n "$nvme_vf" ] && tb_check setup pass "igb VF $igb_vf, NVMe VF $nvme_vf" ||
    { tb_check setup fail "igb VF '$igb_vf', NVMe VF '$nvme_vf'"; exit 0; }
for b in $igb_vf $TB_NVME $nvme_vf; do
    tb_bind_vfio "$b" >/dev/null || { tb_check vfio-bind fail "$b: driver $(tb_driver "$b")"; exit 0; }
done
tb_check vfio-bind pass "$igb_vf $TB_NVME $nvme_vf"
token="$TB_RUN_ID-trio-$(date +%s)-$$"
tb_value $run/token "$token"

cat >/tmp/trio-guest.sh <<GUEST
SIG_NVME='$TB_SIG_NVME'
SIG_SRIOV='$TB_SIG_SRIOV'
TOKEN='$token'
GUEST
cat >>/tmp/trio-guest.sh <<'GUEST'
vf=$(g_find_devs 8086 10ca)
[ -n "$vf" ] && [ "$(g_driver $vf)" = igbvf ] && g_check igbvf-bound pass "$vf" || g_check igbvf-bound fail "'$vf' driver=$(g_driver $vf)"
nv=$(g_find_devs 1b36 0010 | tr '\n' ' ')
n=0; for b in $nv; do [ "$(g_driver $b)" = nvme ] && n=$((n + 1)); done
[ "$n" = 2 ] && g_check nvme-both-bound pass "$nv" || g_check nvme-both-bound fail "$n of '$nv' on nvme"
g_wait_for /dev/nvme0n1 30; g_wait_for /dev/nvme1n1 30
for d in /dev/nvme0n1 /dev/nvme1n1; do
    sig=$(g_read_sector "$d" 0)
    case "$sig" in
    "$SIG_NVME") name=nvme ;;
    "$SIG_SRIOV") name=nvmevf ;;
    *) g_check "read-$(basename $d)" fail "read '$sig'"; continue ;;
    esac
    g_check "$name-read-signature" pass "$d: $sig"
    g_write_check "$name-write" "$d" 6200 "VIADUCT-TRIO-WROTE $TOKEN"
done
sync
for b in $vf $nv; do
    c=$(g_dev_irq_count $b); g_value "irqs_$b" "${c:-0}"
done
for b in $nv; do
    c=$(g_dev_irq_count $b)
    [ "${c:-0}" -gt 0 ] && g_check "msix-$b" pass "$c interrupts on $(g_msi_vectors $b) vectors" || g_check "msix-$b" fail "no interrupts"
done
t=$(dmesg | grep -ci 'nvme.*timeout')
[ "$t" = 0 ] && g_check no-timeouts pass "no nvme command timed out" || g_check no-timeouts fail "$t timeouts: $(dmesg | grep -i 'nvme.*timeout' | head -n2 | tr '\n' '|')"
GUEST
tb_run_l2 $run 200 /tmp/trio-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M \
    --device "path=/sys/bus/pci/devices/$igb_vf" --device "path=/sys/bus/pci/devices/$TB_NVME" \
    --device "path=/sys/bus/pci/devices/$nvme_vf"
for b in $igb_vf $TB_NVME $nvme_vf; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
echo 0 >/sys/bus/pci/devices/$TB_NVME_SRIOV_PF/sriov_numvfs
true
