# tb-description: viaduct passthrough, more devices: e1000e NIC pings L1 with MSI-X, MSI and INTx, NVMe SR-IOV VF read/write, 4 GiB ivshmem BAR read in the guest, the NVMe again after a SIGKILLed viaduct
# tb-timeout: 600
# tb-devices: nic-pair ivshmem
# tb-run: vnvmevf vnic vnic-msi vnic-intx vivshmem vafterkill
# tb-check: nvmevf-bind vnvmevf/nvme-bound vnvmevf/read-signature vnvmevf/write vnvmevf/msix vnvmevf/no-timeouts
# tb-check: nic-vfio-bind
# tb-check: vnic/e1000e-bound vnic/ping-l1 vnic/nic-both-ways vnic/nic-irq-mode vnic/nic-interrupts
# tb-check: vnic/l1-received vnic/l1-sent vnic/host-irq-mode
# tb-check: vnic-msi/e1000e-bound vnic-msi/ping-l1 vnic-msi/nic-both-ways vnic-msi/nic-irq-mode
# tb-check: vnic-msi/nic-interrupts vnic-msi/l1-received vnic-msi/l1-sent vnic-msi/host-irq-mode
# tb-check: vnic-msi/host-msi-enabled
# tb-check: vnic-intx/e1000e-bound vnic-intx/ping-l1 vnic-intx/nic-both-ways vnic-intx/nic-irq-mode
# tb-check: vnic-intx/nic-interrupts vnic-intx/l1-received vnic-intx/l1-sent vnic-intx/host-irq-mode
# tb-check: ivshmem-bind vivshmem/bar2-placed vivshmem/read-VIADUCT-IVSHMEM@0x*
# tb-check: killed-guest-ran vafterkill/read-signature vafterkill/msix vafterkill/no-timeouts
# The rest of the issue's "done when" with viaduct as the L2 VMM (tests/vfio_guest.rs asserts).
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
VIADUCT="viaduct --kernel @KERNEL@ --initramfs @INITRD@ --memory 256M"

# 1. An SR-IOV VF with a data path: the NVMe VF reads and writes sriov.img.
if nvf=$(tb_nvme_sriov_vf) && g=$(tb_bind_vfio "$nvf"); then
    tb_check nvmevf-bind pass "$nvf group $g"
    cat >/tmp/vg-vf.sh <<GUEST
SIG='$TB_SIG_SRIOV'
GUEST
    cat >>/tmp/vg-vf.sh <<'GUEST'
