# tb-description: viaduct assigns an igb VF + the NVMe (MSI-X); the NVMe again with the guest on INTx (pci=nomsi); then across a guest reboot
# tb-timeout: 600
# The issue's "done when" for passthrough with viaduct as the L2 VMM:
# 1. viaduct-msix: the guest binds igbvf and nvme, reads disk.img's signature sector, writes
#    "VIADUCT-GUEST-WROTE <signature>" at LBA 2048 (tests/vfio_guest.rs finds it in the image
#    on L0), MSI-X interrupts count, no nvme command timed out (a lost interrupt shows as a
#    timeout that the driver then polls).
# 2. viaduct-intx: a second guest right after the first gets the same NVMe (it reads what the
#    first guest wrote), with pci=nomsi: interrupts on the IO-APIC line, no timeouts.
# 3. viaduct-reboot: `--on-reboot restart`; the guest writes a token and reboots, the next boot
#    finds the token and uses the device again (viaduct reset the device at each start).
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

igb_vf=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
tb_value igb_vf "$igb_vf"
devs=""
for b in $igb_vf $TB_NVME; do
    if g=$(tb_bind_vfio "$b"); then devs="$devs $b"; tb_check "vfio-bind-$b" pass "group $g"
    else tb_check "vfio-bind-$b" fail "driver=$(tb_driver $b)"; fi
done

# The guest side of runs 1 and 2. $1: WANT_VF (1: the igb VF is assigned too), $2: the
# interrupt kind the guest must use (msi|intx), $3: a token this guest writes at LBA $4,
# $5: the token the previous guest wrote at LBA $6 ("-": none). Other scenarios write the
# conventional line at LBA 2048 too, so the hand-over between two guests uses own tokens.
guest_script() {
    cat <<GUEST
SIG_NVME='$TB_SIG_NVME'
WANT_VF=$1
WANT_KIND=$2
MY_TOKEN='$3'
MY_LBA=$4
PREV_TOKEN='$5'
PREV_LBA=${6:-0}
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
sig=$(g_read_sector /dev/nvme0n1 0)
[ "$sig" = "$SIG_NVME" ] && g_check nvme-read-signature pass "$sig" || g_check nvme-read-signature fail "read '$sig'"
if [ "$PREV_TOKEN" != - ]; then
    before=$(g_read_sector /dev/nvme0n1 "$PREV_LBA")
    [ "$before" = "$PREV_TOKEN" ] && g_check nvme-reads-previous-guest-write pass "$before" ||
        g_check nvme-reads-previous-guest-write fail "LBA $PREV_LBA holds '$before'"
fi
printf '%s\n' "$MY_TOKEN" | dd of=/dev/nvme0n1 bs=512 seek=$MY_LBA conv=sync,fsync 2>/dev/null
g_write_check nvme-write /dev/nvme0n1 2048 "VIADUCT-GUEST-WROTE $sig"
sync
# MSI-X: the device's msi_irqs. INTx (pci=nomsi): the IO-APIC line the nvme queues share.
if [ "$WANT_KIND" = msi ]; then
    c=$(g_dev_irq_count $nv)
else
    c=$(g_irq_count 'IO-APIC.*nvme')
    g_value nvme_intx_line "$(grep 'IO-APIC.*nvme' /proc/interrupts | tr -s ' ')"
fi
g_value nvme_irqs "$c"
g_value nvme_irq_kind "$WANT_KIND"
g_value nvme_msi_vectors "$(g_msi_vectors $nv)"
if [ "$WANT_KIND" = intx ]; then
    [ "$(g_msi_vectors $nv)" = 0 ] && g_check nvme-no-msi pass "pci=nomsi: no MSI/MSI-X vectors" || g_check nvme-no-msi fail "$(g_msi_vectors $nv) MSI vectors"
fi
# A command whose interrupt was lost times out and is then completed by polling: the I/O
# still works, so only the kernel log tells.
timeouts=$(dmesg | grep -ci 'nvme.*timeout')
g_value nvme_timeouts "$timeouts"
[ "$timeouts" = 0 ] && g_check nvme-no-timeouts pass "no nvme command timed out" ||
    g_check nvme-no-timeouts fail "$(dmesg | grep -i 'nvme.*timeout' | head -n3 | tr '\n' '|')"
if [ "${c:-0}" -gt 0 ]; then
    g_check nvme-interrupts pass "$c $WANT_KIND interrupts, $(g_msi_vectors $nv) MSI vectors"
else
    g_check nvme-interrupts fail "no $WANT_KIND interrupts; nvme log: $(dmesg | grep -i nvme | tail -n5 | tr '\n' '|')"
    dmesg | grep -i -e nvme -e timeout
fi
grep -i nvme /proc/interrupts
GUEST
}

