# tb-description: viaduct boots the Debian kernel + busybox initramfs with 1 and 2 vCPUs; the guest sees CPUs, RAM, RTC date; poweroff exits 0
# tb-timeout: 420
# Runs viaduct as the L2 VMM (no devices passed through). For each vCPU count the guest checks
# what it sees and powers off; tests/boot.rs asserts RUN/vmm_rc is 0 (poweroff ends viaduct).

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

mem_mib=256
for n in 1 2; do
    run=viaduct-${n}cpu
    now=$(date +%s)
    cat >/tmp/boot-guest-$n.sh <<GUEST
WANT_CPUS=$n
WANT_MEM_KB=$((mem_mib * 1024))
HOST_EPOCH=$now
GUEST
    cat >>/tmp/boot-guest-$n.sh <<'GUEST'
cpus=$(grep -c '^processor' /proc/cpuinfo)
g_value cpus "$cpus"
[ "$cpus" = "$WANT_CPUS" ] && g_check cpu-count pass "$cpus CPUs" || g_check cpu-count fail "saw $cpus CPUs, want $WANT_CPUS"
online=$(cat /sys/devices/system/cpu/online)
g_value cpus_online "$online"
# RAM: what the kernel was told it has (the "Memory: avail/total" boot line) and MemTotal.
total_kb=$(dmesg | sed -n 's/.*Memory: [0-9]*K\/\([0-9]*\)K available.*/\1/p' | head -n1)
memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
g_value mem_total_kb "$total_kb"
g_value memtotal_kb "$memtotal_kb"
# The boot line counts RAM pages minus the legacy BIOS hole (385 KiB) and the zero page.
lo=$((WANT_MEM_KB - 1024)); hi=$WANT_MEM_KB
if [ -n "$total_kb" ] && [ "$total_kb" -ge "$lo" ] && [ "$total_kb" -le "$hi" ] && [ "$memtotal_kb" -le "$hi" ] && [ "$memtotal_kb" -gt $((WANT_MEM_KB * 3 / 4)) ]; then
    g_check memory-size pass "kernel saw ${total_kb} kB of ${WANT_MEM_KB} kB, MemTotal ${memtotal_kb} kB"
else
    g_check memory-size fail "kernel saw '${total_kb}' kB, MemTotal ${memtotal_kb} kB, want about ${WANT_MEM_KB} kB"
fi
# RTC: the CMOS clock must read the host's date (UTC).
rtc_epoch=$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null)
g_value rtc_name "$(cat /sys/class/rtc/rtc0/name 2>/dev/null)"
g_value rtc_date "$(cat /sys/class/rtc/rtc0/date 2>/dev/null) $(cat /sys/class/rtc/rtc0/time 2>/dev/null)"
g_value guest_date "$(date -u '+%Y-%m-%d %H:%M:%S')"
g_value host_epoch_at_start "$HOST_EPOCH"
if [ -n "$rtc_epoch" ] && [ "$rtc_epoch" -ge $((HOST_EPOCH - 5)) ] && [ "$rtc_epoch" -le $((HOST_EPOCH + 600)) ]; then
    g_check rtc-date pass "rtc0 $rtc_epoch, host at start $HOST_EPOCH"
else
    g_check rtc-date fail "rtc0 '$rtc_epoch', host at start $HOST_EPOCH"
fi
now=$(date +%s)
[ "$now" -ge $((HOST_EPOCH - 5)) ] && [ "$now" -le $((HOST_EPOCH + 600)) ] &&
    g_check system-date pass "$(date -u)" || g_check system-date fail "guest date $(date -u), host epoch $HOST_EPOCH"
# PCI: the root complex (config ports + ECAM from MCFG) shows the host bridge at 00:00.0.
g_value pci_devices "$(ls /sys/bus/pci/devices 2>/dev/null | tr '\n' ' ')"
hb=/sys/bus/pci/devices/0000:00:00.0
if [ -e $hb ]; then
    g_check pci-host-bridge pass "00:00.0 $(cat $hb/vendor):$(cat $hb/device) class $(cat $hb/class)"
else
    g_check pci-host-bridge fail "no 0000:00:00.0; devices: $(ls /sys/bus/pci/devices 2>/dev/null | tr '\n' ' ')"
fi
g_value pci_ecam "$(dmesg | grep -m1 -o 'MMCONFIG for domain.*')"
g_value kernel "$(uname -r)"
g_value acpi "$(ls /sys/firmware/acpi/tables 2>/dev/null | tr '\n' ' ')"
GUEST
    tb_run_l2 "$run" 180 /tmp/boot-guest-$n.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
        --cmdline "@CMDLINE@" --cpus "$n" --memory "${mem_mib}M" --log-level info
done

# Reboot: with --on-reboot exit, a guest `reboot -f` (ACPI reset register) ends viaduct with 0.
cat >/tmp/boot-guest-reboot.sh <<'GUEST'
g_check reboot-requested pass "calling reboot -f"
echo "@@G done rc=0"
sync
reboot -f
sleep 30
GUEST
tb_run_l2 viaduct-reboot 180 /tmp/boot-guest-reboot.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory "${mem_mib}M" --on-reboot exit --log-level info
if grep -q "guest rebooted: exiting" /tmp/l2/viaduct-reboot/console.log; then
    tb_check viaduct-reboot/reboot-exit pass "viaduct saw the reset and exited"
else
    tb_check viaduct-reboot/reboot-exit fail "no 'guest rebooted' in viaduct's log"
fi
true