nv=$(g_find_devs 1b36 0010)
[ -n "$nv" ] && [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "'$nv' driver=$(g_driver $nv)"
g_wait_for /dev/nvme0n1 30
sig=$(dd if=/dev/nvme0n1 bs=512 count=1 2>/dev/null | head -n1)
[ "$sig" = "$SIG" ] && g_check read-signature pass "$sig" || g_check read-signature fail "read '$sig'"
g_write_check write /dev/nvme0n1 2048 "VIADUCT-GUEST-WROTE $sig"
sync
c=$(g_dev_irq_count $nv)
[ "${c:-0}" -gt 0 ] && g_check msix pass "$c interrupts" || g_check msix fail "no MSI-X interrupts"
t=$(dmesg | grep -ci 'nvme.*timeout')
[ "$t" = 0 ] && g_check no-timeouts pass "no nvme command timed out" || g_check no-timeouts fail "$t timeouts: $(dmesg | grep -i 'nvme.*timeout' | head -n2 | tr '\n' '|')"
GUEST
    tb_run_l2 vnvmevf 180 /tmp/vg-vf.sh -- $VIADUCT --cmdline "@CMDLINE@" --device "$nvf"
    tb_unbind "$nvf"
else
    tb_check nvmevf-bind fail "NVMe SR-IOV VF recipe or vfio bind failed"
fi
echo 0 >/sys/bus/pci/devices/$TB_NVME_SRIOV_PF/sriov_numvfs

# 2. A whole NIC (e1000e, joined to L1's e1000e by a QEMU hub): the guest pings L1, three
#    times, once per interrupt mode the device offers: MSI-X (the driver's default), MSI
#    (e1000e.IntMode=1) and INTx (pci=nomsi). The guest checks which mode its driver really
#    uses (msi_irqs, or the IO-APIC line), and level 1 samples the host interrupts vfio-pci
#    opened for the device (vfio-msix / vfio-msi / vfio-intx), so a VMM that silently fell
#    back to another mode fails. In the MSI guest, e1000e's own MSI self-test makes it keep
#    INTx under viaduct (the guest script says why): that check is a skip.
l1if=$(ls /sys/bus/pci/devices/$TB_NIC_L1/net 2>/dev/null | head -n1)
ip addr add 192.168.78.1/24 dev "$l1if"; ip link set "$l1if" up
g=$(tb_bind_vfio "$TB_NIC_PT") && tb_check nic-vfio-bind pass "group $g" || tb_check nic-vfio-bind fail "driver $(tb_driver $TB_NIC_PT)"
# The guest side; $1: the interrupt mode its e1000e must use (msix|msi|intx).
nic_guest() {
    echo "KIND=$1"
    cat <<'GUEST'
nic=$(g_find_devs 8086 10d3)
[ -n "$nic" ] && [ "$(g_driver $nic)" = e1000e ] && g_check e1000e-bound pass "$nic" || g_check e1000e-bound fail "nic='$nic' driver=$(g_driver $nic)"
ifc=$(ls /sys/bus/pci/devices/$nic/net 2>/dev/null | head -n1)
ip addr add 192.168.78.2/24 dev "$ifc"; ip link set "$ifc" up
i=0; while [ "$(cat /sys/class/net/$ifc/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
got=$(ping -c 5 -W 3 192.168.78.1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
g_value ping_received "${got:-0}"
[ "${got:-0}" -ge 4 ] && g_check ping-l1 pass "$got of 5 replies from L1" || g_check ping-l1 fail "${got:-0} of 5 replies from L1"
# Both directions at the device: the guest's NIC sent and received frames.
tx=$(cat /sys/class/net/$ifc/statistics/tx_packets); rx=$(cat /sys/class/net/$ifc/statistics/rx_packets)
g_value guest_tx_packets "$tx"
g_value guest_rx_packets "$rx"
[ "${tx:-0}" -ge 5 ] && [ "${rx:-0}" -ge 4 ] && g_check nic-both-ways pass "guest NIC tx=$tx rx=$rx" || g_check nic-both-ways fail "guest NIC tx=$tx rx=$rx"
# The mode the driver really uses: each msi_irqs entry says msi or msix; without any, the
# interface's IO-APIC line (e1000e names its INTx handler after the interface).
nvec=$(g_msi_vectors $nic)
pat="IO-APIC.*[ ,]$ifc(,| *\$)"
if [ "$nvec" -gt 0 ]; then
    mode=$(cat /sys/bus/pci/devices/$nic/msi_irqs/* | sort -u | tr '\n' ' '); mode=${mode% }
    c=$(g_dev_irq_count $nic)
elif grep -Eq "$pat" /proc/interrupts; then
    mode=intx
    c=$(g_irq_count "$pat")
    g_value nic_intx_line "$(grep -E "$pat" /proc/interrupts | tr -s ' ')"
else
    mode=none; c=0
fi
g_value nic_irq_mode "$mode"
g_value nic_vectors "$nvec"
g_value nic_irqs "$c"
# e1000e tests MSI when the interface comes up: it writes ICS.RXSEQ and falls back to INTx if
# no interrupt arrives within 100 ms. Level 0's e1000e model drops RXSEQ from IMS (its valid
# mask lacks it), so the test only gets an interrupt if another cause (in practice the link
# coming up, 500 ms after the autonegotiation the same open restarts) lands in that window.
# Under viaduct the test runs well before that, so the guest refuses MSI on its own: that is
# a skip of the MSI data path, never a pass (docs/known-issues.md, the nested testbed).
if [ "$mode" = "$KIND" ]; then
    g_check nic-irq-mode pass "$mode, $nvec MSI vectors"
elif [ "$KIND" = msi ] && [ "$mode" = intx ] && dmesg | grep -q 'MSI interrupt test failed'; then
    g_check nic-irq-mode skip "e1000e's MSI self-test got no interrupt (L0 model: RXSEQ not in IMS, link still negotiating), driver fell back to INTx"
else
    g_check nic-irq-mode fail "wanted $KIND, the driver uses '$mode' ($nvec MSI vectors)"
fi
[ "${c:-0}" -gt 0 ] && g_check nic-interrupts pass "$c $mode interrupts" || g_check nic-interrupts fail "no $mode interrupts"
grep -E "$ifc" /proc/interrupts
GUEST
}
# nic_run RUN KIND EXTRA-CMDLINE: one guest; checks RUN/l1-received, RUN/l1-sent (the frames
# at L1's end of the wire), RUN/host-irq-mode and, for KIND msi, RUN/host-msi-enabled.
nic_run() {
    local run=$1 kind=$2 extra=$3 rx0 tx0 rx tx sampler hosts want other
    nic_guest "$kind" >/tmp/vg-nic-$kind.sh
    rx0=$(cat /sys/class/net/$l1if/statistics/rx_packets)
    tx0=$(cat /sys/class/net/$l1if/statistics/tx_packets)
    # vfio-pci names its host interrupts vfio-msix[N](BDF), vfio-msi[N](BDF), vfio-intx(BDF);
    # they exist only while viaduct runs, so sample them: "name total-count" lines.
    : >/tmp/vg-nic-irqs-$kind
    while :; do
        awk -v dev="($TB_NIC_PT)" 'NR == 1 {ncpu = NF; next}
            index($NF, dev) {s = 0; for (i = 2; i <= ncpu + 1; i++) if ($i ~ /^[0-9]+$/) s += $i; print $NF, s}' /proc/interrupts
        # A driver's MSI self-test holds its vector for a fraction of a second.
        sleep 0.1
    done >>/tmp/vg-nic-irqs-$kind &
    sampler=$!
    tb_run_l2 "$run" 180 /tmp/vg-nic-$kind.sh -- $VIADUCT --cmdline "@CMDLINE@$extra" --device "$TB_NIC_PT"
    kill $sampler; wait $sampler 2>/dev/null
    rx=$(( $(cat /sys/class/net/$l1if/statistics/rx_packets) - rx0 ))
    tx=$(( $(cat /sys/class/net/$l1if/statistics/tx_packets) - tx0 ))
    tb_value "$run/l1_rx_packets" "$rx"
    tb_value "$run/l1_tx_packets" "$tx"
    [ "$rx" -ge 5 ] && tb_check "$run/l1-received" pass "$rx packets reached L1" || tb_check "$run/l1-received" fail "L1 received $rx packets (5 echo requests sent)"
    [ "$tx" -ge 4 ] && tb_check "$run/l1-sent" pass "L1 sent $tx packets to the guest" || tb_check "$run/l1-sent" fail "L1 sent $tx packets"
    # Per kind: "kind vectors total", the total summing each vector's highest count.
    awk '{if (!($1 in m) || $2 > m[$1]) m[$1] = $2}
        END {for (n in m) {k = n; sub(/[[(].*/, "", k); t[k] += m[n]; c[k]++}
             for (k in t) print k, c[k], t[k]}' /tmp/vg-nic-irqs-$kind | sort >/tmp/vg-nic-kinds-$kind
    hosts=$(awk '{printf "%s%s:%d/%d", (NR > 1 ? " " : ""), $1, $2, $3}' /tmp/vg-nic-kinds-$kind)
    tb_value "$run/host_irqs" "${hosts:-none}"
    # Level 1 must show the mode the guest driver ended up in, firing. Also allowed: vfio-intx
    # (viaduct starts every device on INTx until the guest enables MSI/MSI-X) and, in the run
    # that asks for MSI, vfio-msi (the driver's MSI self-test, even if it then fell back).
    obs=$(sed -n 's/^value nic_irq_mode //p' /tmp/l2/$run/markers | tail -n1)
    case $obs in msix) want=vfio-msix ;; msi) want=vfio-msi ;; intx) want=vfio-intx ;; *) want="none ($obs)" ;; esac
    n=$(awk -v k="$want" '$1 == k {print $3}' /tmp/vg-nic-kinds-$kind)
    other=$(awk -v k="$want" -v m=$kind '$1 != k && $1 != "vfio-intx" && !(m == "msi" && $1 == "vfio-msi") {print $1}' \
        /tmp/vg-nic-kinds-$kind | tr '\n' ' ')
    if [ -n "$other" ]; then tb_check "$run/host-irq-mode" fail "guest on $obs, level 1 also saw: $hosts"
    elif [ "${n:-0}" -gt 0 ]; then tb_check "$run/host-irq-mode" pass "guest on $obs; level 1: $hosts"
    else tb_check "$run/host-irq-mode" fail "guest on $obs, no $want interrupts in level 1: ${hosts:-none}"
    fi
    # Asked for MSI: viaduct switched the device to MSI on the host when the guest enabled it.
    if [ "$kind" = msi ]; then
        v=$(awk '$1 == "vfio-msi" {print $2}' /tmp/vg-nic-kinds-$kind)
        [ "${v:-0}" -ge 1 ] && tb_check "$run/host-msi-enabled" pass "$v vfio-msi vector(s) in level 1" ||
            tb_check "$run/host-msi-enabled" fail "viaduct never enabled MSI on the host: ${hosts:-none}"
    fi
}
nic_run vnic msix ""
nic_run vnic-msi msi " e1000e.IntMode=1"
nic_run vnic-intx intx " pci=nomsi"
tb_unbind "$TB_NIC_PT"; tb_bind e1000e "$TB_NIC_PT"; ip addr flush dev "$l1if"

