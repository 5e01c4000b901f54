# tb-description: viaduct builds PCIe root ports with synthetic functions (BARs up to 64 GiB); the guest enumerates them through ECAM with no BAR assignment errors and sees the sizes we gave
# tb-timeout: 300
# tb-run: pci-topology
# tb-check: pci-topology/ecam pci-topology/no-bar-errors pci-topology/host-bridge pci-topology/root-ports
# tb-check: pci-topology/fn1-bar-sizes pci-topology/fn2-bar-sizes pci-topology/fn3-bar-sizes
# tb-check: pci-topology/fn1-placement pci-topology/fn2-placement pci-topology/fn3-placement
# tb-check: pci-topology/synthetic-count pci-topology/big-bar-64bit-pref pci-topology/msix-capability
# viaduct's --pci-synthetic option (pci crate's `synthetic` module, behind a root port of its
# own unless port=off; see docs/pci.md). A viaduct without the option makes
# the scenario SKIPPED, never passed. tests/pci_topology.rs asserts the checks and values.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
viaduct --help 2>&1 | grep -q -- '--pci-synthetic' ||
    { tb_skip "this viaduct has no --pci-synthetic option yet"; exit 0; }

# Expected BAR sizes per synthetic function, in the guest's BDF order (the bus-0 function
# first, then the functions behind root ports by bus): "BAR:SIZE ..." (sysfs resource line
# index: 0..5 BARs, 6 ROM). msix=4 adds an 8 KiB 64-bit BAR in the first free pair.
SPEC_A="bar0=mem32:16K,bar2=mem64-pf:64G,msix=4"
WANT_A="0:16384 2:68719476736 4:8192"
SPEC_B="bar0=mem32:1M,bar1=io:256,bar2=mem64-pf:32M,rom=64K"
WANT_B="0:1048576 1:256 2:33554432 6:65536"
SPEC_C="bar0=mem32:4K,bar1=io:32,port=off"
WANT_C="0:4096 1:32"

cat >/tmp/pci-topology-guest.sh <<GUEST
WANT_1="$WANT_C"
WANT_2="$WANT_A"
WANT_3="$WANT_B"
GUEST
cat >>/tmp/pci-topology-guest.sh <<'GUEST'
log=$(dmesg)
g_value pci_devices "$(ls /sys/bus/pci/devices | tr '\n' ' ')"
# ECAM: the kernel took MCFG's window and found it reserved; PCIe functions expose 4 KiB.
# Linux 6.1 says "PCI: MMCONFIG at [mem ...] reserved in E820" (or "... reserved as ..."),
# newer ones "ECAM [mem ...] reserved as ...".
mmcfg=$(echo "$log" | grep -m1 -o -E '(MMCONFIG at|ECAM) \[mem [^]]*\] reserved (in|as) .*')
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
[ "$n" -eq 2 ] && g_check root-ports pass "$ports" || g_check root-ports fail "want 2 root ports, saw '$ports'"
# Synthetic functions: sizes from sysfs resource lines (start end flags), one per BAR.
devs=$(g_find_devs 1b36 0005 | sort)
g_value synthetic "$(echo $devs | tr '\n' ' ')"
i=0
for d in $devs; do
    i=$((i + 1))
    eval want=\$WANT_$i
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
    # fn1 was asked for with port=off (bus 0); the others each behind a root port of ours.
    case "$i:$parent" in
        1:pci0000:00) g_check "fn$i-placement" pass "$d on the root bus" ;;
        1:*) g_check "fn$i-placement" fail "$d behind $parent, want the root bus" ;;
        *:pci0000:00) g_check "fn$i-placement" fail "$d sits on the root bus, want a root port" ;;
        *) [ "$(cat /sys/bus/pci/devices/$parent/device 2>/dev/null)" = "0x000c" ] &&
            g_check "fn$i-placement" pass "$d behind root port $parent" ||
            g_check "fn$i-placement" fail "$d behind $parent, which is not our root port" ;;
    esac
done
[ $i = 3 ] && g_check synthetic-count pass "3 functions" || g_check synthetic-count fail "$i synthetic functions: $devs"
# The 64 GiB BAR: 64-bit, prefetchable, naturally aligned, above 4 GiB.
d2=$(echo $devs | cut -d' ' -f2)
if [ -n "$d2" ]; then
    set -- $(sed -n 3p /sys/bus/pci/devices/$d2/resource)
    g_value big_bar "$1 $2 $3"
    s=$(($1)); f=$(($3))
    if [ $((f & 0x2000)) -ne 0 ] && [ $((f & 0x100000)) -ne 0 ] && [ $((s % 68719476736)) -eq 0 ] && [ "$s" -ge 4294967296 ]; then
        g_check big-bar-64bit-pref pass "$d2 BAR2 at $1 flags $3"
    else
        g_check big-bar-64bit-pref fail "$d2 BAR2 $1..$2 flags $3"
    fi
    # MSI-X capability with the 4 vectors we gave, table and PBA in BAR 4.
    msix=$(lspci -s "$d2" -vv 2>&1 | grep -A2 'MSI-X:' | tr -s ' \t\n' ' ')
    g_value msix "$msix"
    case "$msix" in
        *"Count=4"*"Vector table: BAR=4 offset=00000000"*"PBA: BAR=4 offset=00001000"*) g_check msix-capability pass "$msix" ;;
        *) g_check msix-capability fail "lspci: '$msix'" ;;
    esac
fi
g_value iomem "$(grep -i -E 'pci|1b36' /proc/iomem | tr -s ' ' | tr '\n' ';' | head -c 1500)"
# The 64-bit window must stay below what the guest CPU can address.
g_value cpu_address_sizes "$(grep -m1 'address sizes' /proc/cpuinfo | cut -d: -f2)"
GUEST
tb_run_l2 pci-topology 240 /tmp/pci-topology-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 512M --log-level info \
    --pci-synthetic "$SPEC_A" --pci-synthetic "$SPEC_B" --pci-synthetic "$SPEC_C"
true
