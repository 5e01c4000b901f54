# tb-description: viaduct with --on-reboot restart, a virtio disk, virtio-net on a persistent tap, virtio-rng and the NVMe: 6 boots (5 guest reboots), every boot uses every device; viaduct's thread and fd counts are the same at the same point of every boot; exit 0
# tb-timeout: 600
# tb-run: lifecycle
# tb-check: tun lifecycle/tap-persistent lifecycle/vfio-bind lifecycle/last-boot lifecycle/nvme-restored
# tb-check: lifecycle/boot*-counter lifecycle/boot*-disk-read lifecycle/boot*-disk-write lifecycle/boot*-nvme-read
# tb-check: lifecycle/boot*-nvme-write lifecycle/boot*-hwrng lifecycle/boot*-ping lifecycle/boot*-counted
# tb-check: lifecycle/l1-sees-boot*-write
# One viaduct process boots the guest BOOTS times: the guest counts its boots in sector 1 of
# the virtio disk, and every boot reads the disk's signature and writes its own sector
# (LBA 2048+N), reads the NVMe's signature and writes LBA 110000+N of disk.img, pings level 1
# over the tap vt0 (made persistent here with tunctl before viaduct starts, level 1's address
# on it), and reads /dev/hwrng. Then it prints "@@G lifecycle-mark N" and waits until level 1 has
# counted viaduct's threads (/proc/PID/task) and open fds (/proc/PID/fd) and published
# ackN on its web server; boots 1..BOOTS-1 end with `reboot -f`, the last one powers off.
# Level 1 checks the virtio disk's sectors after the run, tests/lifecycle.rs the NVMe's in
# disk.img and that the counts are equal across boots.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
modprobe tun 2>/dev/null
[ -c /dev/net/tun ] || { tb_check tun fail "no /dev/net/tun after modprobe tun"; exit 1; }

run=lifecycle
boots=6
tap=vt0
l1ip=10.78.0.1
gip=10.78.0.2
img=/tmp/lifecycle.img
www=/tmp/lifecycle-www
nvme_lba=110000
token="$TB_RUN_ID-lc-$$"
sig_img="VIADUCT-LIFECYCLE-IMAGE $token"
tb_value $run/token "$token"
tb_value $run/boots "$boots"
tb_value $run/nvme_lba "$nvme_lba"

rm -f $img
dd if=/dev/zero of=$img bs=1M count=4 2>/dev/null
printf '%s\n' "$sig_img" | dd of=$img conv=notrunc 2>/dev/null
printf 'BOOTS 0\n' | dd of=$img bs=512 seek=1 conv=notrunc 2>/dev/null

tunctl -d $tap >/dev/null 2>&1
if tunctl -t $tap >/dev/null && ip addr add $l1ip/24 dev $tap && ip link set $tap up; then
    tb_check $run/tap-persistent pass "$tap $(cat /sys/class/net/$tap/tun_flags 2>/dev/null)"
else
    tb_check $run/tap-persistent fail "tunctl -t $tap failed"
    exit 1
fi
rm -rf $www; mkdir -p $www
echo ok >$www/ping
httpd -f -p $l1ip:8080 -h $www &
httpd_pid=$!

if g=$(tb_bind_vfio "$TB_NVME"); then tb_check $run/vfio-bind pass "$TB_NVME group $g"
else tb_check $run/vfio-bind fail "driver=$(tb_driver $TB_NVME)"; tb_bind nvme "$TB_NVME"; exit 1; fi

