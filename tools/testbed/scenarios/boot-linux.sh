# tb-description: viaduct boots the Debian kernel + busybox initramfs with 1 and 2 vCPUs (hugepages=on, shared=on); the guest sees CPUs, RAM, RTC date; poweroff exits 0; reboot exits or restarts; --serial file/off
# tb-timeout: 720
# tb-run: viaduct-1cpu viaduct-2cpu viaduct-reboot viaduct-restart serial-off
# tb-check: viaduct-1cpu/cpu-count viaduct-1cpu/memory-size viaduct-1cpu/rtc-date viaduct-1cpu/system-date
# tb-check: viaduct-1cpu/pci-host-bridge viaduct-1cpu/hugepages
# tb-check: viaduct-2cpu/cpu-count viaduct-2cpu/memory-size viaduct-2cpu/rtc-date viaduct-2cpu/system-date
# tb-check: viaduct-2cpu/pci-host-bridge viaduct-2cpu/shared-memory
# tb-check: hugepages-none/error
# tb-check: viaduct-reboot/reboot-requested viaduct-reboot/reboot-exit viaduct-reboot/serial-file
# tb-check: viaduct-restart/first-boot viaduct-restart/second-boot viaduct-restart/nvram viaduct-restart/restarted
# tb-check: serial-off/quiet-poweroff
# Runs viaduct as the L2 VMM (no devices passed through). tests/boot.rs asserts the results:
#   viaduct-1cpu    --memory size=256M,hugepages=on: guest checks, L1 sees huge pages in use
#   viaduct-2cpu    --memory size=256M,shared=on: guest checks, L1 sees RAM mapped shared (memfd)
#   hugepages-none  hugepages=on with no free huge pages: one-line error, status 1, no boot
#   viaduct-reboot  --on-reboot exit --serial file=F: guest `reboot -f` ends viaduct with 0
#                   after one boot that never reached its poweroff; the guest console is in F,
#                   not on stdout
#   viaduct-restart --on-reboot restart, 1 vCPU: the guest leaves a mark in CMOS NVRAM and
#                   reboots; the restarted guest finds it and powers off: two boots, status 0
#                   (1 vCPU: 2-vCPU guests hang at AP bring-up now and then in this testbed,
#                   see docs/known-issues.md; viaduct-2cpu keeps the 2-vCPU boot)
#   serial-off      --serial off: the guest boots, writes a token to a virtio-blk disk (level 1
#                   finds it in the image) and powers off; nothing on stdout, status 0
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

mem_mib=256
hp_sysctl=/proc/sys/vm/nr_hugepages

# sample_vmm: every 0.2 s until killed, "HUGEPAGES_FREE SHARED_MAPS" where SHARED_MAPS counts
# the running viaduct's guest-RAM memfd mappings that are shared (rw-s).
sample_vmm() {
    local p hp m
    while :; do
        p=$(pidof viaduct | cut -d' ' -f1)
        hp=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
        m=0
        [ -n "$p" ] && m=$(grep -c 'rw-s.*memfd:viaduct-guest-ram' "/proc/$p/maps" 2>/dev/null)
        echo "$hp ${m:-0}"
        sleep 0.2
    done
}

