# tb-description: tool (not in the suite): multi-vCPU guest boots under viaduct and QEMU in one level-1 boot, counting guests that hang before init (AP bring-up)
# tb-needs: qemu
# tb-timeout: 1500
# tb-check: initrd viaduct-*cpu qemu-*cpu
# Run (one chunk; pass --timeout, --script does not read tb-timeout):
#   flock /tmp/viaduct-testbed.lock tools/testbed/run --out target/testbed/smp-1 \
#       --script tools/testbed/experiments/smp-bringup.sh --timeout 1500 \
#       --env SMP_CPUS=2 --env SMP_BOOTS=30
# Settings (--env): SMP_CPUS (vCPU counts, "2 4"), SMP_VMMS ("viaduct qemu"), SMP_BOOTS (boots
# per VMM and vCPU count, 30), SMP_DEADLINE (seconds without the guest's init before a boot
# counts as hung, 120), SMP_BUDGET (seconds: no new round starts after this, 1200, so one
# chunk holds the testbed lock ~20 minutes), SMP_CMDLINE_EXTRA (added to the guest's
# command line after the scenarios' quiet one and nokaslr; e.g. "ignore_loglevel" shows the
# whole boot on the console, at ~2x the boot time), SMP_TRACE (1: level 1's kvm_apic_ipi
# tracepoint during every boot, the INIT/SIPI sequence printed for a hung guest),
# SMP_DIAG_FIRST (1: the first boot of each kind holds 20 s after init and gets the hang
# report, to see what a healthy guest looks like and that the report works), SMP_KLOG_LINES
# (the guest log's last 40 records in the report).
# The VMMs take turns boot by boot (viaduct, QEMU, viaduct, ...) so both see the same level 1.
# Both boot the scenarios' kernel and initramfs directly (QEMU: -M q35 -accel kvm -cpu host
# -smp N, SeaBIOS) with 256 MiB; the guest prints its online CPUs and powers off.
# A boot is: ok (all CPUs online), partial (fewer CPUs online), hang (no init after
# SMP_DEADLINE s, VMM still running), reset (the VMM ended before the guest reported its CPUs,
# before or after init: a triple fault, which QEMU -no-reboot ends with status 0, or an error). For each hang it prints the console's last lines, each VMM thread's state, CPU
# time and kernel stack (twice, 2 s apart), level 1's KVM exits per vCPU over 3 s (reasons and
# guest RIPs) and the interrupts KVM accepted per APIC. The first boot of each kind is printed
# in full (l2[RUN]| lines), to compare a good boot under both VMMs. At the end, a table:
#   SMP | VMM  vCPUs  boots  ok  hangs  partial  resets  hang-rate
# and values VMM-Ncpu/{boots,hangs,partial,resets}, one value per boot too (RUN RESULT ...),
# and "booting RUN" as each boot starts (smp-bringup-table names the boot level 1 died in).
# Checks VMM-Ncpu pass when every boot of that kind came up with all its CPUs.
# shellcheck shell=dash  # busybox ash in level 1

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { tb_skip "QEMU is not in level 1"; exit 0; }

cpus_list=${SMP_CPUS:-2 4}
vmms=${SMP_VMMS:-viaduct qemu}
boots=${SMP_BOOTS:-30}
deadline=${SMP_DEADLINE:-120}
budget=${SMP_BUDGET:-1200}
# nokaslr: the guest's kernel sits where level 1's (the same build) would without KASLR, so
# level 1's /proc/kallsyms names the guest's RIPs and finds its log buffer (see guest_log).
cmdline="$TB_L2_CMDLINE nokaslr ${SMP_CMDLINE_EXTRA-}"
mem_mib=256
mem=${mem_mib}M
L1_TEXT=$(awk '$3 == "_text" {print $1; exit}' /proc/kallsyms)
LOG_BUF=$(awk '$3 == "__log_buf" {print $1; exit}' /proc/kallsyms)
case "$L1_TEXT$LOG_BUF" in *[!0-9a-f]*|'') L1_TEXT="" LOG_BUF="" ;; 0000000000000000*) L1_TEXT="" LOG_BUF="" ;; esac
tb_value settings "cpus=[$cpus_list] vmms=[$vmms] boots=$boots deadline=${deadline}s budget=${budget}s cmdline=[$cmdline]"

mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null
T=/sys/kernel/tracing
[ -d $T/events ] || mount -t tracefs none $T 2>/dev/null
[ -d $T/events/kvm ] || T=/sys/kernel/debug/tracing
[ -d $T/events/kvm ] || T=""
[ -n "$T" ] || echo "smp: no kvm tracepoints in level 1: hangs are reported without them"

# The guest: which CPUs came online, then power off (the generic init does that).
cat >/tmp/smp-guest.sh <<'GUEST'
g_value cpus_online "$(cat /sys/devices/system/cpu/online)"
g_value nproc "$(grep -c ^processor /proc/cpuinfo)"
# SMP_DIAG_FIRST: level 1 looks at a healthy guest the way it looks at a hung one.
grep -q smp_hold /proc/cmdline && sleep 20
GUEST
initrd=/tmp/smp-initrd.cpio
tb_l2_initrd /tmp/smp-guest.sh "$initrd" || { tb_check initrd fail "cannot build the guest initramfs"; exit 1; }

# trace_on EVENT...: a fresh trace buffer with only these kvm events on.
trace_on() {
    [ -n "$T" ] || return 0
    echo 0 >$T/tracing_on
    echo >$T/set_event
    echo >$T/trace
    local e
    echo 0 >$T/events/kvm/kvm_exit/filter
    for e in "$@"; do echo 1 >"$T/events/kvm/$e/enable" 2>/dev/null; done
    echo 1 >$T/tracing_on
}

# trace_boot: what is traced during every boot: IPIs (INIT/SIPI among them), exceptions KVM
# injects, and exits for a triple fault only (SVM's SHUTDOWN 0x7f, VMX's 2), which record
# the guest's RIP before KVM resets the vCPU (on SVM it does so before userspace sees it).
trace_boot() {
    [ -n "$T" ] && [ "${SMP_TRACE:-1}" = 1 ] || return 0
    trace_on kvm_apic_ipi kvm_inj_exception
    echo 'exit_reason == 127 || exit_reason == 2' >$T/events/kvm/kvm_exit/filter
    echo 1 >$T/events/kvm/kvm_exit/enable
}
trace_off() {
    [ -n "$T" ] || return 0
    echo 0 >$T/tracing_on
    echo >$T/set_event
}

# threads PID: one line per thread: name, state, utime+stime (ticks), last CPU, and the top
# of its kernel stack.
threads() {
    local t name rest st
    for t in /proc/"$1"/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) || continue
        # Fields after "(comm) ": state is 1st, utime 12th, stime 13th, processor 37th.
        rest=$(sed 's/^.*) //' "$t/stat" 2>/dev/null)
        # shellcheck disable=SC2086 # the stat fields are split on purpose
        set -- $rest
        st="state=$1 cpu_ticks=$((${12} + ${13}))"
        shift 36 2>/dev/null && st="$st on_cpu=$1"
        echo "  thread $(basename "$t") '$name' $st stack: $(head -n 4 "$t/stack" 2>/dev/null | awk '{printf "%s ", $2}')"
    done
}

