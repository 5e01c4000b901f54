# tb-description: iommufd: a root parent opens the NVMe's VFIO cdev and /dev/iommu and passes them to viaduct running as a user without capabilities (--device fd=5 --iommufd fd=6): the guest reads and writes the NVMe; iommu=legacy on the same kernel; bad passed fds get one-line errors
# tb-timeout: 480
# tb-l1-kernels: iommufd
# tb-run: passed legacy
# tb-check: iommufd-kernel bind cdev
# tb-check: passed/nvme-bound passed/nvme-read-signature passed/nvme-write passed/boot2-found-token
# tb-check: passed/boot2-nvme-bound passed/boot2-read-signature passed/boot2-interrupts
# tb-check: passed/restarted passed/unprivileged passed/holds-passed-fds
# tb-check: legacy/nvme-bound legacy/nvme-read-signature legacy/nvme-write
# tb-check: errors/closed errors/not-a-cdev errors/read-only errors/cdev-as-iommufd errors/other-path
# tb-check: errors/legacy-with-fd errors/nvme-still-on-vfio-pci
#
# Runs on level 1's iommufd kernel only (tools/testbed/run builds it). tests/vfio_iommufd.rs
# asserts on the checks and on the bytes the guests wrote into the NVMe's image:
# 1. passed: the level-1 shell (root) opens /dev/vfio/devices/vfioN and /dev/iommu as fds 5
#    and 6, then starts viaduct as tbuser (no capabilities; the device nodes stay root's
#    0600, so the fds are its only way in) with --device fd=5 --iommufd fd=6 and
#    --on-reboot restart. The guest reads the signature sector, writes a token and reboots;
#    the next guest of the same viaduct (the passed cdev attached to a new VM) finds the
#    token and uses the NVMe again. viaduct held the passed cdev and /dev/iommu and nothing
#    of the legacy container.
# 2. legacy: the same NVMe with iommu=legacy: the group and /dev/vfio/vfio, no iommufd.
# 3. errors: fds that are closed, read-only, not a VFIO cdev, the cdev given as --iommufd, a
#    path= naming another device, iommu=legacy with a passed cdev.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
if [ ! -c /dev/iommu ]; then
    tb_check iommufd-kernel fail "no /dev/iommu: level 1 runs $(uname -r), not the iommufd kernel"
    exit 1
fi
NVME=$TB_NVME
g=$(tb_bind_vfio "$NVME") && tb_check bind pass "group $g" || tb_check bind fail "driver $(tb_driver "$NVME")"
cdev=$(ls "/sys/bus/pci/devices/$NVME/vfio-dev" 2>/dev/null)
node=/dev/vfio/devices/$cdev
[ -n "$cdev" ] && [ -c "$node" ] && tb_check cdev pass "$node" || tb_check cdev fail "no vfio-dev/ for $NVME"
tb_value cdev_mode "$(stat -c '%a %U' "$node" /dev/iommu | tr '\n' ' ')"
VIADUCT="viaduct --kernel $TB_L2_KERNEL --memory 256M"

