# tb-description: benchmark (not a test): control-socket round trip, viaduct's HTTP API (vm.info, vmm.ping) vs QEMU's QMP (query-status), same L1 boot, each with a running guest
# tb-timeout: 600
# tb-needs: qemu
# tb-suite: bench
# tb-cargo: --release -p viaduct --example api_rtt
# tb-bin: release/examples/api_rtt:/usr/bin/api-rtt
# tb-run: viaduct qemu
# tb-check: viaduct/ready qemu/ready viaduct/*_us qemu/*_us viaduct/power-button qemu/power-button
# Each VMM boots the same guest (1 vCPU, 256 MiB), which waits for its ACPI power button.
# While it waits, api-rtt (examples/api_rtt.rs, one process, no fork per request) times
# 200 requests; then the power button ends the guest (viaduct: vm.power-button, QEMU:
# system_powerdown). Metrics (tb_bench, median of the 200 in each VMM's one round):
#   status_rtt_us        viaduct: GET vm.info, a connection each (the API serves one request
#                        per connection); QEMU: query-status on an open QMP session
#   fresh_status_rtt_us  both from a new connection: viaduct the same; QEMU connect +
#                        greeting + qmp_capabilities + query-status
#   ping_rtt_us          viaduct only: GET vmm.ping (no VM state read)
# Hot-add latency (scenario of the hot-plug work) is not measured here.
# shellcheck shell=dash

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { tb_skip "QEMU is not in level 1"; exit 0; }
command -v api-rtt >/dev/null || { tb_skip "api-rtt is not in level 1 (cargo build --release --example api_rtt)"; exit 0; }

n=200
sock=/tmp/api-bench.sock
qmp=/tmp/api-bench-qmp.sock

cat >/tmp/api-bench-guest.sh <<'GUEST'
modprobe button 2>/dev/null
modprobe evdev 2>/dev/null
ev=$(awk '/^N: Name="Power Button"/ {p = 1} p && /^H: Handlers=/ {for (i = 1; i <= NF; i++) if ($i ~ /^event/) {print $i; exit}}' /proc/bus/input/devices)
g_value power_button_event "$ev"
echo "GUEST-WAITING-FOR-POWER-BUTTON"
if [ -n "$ev" ] && dd if=/dev/input/$ev of=/dev/null bs=24 count=1 2>/dev/null; then
    g_check power-button pass "$ev"
else
    g_check power-button fail "no Power Button input device"
fi
GUEST

# wait_log FILE PATTERN SECS
wait_log() {
    local i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1)); [ "$i" -gt $(($3 * 10)) ] && return 1
        sleep 0.1
    done
}

# bench METRIC VMM CMD...: runs api-rtt, records its median.
bench() {
    local metric=$1 vmm=$2 out
    shift 2
    if out=$("$@" 2>&1); then
        tb_value "$vmm/$metric" "$out"
        tb_bench "$metric" "$vmm" "$(echo "$out" | sed -n 's/.*median_us=\([0-9]*\).*/\1/p')"
    else
        tb_check "$vmm/$metric" fail "$out"
    fi
}

drive_viaduct() {
    wait_log /tmp/l2/viaduct/console.log GUEST-WAITING-FOR-POWER-BUTTON 240 || { tb_check viaduct/ready fail "guest not waiting"; return; }
    bench status_rtt_us viaduct api-rtt http $sock vm.info $n
    bench fresh_status_rtt_us viaduct api-rtt http $sock vm.info $n
    bench ping_rtt_us viaduct api-rtt http $sock vmm.ping $n
    viaductctl vm --api-socket $sock power-button >/dev/null 2>&1
}

drive_qemu() {
    wait_log /tmp/l2/qemu/console.log GUEST-WAITING-FOR-POWER-BUTTON 240 || { tb_check qemu/ready fail "guest not waiting"; return; }
    bench status_rtt_us qemu api-rtt qmp $qmp $n
    bench fresh_status_rtt_us qemu api-rtt qmp-fresh $qmp $n
    api-rtt qmp-cmd $qmp system_powerdown >/dev/null 2>&1
}

rm -f $sock $qmp
tb_settle_memory
drive_viaduct &
d=$!
tb_run_l2 viaduct 300 /tmp/api-bench-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --api-socket $sock
wait $d

tb_settle_memory
drive_qemu &
d=$!
tb_qemu_l2 qemu 300 /tmp/api-bench-guest.sh -- -qmp unix:$qmp,server=on,wait=off
wait $d
rm -f $sock $qmp
true
