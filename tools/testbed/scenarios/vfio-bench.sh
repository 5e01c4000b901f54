# tb-description: benchmark: passthrough guest start (igb VF + NVMe) to drivers bound, memory overhead, VM exits during NVMe I/O, DMA-map time of 256 MiB-2 GiB (viaduct vs QEMU)
# tb-timeout: 1200
# tb-needs: qemu
# tb-suite: bench
# tb-bench-target: start_to_bound_ms <= 0.5
# tb-bench-target: overhead_kb <= 0.25
# tb-run: warmup viaduct-r* viaduct-noseccomp-r* qemu-r*
# tb-check: kvm-exit-counters vfio-bind-* viaduct-r*/drivers-bound viaduct-noseccomp-r*/drivers-bound qemu-r*/drivers-bound
# tb-check: viaduct-r*/trap-counters viaduct-noseccomp-r*/trap-counters
# tb-check: dma-map-*
# Per VMM and round, the same guest (1 vCPU, 256 MiB, the igb VF and the NVMe passed through):
# - start_to_bound_ms: VMM start to the guest having igbvf and nvme bound and /dev/nvme0n1
#   (L1 clock to the guest's init line, plus the guest's own uptime from init to that point);
# - overhead_kb: the VMM's peak RSS minus guest RAM (all guest RAM is pinned for DMA, so
#   both VMMs have it resident);
# - idle_exits_per_s / io_exits_per_s: KVM's exit counters in L1 (debugfs kvm/exits) over 3 s
#   idle and over an O_DIRECT read of the whole 64 MiB NVMe; the I/O-phase exits split by
#   reason, so a device access on the data path would show: io_mmio_exits_per_s (MMIO exits
#   to the VMM, kvm/mmio_exits), io_pio_exits_per_s (port I/O, kvm/io_exits),
#   io_halt_exits_per_s (HLT, kvm/halt_exits), io_irq_exits_per_s (host interrupts,
#   kvm/irq_exits); read_mbps: that read's speed;
# - viaduct only: data_traps_count: trapped BAR accesses outside the MSI-X table/PBA over the
#   whole run, I/O phase included (viaduct logs its per-BAR trap counters at exit).
# Then dma_map_SIZE_PAGES_ms for each VMM: the time to DMA-map guest RAM of 256 MiB..2 GiB
# with 4 KiB and 2 MiB pages, measured the same way for both: level 1's function_graph
# tracer times every VFIO type1 ioctl (vfio_iommu_type1_ioctl; DMA map is all but all of it)
# while the VMM starts with the NVMe assigned (QEMU paused with -S: it maps at device
# realize), summed; twice per VMM, in the order viaduct, QEMU, QEMU, viaduct. viaduct's own
# log line is kept as dma_map_SIZE_PAGES_self_ms.
# "4k" is ordinary anonymous RAM (both VMMs ask for transparent huge pages; the values
# dma_map_SIZEm_4k_anon_huge_kb/VMM say how much of it the kernel gave as THP), "2m" is
# hugetlbfs.
# VFIO_BENCH_ROUNDS (default 5) guests per VMM, alternating viaduct and QEMU, with viaduct's
# kernel cache warm (a warm-up boot first when it is empty).
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { tb_skip "QEMU is not in level 1"; exit 0; }
mem_mib=256
export TB_L2_MEM=${mem_mib}M
tb_value guest_ram_kb $((mem_mib * 1024))
grep -q " /sys/kernel/debug " /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug
kvm_stat() { cat "/sys/kernel/debug/kvm/$1" 2>/dev/null || echo 0; }
[ -r /sys/kernel/debug/kvm/exits ] && tb_check kvm-exit-counters pass "debugfs kvm/exits" ||
    tb_check kvm-exit-counters fail "no /sys/kernel/debug/kvm/exits in level 1"
# The per-reason counters (kvm_stat would print 0 for a missing one: then none is reported).
kvm_split=1
for c in mmio_exits io_exits halt_exits irq_exits; do [ -r "/sys/kernel/debug/kvm/$c" ] || kvm_split=""; done
[ -n "$kvm_split" ] || tb_value kvm_exit_split "not measured: debugfs lacks one of mmio_exits io_exits halt_exits irq_exits"
tb_value thp "enabled=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null) defrag=$(cat /sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null)"