# guest_script TOKEN LBA REBOOT: read the signature, write TOKEN at LBA. With REBOOT=1 the
# guest then reboots (viaduct runs with --on-reboot restart) and its second boot, finding
# TOKEN, uses the NVMe again: checks boot2-*.
guest_script() {
    cat <<GUEST
SIG_NVME='$TB_SIG_NVME'
TOKEN='$1'
LBA=$2
REBOOT=$3
GUEST
    cat <<'GUEST'
nv=$(g_find_devs 1b36 0010)
g_wait_for /dev/nvme0n1 30
if [ "$REBOOT" = 1 ] && [ "$(g_read_sector /dev/nvme0n1 "$LBA")" = "$TOKEN" ]; then
    g_check boot2-found-token pass "$TOKEN"
    [ "$(g_driver $nv)" = nvme ] && g_check boot2-nvme-bound pass "$nv" || g_check boot2-nvme-bound fail "driver=$(g_driver $nv)"
    sig=$(g_read_sector /dev/nvme0n1 0)
    [ "$sig" = "$SIG_NVME" ] && g_check boot2-read-signature pass "$sig" || g_check boot2-read-signature fail "read '$sig'"
    c=$(g_dev_irq_count $nv)
    [ "${c:-0}" -gt 0 ] && g_check boot2-interrupts pass "$c MSI-X interrupts" || g_check boot2-interrupts fail "none"
    exit 0
fi
[ -n "$nv" ] && [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "nvme '$nv' driver=$(g_driver $nv)"
sig=$(g_read_sector /dev/nvme0n1 0)
[ "$sig" = "$SIG_NVME" ] && g_check nvme-read-signature pass "$sig" || g_check nvme-read-signature fail "read '$sig'"
g_write_check nvme-write /dev/nvme0n1 "$LBA" "$TOKEN"
g_value nvme_irqs "$(g_dev_irq_count $nv)"
if [ "$REBOOT" = 1 ]; then
    sync
    reboot -f
    sleep 3600
fi
GUEST
}

# 1. Passed fds, viaduct as tbuser. Level 1 gives the user /dev/kvm (as a distribution's kvm
#    group would) and a memlock limit for the guest RAM, nothing of VFIO.
grep -q '^tbuser:' /etc/passwd 2>/dev/null || echo 'tbuser:x:4242:4242:tb:/tmp:/bin/sh' >>/etc/passwd
kvm_mode=$(stat -c %a /dev/kvm)
chmod 666 /dev/kvm
token="VIADUCT-IOMMUFD-PASSED run=$TB_RUN_ID"
tb_value passed/token "$token"
guest_script "$token" 3072 1 >/tmp/vfio-iommufd-passed.sh
cat >/tmp/passed-parent.sh <<EOF
#!/bin/sh
# The privileged parent: opens the device cdev and the iommufd, then runs viaduct as tbuser
# (busybox su execs the shell, which execs viaduct: fds 5 and 6 are inherited).
exec 5<>$node 6<>/dev/iommu
ulimit -l 262144
exec su -s /bin/sh tbuser -c "exec \$*"
EOF
chmod 755 /tmp/passed-parent.sh
tb_run_l2 passed 240 /tmp/vfio-iommufd-passed.sh -- /tmp/passed-parent.sh \
    "$VIADUCT --initramfs @INITRD@ --cmdline '@CMDLINE@' --on-reboot restart --device fd=5 --iommufd fd=6"
inits=$(grep -c '@@G init' /tmp/l2/passed/console.log)
[ "$inits" = 2 ] && tb_check passed/restarted pass "2 guest boots in one viaduct run, the passed cdev reused" ||
    tb_check passed/restarted fail "$inits guest boots"
# What the running viaduct was (tb_run_l2 saved its /proc status and fds at the guest's init).
st=/tmp/l2/passed/vmm-status
uid=$(awk '/^Uid:/ {print $2}' "$st" 2>/dev/null) cap=$(awk '/^CapEff:/ {print $2}' "$st" 2>/dev/null)
[ "$uid" = 4242 ] && [ "$cap" = 0000000000000000 ] && tb_check passed/unprivileged pass "uid $uid, CapEff $cap" ||
    tb_check passed/unprivileged fail "uid '$uid', CapEff '$cap'"
fds=$(sed -n -E 's@.* ([0-9]+) -> (/dev/vfio/.*|/dev/iommu)$@\1:\2@p' /tmp/l2/passed/vmm-fds | tr '\n' ' ')
tb_value passed/fd_table "$fds"
case " $fds " in *" 5:$node "*) five=yes ;; *) five=no ;; esac
case " $fds " in *" 6:/dev/iommu "*) six=yes ;; *) six=no ;; esac
[ "$five:$six" = yes:yes ] && tb_check passed/holds-passed-fds pass "$fds" ||
    tb_check passed/holds-passed-fds fail "fd 5 is not $node or fd 6 not /dev/iommu: $fds"
chmod "$kvm_mode" /dev/kvm

# 2. iommu=legacy on the iommufd kernel: the group and the container, no iommufd.
token="VIADUCT-IOMMUFD-LEGACY run=$TB_RUN_ID"
tb_value legacy/token "$token"
guest_script "$token" 3080 0 >/tmp/vfio-iommufd-legacy.sh
TB_L2_IOMMU=legacy tb_run_l2 legacy 240 /tmp/vfio-iommufd-legacy.sh -- $VIADUCT --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --device "$NVME,iommu=legacy"

# 3. Bad passed fds: one line on stderr, exit 1.
# run_err NAME EXPECT SHELL-COMMAND: the command (with its redirections) must fail that way.
run_err() {
    local name=$1 expect=$2 rc lines msg
    sh -c "$3" </dev/null >"/tmp/$name.out" 2>"/tmp/$name.err"
    rc=$?
    lines=$(grep -c . "/tmp/$name.err")
    msg=$(cat "/tmp/$name.err")
    tb_value "errors/${name}_msg" "$msg"
    if [ "$rc" = 1 ] && [ "$lines" = 1 ] && [ ! -s "/tmp/$name.out" ]; then
        case "$msg" in
        *"$expect"*) tb_check "errors/$name" pass "$msg" ;;
        *) tb_check "errors/$name" fail "no '$expect' in: $msg" ;;
        esac
    else
        tb_check "errors/$name" fail "rc=$rc, $lines stderr lines: $(head -c 600 "/tmp/$name.err")"
    fi
}
run_err closed "fd 9 is not open" "$VIADUCT --device fd=9"
run_err not-a-cdev "is not a VFIO device cdev" "exec 5<>/dev/null; $VIADUCT --device fd=5"
run_err read-only "not open for reading and writing" "exec 5<$node; $VIADUCT --device fd=5"
run_err cdev-as-iommufd "is not a /dev/iommu" "exec 5<>$node 6<>$node; $VIADUCT --device fd=5 --iommufd fd=6"
run_err other-path "not of 0000:01:00.0" "exec 5<>$node; $VIADUCT --device fd=5,path=/sys/bus/pci/devices/0000:01:00.0"
run_err legacy-with-fd "only with iommufd" "exec 5<>$node; $VIADUCT --device fd=5,iommu=legacy"
[ "$(tb_driver "$NVME")" = vfio-pci ] && tb_check errors/nvme-still-on-vfio-pci pass ||
    tb_check errors/nvme-still-on-vfio-pci fail "$(tb_driver "$NVME")"

tb_unbind "$NVME"; tb_bind nvme "$NVME" >/dev/null
true