# guest_log PID: the guest kernel's log (quiet or not), read from guest RAM through
# /proc/PID/mem: the printk ring's text lives in the static __log_buf (a 4-vCPU guest does not
# outgrow it), at the physical address of that symbol in level 1's kallsyms minus level 1's
# KASLR offset (the guest runs at 16 MiB, nokaslr). Guest RAM is the VMM's one read-write
# mapping of exactly the guest's size.
guest_log() {
    local range perms rest s e base=""
    [ -n "$LOG_BUF" ] || { echo "  (no __log_buf in level 1's kallsyms)"; return 0; }
    while read -r range perms rest; do
        s=${range%-*} e=${range#*-}
        case "$perms" in rw*) ;; *) continue ;; esac
        [ $((0x$e - 0x$s)) -eq $((mem_mib << 20)) ] && { base=$((0x$s)); break; }
    done <"/proc/$1/maps"
    [ -n "$base" ] || { echo "  (no $mem mapping in the VMM)"; return 0; }
    dd if="/proc/$1/mem" bs=4096 skip=$(((base + 0x$LOG_BUF - 0x$L1_TEXT + 0x1000000) / 4096)) count=33 2>/dev/null |
        strings -n 6
}

# symbolize: reads "COUNT vcpuN 0xRIP" lines, adds the kernel symbol+offset of each RIP
# (guest addresses without KASLR, looked up in level 1's kallsyms: the same kernel build).
symbolize() {
    local n v rip t want="" name at
    [ -n "$L1_TEXT" ] || { cat; return 0; }
    while read -r n v rip; do
        t=$(printf '%016x' $((rip - 0xffffffff81000000 + 0x$L1_TEXT)))
        want="$want $t"
        echo "$n $v $rip $t"
    done >/tmp/smp-rips
    # Same-width lower-case hex compares as strings (awk's numbers are doubles: too narrow).
    awk -v want="$want" 'BEGIN {k = split(want, w, " ")}
        NR == FNR {for (i = 1; i <= k; i++) if ($1 <= w[i] && $1 > best[i]) {best[i] = $1; name[i] = $3}; next}
        {for (i = 1; i <= k; i++) if (w[i] == $4) {print $1, $2, $3, $4, name[i], best[i]; break}}' \
        /proc/kallsyms /tmp/smp-rips | while read -r n v rip t name at; do
            echo "  $n $v $rip $name+$(printf '%#x' $((0x$t - 0x$at)))"
        done
}

# diagnose RUN PID LOG: what a hung guest and level 1 look like.
diagnose() {
    local run=$1 pid=$2 log=$3 d f
    echo "smp: $run: console tail:"
    tr -d '\r' <"$log" | tail -n 25 | sed "s/^/  l2[$run]| /"
    echo "smp: $run: the guest kernel's log, last ${SMP_KLOG_LINES:-40} records (from its RAM):"
    guest_log "$pid" | tail -n "${SMP_KLOG_LINES:-40}" | sed "s/^/  klog[$run]| /"
    if [ -n "$T" ] && [ "${SMP_TRACE:-1}" = 1 ]; then
        echo "smp: $run: IPIs with delivery mode INIT/SIPI during the boot (kvm_apic_ipi):"
        grep -E 'INIT|SIPI|Startup' $T/trace | head -n 20 | sed 's/^/  /'
        echo "smp: $run: IPIs by destination and vector: $(grep -o 'dst [0-9a-f]* vec [0-9]*' $T/trace | sort | uniq -c | tr '\n' ';')"
    fi
    echo "smp: $run: VMM threads (pid $pid):"
    threads "$pid"
    sleep 2
    echo "smp: $run: VMM threads 2 s later:"
    threads "$pid"
    for d in /sys/kernel/debug/kvm/"$pid"-*/vcpu*; do
        [ -d "$d" ] || continue
        echo "smp: $run: debugfs $(basename "$d"):$(for f in "$d"/*; do [ -f "$f" ] && printf ' %s=%s' "$(basename "$f")" "$(head -c 40 "$f" 2>/dev/null | tr '\n' ' ')"; done)"
    done
    [ -n "$T" ] || return 0
    trace_on kvm_exit kvm_entry kvm_apic_accept_irq kvm_apic_ipi kvm_inj_virq
    sleep 3
    trace_off
    echo "smp: $run: level 1 KVM over 3 s: exits per vCPU and reason:"
    sed -n 's/.*kvm_exit: vcpu \([0-9]*\) reason \([A-Za-z_0-9]*\).*/vcpu\1 \2/p' $T/trace | sort | uniq -c | sed 's/^/  /'
    echo "smp: $run: guest RIPs at exit, per vCPU (top 5 each):"
    sed -n 's/.*kvm_exit: vcpu \([0-9]*\) reason [A-Za-z_0-9]* rip \(0x[0-9a-f]*\).*/vcpu\1 \2/p' $T/trace | sort | uniq -c | sort -rn | head -n 12 | symbolize
    echo "smp: $run: entries per vCPU: $(sed -n 's/.*kvm_entry: vcpu \([0-9]*\).*/vcpu\1/p' $T/trace | sort | uniq -c | tr '\n' ';')"
    echo "smp: $run: interrupts accepted per APIC and vector: $(grep -o 'apicid [0-9a-f]* vec [0-9]*' $T/trace | sort | uniq -c | tr '\n' ';')"
    echo "smp: $run: IPIs over those 3 s: $(grep -o 'dst [0-9a-f]* vec [0-9]* ([A-Za-z]*' $T/trace | sort | uniq -c | tr '\n' ';')"
}