igb_vf=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
devs=""
for b in $igb_vf $TB_NVME; do
    if g=$(tb_bind_vfio "$b"); then devs="$devs $b"; tb_check "vfio-bind-$b" pass "group $g"
    else tb_check "vfio-bind-$b" fail "driver=$(tb_driver $b)"; fi
done

cat >/tmp/bench-vfio-guest.sh <<'GUEST'
vf=$(g_find_devs 8086 10ca); nv=$(g_find_devs 1b36 0010)
i=0
until [ "$(g_driver "$vf")" = igbvf ] && [ "$(g_driver "$nv")" = nvme ] && [ -e /dev/nvme0n1 ]; do
    i=$((i + 1)); [ $i -gt 1200 ] && break
    sleep 0.05
done
g_value bound_uptime "$(cut -d' ' -f1 /proc/uptime)"
[ $i -le 1200 ] && g_check drivers-bound pass "igbvf $vf, nvme $nv" || g_check drivers-bound fail "igbvf '$(g_driver "$vf")' nvme '$(g_driver "$nv")'"
# Phases for L1, which samples KVM's counters when it sees these lines.
echo "@@G phase idle-start"; sleep 3; echo "@@G phase idle-end"
echo "@@G phase io-start"
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/nvme0n1 of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
t1=$(cut -d' ' -f1 /proc/uptime)
echo "@@G phase io-end"
g_value read_ms "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%d", (b - a) * 1000}')"
g_value irqs "$(g_dev_irq_count "$nv")"
GUEST

# watch_phases LOG OUT: until /tmp/bench-stop exists, on each "@@G phase P" line in LOG
# append "P ms exits mmio_exits io_exits halt_exits irq_exits" to OUT (L1 clock, KVM's global
# counters: one VM runs).
watch_phases() {
    local seen=0 n p
    : >"$2"
    while [ ! -e /tmp/bench-stop ]; do
        n=$(grep -c '@@G phase' "$1" 2>/dev/null); n=${n:-0}
        if [ "$n" -gt "$seen" ]; then
            for p in $(grep '@@G phase' "$1" | tr -d '\r' | sed -n "$((seen + 1)),${n}p" | awk '{print $3}'); do
                echo "$p $(tb_now_ms) $(kvm_stat exits) $(kvm_stat mmio_exits) $(kvm_stat io_exits) $(kvm_stat halt_exits) $(kvm_stat irq_exits)" >>"$2"
            done
            seen=$n
        fi
        # Slow until the first phase: a poll costs level 1 CPU the starting VMM would miss
        # (see tb_now); a late idle-start only shortens the idle window it opens.
        if [ "$seen" = 0 ]; then sleep 0.5; else sleep 0.05; fi
    done
}

# rate OUT FROM TO COLUMN: counter COLUMN (3 exits, 4 mmio, 5 pio, 6 halt, 7 irq) per second
# between phases.
rate() {
    awk -v a="$2" -v b="$3" -v c="$4" '$1 == a {t0 = $2; v0 = $c} $1 == b {t1 = $2; v1 = $c}
        END {if (t1 > t0) printf "%d", (v1 - v0) * 1000 / (t1 - t0)}' "$1"
}

