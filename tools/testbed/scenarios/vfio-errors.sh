# tb-description: viaduct's --device errors on a real host: missing device, not on vfio-pci, the same device twice, IOMMU group not viable, memlock too low (non-root); one line, exit 1, devices untouched; then good runs (root, and non-root with the ulimit the error asked for)
# tb-timeout: 600
# tb-devices: pci-bridge
# tb-run: good good-user
# tb-check: setup-vf0-vfio
# tb-check: missing/one-line-exit-1 missing/message missing/devices-unchanged
# tb-check: not-bound/one-line-exit-1 not-bound/message not-bound/devices-unchanged
# tb-check: not-bound/says-how-to-bind not-bound/nvme-still-in-l1
# tb-check: twice/one-line-exit-1 twice/message twice/devices-unchanged
# tb-check: mixed-backends/one-line-exit-1 mixed-backends/message mixed-backends/devices-unchanged
# tb-check: no-iommufd/one-line-exit-1 no-iommufd/message no-iommufd/devices-unchanged
# tb-check: group/one-line-exit-1 group/message group/devices-unchanged group/says-not-viable
# tb-check: memlock/one-line-exit-1 memlock/message memlock/devices-unchanged
# tb-check: good/bind-nvme good/vf-on-igbvf good/nvme-bound good/nvme-read-signature good/nvme-back-on-nvme
# tb-check: good-user/vf-on-igbvf good-user/nvme-bound good-user/nvme-read-signature
#
# Each error run: viaduct must exit 1 with exactly one line on stderr that names the problem
# and the fix, and every device involved must have the driver and override it had before.
# Then a guest gets the same devices (the error left nothing half set up), and a non-root
# viaduct with `ulimit -l` raised to what the memlock error said gets its device too.
# Values ERR_rc, ERR_lines, ERR_msg, ERR_state_before/_after are what tests/vfio_errors.rs
# asserts.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
command -v viaductctl >/dev/null || { tb_skip "viaductctl is not in level 1 (build failed?)"; exit 0; }
viaductctl restore >/dev/null 2>&1

NVME=$TB_NVME
EDU1=0000:08:01.0
EDU2=0000:08:02.0
VF0=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
tb_value vf0 "$VF0"
G_VF0=$(tb_bind_vfio "$VF0") && tb_check setup-vf0-vfio pass "group $G_VF0" || tb_check setup-vf0-vfio fail "driver $(tb_driver "$VF0")"
echo >"/sys/bus/pci/devices/$VF0/driver_override"

state_of() { echo "$(tb_driver "$1") override=$(cat "/sys/bus/pci/devices/$1/driver_override" 2>/dev/null)"; }
# A kernel is needed on the command line; the device errors come before it is loaded.
VIADUCT="viaduct --kernel $TB_L2_KERNEL --memory 256M"

# run_err NAME EXPECT BDFS -- VIADUCT-ARGS...: one failing run. EXPECT: text the message must
# hold. BDFS (space separated, may be empty): devices whose state must not change.
run_err() {
    local name=$1 expect=$2 bdfs=$3 b before="" after="" rc lines msg; shift 3; [ "$1" = -- ] && shift
    for b in $bdfs; do before="$before $b=$(state_of "$b")"; done
    "$@" </dev/null >"/tmp/$name.out" 2>"/tmp/$name.err"
    rc=$?
    for b in $bdfs; do after="$after $b=$(state_of "$b")"; done
    lines=$(grep -c . "/tmp/$name.err")
    msg=$(cat "/tmp/$name.err")
    tb_value "${name}_rc" "$rc"
    tb_value "${name}_lines" "$lines"
    tb_value "${name}_msg" "$msg"
    tb_value "${name}_state_before" "${before# }"
    tb_value "${name}_state_after" "${after# }"
    [ "$rc" = 1 ] && [ "$lines" = 1 ] && [ -z "$(cat "/tmp/$name.out")" ] &&
        tb_check "$name/one-line-exit-1" pass "$msg" ||
        tb_check "$name/one-line-exit-1" fail "rc=$rc, $lines stderr lines: $(head -c 600 "/tmp/$name.err")"
    case "$msg" in
    *"$expect"*) tb_check "$name/message" pass "has '$expect'" ;;
    *) tb_check "$name/message" fail "no '$expect' in: $msg" ;;
    esac
    [ "$before" = "$after" ] && tb_check "$name/devices-unchanged" pass "${after# }" ||
        tb_check "$name/devices-unchanged" fail "before:$before after:$after"
}

# 1. A device that does not exist.
run_err missing "no such PCI device" "" -- $VIADUCT --device path=/sys/bus/pci/devices/0000:0f:00.0
# 2. The NVMe still on nvme: the message says how to bind it.
run_err not-bound "bound to nvme, not vfio-pci" "$NVME" -- $VIADUCT --device "$NVME"
grep -q "drivers_probe\|viaductctl bind" /tmp/not-bound.err && tb_check not-bound/says-how-to-bind pass ||
    tb_check not-bound/says-how-to-bind fail "$(cat /tmp/not-bound.err)"
ctrl=$(tb_nvme_ctrl "$NVME") && [ -e "/dev/${ctrl}n1" ] && tb_check not-bound/nvme-still-in-l1 pass "/dev/${ctrl}n1" ||
    tb_check not-bound/nvme-still-in-l1 fail "no nvme block device in level 1"
# 3. The same device twice (by BDF and by path).
run_err twice "already assigned" "$VF0" -- $VIADUCT --device "$VF0" --device "path=/sys/bus/pci/devices/$VF0"
# 3b. IOMMU backends: two devices asking for different ones; iommufd asked for on a kernel
#     without it (Debian's).
run_err mixed-backends "one VM uses one IOMMU backend" "$VF0" -- $VIADUCT --device "$VF0,iommu=legacy" \
    --device "$NVME,iommu=iommufd"