# boot VMM CPUS RUN: one boot; sets RESULT (ok|partial|hang|reset).
boot() {
    local vmm=$1 n=$2 run=$3 dir=/tmp/l2/$3 log pid t0 now init_ms="" done_ms="" online=""
    local cl=$cmdline diag=""
    mkdir -p "$dir"; log=$dir/console.log
    [ "${SMP_DIAG_FIRST:-0}" = 1 ] && [ "${run##*-}" = 1 ] && { cl="$cl smp_hold"; diag=1; }
    # On the console before the boot: if level 1 dies, this names the boot it died in.
    tb_value booting "$run"
    trace_boot
    tb_now; t0=$TB_NOW_MS
    if [ "$vmm" = viaduct ]; then
        viaduct --kernel "$TB_L2_KERNEL" --initramfs "$initrd" --cmdline "$cl" --cpus "$n" \
            --memory "$mem" --log-level info >"$log" 2>&1 </dev/null &
    else
        qemu-system-x86_64 -M q35 -accel kvm -cpu host -m "$mem" -smp "$n" -nodefaults \
            -display none -no-reboot -serial stdio -kernel "$TB_L2_KERNEL" -initrd "$initrd" \
            -append "$cl" >"$log" 2>&1 </dev/null &
    fi
    pid=$!
    RESULT=""
    while tb_running "$pid"; do
        tb_now; now=$TB_NOW_MS
        if [ -z "$init_ms" ] && grep -q '@@G init' "$log"; then
            init_ms=$((now - t0))
            [ -n "$diag" ] && { sleep 2; echo "smp: $run: a healthy guest, for comparison:"; diagnose "$run" "$pid" "$log"; }
        fi
        if [ -z "$done_ms" ] && grep -q '@@G done' "$log"; then done_ms=$now; fi
        if [ -n "$done_ms" ] && [ $((now - done_ms)) -gt 5000 ]; then
            kill "$pid"; sleep 1; kill -KILL "$pid" 2>/dev/null
            break
        fi
        if [ -z "$init_ms" ] && [ $((now - t0)) -gt $((deadline * 1000)) ]; then
            RESULT=hang
            diagnose "$run" "$pid" "$log"
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        # A guest past its init that does not power off within a minute: stop it.
        if [ -n "$init_ms" ] && [ $((now - t0 - init_ms)) -gt 60000 ]; then
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        sleep 0.25
    done
    wait "$pid" 2>/dev/null
    trace_off
    online=$(tr -d '\r' <"$log" | sed -n 's/.*@@G value cpus_online \(.*\)$/\1/p' | head -n 1)
    if [ -z "$RESULT" ]; then
        if [ -z "$online" ]; then
            # No CPU report: the VMM ended (a reset: QEMU -no-reboot exits 0, viaduct logs a
            # triple fault) or the guest died, before or after its init.
            RESULT=reset
            echo "smp: $run: VMM ended before the guest reported its CPUs (init ${init_ms:+after $init_ms ms}${init_ms:-not reached}); console tail:"
            tr -d '\r' <"$log" | tail -n 15 | sed "s/^/  l2[$run]| /"
            if [ -n "$T" ]; then
                echo "smp: $run: level 1's triple-fault exits and injected exceptions:"
                grep -E 'kvm_exit|kvm_inj_exception' $T/trace | tail -n 10 | sed 's/^/  /'
                sed -n 's/.*kvm_exit: vcpu \([0-9]*\) reason [A-Za-z_0-9]* rip \(0x[0-9a-f]*\).*/1 vcpu\1 \2/p' $T/trace |
                    tail -n 4 | symbolize
            fi
        elif [ "$online" = "0-$((n - 1))" ]; then
            RESULT=ok
        else
            RESULT=partial
            echo "smp: $run: only CPUs '$online' online; console lines about CPUs:"
            tr -d '\r' <"$log" | grep -i -E 'smpboot|cpu ?[0-9]|x86: Booting|APIC' | tail -n 20 | sed "s/^/  l2[$run]| /"
        fi
    fi
    tb_value "$run" "$RESULT init_ms=${init_ms:--} online=${online:--}"
    echo "smp: $run: $RESULT (init after ${init_ms:--} ms, online ${online:--})"
    # The first boot of each kind in full: what a good boot looks like, to compare.
    [ "${run##*-}" = 1 ] && tr -d '\r' <"$log" | sed "s/^/  l2[$run]| /"
    return 0
}