bench_round() { # bench_round VMM RUN: one guest, then its numbers
    local vmm=$1 run=$2 log=/tmp/l2/$2/console.log phases=/tmp/bench-$2.phases
    rm -f /tmp/bench-stop; mkdir -p "/tmp/l2/$run"; : >"$log"
    tb_settle_memory
    watch_phases "$log" "$phases" &
    local watcher=$!
    if [ "$vmm" != qemu ]; then
        dev_args="$(tb_viaduct_args "$vmm")"; for b in $devs; do dev_args="$dev_args --device $b"; done
        tb_run_l2 "$run" 240 /tmp/bench-vfio-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
            --cmdline "@CMDLINE@" --cpus 1 --memory ${mem_mib}M --log-level info $dev_args
    else
        tb_qemu_l2 "$run" 240 /tmp/bench-vfio-guest.sh $devs
    fi
    touch /tmp/bench-stop; wait "$watcher"
    cat "$phases"
    local bound init
    bound=$(tr -d '\r' <"$log" | sed -n 's/.*@@G value bound_uptime \([0-9.]*\).*/\1/p' | head -n1)
    init=$(tr -d '\r' <"$log" | sed -n 's/.*@@G init uptime=\([0-9.]*\).*/\1/p' | head -n1)
    if [ -n "$TB_L2_INIT_MS" ] && [ -n "$bound" ] && [ -n "$init" ]; then
        tb_bench start_to_bound_ms "$vmm" "$(awk -v i="$TB_L2_INIT_MS" -v b="$bound" -v g="$init" 'BEGIN {printf "%d", i + (b - g) * 1000}')"
    fi
    [ -n "$TB_L2_PEAK_RSS_KB" ] && [ "$TB_L2_PEAK_RSS_KB" -gt 0 ] &&
        tb_bench overhead_kb "$vmm" "$((TB_L2_PEAK_RSS_KB - mem_mib * 1024))"
    local r r2
    r=$(rate "$phases" idle-start idle-end 3); [ -n "$r" ] && tb_bench idle_exits_per_s "$vmm" "$r"
    r=$(rate "$phases" io-start io-end 3); [ -n "$r" ] && tb_bench io_exits_per_s "$vmm" "$r"
    r=$(rate "$phases" io-start io-end 4); [ -n "$r" ] && tb_bench io_mmio_exits_per_s "$vmm" "$r"
    if [ -n "$kvm_split" ]; then
        r=$(rate "$phases" io-start io-end 5); [ -n "$r" ] && tb_bench io_pio_exits_per_s "$vmm" "$r"
        r=$(rate "$phases" io-start io-end 6); [ -n "$r" ] && tb_bench io_halt_exits_per_s "$vmm" "$r"
        r=$(rate "$phases" io-start io-end 7); [ -n "$r" ] && tb_bench io_irq_exits_per_s "$vmm" "$r"
    fi
    r=$(tr -d '\r' <"$log" | sed -n 's/.*@@G value read_ms \([0-9]*\).*/\1/p' | head -n1)
    [ -n "$r" ] && [ "$r" -gt 0 ] && tb_bench read_mbps "$vmm" "$(awk -v ms="$r" 'BEGIN {printf "%.1f", 64 * 1.048576 * 1000 / ms}')"
    if [ "$vmm" != qemu ]; then
        # "BDF: trapped guest accesses: BAR0=.. ... total=T msix=M", one line per device.
        r=$(sed -n 's/.*trapped guest accesses:.* total=\([0-9]*\) msix=\([0-9]*\).*/\1 \2/p' "$log" |
            awk '{s += $1 - $2; n++} END {if (n) print s}')
        grep -e 'trapped guest accesses' -e 'DMA-mapped guest RAM' -e 'waited .* for the DMA mapping' "$log"
        # How long the guest's first Bus Master enable waited for the background DMA mapping.
        r2=$(sed -n 's/.*waited \([0-9]*\) ms for the DMA mapping.*/\1/p' "$log" | awk '{s += $1} END {print s + 0}')
        tb_bench bus_master_wait_ms "$vmm" "$r2"
        [ -n "$r" ] && tb_bench data_traps_count "$vmm" "$r" ||
            tb_check "$run/trap-counters" fail "no 'trapped guest accesses' line in viaduct's log"
    fi
}

# The rounds compare warm starts: viaduct's first boot in a level 1 extracts the bzImage's
# kernel into its cache (seconds under TCG; boot-bench measures that cold start as
# boot_cold_ms). Without a cached kernel, one guest without devices boots first, unmeasured.
if ! ls /var/cache/viaduct/vmlinux-* >/dev/null 2>&1; then
    echo true >/tmp/bench-warmup-guest.sh
    tb_run_l2 warmup 240 /tmp/bench-warmup-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
        --cmdline "@CMDLINE@" --cpus 1 --memory ${mem_mib}M --log-level info
fi

round=1
while [ "$round" -le "${VFIO_BENCH_ROUNDS:-5}" ]; do
    for vmm in $(tb_bench_vmms); do bench_round "$vmm" "$vmm-r$round"; done
    bench_round qemu "qemu-r$round"
    round=$((round + 1))
