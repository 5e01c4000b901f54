# tb-description: viaduct assigns an igb VF + the NVMe (MSI-X); the NVMe again with the guest on INTx (pci=nomsi); then across a guest reboot
# tb-timeout: 600
# tb-run: viaduct-msix viaduct-intx viaduct-reboot
# tb-check: vfio-bind-* nvme-released
# tb-check: viaduct-msix/nvme-reset-state viaduct-msix/nvme-bound viaduct-msix/igbvf-bound
# tb-check: viaduct-msix/nvme-read-signature viaduct-msix/nvme-write viaduct-msix/nvme-no-timeouts
# tb-check: viaduct-msix/nvme-interrupts
# tb-check: viaduct-intx/nvme-reset-state viaduct-intx/nvme-bound viaduct-intx/nvme-read-signature
# tb-check: viaduct-intx/nvme-reads-previous-guest-write viaduct-intx/nvme-write viaduct-intx/nvme-no-msi
# tb-check: viaduct-intx/nvme-no-timeouts viaduct-intx/nvme-interrupts
# tb-check: viaduct-reboot/boot1-nvme-reset-state viaduct-reboot/boot1-read-signature
# tb-check: viaduct-reboot/boot1-nvme-changed viaduct-reboot/boot1-rebooting
# tb-check: viaduct-reboot/boot2-found-token viaduct-reboot/boot2-nvme-reset-state
# tb-check: viaduct-reboot/boot2-nvme-bound viaduct-reboot/boot2-read-signature
# tb-check: viaduct-reboot/boot2-interrupts viaduct-reboot/boot2-no-timeouts viaduct-reboot/restarted
# tb-l1-kernels: debian iommufd
# The issue's "done when" for passthrough with viaduct as the L2 VMM:
# 1. viaduct-msix: the guest reads the NVMe's controller registers before its driver loads
#    (CC and CSTS at their reset values), binds igbvf and nvme, reads disk.img's signature
#    sector, writes "VIADUCT-GUEST-WROTE <signature>" at LBA 2048 (tests/vfio_guest.rs finds
#    it in the image on L0), its nvme interrupts count and are MSI-X by its own
#    /proc/interrupts, no nvme command timed out (a lost interrupt shows as a timeout that the
#    driver then polls).
# 2. viaduct-intx: a second guest right after the first gets the same NVMe, reset (it reads
#    what the first guest wrote), with pci=nomsi: interrupts on an IO-APIC line, no timeouts.
# 3. viaduct-reboot: `--on-reboot restart`; the guest writes a token, unbinds its nvme driver
#    (which leaves the controller enabled and shut down: CC.EN=1, CC.SHN=01) and reboots; the
#    next boot reads CC and CSTS back at their reset values before its driver loads (the
#    device was reset across the guest's reboot: viaduct opens it anew for the new boot, and
#    vfio-pci resets it as it is opened), finds the token and uses the device again.
# The guests load nvme themselves (tb.skipmod=nvme) so that they see the registers first.
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
# interrupt kind the guest must use (msix|intx), $3: a token this guest writes at LBA $4,
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
# The controller as the guest got it, before any driver: its reset values.
regs=$(g_nvme_regs "$nv")
g_value nvme_regs_at_start "$regs"
set -- $regs
g_nvme_is_reset "$1" "$2" && g_check nvme-reset-state pass "CC=$1 CSTS=$2" ||
    g_check nvme-reset-state fail "CC=$1 CSTS=$2: not at their reset values (EN/SHN, RDY/SHST)"