# boot_direct RUN TIMEOUT GUEST_SCRIPT VIADUCT_ARGS...: like tb_run_l2, but viaduct's stdout
# and stderr are kept apart (for --serial file=/off). Sets BOOT_RC.
boot_direct() {
    local run=$1 timeout=$2 script=$3 dir pid t0
    shift 3
    dir=/tmp/l2/$run; mkdir -p "$dir"
    tb_l2_initrd "$script" "$dir/initrd.cpio" || { tb_check "$run/boot" fail "cannot build the guest initramfs"; return 1; }
    echo "tb: l2[$run] viaduct $*"
    t0=$(tb_now_ms)
    viaduct --kernel "$TB_L2_KERNEL" --initramfs "$dir/initrd.cpio" --cmdline "$TB_L2_CMDLINE" "$@" \
        >"$dir/stdout" 2>"$dir/stderr" </dev/null &
    pid=$!
    while tb_running "$pid"; do
        if [ $(($(tb_now_ms) - t0)) -gt $((timeout * 1000)) ]; then
            echo "tb: l2[$run] timed out after ${timeout}s: killing viaduct"
            tb_check "$run/timeout" fail "viaduct still running after ${timeout}s"
            kill -KILL "$pid"
            break
        fi
        sleep 0.25
    done
    wait "$pid"; BOOT_RC=$?
    # A guest that triple-faulted before its init (now and then in this testbed, as tb_run_l2
    # says) is started once more, loudly, as tb_run_l2 does.
    local con="$dir/stdout" a
    for a in "$@"; do case "$a" in file=*) con=${a#file=} ;; esac; done
    if [ -z "$BOOT_DIRECT_RETRYING" ] && grep -q 'triple fault' "$dir/stderr" && ! grep -q '@@G init' "$con" 2>/dev/null; then
        echo "tb: l2[$run] !!! guest triple-faulted before init: starting it once more"
        sed "s/^/l2[$run, first try] stderr| /" "$dir/stderr"
        cp "$dir/stderr" "$dir/stderr-first-try"
        [ "$con" != "$dir/stdout" ] && rm -f "$con"
        tb_retry l2-triple-fault "$TB_SCENARIO/$run" "guest triple-faulted before init; first log in $dir/stderr-first-try"
        BOOT_DIRECT_RETRYING=1
        boot_direct "$run" "$timeout" "$script" "$@"
        BOOT_DIRECT_RETRYING=""
        return
    fi
    sed "s/^/l2[$run] stdout| /" "$dir/stdout"
    sed "s/^/l2[$run] stderr| /" "$dir/stderr"
    tb_value "$run/vmm_rc" "$BOOT_RC"
    tb_value "$run/wall_ms" "$(($(tb_now_ms) - t0))"
}

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
    if [ "$n" = 1 ]; then
        # 128 pages back 256 MiB; a few spare. L1 may not find that many contiguous pages.
        echo $((mem_mib / 2 + 8)) >$hp_sysctl
        hp_before=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
        tb_value "$run/hugepages_free_before" "$hp_before"
        memopt="size=${mem_mib}M,hugepages=on"
    else
        memopt="size=${mem_mib}M,shared=on"
    fi
    sample_vmm >/tmp/boot-samples-$n &
    sampler=$!
    tb_run_l2 "$run" 180 /tmp/boot-guest-$n.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
        --cmdline "@CMDLINE@" --cpus "$n" --memory "$memopt" --log-level info
    kill "$sampler"; wait "$sampler" 2>/dev/null
    if [ "$n" = 1 ]; then
        hp_min=$(awk 'NR == 1 || $1 < m {m = $1} END {print m}' /tmp/boot-samples-$n)
        used=$((hp_before - hp_min))
        tb_value "$run/hugepages_used_peak" "$used"
        # The guest touches a good part of its RAM while booting (kernel, initramfs, page tables).
        if [ "$hp_before" -ge $((mem_mib / 2)) ] && [ "$used" -ge 8 ]; then
            tb_check "$run/hugepages" pass "up to $used of $hp_before free 2 MiB huge pages used by the guest"
        else
            tb_check "$run/hugepages" fail "free huge pages before $hp_before, lowest during the run $hp_min"
        fi
    else
        shared=$(awk '$2 > m {m = $2} END {print m + 0}' /tmp/boot-samples-$n)
        tb_value "$run/shared_ram_mappings" "$shared"
        if [ "$shared" -ge 1 ]; then
            tb_check "$run/shared-memory" pass "guest RAM mapped MAP_SHARED from the viaduct-guest-ram memfd"
        else
            tb_check "$run/shared-memory" fail "no rw-s memfd:viaduct-guest-ram mapping seen in viaduct's maps"
        fi
    fi
done

# hugepages=on with none free: refused before anything runs, one clear line, status 1.
echo 0 >$hp_sysctl
viaduct --kernel "$TB_L2_KERNEL" --memory "size=${mem_mib}M,hugepages=on" >/tmp/hp-none.out 2>/tmp/hp-none.err </dev/null
rc=$?
sed 's/^/hugepages-none stderr| /' /tmp/hp-none.err
tb_value hugepages-none/vmm_rc "$rc"
lines=$(wc -l </tmp/hp-none.err)
if [ "$rc" = 1 ] && [ "$lines" = 1 ] && grep -q '^viaduct: error: .*nr_hugepages' /tmp/hp-none.err \
    && ! grep -q panick /tmp/hp-none.err; then
    tb_check hugepages-none/error pass "$(cat /tmp/hp-none.err)"
else
    tb_check hugepages-none/error fail "rc=$rc, $lines stderr lines: $(head -c 300 /tmp/hp-none.err)"
fi

# Reboot with --on-reboot exit and the console in a file: viaduct ends with 0 on its own.
cat >/tmp/boot-guest-reboot.sh <<'GUEST'
g_check reboot-requested pass "calling reboot -f"
sync
reboot -f
sleep 30
GUEST
boot_direct viaduct-reboot 180 /tmp/boot-guest-reboot.sh --memory "${mem_mib}M" --on-reboot exit \
    --serial file=/tmp/l2/viaduct-reboot/serial.log --log-level info