# 3. A 4 GiB 64-bit BAR: the guest reads what level 0 wrote into ivshmem's backing file.
if g=$(tb_bind_vfio "$TB_IVSHMEM"); then
    echo "RUN_ID='$TB_RUN_ID'" >/tmp/vg-ivshmem.sh
    cat >>/tmp/vg-ivshmem.sh <<'GUEST'
d=$(g_find_devs 1af4 1110)
g_value ivshmem_bdf "$d"
line=$(sed -n 3p /sys/bus/pci/devices/$d/resource)
start=$(echo $line | cut -d' ' -f1); end=$(echo $line | cut -d' ' -f2)
size=$((end - start + 1))
g_value bar2 "$start size $size"
[ "$size" = 4294967296 ] && [ $((start)) -ge 4294967296 ] && g_check bar2-placed pass "$start, $size bytes" || g_check bar2-placed fail "$line"
# 64 bytes at physical address $1 as text (busybox devmem, little-endian dwords).
rd() {
    s=""; i=0
    while [ $i -lt 16 ]; do
        w=$(devmem $(($1 + i * 4)) 32); w=${w#0x}
        for c in 7 5 3 1; do b=$(echo "$w" | cut -c$c-$((c + 1))); [ "$b" = 00 ] || [ "$b" = 0a ] || [ "$b" = 0A ] && break 2; s="$s$(printf "\\$(printf %o 0x$b)")"; done
        i=$((i + 1))
    done
    echo "$s"
}
# The testbed's four signatures: 0, 1 GiB, 2 GiB and 4 GiB - 4 KiB (above 2 GiB a 32-bit
# offset into the BAR would wrap; the last one needs all 32 bits of the BAR's size).
for off in 0 $((size / 4)) $((size / 2)) $((size - 4096)); do
    t=$(rd $((start + off)))
    want=$(printf 'VIADUCT-IVSHMEM@0x%x' $off)
    [ "$t" = "$want run=$RUN_ID" ] && g_check "read-$want" pass "$t" || g_check "read-$want" fail "read '$t'"
done
GUEST
    tb_run_l2 vivshmem 180 /tmp/vg-ivshmem.sh -- $VIADUCT --cmdline "@CMDLINE@" --device "$TB_IVSHMEM"
    tb_unbind "$TB_IVSHMEM"
else
    tb_check ivshmem-bind fail "no ivshmem bound to vfio-pci"
fi

# 4. A viaduct killed with SIGKILL, then the next guest gets the same NVMe at once.
tb_bind_vfio "$TB_NVME" >/dev/null
echo 'sleep 60' >/tmp/vg-sleep.sh
tb_l2_initrd /tmp/vg-sleep.sh /tmp/vg-sleep.cpio
viaduct --kernel "$TB_L2_KERNEL" --initramfs /tmp/vg-sleep.cpio --memory 256M --cmdline "$TB_L2_CMDLINE" \
    --device "$TB_NVME" >/tmp/vg-killed.log 2>&1 &
vpid=$!
i=0; while [ $i -lt 60 ] && ! grep -q '@@G init' /tmp/vg-killed.log; do sleep 1; i=$((i + 1)); done
grep -q '@@G init' /tmp/vg-killed.log && tb_check killed-guest-ran pass "guest up after ${i}s" || tb_check killed-guest-ran fail "$(tail -n2 /tmp/vg-killed.log)"
kill -KILL $vpid; wait $vpid 2>/dev/null
cat >/tmp/vg-again.sh <<GUEST
SIG='$TB_SIG_NVME'
GUEST
cat >>/tmp/vg-again.sh <<'GUEST'
g_wait_for /dev/nvme0n1 30
sig=$(dd if=/dev/nvme0n1 bs=512 count=1 2>/dev/null | head -n1)
[ "$sig" = "$SIG" ] && g_check read-signature pass "$sig" || g_check read-signature fail "read '$sig'"
nv=$(g_find_devs 1b36 0010)
c=$(g_dev_irq_count $nv)
[ "${c:-0}" -gt 0 ] && g_check msix pass "$c interrupts" || g_check msix fail "no MSI-X interrupts"
t=$(dmesg | grep -ci 'nvme.*timeout')
[ "$t" = 0 ] && g_check no-timeouts pass "no nvme command timed out" || g_check no-timeouts fail "$t timeouts"
GUEST
tb_run_l2 vafterkill 180 /tmp/vg-again.sh -- $VIADUCT --cmdline "@CMDLINE@" --device "$TB_NVME"
tb_unbind "$TB_NVME"; tb_bind nvme "$TB_NVME"
true
