# tb-description: viaduct gives a Linux guest virtio-net on a tap it creates in level 1: pings both ways, 2 MiB each way over HTTP, offloads negotiated, packet counts on both sides
# tb-timeout: 300
# tb-run: viaduct-net
# tb-check: tun tap-absent-before viaduct-net/net-function viaduct-net/mac viaduct-net/offloads-negotiated
# tb-check: viaduct-net/ping-l1 viaduct-net/download-from-l1 viaduct-net/net-msix-interrupts
# tb-check: viaduct-net/tap-created viaduct-net/l1-ping-guest viaduct-net/download-from-guest
# tb-check: viaduct-net/tap-removed
# viaduct --net tap=vtnet0 creates the tap (TUNSETIFF, IFF_VNET_HDR) and sets it up; level 1
# gives it 10.77.0.1/24 once it appears and serves a 2 MiB file with busybox httpd. The guest
# (10.77.0.2) checks the function and the negotiated features (checksum, TSO, mergeable
# buffers, EVENT_IDX), pings level 1, downloads level 1's file and serves its own, which level
# 1 downloads. Both sides report their packet counters. tests/virtio_net.rs asserts on them.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
modprobe tun 2>/dev/null
[ -c /dev/net/tun ] || { tb_check tun fail "no /dev/net/tun after modprobe tun"; exit 1; }

run=viaduct-net
tap=vtnet0
mac=52:54:00:76:74:01
l1ip=10.77.0.1
gip=10.77.0.2
size_kb=2048
ip link del $tap 2>/dev/null
tb_expect tap-absent-before sh -c "! test -e /sys/class/net/$tap"

www=/tmp/virtio-net-www
httpd_pid=""
rm -rf $www; mkdir -p $www
dd if=/dev/urandom of=$www/l1blob bs=1k count=$size_kb 2>/dev/null
l1_md5=$(md5sum $www/l1blob | cut -d' ' -f1)
tb_value $run/l1_blob_md5 "$l1_md5"

cat >/tmp/virtio-net-guest.sh <<GUEST
L1IP=$l1ip
GIP=$gip
MAC=$mac
L1_MD5=$l1_md5
SIZE_KB=$size_kb
GUEST
cat >>/tmp/virtio-net-guest.sh <<'GUEST'
g_lspci
nets=$(g_find_devs 1af4 1041 | tr '\n' ' ')
g_value virtio_net_functions "$nets"
set -- $nets
nf=$1
[ $# -eq 1 ] && [ "$(g_driver $nf)" = virtio-pci ] && g_check net-function pass "$nf on virtio-pci" ||
    g_check net-function fail "functions '$nets' driver $(g_driver $nf)"
g_wait_for /sys/class/net/eth0 10
[ "$(cat /sys/class/net/eth0/address 2>/dev/null)" = "$MAC" ] && g_check mac pass "$MAC" ||
    g_check mac fail "eth0 address '$(cat /sys/class/net/eth0/address 2>/dev/null)', want $MAC"
# The negotiated feature bits (one character per bit, bit 0 first).
feat=$(cat /sys/class/net/eth0/device/features 2>/dev/null)
g_value features "$feat"
bit() { [ "$(echo "$feat" | cut -c$(($1 + 1)))" = 1 ]; }
missing=""
for b in 0:CSUM 1:GUEST_CSUM 7:GUEST_TSO4 11:HOST_TSO4 15:MRG_RXBUF 16:STATUS 29:EVENT_IDX 32:VERSION_1; do
    bit ${b%%:*} || missing="$missing ${b#*:}"
done
[ -z "$missing" ] && g_check offloads-negotiated pass "CSUM GUEST_CSUM TSO4 (both ways) MRG_RXBUF EVENT_IDX" ||
    g_check offloads-negotiated fail "not negotiated:$missing (features $feat)"
g_value msix_vectors "$(g_msi_vectors $nf)"

ip addr add $GIP/24 dev eth0
ip link set eth0 up
# Level 1 sets its side of the tap up once viaduct created it: allow a few seconds.
i=0
while ! ping -c 1 -W 1 $L1IP >/dev/null 2>&1 && [ $i -lt 30 ]; do i=$((i + 1)); done
out=$(ping -c 5 -W 2 $L1IP 2>&1 | grep -E "packets transmitted")
g_value ping_l1 "$out"
case "$out" in
    *"5 packets received"*) g_check ping-l1 pass "$out" ;;
    *) g_check ping-l1 fail "$out" ;;
esac