modprobe nvme
g_wait_for /dev/nvme0n1 30
[ -n "$nv" ] && [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "nvme '$nv' driver=$(g_driver $nv)"
if [ "$WANT_VF" = 1 ]; then
    vf=$(g_find_devs 8086 10ca)
    [ -n "$vf" ] && [ "$(g_driver $vf)" = igbvf ] && g_check igbvf-bound pass "$vf" || g_check igbvf-bound fail "vf='$vf' driver=$(g_driver $vf)"
    g_value igbvf_msi_vectors "$(g_msi_vectors $vf)"
fi
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
# How the nvme queues' interrupts came, by the guest's /proc/interrupts (and msi_irqs): the
# kind of every line of an nvme queue that counted, and the sum of their counts.
kind=$(g_irq_kind 'nvme[0-9]+q[0-9]' "$nv")
c=$(g_irq_count 'nvme[0-9]+q[0-9]')
g_value nvme_irqs "$c"
g_value nvme_irq_kind "$kind"
g_value nvme_irq_lines "$(grep -E 'nvme[0-9]+q[0-9]' /proc/interrupts | tr -s ' ' | tr '\n' ';')"
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
if [ "${c:-0}" -gt 0 ] && [ "$kind" = "$WANT_KIND" ]; then
    g_check nvme-interrupts pass "$c interrupts, all $kind, $(g_msi_vectors $nv) MSI vectors"
else
    g_check nvme-interrupts fail "$c interrupts of kind '$kind', want $WANT_KIND; nvme log: $(dmesg | grep -i nvme | tail -n5 | tr '\n' '|')"
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
guest_script 1 msix "$tok1" 2056 - >/tmp/vfio-guest-msix.sh
tb_run_l2 viaduct-msix 180 /tmp/vfio-guest-msix.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@ tb.skipmod=nvme" --memory 256M --log-level info $dev_args

# Run 2: the same NVMe in the next guest at once; it must read what run 1 wrote.
guest_script 0 intx "$tok2" 2064 "$tok1" 2056 >/tmp/vfio-guest-intx.sh
tb_run_l2 viaduct-intx 180 /tmp/vfio-guest-intx.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@ pci=nomsi tb.skipmod=nvme" --memory 256M --log-level info --device "$TB_NVME"

# Run 3: a guest reboot with --on-reboot restart. Boot 1 writes a token at LBA 4096, unbinds
# nvme (the controller is left enabled and shut down) and reboots; boot 2 finds CC and CSTS
# at their reset values before its driver loads, sees the token (so it is the same viaduct
# process after a restart), uses the NVMe again and powers off.
token="VIADUCT-REBOOT-TOKEN $TB_RUN_ID-$$"
cat >/tmp/vfio-guest-reboot.sh <<GUEST
SIG_NVME='$TB_SIG_NVME'
TOKEN='$token'
GUEST
cat >>/tmp/vfio-guest-reboot.sh <<'GUEST'
nv=$(g_find_devs 1b36 0010)
# Before the driver: the registers as this boot got them (which boot it is, the token says).
set -- $(g_nvme_regs "$nv")
cc=$1 csts=$2
modprobe nvme
g_wait_for /dev/nvme0n1 30
have=$(dd if=/dev/nvme0n1 bs=512 skip=4096 count=1 iflag=direct 2>/dev/null | head -n1)
if [ "$have" != "$TOKEN" ]; then
    g_value boot1_regs_at_start "CC=$cc CSTS=$csts"
    g_nvme_is_reset "$cc" "$csts" && g_check boot1-nvme-reset-state pass "CC=$cc CSTS=$csts" ||
        g_check boot1-nvme-reset-state fail "CC=$cc CSTS=$csts"
    sig=$(g_read_sector /dev/nvme0n1 0)
    [ "$sig" = "$SIG_NVME" ] && g_check boot1-read-signature pass "$sig" || g_check boot1-read-signature fail "read '$sig'"
    printf '%s\n' "$TOKEN" | dd of=/dev/nvme0n1 bs=512 seek=4096 conv=sync,fsync 2>/dev/null
    g_value boot1_irqs "$(g_dev_irq_count $nv)"
    # The driver lets go: it shuts the controller down (CC.SHN) and leaves it enabled, which
    # is what a reset must undo before the next boot.
    echo "$nv" >/sys/bus/pci/drivers/nvme/unbind
    set -- $(g_nvme_regs "$nv")
    g_value boot1_regs_before_reboot "CC=$1 CSTS=$2"
    g_nvme_is_reset "$1" "$2" && g_check boot1-nvme-changed fail "CC=$1 CSTS=$2: the driver left nothing to reset" ||
        g_check boot1-nvme-changed pass "CC=$1 CSTS=$2"
    g_check boot1-rebooting pass "token written"
    sync
    reboot -f
    sleep 3600
fi
g_check boot2-found-token pass "$have"
g_value boot2_regs_at_start "CC=$cc CSTS=$csts"
g_nvme_is_reset "$cc" "$csts" && g_check boot2-nvme-reset-state pass "CC=$cc CSTS=$csts" ||
    g_check boot2-nvme-reset-state fail "CC=$cc CSTS=$csts: the device was not reset at the guest's reboot"
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
    --cmdline "@CMDLINE@ tb.skipmod=nvme" --memory 256M --log-level info --on-reboot restart --device "$TB_NVME"
log=/tmp/l2/viaduct-reboot/console.log
inits=$(grep -c '@@G init' "$log")
tb_value viaduct-reboot/guest_inits "$inits"
[ "$inits" = 2 ] && tb_check viaduct-reboot/restarted pass "2 guest boots in one viaduct run" || tb_check viaduct-reboot/restarted fail "$inits guest boots"

# Level 1 as we found it; and the device is assignable again right away.
for b in $devs; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
[ "$(tb_driver "$TB_NVME")" = nvme ] && tb_check nvme-released pass "nvme driver rebound after viaduct" ||
    tb_check nvme-released fail "driver $(tb_driver "$TB_NVME")"
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
true
