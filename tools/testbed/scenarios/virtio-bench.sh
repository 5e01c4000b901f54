# tb-description: virtio-blk sequential read/write and virtio-net RX/TX throughput, viaduct vs QEMU's virtio devices (tap, no vhost), same guest, same level-1 boot
# tb-suite: bench
# tb-needs: qemu
# tb-timeout: 900
# tb-bench-target: blk_read_mbps >= 1.0
# tb-bench-target: blk_write_mbps >= 1.0
# tb-bench-target: net_rx_mbps >= 1.0
# tb-bench-target: net_tx_mbps >= 1.0
# tb-run: bench-qemu-* bench-viaduct-*
# tb-check: tun bench-*/blk-io bench-*/net-rx bench-*/net-tx
# Each VMM boots the same guest with one virtio-blk disk (a raw image in level 1, host page
# cache on both sides: QEMU's default cache=writeback, viaduct's buffered I/O) and one
# virtio-net on a tap (QEMU: vhost=off, so both are user-space device models). The guest
# writes then reads $BLK_MB MiB with O_DIRECT 1 MiB requests (blk_write_mbps, blk_read_mbps),
# downloads $NET_MB MiB from level 1's httpd (net_rx_mbps, guest receive) and serves $NET_MB MiB
# that level 1 downloads (net_tx_mbps, guest transmit). MB/s = 2^20 bytes/s. Rounds:
# VIRTIO_BENCH_ROUNDS (default 3: single runs vary by tens of percent on a shared machine),
# alternating QEMU and viaduct.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { tb_skip "no QEMU in level 1"; exit 0; }
modprobe tun 2>/dev/null
[ -c /dev/net/tun ] || { tb_check tun fail "no /dev/net/tun after modprobe tun"; exit 1; }

tap=vbench0
l1ip=10.78.0.1
gip=10.78.0.2
mac=52:54:00:76:62:01
blk_mb=32
net_mb=8
rounds=${VIRTIO_BENCH_ROUNDS:-3}
img=/tmp/virtio-bench.img
www=/tmp/virtio-bench-www
ended=/tmp/virtio-bench-vmm-ended
rm -rf $www; mkdir -p $www
dd if=/dev/urandom of=$www/big bs=1M count=$net_mb 2>/dev/null
httpd -f -p 8080 -h $www &
httpd_pid=$!

cat >/tmp/virtio-bench-guest.sh <<GUEST
L1IP=$l1ip
GIP=$gip
BLK_MB=$blk_mb
NET_MB=$net_mb
GUEST
cat >>/tmp/virtio-bench-guest.sh <<'GUEST'
now() { cut -d' ' -f1 /proc/uptime; }
mbps() { awk -v mb="$1" -v a="$2" -v b="$3" 'BEGIN { d = b - a; if (d <= 0) d = 0.01; printf "%.2f", mb / d }'; }
g_wait_for /dev/vda 10
blk=$(g_find_devs 1af4 1042)
[ -z "$blk" ] && blk=$(g_find_devs 1af4 1001)
g_value blk_function "$blk $(g_driver $blk)"
t0=$(now)
dd if=/dev/zero of=/dev/vda bs=1M count=$BLK_MB oflag=direct 2>/tmp/dd.err; rc1=$?
t1=$(now)
dd if=/dev/vda of=/dev/null bs=1M count=$BLK_MB iflag=direct 2>>/tmp/dd.err; rc2=$?
t2=$(now)
if [ $rc1 = 0 ] && [ $rc2 = 0 ]; then
    g_check blk-io pass "$BLK_MB MiB written and read"
    g_value blk_write_mbps "$(mbps $BLK_MB $t0 $t1)"
    g_value blk_read_mbps "$(mbps $BLK_MB $t1 $t2)"
else
    g_check blk-io fail "$(tail -n1 /tmp/dd.err)"
fi