# Level 1 -> guest: 2 MiB over HTTP (many full-size and, with GUEST_TSO, 64 KiB frames).
t0=$(cut -d' ' -f1 /proc/uptime)
wget -q -O /tmp/l1blob http://$L1IP:8080/l1blob 2>/tmp/wget.err
t1=$(cut -d' ' -f1 /proc/uptime)
got=$(md5sum /tmp/l1blob 2>/dev/null | cut -d' ' -f1)
g_value download_s "$t0 $t1"
[ "$got" = "$L1_MD5" ] && g_check download-from-l1 pass "$(wc -c </tmp/l1blob) bytes, md5 $got" ||
    g_check download-from-l1 fail "md5 '$got' want $L1_MD5: $(tail -n1 /tmp/wget.err)"

# Guest -> level 1: level 1 downloads this file, pings the guest, reads its counters and then
# publishes "done" on its own server, which the guest polls for (at most 120 s).
mkdir -p /tmp/www
dd if=/dev/urandom of=/tmp/www/gblob bs=1k count=$SIZE_KB 2>/dev/null
g_value guest_blob_md5 "$(md5sum /tmp/www/gblob | cut -d' ' -f1)"
httpd -p 8080 -h /tmp/www
echo "@@G serving"
i=0
while ! wget -q -O /dev/null http://$L1IP:8080/done 2>/dev/null && [ $i -lt 240 ]; do
    sleep 0.5; i=$((i + 1))
done
[ $i -lt 240 ] || g_value l1_done_timeout "level 1 never said done"
for c in rx_packets tx_packets rx_bytes tx_bytes rx_errors rx_dropped; do
    g_value "guest_$c" "$(cat /sys/class/net/eth0/statistics/$c)"
done
g_value irqs "$(g_dev_irq_count $nf)"
[ "$(g_dev_irq_count $nf)" -gt 0 ] && g_check net-msix-interrupts pass "$(g_dev_irq_count $nf)" ||
    g_check net-msix-interrupts fail "no MSI-X interrupts on $nf"
GUEST

tb_run_l2 "$run" 240 /tmp/virtio-net-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --net tap=$tap,mac=$mac --log-level info &
l2=$!

# Level 1's side: the tap appears when viaduct opens it.
i=0
while [ ! -e /sys/class/net/$tap ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e /sys/class/net/$tap ]; then
    tb_check $run/tap-created pass "$(cat /sys/class/net/$tap/operstate 2>/dev/null) flags $(cat /sys/class/net/$tap/flags)"
    ip addr add $l1ip/24 dev $tap
    ip link set $tap up
    httpd -f -p $l1ip:8080 -h $www &
    httpd_pid=$!
else
    tb_check $run/tap-created fail "viaduct did not create $tap within 10 s"
fi

# When the guest serves its file, download it (retry until the guest's httpd answers).
console=/tmp/l2/$run/console.log
i=0
while ! grep -q "@@G serving" $console 2>/dev/null && [ $i -lt 1800 ] && kill -0 $l2 2>/dev/null; do
    sleep 0.1; i=$((i + 1))
done
got=""
if grep -q "@@G serving" $console 2>/dev/null; then
    for _ in 1 2 3 4 5; do
        wget -q -O /tmp/virtio-net-gblob http://$gip:8080/gblob 2>/dev/null && break
        sleep 1
    done
    got=$(md5sum /tmp/virtio-net-gblob 2>/dev/null | cut -d' ' -f1)
fi
tb_value $run/l1_got_guest_blob_md5 "$got"
out=$(ping -c 5 -W 2 $gip 2>&1 | grep -E "packets transmitted")
tb_value $run/l1_ping_guest "$out"
case "$out" in
    *"5 packets received"*) tb_check $run/l1-ping-guest pass "$out" ;;
    *) tb_check $run/l1-ping-guest fail "'$out'" ;;
esac
# The tap's side: its RX is what the guest sent, its TX what the guest received.
for c in rx_packets tx_packets rx_bytes tx_bytes rx_dropped tx_dropped; do
    tb_value "$run/tap_$c" "$(cat /sys/class/net/$tap/statistics/$c 2>/dev/null)"
done
touch $www/done

wait $l2
# The guest reported its blob's md5 on its console.
want=$(tr -d '\r' <$console | sed -n 's/.*@@G value guest_blob_md5 //p' | head -n1)
[ -n "$got" ] && [ "$got" = "$want" ] && tb_check $run/download-from-guest pass "md5 $got" ||
    tb_check $run/download-from-guest fail "L1 got md5 '$got', the guest served '$want'"
# A tap viaduct created goes away with it.
[ ! -e /sys/class/net/$tap ] && tb_check $run/tap-removed pass "$tap gone after exit" ||
    tb_check $run/tap-removed fail "$tap still exists after viaduct exited"
[ -n "$httpd_pid" ] && kill $httpd_pid 2>/dev/null
grep -E "virtio|tap|panicked|ERROR" $console 2>/dev/null | grep -v "@@G" | head -n 20
rm -rf $www /tmp/virtio-net-gblob
true