done

# DMA-map time, both VMMs with the NVMe and growing RAM, each stopped once it has mapped.
T=/sys/kernel/tracing
[ -e $T/current_tracer ] || mount -t tracefs tracefs $T 2>/dev/null || T=/sys/kernel/debug/tracing
mkdir -p /dev/hugepages; grep -q " /dev/hugepages " /proc/mounts || mount -t hugetlbfs hugetlbfs /dev/hugepages
map_trace=""
if grep -qx 'vfio_iommu_type1_ioctl \[vfio_iommu_type1\]' $T/available_filter_functions 2>/dev/null &&
    echo vfio_iommu_type1_ioctl >$T/set_ftrace_filter 2>/dev/null && echo function_graph >$T/current_tracer 2>/dev/null; then
    echo 0 >$T/tracing_on
    map_trace=1
else
    tb_value dma_map "not measured: level 1 cannot trace vfio_iommu_type1_ioctl with function_graph"
fi
# map_trace_lines / map_trace_ms: how many VFIO type1 ioctls the trace holds and their summed
# duration (function_graph prints "123.456 us" per call, with a marker before long ones, and
# drops the decimals from 7 digits on: "4227779 us").
map_trace_lines() { grep -c 'vfio_iommu_type1_ioctl' $T/trace; }
map_trace_ms() {
    awk '/vfio_iommu_type1_ioctl/ && match($0, /[0-9]+(\.[0-9]+)? us/) {s += substr($0, RSTART, RLENGTH - 3)}
        END {printf "%.1f", s / 1000}' $T/trace
}
# A guest that only halts, for viaduct's DMA-map runs: viaduct maps while its vCPUs run, and a
# booting Linux would compete with the mapping for level 1's CPUs, while QEMU maps paused
# (-S). A bzImage (boot protocol 2.15, 64-bit entry at +0x200 of the kernel) whose entry is
# "hlt; jmp .-1": with interrupts off at entry the vCPU sleeps in KVM from the start.
halt_kernel=/tmp/bench-halt.bzimage
put() { printf "$2" | dd of=$halt_kernel bs=1 seek=$(($1)) conv=notrunc 2>/dev/null; }
head -c 2560 /dev/zero >$halt_kernel                # boot sector + 4 setup sectors
put 0x1f1 '\004'                                     # setup_sects
put 0x1fe '\125\252'                                 # boot_flag 0xaa55
put 0x202 'HdrS'; put 0x206 '\017\002'               # header, version 2.15
put 0x211 '\001'                                     # loadflags: LOADED_HIGH
put 0x214 '\000\000\020\000'                         # code32_start 0x100000
put 0x22c '\377\377\377\177'                         # initrd_addr_max
put 0x236 '\001\000'                                 # xloadflags: XLF_KERNEL_64
put 0x238 '\000\020\000\000'                         # cmdline_size 4096
head -c 512 /dev/zero | tr '\000' '\364' >>$halt_kernel   # 32-bit entry: hlt (unused)
printf '\364\353\375' >>$halt_kernel                  # 64-bit entry: hlt; jmp .-1
# vm_locked_mib PID: guest RAM VFIO has pinned so far (type1 accounts it as locked memory).
vm_locked_mib() { tb_proc "$1"; [ -z "$TB_PROC_LCK" ] || echo $((TB_PROC_LCK / 1024)); }
# dma_map VMM MIB PAGES
dma_map() {
    local vmm=$1 mib=$2 pages=$3 log=/tmp/bench-dma-$1-$2-$3.log us="" i=0 pid thp n last=-1 quiet=0
    rm -f "$log"
    tb_settle_memory
    echo >$T/trace; echo 1 >$T/tracing_on
    if [ "$vmm" = viaduct ]; then
        local mem="${mib}M"; [ "$pages" = 2m ] && mem="size=${mib}M,hugepages=on"
        viaduct --kernel "$halt_kernel" --kernel-cache off --memory "$mem" --log-level info --serial off \
            --device "$TB_NVME" >"$log" 2>&1 </dev/null &
    else
        local ram="-m ${mib}M"
        [ "$pages" = 2m ] && ram="-m ${mib}M -object memory-backend-file,id=ram,size=${mib}M,mem-path=/dev/hugepages -machine memory-backend=ram"
        # shellcheck disable=SC2086 # $ram is split on purpose
        qemu-system-x86_64 -S -M q35 -accel kvm -cpu host $ram -nodefaults -display none -serial none \
            -monitor none -device "vfio-pci,host=$TB_NVME" >"$log" 2>&1 </dev/null &
    fi
    pid=$!
    # Done: viaduct logs its map; QEMU has mapped when it has pinned (nearly) all guest RAM
    # (it leaves the legacy VGA/ROM holes out) and its type1 ioctls then stop for 1 s (a call
    # shows in the trace only once it returns).
    while [ $i -lt 1800 ] && tb_running "$pid"; do
        if [ "$vmm" = viaduct ]; then
            us=$(sed -n 's/.*DMA-mapped guest RAM: [0-9]* MiB in \([0-9]*\) us.*/\1/p' "$log")
            [ -n "$us" ] && break
        # tb_running just read the status: its VmLck, without another read or fork.
        elif [ $((${TB_PROC_LCK:-0} / 1024)) -ge $((mib - 1)) ]; then
            n=$(map_trace_lines)
            if [ "$n" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
            last=$n
            [ $quiet -ge 10 ] && break
        fi
        sleep 0.1; i=$((i + 1))
    done
    tb_value "dma_map_${mib}m_${pages}_locked_mib/$vmm" "$(vm_locked_mib "$pid")"
    echo 0 >$T/tracing_on
    # With 4 KiB pages the time depends on how much of guest RAM the kernel backed with THP
    # (contiguous runs are pinned and IOMMU-mapped as 2 MiB pages).
    thp=$(awk '/^AnonHugePages:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null)
    [ "$pages" = 4k ] && [ -n "$thp" ] && tb_value "dma_map_${mib}m_4k_anon_huge_kb/$vmm" "$thp"
    local alive=""; tb_running "$pid" && alive=1
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    [ -n "$us" ] && tb_value "dma_map_${mib}m_${pages}_self_ms/viaduct" "$(awk -v u="$us" 'BEGIN {printf "%.1f", u / 1000}')"
    if [ -n "$alive" ] && { [ "$vmm" = qemu ] || [ -n "$us" ]; }; then
        tb_value "dma_map_${mib}m_${pages}_ioctls/$vmm" "$(map_trace_lines)"
        tb_bench "dma_map_${mib}m_${pages}_ms" "$vmm" "$(map_trace_ms)"
    else
        tb_check "dma-map-${mib}m-$pages-$vmm" fail "$vmm did not map: $(tail -n2 "$log" | tr '\n' ' ')"
    fi
}
avail_mib=$(tb_mem_available_mib)
tb_value l1_mem_available_mib "$avail_mib"
for mib in 256 512 1024 2048; do
    if [ $((mib + 256)) -gt "$avail_mib" ]; then
        tb_value "dma_map_${mib}m" "not measured: level 1 has only $avail_mib MiB available"
        continue
    fi
    [ -n "$map_trace" ] || break
    # ABBA, and every run on settled memory (tb_settle_memory): the first to map after the
    # guest rounds used to pay for pages the last QEMU guest left behind.
    dma_map viaduct "$mib" 4k; dma_map qemu "$mib" 4k; dma_map qemu "$mib" 4k; dma_map viaduct "$mib" 4k
    echo $((mib / 2)) >/proc/sys/vm/nr_hugepages
    got=$(cat /proc/sys/vm/nr_hugepages)
    if [ "$got" -ge $((mib / 2)) ]; then
        dma_map viaduct "$mib" 2m; dma_map qemu "$mib" 2m; dma_map qemu "$mib" 2m; dma_map viaduct "$mib" 2m
    else
        tb_value "dma_map_${mib}m_2m" "not measured: level 1 reserved only $got of $((mib / 2)) huge pages"
    fi
    echo 0 >/proc/sys/vm/nr_hugepages
done

[ -n "$map_trace" ] && { echo nop >$T/current_tracer; echo >$T/set_ftrace_filter; }
for b in $devs; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
true
