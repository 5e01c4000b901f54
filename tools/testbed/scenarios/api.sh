# tb-description: viaduct's control API (--api-socket) with curl and viaductctl vm: ping, info (guest BDFs match the guest's sysfs), counters grow with guest I/O, pause/resume stops and continues the guest clock, bad requests refused while the guest runs, power button -> guest powers off -> status 0; vm.create + vm.boot with only --api-socket; vm.shutdown + vmm.shutdown
# tb-timeout: 600
# tb-run: api-cli api-only
# tb-check: nvme-bind api-cli/power-button-device api-cli/power-button-press api-only/api-booted
# tb-check: cli/guest-ready cli/socket-mode cli/ping cli/ping-version cli/viaductctl-ping cli/info
# tb-check: cli/info-running cli/info-bdfs-match-guest cli/info-nvme-bdf cli/info-disk-bdf
# tb-check: cli/counters-disk-requests cli/viaductctl-counters cli/pause cli/pause-again cli/info-paused
# tb-check: cli/paused-guest-silent cli/resume cli/resume-again cli/clock-continues
# tb-check: cli/clock-stopped-while-paused cli/guest-waits-for-button cli/power-button cli/socket-removed
# tb-check: bad/unknown-path bad/outside-api bad/wrong-method bad/bad-json bad/wrong-type bad/unknown-field
# tb-check: bad/bad-bdf bad/create-while-running bad/hotplug-not-yet bad/huge-body bad/huge-head
# tb-check: bad/malformed-request-line bad/chunked bad/half-open-client bad/too-many-clients
# tb-check: bad/guest-still-running bad/ping-after
# tb-check: only/info-before-create only/boot-before-create only/create-bad-memory only/create-missing-kernel
# tb-check: only/create-unbound-device only/boot-unbound-device only/bind-hint only/info-after-failed-boot
# tb-check: only/create only/info-created only/state-created only/boot
# tb-check: shutdown/create shutdown/boot shutdown/vm-shutdown shutdown/vmm-stays shutdown/info
# tb-check: shutdown/state-shutdown shutdown/vmm-shutdown shutdown/exit-0
# Three viaduct runs, each driven from level 1 while its guest runs (a background driver
# waits for the guest's console lines, then talks to the socket):
#   api-cli      --kernel ... --api-socket: an NVMe passed through, a virtio disk and rng. The
#                driver checks ping, vm.info (the BDFs it names are the ones the guest lists),
#                vm.counters (the disk's request count grows across a read the guest makes),
#                pause/resume (the guest prints /proc/uptime every 0.5 s: no line during an
#                8 s pause, and across it the guest clock advances at least 5 s less than
#                level 1's), a battery of bad requests (each refused 4xx/5xx, the guest keeps
#                printing, ping still answers), then presses the power button: the guest
#                sees "Power Button" in its input devices, reads the key press and powers off;
#                viaduct exits 0.
#   api-only     viaduct --api-socket alone: a bad vm.create refused, vm.info Created after a
#                good one, vm.boot; the guest runs its script and powers off; status 0.
#   api-shutdown vm.create + vm.boot, vm.shutdown: vm.info says Shutdown and viaduct stays;
#                vmm.shutdown ends it with 0.
# tests/api.rs asserts on the checks.
# shellcheck shell=dash

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
command -v curl >/dev/null || { tb_skip "curl is not in level 1 (tools/testbed/setup installs it)"; exit 0; }

sock=/tmp/api-test.sock

# api METHOD ENDPOINT [BODY]: the HTTP status on stdout, the body in /tmp/api.out.
api() {
    if [ -n "$3" ]; then
        curl -s -m 30 -o /tmp/api.out -w '%{http_code}' --unix-socket "$sock" -X "$1" \
            -H 'Content-Type: application/json' -d "$3" "http://localhost/api/v1/$2"
    else
        curl -s -m 30 -o /tmp/api.out -w '%{http_code}' --unix-socket "$sock" -X "$1" "http://localhost/api/v1/$2"
    fi
}