dev_args=""
for b in $devs; do dev_args="$dev_args --device path=/sys/bus/pci/devices/$b"; done
tok1="VIADUCT-VFIO-GUEST-1 $TB_RUN_ID-$$-$(tb_now_ms)"
tok2="VIADUCT-VFIO-GUEST-2 $TB_RUN_ID-$$-$(tb_now_ms)"
tb_value token_lba2056 "$tok1"
tb_value token_lba2064 "$tok2"
guest_script 1 msi "$tok1" 2056 - >/tmp/vfio-guest-msix.sh
tb_run_l2 viaduct-msix 180 /tmp/vfio-guest-msix.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --log-level info $dev_args

# Run 2: the same NVMe in the next guest at once; it must read what run 1 wrote.
guest_script 0 intx "$tok2" 2064 "$tok1" 2056 >/tmp/vfio-guest-intx.sh
tb_run_l2 viaduct-intx 180 /tmp/vfio-guest-intx.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@ pci=nomsi" --memory 256M --log-level info --device "$TB_NVME"
for r in viaduct-msix viaduct-intx; do
    n=$(grep -c "$TB_NVME: device reset" "/tmp/l2/$r/console.log")
    [ "$n" -ge 1 ] && tb_check "$r/nvme-reset-at-start" pass "$n reset(s) logged" || tb_check "$r/nvme-reset-at-start" fail "no 'device reset' in viaduct's log"
done

# Run 3: a guest reboot with --on-reboot restart. Boot 1 writes a token at LBA 4096 and
# reboots; boot 2 sees the token (so it is the same viaduct process after a restart), uses
# the NVMe again and powers off.
token="VIADUCT-REBOOT-TOKEN $TB_RUN_ID-$$"
cat >/tmp/vfio-guest-reboot.sh <<GUEST
SIG_NVME='$TB_SIG_NVME'
TOKEN='$token'
GUEST
cat >>/tmp/vfio-guest-reboot.sh <<'GUEST'
nv=$(g_find_devs 1b36 0010)
g_wait_for /dev/nvme0n1 30
have=$(dd if=/dev/nvme0n1 bs=512 skip=4096 count=1 iflag=direct 2>/dev/null | head -n1)
if [ "$have" != "$TOKEN" ]; then
    sig=$(g_read_sector /dev/nvme0n1 0)
    [ "$sig" = "$SIG_NVME" ] && g_check boot1-read-signature pass "$sig" || g_check boot1-read-signature fail "read '$sig'"
    printf '%s\n' "$TOKEN" | dd of=/dev/nvme0n1 bs=512 seek=4096 conv=sync,fsync 2>/dev/null
    g_value boot1_irqs "$(g_dev_irq_count $nv)"
    g_check boot1-rebooting pass "token written"
    sync
    reboot -f
    sleep 3600
fi
g_check boot2-found-token pass "$have"
[ "$(g_driver $nv)" = nvme ] && g_check boot2-nvme-bound pass "$nv" || g_check boot2-nvme-bound fail "driver=$(g_driver $nv)"
sig=$(g_read_sector /dev/nvme0n1 0)
[ "$sig" = "$SIG_NVME" ] && g_check boot2-read-signature pass "$sig" || g_check boot2-read-signature fail "read '$sig'"
# Clear the token so a later run of this scenario starts at boot 1 again.
dd if=/dev/zero of=/dev/nvme0n1 bs=512 seek=4096 count=1 conv=fsync 2>/dev/null
c=$(g_dev_irq_count $nv)
g_value boot2_irqs "$c"
[ "${c:-0}" -gt 0 ] && g_check boot2-interrupts pass "$c MSI-X interrupts" || g_check boot2-interrupts fail "no MSI-X interrupts after the reboot"
timeouts=$(dmesg | grep -ci 'nvme.*timeout')
[ "$timeouts" = 0 ] && g_check boot2-no-timeouts pass "no nvme command timed out" || g_check boot2-no-timeouts fail "$timeouts timeouts"
GUEST
tb_run_l2 viaduct-reboot 300 /tmp/vfio-guest-reboot.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --log-level info --on-reboot restart --device "$TB_NVME"
log=/tmp/l2/viaduct-reboot/console.log
inits=$(grep -c '@@G init' "$log")
resets=$(grep -c "$TB_NVME: device reset" "$log")
tb_value viaduct-reboot/guest_inits "$inits"
tb_value viaduct-reboot/nvme_resets "$resets"
[ "$inits" = 2 ] && tb_check viaduct-reboot/restarted pass "2 guest boots in one viaduct run" || tb_check viaduct-reboot/restarted fail "$inits guest boots"
[ "$resets" -ge 2 ] && tb_check viaduct-reboot/nvme-reset-each-boot pass "$resets resets logged" || tb_check viaduct-reboot/nvme-reset-each-boot fail "$resets resets logged for 2 boots"

# Level 1 as we found it; and the device is assignable again right away.
for b in $devs; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
[ "$(tb_driver "$TB_NVME")" = nvme ] && tb_check nvme-released pass "nvme driver rebound after viaduct" ||
    tb_check nvme-released fail "driver $(tb_driver "$TB_NVME")"
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
true
