# tb-description: viaduct without root: run as a user (viaductctl bind --user; NVMe + virtio disk read and written, no capabilities, seccomp on every thread), and started as root with --user (drops after set-up) with a tap passed as --net fd= by a privileged parent
# tb-timeout: 600
# tb-cargo: --release -p viaduct --example tap_fd
# tb-bin: release/examples/tap_fd:/usr/bin/tap-fd
# tb-run: unpriv-user unpriv-drop
# tb-check: bind-user bind-user-steps restore unpriv-user/disk-image-written
# tb-check: unpriv-user/vmm-unprivileged unpriv-user/vmm-seccomp unpriv-user/nvme-bound
# tb-check: unpriv-user/nvme-read-signature unpriv-user/nvme-write unpriv-user/disk-read-signature
# tb-check: unpriv-user/disk-write unpriv-drop/bind unpriv-drop/vmm-unprivileged
# tb-check: unpriv-drop/vmm-seccomp unpriv-drop/nvme-bound unpriv-drop/nvme-read-signature
# tb-check: unpriv-drop/nvme-write unpriv-drop/ping-l1 unpriv-drop/tap-gone
# Part 1, "root prepares": a user vd (uid 1000), viaductctl bind --user vd hands it the
# NVMe's /dev/vfio nodes, /dev/kvm gets vd's group, a disk image and a memlock limit for
# 256M of guest RAM; viaduct then runs as vd (su) with the NVMe and the image as a virtio
# disk. The guest reads both signatures and writes a token to each; level 1 checks the image,
# tests/unprivileged.rs the NVMe's level-0 image. Once the guest has used its devices, it
# waits while level 1 reads the VMM's /proc status: uid 1000, CapEff/CapPrm 0, Seccomp 2 on
# every thread (the disk's I/O thread among them). viaductctl restore gives the nodes back.
# Part 2, "orchestrator": as root, tap-fd (examples/tap_fd.rs) opens tap tapfd0 and starts
# viaduct --user vd --net fd=3 with the NVMe (bound without --user: viaduct opens it as root,
# raises the memlock limit, then drops). The guest pings level 1 over the passed tap and
# writes its NVMe token; level 1 sees the VMM as uid 1000 without capabilities, every
# thread filtered (the tap's I/O thread, started after the drop, among them).
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
command -v viaductctl >/dev/null || { tb_skip "viaductctl is not in level 1 (build failed?)"; exit 0; }
modprobe tun 2>/dev/null

run1=unpriv-user
run2=unpriv-drop
vd_uid=1000
home=/tmp/vdhome
img=/tmp/unpriv-disk.img
tok1="VIADUCT-UNPRIV-USER $TB_RUN_ID-$$"
tok2="VIADUCT-UNPRIV-DROP $TB_RUN_ID-$$"
sig_disk="VIADUCT-UNPRIV-DISK-SIGNATURE $TB_RUN_ID-$$"
tb_value unprivileged/nvme_lbas "3000 3008"
tb_value unprivileged/tokens "$tok1|$tok2"

# The user, and what level 1 had before (put back at the end).
cp /etc/passwd /tmp/unpriv-passwd.bak 2>/dev/null || : >/tmp/unpriv-passwd.bak
cp /etc/group /tmp/unpriv-group.bak 2>/dev/null || : >/tmp/unpriv-group.bak
grep -q '^root:' /etc/passwd 2>/dev/null || echo 'root:x:0:0:root:/root:/bin/sh' >>/etc/passwd
grep -q '^root:' /etc/group 2>/dev/null || echo 'root:x:0:' >>/etc/group
echo "vd:x:$vd_uid:$vd_uid:viaduct user:$home:/bin/sh" >>/etc/passwd
echo "vd:x:$vd_uid:" >>/etc/group
rm -rf "$home"; mkdir -p "$home"; chown "$vd_uid:$vd_uid" "$home"; chmod 700 "$home"
kvm_was=$(stat -c '%u:%g %a' /dev/kvm)