# expect_status CHECK WANT METHOD ENDPOINT [BODY]: check CHECK passes when the answer is WANT.
expect_status() {
    local name=$1 want=$2 got
    shift 2
    got=$(api "$@")
    [ "$got" = "$want" ] && tb_check "$name" pass "$got $(head -c 200 /tmp/api.out)" ||
        tb_check "$name" fail "want $want, got '$got': $(head -c 300 /tmp/api.out)"
}

# wait_log FILE PATTERN SECS: wait until FILE has a line matching PATTERN.
wait_log() {
    local i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1)); [ "$i" -gt $(($3 * 10)) ] && return 1
        sleep 0.1
    done
}

# last_clk LOG: the last guest uptime printed ("CLK <seconds>"), in ms.
last_clk() {
    tr -d '\r' <"$1" | awk '/^CLK [0-9]/ {v = $2} END {printf "%d\n", v * 1000}'
}
clk_lines() { grep -c '^CLK ' "$1" 2>/dev/null; }
# dev_bdf ID: the guest BDF vm.info gives device ID (compact JSON, keys sorted).
dev_bdf() { grep -o '{[^{}]*"id":"'"$1"'"[^{}]*}' /tmp/api.info.compact | grep -o '"bdf":"[^"]*"' | cut -d'"' -f4; }

# ---- api-cli: a VM from the command line, driven over the API ----------------------------
run=api-cli
log=/tmp/l2/$run/console.log
img=/tmp/api-disk.img
rm -f $img $sock "$log"
dd if=/dev/zero of=$img bs=1M count=4 2>/dev/null
printf 'VIADUCT-API-DISK\n' | dd of=$img conv=notrunc 2>/dev/null
nvme_arg=""
if g=$(tb_bind_vfio "$TB_NVME"); then
    tb_check nvme-bind pass "group $g"
    nvme_arg="--device path=/sys/bus/pci/devices/$TB_NVME,id=nvme0"
else
    tb_check nvme-bind fail "$TB_NVME on $(tb_driver "$TB_NVME")"
fi