tb_now; start=$TB_NOW_MS
table=/tmp/smp-table
: >"$table"
for n in $cpus_list; do
    i=1
    while [ "$i" -le "$boots" ]; do
        tb_now
        if [ $((TB_NOW_MS - start)) -gt $((budget * 1000)) ]; then
            echo "smp: budget of ${budget} s used up: no more rounds for $n vCPUs"
            break
        fi
        for vmm in $vmms; do
            boot "$vmm" "$n" "$vmm-${n}cpu-$i"
            echo "$vmm $n $RESULT" >>"$table"
        done
        i=$((i + 1))
    done
done

echo "SMP | VMM      vCPUs  boots  ok  hangs  partial  resets  hang-rate"
for n in $cpus_list; do
    for vmm in $vmms; do
        # shellcheck disable=SC2046 # five numbers, split on purpose
        set -- $(awk -v v="$vmm" -v n="$n" '$1 == v && $2 == n {b++; c[$3]++}
            END {printf "%d %d %d %d %d", b, c["ok"], c["hang"], c["partial"], c["reset"]}' "$table")
        [ "$1" -gt 0 ] || continue
        printf 'SMP | %-8s %5s  %5s  %2s  %5s  %7s  %6s  %s\n' "$vmm" "$n" "$1" "$2" "$3" "$4" "$5" \
            "$(awk -v h="$3" -v b="$1" 'BEGIN {printf "%.1f%%", 100 * h / b}')"
        tb_value "$vmm-${n}cpu/boots" "$1"
        tb_value "$vmm-${n}cpu/hangs" "$3"
        tb_value "$vmm-${n}cpu/partial" "$4"
        tb_value "$vmm-${n}cpu/resets" "$5"
        if [ "$2" = "$1" ]; then
            tb_check "$vmm-${n}cpu" pass "$1 of $1 boots came up with $n CPUs"
        else
            tb_check "$vmm-${n}cpu" fail "$3 hung, $4 partial, $5 reset, of $1 boots"
        fi
    done
done
true