# Watches the VMM (the process named viaduct) until its guest has used its virtio devices
# (their I/O threads run) and waits, then checks it: uid and gid 1000 (real, effective,
# saved), no capabilities, no_new_privs, seccomp mode 2 on every thread, a virtio I/O thread
# among them. Then RELEASE lets the guest go on. Values NAME/vmm_* say what was seen.
watch_vmm() { # NAME CONSOLE RELEASE
    local name="$1" console="$2" release="$3" pid="" i=0 t threads=0 filtered=0 names="" uid capeff capprm nnp
    while [ $i -lt 3000 ]; do
        pid=$(pidof viaduct | cut -d' ' -f1)
        [ -n "$pid" ] && grep -q '@@G value ready' "$console" 2>/dev/null && break
        sleep 0.1; i=$((i + 1))
    done
    [ -n "$pid" ] || { tb_check "$name/vmm-unprivileged" fail "no viaduct process seen"; return; }
    uid=$(awk '/^Uid:/ {print $2, $3, $4}' "/proc/$pid/status")
    capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
    capprm=$(awk '/^CapPrm:/ {print $2}' "/proc/$pid/status")
    nnp=$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$pid/status")
    for t in "/proc/$pid"/task/*; do
        threads=$((threads + 1))
        [ "$(awk '/^Seccomp:/ {print $2}' "$t/status")" = 2 ] && filtered=$((filtered + 1))
        names="$names $(cat "$t/comm")"
    done
    eval "$release"
    tb_value "$name/vmm_uid" "$uid"
    tb_value "$name/vmm_gid" "$(awk '/^Gid:/ {print $2, $3, $4}' "/proc/$pid/status")"
    tb_value "$name/vmm_capeff" "$capeff"
    tb_value "$name/vmm_capprm" "$capprm"
    tb_value "$name/vmm_threads" "$threads"
    tb_value "$name/vmm_threads_filtered" "$filtered"
    tb_value "$name/vmm_thread_names" "$names"
    [ "$uid" = "$vd_uid $vd_uid $vd_uid" ] && [ "$capeff" = 0000000000000000 ] && [ "$capprm" = 0000000000000000 ] &&
        [ "$nnp" = 1 ] && tb_check "$name/vmm-unprivileged" pass "uid $uid, CapEff $capeff, CapPrm $capprm, NoNewPrivs $nnp" ||
        tb_check "$name/vmm-unprivileged" fail "uid $uid, CapEff $capeff, CapPrm $capprm, NoNewPrivs $nnp"
    [ "$threads" -gt 1 ] && [ "$filtered" = "$threads" ] && case "$names" in *" virtio-"*) true ;; *) false ;; esac && tb_check "$name/vmm-seccomp" pass "$filtered of $threads threads:$names" ||
        tb_check "$name/vmm-seccomp" fail "$filtered of $threads threads in seccomp mode 2:$names"
}

guest_script() { # TOKEN WITH_DISK WITH_NET
    cat <<GUEST
SIG_NVME='$TB_SIG_NVME'
SIG_DISK='$sig_disk'
TOKEN='$1'
LBA=$4
WITH_DISK=$2
WITH_NET=$3
GUEST
    cat <<'GUEST'
nv=$(g_find_devs 1b36 0010)
[ -n "$nv" ] && [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "nvme '$nv' driver=$(g_driver $nv)"
g_wait_for /dev/nvme0n1 30
sig=$(g_read_sector /dev/nvme0n1 0)
[ "$sig" = "$SIG_NVME" ] && g_check nvme-read-signature pass "$sig" || g_check nvme-read-signature fail "read '$sig'"
g_write_check nvme-write /dev/nvme0n1 $LBA "$TOKEN"
if [ "$WITH_DISK" = 1 ]; then
    g_wait_for /dev/vda 30
    sig=$(g_read_sector /dev/vda 0)
    [ "$sig" = "$SIG_DISK" ] && g_check disk-read-signature pass "$sig" || g_check disk-read-signature fail "read '$sig'"
    g_write_check disk-write /dev/vda 2048 "$TOKEN"
fi
if [ "$WITH_NET" = 1 ]; then
    g_wait_for /sys/class/net/eth0 10
    ip addr add 10.78.0.2/24 dev eth0
    ip link set eth0 up
    i=0
    while ! ping -c 1 -W 1 10.78.0.1 >/dev/null 2>&1 && [ $i -lt 30 ]; do i=$((i + 1)); done
    out=$(ping -c 5 -W 2 10.78.0.1 2>&1 | grep -E "packets transmitted")
    case "$out" in
        *"5 packets received"*) g_check ping-l1 pass "$out" ;;
        *) g_check ping-l1 fail "'$out'" ;;
    esac
fi
sync
# Held until level 1 has looked at the VMM's threads (the I/O threads of the devices used
# above run now): level 1 answers on the disk (sector 4096 reads INSPECTED) or on the tap
# (10.78.0.3 answers pings).
g_value ready devices-used
i=0
while [ $i -lt 120 ]; do
    [ "$WITH_DISK" = 1 ] && [ "$(g_read_sector /dev/vda 4096)" = INSPECTED ] && break
    [ "$WITH_NET" = 1 ] && ping -c 1 -W 1 10.78.0.3 >/dev/null 2>&1 && break
    sleep 0.5; i=$((i + 1))
done
GUEST
}

# ---- Part 1: root prepares, viaduct runs as vd ----
out=$(viaductctl bind "$TB_NVME" --user vd --memory 256M 2>&1)
echo "$out"
g=$(tb_iommu_group "$TB_NVME")
[ "$(stat -c %u "/dev/vfio/$g" 2>/dev/null)" = "$vd_uid" ] && tb_check bind-user pass "/dev/vfio/$g belongs to vd" ||
    tb_check bind-user fail "/dev/vfio/$g: $(stat -c '%u:%g %a' "/dev/vfio/$g" 2>&1); $out"
echo "$out" | grep -q "memlock limit.*$(((256 + 64) * 1024)) KiB" && tb_check bind-user-steps pass "memlock and the other steps said" ||
    tb_check bind-user-steps fail "$out"
chgrp "$vd_uid" /dev/kvm && chmod 660 /dev/kvm
rm -f "$img"; dd if=/dev/zero of="$img" bs=1M count=4 2>/dev/null
printf '%s\n' "$sig_disk" | dd of="$img" conv=notrunc 2>/dev/null
chown "$vd_uid:$vd_uid" "$img"
guest_script "$tok1" 1 0 3000 >/tmp/unpriv-guest1.sh
watch_vmm "$run1" "/tmp/l2/$run1/console.log" \
    "printf 'INSPECTED\\n' | dd of='$img' bs=512 seek=4096 conv=notrunc 2>/dev/null" &
watcher=$!
# ulimit: the memlock limit root gives vd (guest RAM + 64 MiB, as viaductctl said).
# shellcheck disable=SC3045 # busybox sh has ulimit -l
(ulimit -l $(((256 + 64) * 1024)) && tb_run_l2 "$run1" 300 /tmp/unpriv-guest1.sh -- su -s /bin/sh vd -c \
    "exec viaduct --kernel @KERNEL@ --initramfs @INITRD@ --cmdline '@CMDLINE@' --memory 256M --device $TB_NVME --disk path=$img --log-level info")
wait $watcher
back=$(dd if="$img" bs=512 skip=2048 count=1 2>/dev/null | head -n1)
[ "$back" = "$tok1" ] && tb_check "$run1/disk-image-written" pass "$back" || tb_check "$run1/disk-image-written" fail "LBA 2048 of $img: '$back'"
out=$(viaductctl restore "$TB_NVME" 2>&1)
echo "$out"
[ "$(tb_driver "$TB_NVME")" = nvme ] && tb_check restore pass "back on nvme" || tb_check restore fail "driver $(tb_driver "$TB_NVME"): $out"
chown "${kvm_was%% *}" /dev/kvm; chmod "${kvm_was##* }" /dev/kvm

# ---- Part 2: root starts viaduct --user vd with a tap it opened ----
g=$(tb_bind_vfio "$TB_NVME") && tb_check "$run2/bind" pass "group $g, $(stat -c '%u %a' "/dev/vfio/$g")" || tb_check "$run2/bind" fail "$(tb_driver "$TB_NVME")"
guest_script "$tok2" 0 1 3008 >/tmp/unpriv-guest2.sh
(
    i=0
    while [ ! -e /sys/class/net/tapfd0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    ip addr add 10.78.0.1/24 dev tapfd0 && ip link set tapfd0 up
) &
watch_vmm "$run2" "/tmp/l2/$run2/console.log" "ip addr add 10.78.0.3/24 dev tapfd0" &
watcher=$!
tb_run_l2 "$run2" 300 /tmp/unpriv-guest2.sh -- tap-fd tapfd0 -- viaduct --user vd --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --device "$TB_NVME" --net fd=3,mac=52:54:00:76:78:02 --log-level info
wait $watcher
grep -E "running as|tap tapfd0|memlock|seccomp|error" "/tmp/l2/$run2/console.log" | grep -v "@@" | head -n 10
[ ! -e /sys/class/net/tapfd0 ] && tb_check "$run2/tap-gone" pass "the passed tap went away with the last fd" ||
    tb_check "$run2/tap-gone" fail "tapfd0 still there"
tb_unbind "$TB_NVME" 2>/dev/null

cp /tmp/unpriv-passwd.bak /etc/passwd; cp /tmp/unpriv-group.bak /etc/group
rm -rf "$home" "$img" /tmp/unpriv-*.bak
true
