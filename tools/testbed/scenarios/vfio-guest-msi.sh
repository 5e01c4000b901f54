# tb-description: viaduct passes an AHCI controller (MSI, no MSI-X, and INTx) to a guest twice: with MSI and with pci=nomsi; each guest reads level 0's disk signature by DMA and writes a token, its driver really uses that interrupt mode, and level 1 sees vfio-msi / vfio-intx interrupts
# tb-timeout: 360
# tb-devices: ahci
# tb-run: vahci-msi vahci-intx
# tb-check: ahci-present ahci-vfio-bind
# tb-check: vahci-msi/ahci-bound vahci-msi/read-signature vahci-msi/write vahci-msi/irq-mode vahci-msi/host-vfio-msi
# tb-check: vahci-intx/ahci-bound vahci-intx/read-signature vahci-intx/write vahci-intx/irq-mode
# tb-check: vahci-intx/host-vfio-intx
# Issue 5's "with MSI, where the device offers it": the NVMe and igb VF offer only MSI-X, and
# e1000e's driver drops back to INTx under emulation (its MSI self-test, see
# vfio-guest-more). Level 0's ICH9 AHCI has a single-vector MSI capability, INTx, no MSI-X, and
# a SATA disk (ahci.img with a signature sector). tests/vfio_guest_msi.rs finds both guests'
# tokens in ahci.img on level 0.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
# q35's own ICH9 AHCI (00:1f.2) has the same ID; ours is the one behind a root port.
ahci=$(tb_find_devs 8086 2922 | grep -v '^0000:00:' | head -n1)
[ -n "$ahci" ] || { tb_check ahci-present fail "no 8086:2922 behind a root port"; exit 0; }
tb_check ahci-present pass "$ahci"
g=$(tb_bind_vfio "$ahci") && tb_check ahci-vfio-bind pass "$ahci group $g" ||
    { tb_check ahci-vfio-bind fail "driver $(tb_driver "$ahci")"; exit 0; }

# ahci_run RUN MODE CMDLINE-EXTRA LBA: one guest; MODE (msi|intx) is what its ahci driver must use.
ahci_run() {
    local run=$1 mode=$2 extra=$3 lba=$4 token
    token="$TB_RUN_ID-$1-$(date +%s)"
    tb_value "$run/token" "$token"
    tb_value "$run/lba" "$lba"
    cat >/tmp/vgm-$run.sh <<GUEST
SIG='$TB_SIG_AHCI'
TOKEN='$token'
LBA=$lba
WANT=$mode
GUEST
    cat >>/tmp/vgm-$run.sh <<'GUEST'
modprobe ahci; modprobe sd_mod
a=$(g_find_devs 8086 2922)
[ -n "$a" ] && [ "$(g_driver $a)" = ahci ] && g_check ahci-bound pass "$a" || g_check ahci-bound fail "'$a' driver=$(g_driver $a)"
g_wait_for /dev/sda 30
sig=$(g_read_sector /dev/sda 0)
[ "$sig" = "$SIG" ] && g_check read-signature pass "$sig" || g_check read-signature fail "read '$sig'"
g_write_check write /dev/sda "$LBA" "VIADUCT-AHCI-WROTE $TOKEN"
sync
# The mode the driver uses: msi_irqs entries say msi or msix; none means its INTx line.
nvec=$(g_msi_vectors $a)
if [ "$nvec" -gt 0 ]; then
    mode=$(cat /sys/bus/pci/devices/$a/msi_irqs/* | sort -u | tr '\n' ' '); mode=${mode% }
    c=$(g_dev_irq_count $a)
    line=$(grep -E 'PCI-MSI.*ahci' /proc/interrupts | tr -s ' ')
else
    irq=$(cat /sys/bus/pci/devices/$a/irq)
    line=$(grep -E "^ *$irq:" /proc/interrupts | tr -s ' ')
    echo "$line" | grep -q IO-APIC && mode=intx || mode=none
    c=$(echo "$line" | awk '{print $2}')
fi
g_value irq_line "$line"
g_value irqs "${c:-0}"
[ "$mode" = "$WANT" ] && [ "${c:-0}" -gt 0 ] && g_check irq-mode pass "$WANT: ${c} interrupts ($line)" ||
    g_check irq-mode fail "wanted $WANT with interrupts, driver uses '$mode' with ${c:-0} ($line)"
GUEST
    # Level 1's view while the guest runs: vfio-pci names the host interrupts it opened
    # vfio-msi[N](BDF) / vfio-intx(BDF); they exist only while viaduct runs, so sample them
    # ("name total-count" lines).
    : >/tmp/vgm-irqs-$run
    while :; do
        awk -v dev="($ahci)" 'NR == 1 {ncpu = NF; next}
            index($NF, dev) {s = 0; for (i = 2; i <= ncpu + 1; i++) if ($i ~ /^[0-9]+$/) s += $i; print $NF, s}' /proc/interrupts
        # Short enough to see the counts of a guest that does its I/O just before it ends.
        sleep 0.1
    done >>/tmp/vgm-irqs-$run &
    local sampler=$!
    tb_run_l2 "$run" 150 /tmp/vgm-$run.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
        --cmdline "@CMDLINE@$extra" --memory 256M --device "$ahci"
    kill $sampler; wait $sampler 2>/dev/null
    local want=vfio-msi host n
    [ "$mode" = intx ] && want=vfio-intx
    # Per host interrupt: its highest count; per kind (vfio-msi, vfio-intx): the sum.
    host=$(awk '{if (!($1 in m) || $2 > m[$1]) m[$1] = $2} END {for (k in m) printf "%s:%d ", k, m[k]}' /tmp/vgm-irqs-$run)
    tb_value "$run/host_irqs" "${host:-none}"
    n=$(awk -v k="$want" '{if (!($1 in m) || $2 > m[$1]) m[$1] = $2}
        END {for (x in m) {y = x; sub(/[[(].*/, "", y); if (y == k) s += m[x]}; print s + 0}' /tmp/vgm-irqs-$run)
    [ "${n:-0}" -gt 0 ] && tb_check "$run/host-$want" pass "$n interrupts: $host" ||
        tb_check "$run/host-$want" fail "no $want interrupts in level 1: ${host:-none}"
}
ahci_run vahci-msi msi "" 2048
ahci_run vahci-intx intx " pci=nomsi" 2049
tb_unbind "$ahci"
true
