# tb-description: viaduct builds PCIe root ports with synthetic functions (BARs up to 64 GiB); the guest enumerates them through ECAM with no BAR assignment errors and sees the sizes we gave
# tb-timeout: 300
# Needs viaduct's --pci-synthetic option (pci crate's `synthetic` module behind a root port,
# see the pci section of README.md). Without it the scenario is SKIPPED, never passed.
# tests/pci_topology.rs asserts the checks and values.

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
viaduct --help 2>&1 | grep -q -- '--pci-synthetic' ||
    { tb_skip "this viaduct has no --pci-synthetic option yet"; exit 0; }

# Expected BAR sizes per synthetic function, in attach order: "BAR:SIZE ..." (sysfs resource
# line index: 0..5 BARs, 6 ROM). msix=4 adds an 8 KiB 64-bit BAR in the first free pair.
SPEC_A="bar0=mem32:16K,bar2=mem64-pf:64G,msix=4"
WANT_A="0:16384 2:68719476736 4:8192"
SPEC_B="bar0=mem32:1M,bar1=io:256,bar2=mem64-pf:32M,rom=64K"
WANT_B="0:1048576 1:256 2:33554432 6:65536"

cat >/tmp/pci-topology-guest.sh <<GUEST
WANT_A="$WANT_A"
WANT_B="$WANT_B"
GUEST
cat >>/tmp/pci-topology-guest.sh <<'GUEST'
log=$(dmesg)
g_value pci_devices "$(ls /sys/bus/pci/devices | tr '\n' ' ')"
# ECAM: the kernel took MCFG's window and found it reserved; PCIe functions expose 4 KiB.
# Linux 6.1 says "PCI: MMCONFIG at [mem ...] reserved as ...", newer ones "ECAM [mem ...] reserved as".
mmcfg=$(echo "$log" | grep -m1 -o -E '(MMCONFIG at|ECAM) \[mem [^]]*\] reserved as .*')
g_value ecam_iomem "$(grep -m1 'PCI MMCONFIG' /proc/iomem)"
g_value ecam "$mmcfg"
if [ -n "$mmcfg" ] && ! echo "$log" | grep -q 'not using MMCONFIG'; then
    g_check ecam pass "$mmcfg"
else
    g_check ecam fail "no reserved MMCONFIG window in dmesg: $(echo "$log" | grep -m2 -i mmconfig | tr '\n' ' ')"
fi
# No BAR the kernel had to (re)assign and could not.
bad=$(echo "$log" | grep -E "can't assign|no space for|failed to assign|BAR [0-9]+: error" | head -n 5 | tr '\n' ' ')
g_value bar_errors "$bad"
[ -z "$bad" ] && g_check no-bar-errors pass "none" || g_check no-bar-errors fail "$bad"
# Host bridge and root ports.
hb=/sys/bus/pci/devices/0000:00:00.0
[ "$(cat $hb/class 2>/dev/null)" = "0x060000" ] && g_check host-bridge pass "$(cat $hb/vendor):$(cat $hb/device)" ||
    g_check host-bridge fail "00:00.0 class $(cat $hb/class 2>/dev/null)"
ports=$(g_find_devs 1b36 000c | tr '\n' ' ')
g_value root_ports "$ports"
n=$(echo $ports | wc -w)
[ "$n" -ge 2 ] && g_check root-ports pass "$ports" || g_check root-ports fail "root ports: '$ports'"
# Synthetic functions: sizes from sysfs resource lines (start end flags), one per BAR.
devs=$(g_find_devs 1b36 0005 | sort)
g_value synthetic "$(echo $devs | tr '\n' ' ')"
i=0
for d in $devs; do
    i=$((i + 1))
    [ $i = 1 ] && want=$WANT_A || want=$WANT_B
    p=/sys/bus/pci/devices/$d
    g_value "fn$i/bdf" "$d"
    g_value "fn$i/config_bytes" "$(wc -c < $p/config)"
    parent=$(basename "$(dirname "$(readlink -f $p)")")
    g_value "fn$i/parent" "$parent"
    seen=""
    line=0
    while read -r start end flags; do
        s=$((start)); e=$((end))
        if [ "$e" -gt 0 ]; then seen="$seen $line:$((e - s + 1))"; fi
        line=$((line + 1))
    done < $p/resource
    seen=${seen# }
    g_value "fn$i/bars" "$seen"
    [ "$seen" = "$want" ] && g_check "fn$i-bar-sizes" pass "$d: $seen" || g_check "fn$i-bar-sizes" fail "$d: saw '$seen', want '$want'"
    # Behind a root port, inside its windows.
    case "$parent" in
        pci0000:00) g_check "fn$i-behind-port" fail "$d sits on the root bus" ;;
        *) g_check "fn$i-behind-port" pass "$d behind $parent" ;;
    esac
done
[ $i = 2 ] && g_check synthetic-count pass "2 functions" || g_check synthetic-count fail "$i synthetic functions: $devs"
g_value iomem "$(grep -i -E 'pci|1b36' /proc/iomem | tr -s ' ' | tr '\n' ';' | head -c 1500)"
GUEST
tb_run_l2 pci-topology 240 /tmp/pci-topology-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 512M --log-level info \
    --pci-synthetic "$SPEC_A" --pci-synthetic "$SPEC_B"
true