if [ ! -e /dev/iommu ]; then
    run_err no-iommufd "CONFIG_IOMMUFD" "$VF0" -- $VIADUCT --device "$VF0,iommu=iommufd"
fi
# 4. A group with one member on vfio-pci and another on a host driver that does DMA. The
#    bridge group holds two edu devices; pci-pf-stub binds anything given by
#    driver_override and, unlike pci-stub, claims the group's DMA (the kernel then refuses
#    the group to VFIO too).
# (Built into level 1's iommufd kernel: then there is no module to load.)
if modprobe pci-pf-stub 2>/tmp/modprobe.err || [ -d /sys/bus/pci/drivers/pci-pf-stub ]; then
    tb_bind_vfio "$EDU1" >/dev/null
    tb_bind pci-pf-stub "$EDU2"
    tb_value bridge_driver "$(tb_driver "$TB_BRIDGE")"
    tb_value group_members "$(ls "/sys/kernel/iommu_groups/$(tb_iommu_group $EDU1)/devices" | tr '\n' ' ')"
    run_err group "$EDU2 (pci-pf-stub)" "$EDU1 $EDU2" -- $VIADUCT --device "$EDU1"
    grep -q "not viable" /tmp/group.err && tb_check group/says-not-viable pass || tb_check group/says-not-viable fail "$(cat /tmp/group.err)"
    tb_unbind "$EDU1"; tb_unbind "$EDU2"
else
    tb_check group/one-line-exit-1 skip "level 1 has no pci-pf-stub module: $(cat /tmp/modprobe.err)"
fi
# 5. Memlock: a non-root process (no CAP_IPC_LOCK) with a 1 MiB RLIMIT_MEMLOCK. As libvirt
#    does for QEMU, the VFIO group and /dev/kvm are given to that user.
grep -q '^tbuser:' /etc/passwd 2>/dev/null || echo 'tbuser:x:4242:4242:tb:/tmp:/bin/sh' >>/etc/passwd
kvm_mode=$(stat -c %a /dev/kvm)
chmod 666 /dev/kvm
chown 4242 "/dev/vfio/$G_VF0"
# With iommufd (level 1's iommufd kernel) the user gets the device's cdev and /dev/iommu, the
# nodes viaduct then opens instead of the group.
CDEV_VF0=$(ls "/sys/bus/pci/devices/$VF0/vfio-dev" 2>/dev/null)
[ -n "$CDEV_VF0" ] && chown 4242 "/dev/vfio/devices/$CDEV_VF0" /dev/iommu
cat >/tmp/as-user.sh <<EOF
#!/bin/sh
# as-user.sh KIB ARGS...: ARGS as tbuser with RLIMIT_MEMLOCK = KIB KiB.
kib=\$1; shift
ulimit -l "\$kib" || exit 99
exec su -s /bin/sh tbuser -c "\$*"
EOF
chmod 755 /tmp/as-user.sh
tb_value memlock_caps "$(/tmp/as-user.sh 1024 'grep -e CapEff -e Uid /proc/self/status; ulimit -l' | tr '\n' ' ')"
run_err memlock "ulimit -l 262144" "$VF0" -- /tmp/as-user.sh 1024 "$VIADUCT --device $VF0"

# 6. Good runs after the errors: the same devices work.
viaductctl bind "$NVME" >/dev/null 2>/tmp/bind.err || tb_check good/bind-nvme fail "$(cat /tmp/bind.err)"
cat >/tmp/vfio-errors-guest.sh <<GUEST
SIG_NVME='$TB_SIG_NVME'
GUEST
cat >>/tmp/vfio-errors-guest.sh <<'GUEST'
n=0
for v in $(g_find_devs 8086 10ca); do [ "$(g_driver $v)" = igbvf ] && n=$((n + 1)); done
[ "$n" = 1 ] && g_check vf-on-igbvf pass || g_check vf-on-igbvf fail "$n igb VFs on igbvf"
nv=$(g_find_devs 1b36 0010)
if [ -n "$nv" ]; then
    [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "driver=$(g_driver $nv)"
    g_wait_for /dev/nvme0n1 30
    sig=$(dd if=/dev/nvme0n1 bs=512 count=1 iflag=direct 2>/dev/null | head -n1)
    [ "$sig" = "$SIG_NVME" ] && g_check nvme-read-signature pass "$sig" || g_check nvme-read-signature fail "read '$sig'"
fi
GUEST
tb_run_l2 good 240 /tmp/vfio-errors-guest.sh -- $VIADUCT --initramfs @INITRD@ --cmdline "@CMDLINE@" \
    --device "$VF0" --device "$NVME"
viaductctl restore "$NVME" >/dev/null 2>&1
[ "$(tb_driver "$NVME")" = nvme ] && tb_check good/nvme-back-on-nvme pass || tb_check good/nvme-back-on-nvme fail "$(tb_driver "$NVME")"
# Non-root, with the limit the memlock error asked for: 256 MiB of guest RAM = 262144 KiB.
tb_run_l2 good-user 240 /tmp/vfio-errors-guest.sh -- /tmp/as-user.sh 262144 \
    "$VIADUCT --initramfs @INITRD@ --cmdline '@CMDLINE@' --device $VF0"

chmod "$kvm_mode" /dev/kvm
chown 0 "/dev/vfio/$G_VF0"
[ -n "$CDEV_VF0" ] && chown 0 "/dev/vfio/devices/$CDEV_VF0" /dev/iommu
tb_unbind "$VF0"
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
true
