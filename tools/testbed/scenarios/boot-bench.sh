# tb-description: benchmark (not a test): VMM start to guest init and memory overhead, viaduct vs QEMU, same L1 boot
# tb-timeout: 420
# tb-needs: qemu
# Both VMMs boot the same kernel and initramfs with 1 vCPU and 256 MiB; the guest powers off
# at once. Per VMM: init_ms (VMM start to the guest's init, L1 clock) and peak_rss_kb (VmHWM)
# come from tb_run_l2; this script also samples the peak RSS outside the guest-RAM mapping
# (nonram_rss_kb: mappings smaller than guest RAM), which does not depend on how much RAM the
# guest touched. benches/boot.rs turns these into ratios.

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { tb_skip "QEMU is not in level 1"; exit 0; }
mem_mib=256
export TB_L2_MEM=${mem_mib}M
tb_value guest_ram_kb $((mem_mib * 1024))
echo 'g_value memtotal_kb "$(awk "/^MemTotal:/ {print \$2}" /proc/meminfo)"' >/tmp/bench-guest.sh

# sample_rss PROCESS OUT: until /tmp/bench-stop exists, the peak over time of the RSS of
# PROCESS's mappings smaller than guest RAM; written to OUT.
sample_rss() {
    local max=0 pid v
    while [ ! -e /tmp/bench-stop ]; do
        pid=$(pidof "$1" | cut -d' ' -f1)
        if [ -n "$pid" ]; then
            v=$(awk -v ram=$((mem_mib * 1024)) '/^Size:/ {size = $2} /^Rss:/ {if (size < ram) s += $2} END {print s + 0}' "/proc/$pid/smaps" 2>/dev/null)
            [ -n "$v" ] && [ "$v" -gt "$max" ] && max=$v
        fi
        sleep 0.2
    done
    echo "$max" >"$2"
}

bench() {
    local run=$1 proc=$2; shift 2
    rm -f /tmp/bench-stop
    sample_rss "$proc" "/tmp/bench-$run.rss" &
    local sampler=$!
    "$@"
    touch /tmp/bench-stop; wait "$sampler"
    tb_value "$run/nonram_rss_kb" "$(cat /tmp/bench-$run.rss)"
}

for round in 1 2; do
    bench "viaduct-r$round" viaduct tb_run_l2 "viaduct-r$round" 150 /tmp/bench-guest.sh -- viaduct \
        --kernel @KERNEL@ --initramfs @INITRD@ --cmdline "@CMDLINE@" --cpus 1 --memory "${mem_mib}M"
    bench "qemu-r$round" qemu-system-x86_64 tb_qemu_l2 "qemu-r$round" 150 /tmp/bench-guest.sh
done
true