cat >/tmp/lifecycle-guest.sh <<GUEST
BOOTS=$boots
L1IP=$l1ip
GIP=$gip
SIG_IMG='$sig_img'
SIG_NVME='$TB_SIG_NVME'
TOKEN='$token'
NVME_LBA=$nvme_lba
GUEST
cat >>/tmp/lifecycle-guest.sh <<'GUEST'
g_wait_for /dev/vda 20
prev=$(g_read_sector /dev/vda 1)
n=$((${prev#BOOTS } + 1))
echo "@@G lifecycle-boot $n"
g_check boot$n-counter pass "previous '$prev'"
got=$(g_read_sector /dev/vda 0)
[ "$got" = "$SIG_IMG" ] && g_check boot$n-disk-read pass "$got" || g_check boot$n-disk-read fail "read '$got'"
g_write_check boot$n-disk-write /dev/vda $((2048 + n)) "VIADUCT-LIFECYCLE-BOOT $n $TOKEN"
printf 'BOOTS %s\n' "$n" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null

nv=$(g_find_devs 1b36 0010)
g_wait_for /dev/nvme0n1 30
sig=$(g_read_sector /dev/nvme0n1 0)
[ "$sig" = "$SIG_NVME" ] && g_check boot$n-nvme-read pass "$sig" || g_check boot$n-nvme-read fail "$nv read '$sig'"
g_write_check boot$n-nvme-write /dev/nvme0n1 $((NVME_LBA + n)) "VIADUCT-LIFECYCLE-NVME $n $TOKEN"

c=$(dd if=/dev/hwrng bs=512 count=1 2>/dev/null | wc -c)
[ "$c" -eq 512 ] && g_check boot$n-hwrng pass "512 bytes" || g_check boot$n-hwrng fail "$c bytes"

g_wait_for /sys/class/net/eth0 10
ip addr add $GIP/24 dev eth0
ip link set eth0 up
i=0
while ! ping -c 1 -W 1 $L1IP >/dev/null 2>&1 && [ $i -lt 20 ]; do i=$((i + 1)); done
out=$(ping -c 3 -W 2 $L1IP 2>&1 | grep -E "packets transmitted")
case "$out" in
    *"3 packets received"*) g_check boot$n-ping pass "$out" ;;
    *) g_check boot$n-ping fail "'$out'" ;;
esac

# Level 1 counts viaduct's threads and fds now, then publishes ackN (at most 60 s).
echo "@@G lifecycle-mark $n"
i=0
while ! wget -q -O /dev/null http://$L1IP:8080/ack$n 2>/dev/null && [ $i -lt 120 ]; do
    sleep 0.5; i=$((i + 1))
done
[ $i -lt 120 ] && g_check boot$n-counted pass "level 1 counted" || g_check boot$n-counted fail "no ack$n from level 1"
if [ "$n" -lt "$BOOTS" ]; then
    sync
    reboot -f
    sleep 3600
fi
g_check last-boot pass "boot $n of $BOOTS powers off"
GUEST

tb_run_l2 "$run" 540 /tmp/lifecycle-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --log-level info --on-reboot restart \
    --disk path=$img,id=lc0 --net tap=$tap --rng --device "$TB_NVME" &
l2=$!

# At every mark: the counts, the thread names and the kinds of fds, then the ack.
console=/tmp/l2/$run/console.log
seen=0
while kill -0 $l2 2>/dev/null; do
    m=$(tr -d '\r' <$console 2>/dev/null | sed -n 's/.*@@G lifecycle-mark \([0-9]*\).*/\1/p' | tail -n1)
    pid=$(pidof viaduct | cut -d' ' -f1)
    if [ -n "$m" ] && [ "$m" != "$seen" ] && [ -n "$pid" ] && [ -d /proc/$pid ]; then
        seen=$m
        tb_value $run/pid_boot$m "$pid"
        tb_value $run/threads_boot$m "$(ls /proc/$pid/task | wc -l)"
        tb_value $run/fds_boot$m "$(ls /proc/$pid/fd | wc -l)"
        tb_value $run/thread_names_boot$m "$(cat /proc/$pid/task/*/comm | sort | uniq -c | tr -s ' \n' ' ')"
        tb_value $run/fd_kinds_boot$m "$(for f in /proc/$pid/fd/*; do readlink $f; done | sed 's/[0-9]//g' | sort | uniq -c | tr -s ' \n' ' ')"
        touch $www/ack$m
    fi
    sleep 0.2
done
wait $l2

for n in $(seq 1 $boots); do
    line=$(dd if=$img bs=512 skip=$((2048 + n)) count=1 2>/dev/null | head -n1)
    [ "$line" = "VIADUCT-LIFECYCLE-BOOT $n $token" ] && tb_check $run/l1-sees-boot$n-write pass "$line" ||
        tb_check $run/l1-sees-boot$n-write fail "LBA $((2048 + n)) holds '$line'"
done
restarts=$(grep -c "guest rebooted: restarting it" $console)
tb_value $run/restarts "$restarts"
grep -E "error|panicked|WARN|ERROR" $console 2>/dev/null | grep -v "@@G" | head -n 20

kill $httpd_pid 2>/dev/null
tunctl -d $tap >/dev/null 2>&1
tb_bind nvme "$TB_NVME"
[ "$(tb_driver $TB_NVME)" = nvme ] && tb_check $run/nvme-restored pass "nvme" || tb_check $run/nvme-restored fail "driver $(tb_driver $TB_NVME)"
rm -rf $www $img
true