cat >/tmp/api-guest.sh <<'GUEST'
modprobe button 2>/dev/null
modprobe evdev 2>/dev/null
g_value clocksource "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
for d in /sys/bus/pci/devices/*; do
    b=$(basename $d)
    echo "GUEST-PCI $b $(cut -c3- $d/vendor):$(cut -c3- $d/device) $(g_driver $b)"
done
g_wait_for /dev/vda 30
echo "GUEST-READY"
# Level 1 reads the counters as soon as it sees GUEST-READY; then the guest reads 1 MiB past
# the page cache (256 requests).
sleep 5
dd if=/dev/vda of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null && echo "GUEST-READ-DONE"
# The clock: level 1 pauses the VM during this.
n=0
while [ $n -lt 150 ]; do
    echo "CLK $(cut -d' ' -f1 /proc/uptime)"
    sleep 0.5
    n=$((n + 1))
done
# The power button.
ev=$(awk '/^N: Name="Power Button"/ {p = 1} p && /^H: Handlers=/ {for (i = 1; i <= NF; i++) if ($i ~ /^event/) {print $i; exit}}' /proc/bus/input/devices)
g_value power_button_event "$ev"
[ -n "$ev" ] && [ -c /dev/input/$ev ] && g_check power-button-device pass "/dev/input/$ev" ||
    g_check power-button-device fail "no Power Button input device: $(grep '^N: ' /proc/bus/input/devices | tr '\n' ' ')"
echo "GUEST-WAITING-FOR-POWER-BUTTON"
if [ -n "$ev" ] && dd if=/dev/input/$ev of=/tmp/press bs=24 count=1 2>/dev/null; then
    g_check power-button-press pass "$(od -An -tx1 /tmp/press | tr -s ' \n' ' ')"
else
    g_check power-button-press fail "no event read"
fi
GUEST

# The driver: runs beside the guest, writes its checks as it goes.
drive_cli() {
    local c1 c2 w1 w2 g1 g2 n_before n_after i code pids
    wait_log "$log" GUEST-READY 240 || { tb_check cli/guest-ready fail "no GUEST-READY"; return; }
    api GET vm.counters >/dev/null
    c1=$(grep -o '"disk0":{[^}]*}' /tmp/api.out | grep -o '"requests":[0-9]*' | cut -d: -f2)
    tb_value cli/counters_before "$(cat /tmp/api.out)"
    tb_check cli/socket-mode "$( [ "$(stat -c %a $sock)" = 600 ] && echo pass || echo fail)" "$(stat -c '%a %F' $sock)"
    expect_status cli/ping 200 GET vmm.ping
    grep -q '"version"' /tmp/api.out && tb_check cli/ping-version pass "$(cat /tmp/api.out)" || tb_check cli/ping-version fail "$(cat /tmp/api.out)"
    viaductctl vm --api-socket $sock ping >/tmp/api.ctl 2>&1 && tb_check cli/viaductctl-ping pass "$(cat /tmp/api.ctl)" ||
        tb_check cli/viaductctl-ping fail "$(cat /tmp/api.ctl)"
    # vm.info: every device's BDF is one the guest listed, with the right ids.
    expect_status cli/info 200 GET vm.info
    cp /tmp/api.out /tmp/api.info.compact
    tb_value cli/info "$(cat /tmp/api.out)"
    viaductctl vm --api-socket $sock info --json >/tmp/api.info 2>&1
    grep -q '"state": "Running"' /tmp/api.info && tb_check cli/info-running pass "Running" || tb_check cli/info-running fail "$(head -c 300 /tmp/api.info)"
    local bad="" seen="" b
    for b in $(grep -o '"bdf": "[^"]*"' /tmp/api.info | cut -d'"' -f4); do
        seen="$seen $b"
        grep -q "^GUEST-PCI $b " "$log" || bad="$bad $b"
    done
    tb_value cli/info_bdfs "$seen"
    tb_value cli/guest_pci "$(grep '^GUEST-PCI' "$log" | tr -d '\r' | cut -d' ' -f2- | tr '\n' ';')"
    [ -n "$seen" ] && [ -z "$bad" ] && tb_check cli/info-bdfs-match-guest pass "$seen" || tb_check cli/info-bdfs-match-guest fail "not in the guest:$bad (vm.info:$seen)"
    # Each kind's BDF also has the right ids in the guest: nvme0 is 1b36:0010, disk0 1af4:1042.
    b=$(dev_bdf nvme0)
    [ -z "$nvme_arg" ] || { grep -q "^GUEST-PCI $b 1b36:0010" "$log" && tb_check cli/info-nvme-bdf pass "$b" || tb_check cli/info-nvme-bdf fail "nvme0 at '$b'"; }
    b=$(dev_bdf disk0)
    grep -q "^GUEST-PCI $b 1af4:1042" "$log" && tb_check cli/info-disk-bdf pass "$b" || tb_check cli/info-disk-bdf fail "disk0 at '$b'"
    # vm.counters: the disk's requests grow across the guest's read.
    wait_log "$log" GUEST-READ-DONE 120
    api GET vm.counters >/dev/null
    c2=$(grep -o '"disk0":{[^}]*}' /tmp/api.out | grep -o '"requests":[0-9]*' | cut -d: -f2)
    tb_value cli/counters_after "$(cat /tmp/api.out)"
    [ -n "$c1" ] && [ -n "$c2" ] && [ "$c2" -ge $((c1 + 200)) ] && tb_check cli/counters-disk-requests pass "$c1 -> $c2" ||
        tb_check cli/counters-disk-requests fail "disk0 requests '$c1' -> '$c2' across a 1 MiB O_DIRECT read"
    viaductctl vm --api-socket $sock counters >/tmp/api.ctl 2>&1 && grep -q "disk0" /tmp/api.ctl &&
        tb_check cli/viaductctl-counters pass "$(grep -c . /tmp/api.ctl) lines" || tb_check cli/viaductctl-counters fail "$(head -c 300 /tmp/api.ctl)"
    # Pause / resume: the guest prints its uptime every 0.5 s.
    wait_log "$log" '^CLK' 60; sleep 2
    tb_now; w1=$TB_NOW_MS; g1=$(last_clk "$log")
    expect_status cli/pause 204 PUT vm.pause
    expect_status cli/pause-again 409 PUT vm.pause
    api GET vm.info >/dev/null; grep -q '"state":"Paused"' /tmp/api.out && tb_check cli/info-paused pass "Paused" || tb_check cli/info-paused fail "$(head -c 200 /tmp/api.out)"
    n_before=$(clk_lines "$log")
    sleep 8
    n_after=$(clk_lines "$log")
    [ "$n_before" = "$n_after" ] && tb_check cli/paused-guest-silent pass "$n_before CLK lines before and after 8 s" ||
        tb_check cli/paused-guest-silent fail "$n_before -> $n_after CLK lines while paused"
    viaductctl vm --api-socket $sock resume >/tmp/api.ctl 2>&1 && tb_check cli/resume pass "$(cat /tmp/api.ctl)" || tb_check cli/resume fail "$(cat /tmp/api.ctl)"
    i=0; while [ "$(clk_lines "$log")" -lt $((n_after + 3)) ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    tb_now; w2=$TB_NOW_MS; g2=$(last_clk "$log")
    tb_value cli/pause_wall_ms $((w2 - w1))
    tb_value cli/pause_guest_ms $((g2 - g1))
    [ $((g2 - g1)) -gt 0 ] && tb_check cli/clock-continues pass "guest clock +$((g2 - g1)) ms" || tb_check cli/clock-continues fail "guest clock $g1 -> $g2 ms"
    [ $((w2 - w1 - (g2 - g1))) -ge 5000 ] && tb_check cli/clock-stopped-while-paused pass "level 1 +$((w2 - w1)) ms, guest +$((g2 - g1)) ms" ||
        tb_check cli/clock-stopped-while-paused fail "level 1 +$((w2 - w1)) ms, guest +$((g2 - g1)) ms: the guest clock ran during the 8 s pause"
    expect_status cli/resume-again 409 PUT vm.resume
    # Bad requests: each refused, none stops the guest.
    expect_status bad/unknown-path 404 GET vm.nothing
    expect_status bad/outside-api 404 GET ../etc/passwd
    expect_status bad/wrong-method 405 GET vm.pause
    expect_status bad/bad-json 400 PUT vm.add-device '{"path": '
    expect_status bad/wrong-type 400 PUT vm.add-disk '{"path": 7}'
    expect_status bad/unknown-field 400 PUT vm.add-net '{"tap": "tap0", "colour": "red"}'
    expect_status bad/bad-bdf 400 PUT vm.add-device '{"path": "/sys/bus/pci/devices/0000:zz:00.0"}'
    expect_status bad/create-while-running 409 PUT vm.create "{\"payload\": {\"kernel\": \"$TB_L2_KERNEL\"}}"
    expect_status bad/hotplug-not-yet 501 PUT vm.add-device "{\"path\": \"/sys/bus/pci/devices/$TB_IGB_PF\"}"
    dd if=/dev/zero bs=1k count=100 2>/dev/null | tr '\0' 'a' >/tmp/api.big
    code=$(curl -s -m 30 -o /tmp/api.out -w '%{http_code}' --unix-socket $sock -X PUT --data-binary @/tmp/api.big http://localhost/api/v1/vm.create)
    [ "$code" = 413 ] && tb_check bad/huge-body pass "$code" || tb_check bad/huge-body fail "got '$code'"
    code=$(curl -s -m 30 -o /tmp/api.out -w '%{http_code}' --unix-socket $sock -H "X-Big: $(head -c 9000 /tmp/api.big)" http://localhost/api/v1/vmm.ping)
    [ "$code" = 431 ] && tb_check bad/huge-head pass "$code" || tb_check bad/huge-head fail "got '$code'"
    code=$(curl -s -m 30 -o /tmp/api.out -w '%{http_code}' --unix-socket $sock -X 'BAD METHOD' http://localhost/api/v1/vmm.ping)
    case "$code" in 4*|5*) tb_check bad/malformed-request-line pass "$code" ;; *) tb_check bad/malformed-request-line fail "got '$code'" ;; esac
    code=$(curl -s -m 30 -o /tmp/api.out -w '%{http_code}' --unix-socket $sock -X PUT -H 'Transfer-Encoding: chunked' -d '{}' http://localhost/api/v1/vm.pause)
    [ "$code" = 501 ] && tb_check bad/chunked pass "$code" || tb_check bad/chunked fail "got '$code'"
    # A client that promises 100 bytes and sends 2: 408 after the server's deadline.
    code=$(curl -s -m 30 -o /tmp/api.out -w '%{http_code}' --unix-socket $sock -X PUT -H 'Content-Length: 100' -d '{}' http://localhost/api/v1/vm.add-disk)
    [ "$code" = 408 ] && tb_check bad/half-open-client pass "$code" || tb_check bad/half-open-client fail "got '$code'"
    # Clients that leave mid-request, and more at once than the server serves: 503 for some.
    pids=""
    for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
        curl -s -m 30 -o /dev/null -w '%{http_code}\n' --unix-socket $sock -X PUT -H 'Content-Length: 100' -d '{}' \
            http://localhost/api/v1/vm.add-disk >>/tmp/api.many &
        pids="$pids $!"
    done
    timeout 1 curl -s --unix-socket $sock -X PUT -H 'Content-Length: 100' -d '{}' http://localhost/api/v1/vm.add-net >/dev/null 2>&1
    for i in $pids; do wait $i; done
    tb_value bad/many_clients "$(sort /tmp/api.many | uniq -c | tr -s ' \n' ' ')"
    grep -q 503 /tmp/api.many && ! grep -qv '^\(408\|503\)$' /tmp/api.many && tb_check bad/too-many-clients pass "408 and 503 only" ||
        tb_check bad/too-many-clients fail "$(sort /tmp/api.many | uniq -c | tr -s ' \n' ' ')"
    rm -f /tmp/api.many
    # The guest kept running through all of it.
    n_before=$(clk_lines "$log"); sleep 2; n_after=$(clk_lines "$log")
    [ "$n_after" -gt "$n_before" ] && tb_check bad/guest-still-running pass "CLK lines $n_before -> $n_after" ||
        tb_check bad/guest-still-running fail "no new CLK line after the bad requests ($n_before)"
    expect_status bad/ping-after 200 GET vmm.ping
    # The power button.
    wait_log "$log" GUEST-WAITING-FOR-POWER-BUTTON 120 || tb_check cli/guest-waits-for-button fail "not seen"
    sleep 1
    viaductctl vm --api-socket $sock power-button >/tmp/api.ctl 2>&1 && tb_check cli/power-button pass "$(cat /tmp/api.ctl)" ||
        tb_check cli/power-button fail "$(cat /tmp/api.ctl)"
}

drive_cli &
driver=$!
tb_run_l2 $run 420 /tmp/api-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ --cmdline "@CMDLINE@" \
    --memory 256M --api-socket $sock --disk path=$img,id=disk0 --rng $nvme_arg --log-level info
wait $driver
[ -e $sock ] && tb_check cli/socket-removed fail "$sock still there after exit" || tb_check cli/socket-removed pass "gone"
# Back on nvme, with no driver_override left behind (api-only needs it off vfio-pci).
tb_unbind "$TB_NVME"; echo "$TB_NVME" >/sys/bus/pci/drivers_probe

# ---- api-only: viaduct --api-socket alone ------------------------------------------------
run=api-only
cat >/tmp/api-only-guest.sh <<'GUEST'
g_check api-booted pass "$(cat /proc/cmdline)"
g_value nproc "$(grep -c ^processor /proc/cpuinfo)"
g_value memtotal_kb "$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
GUEST
rm -f $sock
drive_only() {
    local initrd=/tmp/l2/$run/initrd.cpio i=0 cfg
    while [ ! -S $sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    expect_status only/info-before-create 409 GET vm.info
    expect_status only/boot-before-create 409 PUT vm.boot
    expect_status only/create-bad-memory 400 PUT vm.create "{\"payload\": {\"kernel\": \"$TB_L2_KERNEL\"}, \"memory\": {\"size\": 1000}}"
    expect_status only/create-missing-kernel 400 PUT vm.create '{"payload": {"kernel": "/no/such/kernel"}}'
    # A device on its host driver: the config is fine, the boot fails with the command line's
    # bind hint, and viaduct stays for a better config.
    expect_status only/create-unbound-device 204 PUT vm.create "{\"payload\": {\"kernel\": \"$TB_L2_KERNEL\"}, \"devices\": [{\"path\": \"/sys/bus/pci/devices/$TB_NVME\"}], \"serial\": {\"mode\": \"Off\"}}"
    expect_status only/boot-unbound-device 500 PUT vm.boot
    grep -q 'vfio-pci' /tmp/api.out && tb_check only/bind-hint pass "$(cat /tmp/api.out)" || tb_check only/bind-hint fail "$(cat /tmp/api.out)"
    expect_status only/info-after-failed-boot 200 GET vm.info
    cfg="{\"payload\": {\"kernel\": \"$TB_L2_KERNEL\", \"initramfs\": \"$initrd\", \"cmdline\": \"$TB_L2_CMDLINE\"},
          \"cpus\": {\"boot_vcpus\": 1}, \"memory\": {\"size\": 268435456}, \"serial\": {\"mode\": \"Tty\"}}"
    expect_status only/create 204 PUT vm.create "$cfg"
    expect_status only/info-created 200 GET vm.info
    grep -q '"state":"Created"' /tmp/api.out && tb_check only/state-created pass "Created" || tb_check only/state-created fail "$(head -c 200 /tmp/api.out)"
    viaductctl vm --api-socket $sock boot >/tmp/api.ctl 2>&1 && tb_check only/boot pass "$(cat /tmp/api.ctl)" || tb_check only/boot fail "$(cat /tmp/api.ctl)"
}
drive_only &
driver=$!
tb_run_l2 $run 300 /tmp/api-only-guest.sh -- viaduct --api-socket $sock --log-level info
wait $driver

# ---- api-shutdown: vm.shutdown keeps viaduct, vmm.shutdown ends it ------------------------
run=api-shutdown
dir=/tmp/l2/$run; mkdir -p $dir
tb_l2_initrd /tmp/api-only-guest.sh $dir/initrd.cpio
rm -f $sock
viaduct --api-socket $sock --log-level info >$dir/console.log 2>&1 </dev/null &
vpid=$!
i=0; while [ ! -S $sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
expect_status shutdown/create 204 PUT vm.create "{\"payload\": {\"kernel\": \"$TB_L2_KERNEL\", \"initramfs\": \"$dir/initrd.cpio\", \"cmdline\": \"$TB_L2_CMDLINE\"}, \"memory\": {\"size\": 268435456}, \"serial\": {\"mode\": \"Off\"}}"
expect_status shutdown/boot 204 PUT vm.boot
expect_status shutdown/vm-shutdown 204 PUT vm.shutdown
sleep 1
tb_running $vpid && tb_check shutdown/vmm-stays pass "pid $vpid" || tb_check shutdown/vmm-stays fail "viaduct ended after vm.shutdown"
expect_status shutdown/info 200 GET vm.info
grep -q '"state":"Shutdown"' /tmp/api.out && tb_check shutdown/state-shutdown pass "Shutdown" || tb_check shutdown/state-shutdown fail "$(head -c 200 /tmp/api.out)"
expect_status shutdown/vmm-shutdown 204 PUT vmm.shutdown
i=0; while tb_running $vpid && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
wait $vpid; rc=$?
[ "$rc" = 0 ] && tb_check shutdown/exit-0 pass "status 0" || tb_check shutdown/exit-0 fail "status $rc"
sed "s/^/l2[$run]| /" $dir/console.log
rm -f $img /tmp/api.big
true