d=/tmp/l2/viaduct-reboot
sed "s/^/l2[viaduct-reboot] serial.log| /" $d/serial.log
# What the guest showed: it booted once, asked for the reboot, and never got to its own
# poweroff (`@@G done`, which it reaches only if `reboot -f` returned): so status 0 came from
# the reset, and no second boot means viaduct did not restart it.
inits=$(grep -c '@@G init' $d/serial.log)
tb_value viaduct-reboot/guest_inits "$inits"
if [ "$BOOT_RC" = 0 ] && [ "$inits" = 1 ] && grep -q '@@G check reboot-requested' $d/serial.log &&
    ! grep -q '@@G done' $d/serial.log; then
    tb_check viaduct-reboot/reboot-exit pass "one boot, reboot requested, no poweroff; viaduct exited with 0"
else
    tb_check viaduct-reboot/reboot-exit fail "rc=$BOOT_RC, $inits guest boots, poweroff reached: $(grep -c '@@G done' $d/serial.log)"
fi
if grep -q '@@G init' $d/serial.log && grep -q 'reboot-requested' $d/serial.log && [ ! -s $d/stdout ]; then
    tb_check viaduct-reboot/serial-file pass "guest console in the file ($(wc -c <$d/serial.log) bytes), stdout empty"
else
    tb_check viaduct-reboot/serial-file fail "serial.log $(wc -c <$d/serial.log 2>/dev/null) bytes, stdout $(wc -c <$d/stdout) bytes"
fi

# Reboot with --on-reboot restart: CMOS NVRAM survives the reset (battery-backed, as on a
# PC), so the guest tells its boots apart: the first leaves a mark and reboots, the second
# finds it and powers off.
cat >/tmp/boot-guest-restart.sh <<'GUEST'
nv=$(ls /sys/bus/nvmem/devices/cmos_nvram*/nvmem 2>/dev/null | head -n1)
[ -n "$nv" ] || { g_check nvram fail "no cmos_nvram nvmem device"; exit 1; }
mark=$(dd if="$nv" bs=1 count=1 2>/dev/null | od -An -tx1 | tr -d ' 
')
if [ "$mark" = a5 ]; then
    g_check second-boot pass "CMOS mark from the first boot found after the restart"
    printf '\000' | dd of="$nv" bs=1 count=1 conv=notrunc 2>/dev/null
else
    printf '\245' | dd of="$nv" bs=1 count=1 conv=notrunc 2>/dev/null
    g_check first-boot pass "mark '$mark' -> a5 in CMOS NVRAM, calling reboot -f"
    sync
    reboot -f
    sleep 30
fi
GUEST
tb_run_l2 viaduct-restart 300 /tmp/boot-guest-restart.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --cpus 1 --memory "${mem_mib}M" --on-reboot restart --log-level info
log=/tmp/l2/viaduct-restart/console.log
boots=$(grep -c '@@G init' $log)
tb_value viaduct-restart/boots "$boots"
if [ "$boots" = 2 ]; then
    tb_check viaduct-restart/restarted pass "the guest booted twice in one viaduct run"
else
    tb_check viaduct-restart/restarted fail "$boots guest boots"
fi

# --serial off: the guest runs (it leaves a token on a disk, the only trace it can leave) and
# powers off; nothing reaches stdout.
token="VIADUCT-SERIAL-OFF $TB_RUN_ID-$$"
img=/tmp/serial-off.img
rm -f $img; dd if=/dev/zero of=$img bs=1M count=1 2>/dev/null
cat >/tmp/boot-guest-off.sh <<GUEST
g_wait_for /dev/vda 30
printf '%s\n' '$token' | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null
GUEST
boot_direct serial-off 180 /tmp/boot-guest-off.sh --memory "${mem_mib}M" --serial off --disk "path=$img" --log-level info
d=/tmp/l2/serial-off
got=$(head -n1 $img)
tb_value serial-off/disk_line "$got"
if [ "$BOOT_RC" = 0 ] && [ "$got" = "$token" ] && [ ! -s $d/stdout ] && ! grep -q '@@G' $d/stderr; then
    tb_check serial-off/quiet-poweroff pass "the guest wrote its token and powered off; stdout empty"
else
    tb_check serial-off/quiet-poweroff fail "rc=$BOOT_RC, disk holds '$got', stdout $(wc -c <$d/stdout) bytes"
fi
rm -f $img
echo 0 >$hp_sysctl
true