g_wait_for /sys/class/net/eth0 10
ip addr add $GIP/24 dev eth0
ip link set eth0 up
i=0
while ! ping -c 1 -W 1 $L1IP >/dev/null 2>&1 && [ $i -lt 30 ]; do i=$((i + 1)); done
t0=$(now)
wget -q -O /dev/null http://$L1IP:8080/big 2>/tmp/wget.err; rc=$?
t1=$(now)
[ $rc = 0 ] && { g_check net-rx pass "$NET_MB MiB"; g_value net_rx_mbps "$(mbps $NET_MB $t0 $t1)"; } ||
    g_check net-rx fail "$(tail -n1 /tmp/wget.err)"
mkdir -p /tmp/www
dd if=/dev/zero of=/tmp/www/big bs=1M count=$NET_MB 2>/dev/null
httpd -p 8080 -h /tmp/www
echo "@@G serving"
i=0
while ! wget -q -O /dev/null http://$L1IP:8080/done 2>/dev/null && [ $i -lt 240 ]; do sleep 0.5; i=$((i + 1)); done
g_value irqs_blk "$(g_dev_irq_count $blk)"
GUEST

# Level 1's side of one guest run: set the tap up when it appears, download the guest's file
# when it serves it (that is the guest's transmit rate), then say done.
l1_side() {
    local run=$1 vmm=$2 i=0 t0 t1 console=/tmp/l2/$1/console.log
    # $ended appears when the VMM is gone: stop waiting for a guest that will not come.
    while [ ! -e /sys/class/net/$tap ] && [ $i -lt 600 ] && [ ! -e $ended ]; do sleep 0.1; i=$((i + 1)); done
    ip addr add $l1ip/24 dev $tap 2>/dev/null
    ip link set $tap up
    i=0
    while ! grep -q "@@G serving" $console 2>/dev/null && [ $i -lt 2400 ] && [ ! -e $ended ]; do
        sleep 0.1; i=$((i + 1))
    done
    [ -e $ended ] && { tb_check "$run/net-tx" fail "the guest never served its file"; return; }
    t0=$(tb_now_ms)
    if wget -q -O /dev/null http://$gip:8080/big; then
        t1=$(tb_now_ms)
        tb_check "$run/net-tx" pass "$net_mb MiB"
        tb_bench net_tx_mbps "$vmm" "$(awk -v mb=$net_mb -v ms=$((t1 - t0)) 'BEGIN { if (ms <= 0) ms = 1; printf "%.2f", mb * 1000 / ms }')"
    else
        tb_check "$run/net-tx" fail "level 1 could not download from the guest"
    fi
    touch $www/done
}

# The guest's numbers, from the markers tb_run_l2 collected.
guest_numbers() {
    local run=$1 vmm=$2 m v
    for m in blk_write_mbps blk_read_mbps net_rx_mbps; do
        v=$(sed -n "s/^value $m //p" /tmp/l2/$run/markers 2>/dev/null | head -n1)
        [ -n "$v" ] && tb_bench $m "$vmm" "$v"
    done
}

r=1
while [ $r -le $rounds ]; do
    for vmm in qemu $(tb_bench_vmms); do
        run=bench-$vmm-$r
        rm -f $www/done $img $ended
        dd if=/dev/zero of=$img bs=1M count=$blk_mb 2>/dev/null
        tb_settle_memory
        l1_side $run $vmm &
        side=$!
        if [ $vmm = qemu ]; then
            tb_qemu_l2 $run 300 /tmp/virtio-bench-guest.sh -- \
                -drive file=$img,if=none,id=vd0,format=raw -device virtio-blk-pci,drive=vd0 \
                -netdev tap,id=vn0,ifname=$tap,script=no,downscript=no,vhost=off \
                -device virtio-net-pci,netdev=vn0,mac=$mac,romfile=
        else
            # shellcheck disable=SC2046 # tb_viaduct_args gives whole words
            tb_run_l2 $run 300 /tmp/virtio-bench-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
                --cmdline "@CMDLINE@" --memory 256M --disk path=$img --net tap=$tap,mac=$mac $(tb_viaduct_args $vmm)
        fi
        touch $ended
        wait $side
        guest_numbers $run $vmm
    done
    r=$((r + 1))
done
kill $httpd_pid 2>/dev/null
rm -rf $www $img
true
