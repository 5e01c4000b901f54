# tb-description: packets through a passed-through NIC: L2 (QEMU as VMM) pings L1 over an e1000e joined to L1's e1000e by a QEMU hub
# tb-timeout: 240
# tb-needs: qemu
# tb-devices: nic-pair
# tb-run: qemu
# tb-check: l1-nic nic-vfio-bind qemu/e1000e-bound qemu/ping-l1 qemu/nic-msix l1-received
# The NIC data path with a whole NIC (an igb VF does not pass traffic in this emulation; see
# tools/testbed/README.md). L1 keeps 04:00.0 (192.168.77.1), 05:00.0 goes to the guest
# (192.168.77.2), and the guest pings L1. Swap tb_qemu_l2 for viaduct once it does passthrough.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

l1if=$(ls /sys/bus/pci/devices/$TB_NIC_L1/net 2>/dev/null | head -n1)
[ -n "$l1if" ] && tb_check l1-nic pass "$TB_NIC_L1 is $l1if" || tb_check l1-nic fail "no netdev on $TB_NIC_L1 (driver $(tb_driver $TB_NIC_L1))"
ip addr add 192.168.77.1/24 dev "$l1if"
ip link set "$l1if" up
rx0=$(cat /sys/class/net/$l1if/statistics/rx_packets)
if g=$(tb_bind_vfio "$TB_NIC_PT"); then tb_check nic-vfio-bind pass "$TB_NIC_PT group $g"
else tb_check nic-vfio-bind fail "driver $(tb_driver $TB_NIC_PT)"; fi

cat >/tmp/nic-guest.sh <<'GUEST'
nic=$(g_find_devs 8086 10d3)
g_value nic_bdf "$nic"
[ -n "$nic" ] && [ "$(g_driver $nic)" = e1000e ] && g_check e1000e-bound pass "$nic" || g_check e1000e-bound fail "nic='$nic' driver=$(g_driver $nic)"
ifc=$(ls /sys/bus/pci/devices/$nic/net 2>/dev/null | head -n1)
ip addr add 192.168.77.2/24 dev "$ifc"
ip link set "$ifc" up
i=0; while [ "$(cat /sys/class/net/$ifc/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
g_value carrier "$(cat /sys/class/net/$ifc/carrier 2>/dev/null)"
got=$(ping -c 5 -W 3 192.168.77.1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
g_value ping_received "${got:-0}"
[ "${got:-0}" -ge 4 ] && g_check ping-l1 pass "$got of 5 replies from L1" || g_check ping-l1 fail "${got:-0} of 5 replies from L1"
g_value msi_vectors "$(g_msi_vectors $nic)"
c=$(g_dev_irq_count $nic)
g_value irqs "$c"
[ "$c" -gt 0 ] && g_check nic-msix pass "$c interrupts on $(g_msi_vectors $nic) vectors" || g_check nic-msix fail "no interrupts"
g_value tx_packets "$(cat /sys/class/net/$ifc/statistics/tx_packets)"
GUEST

tb_qemu_l2 qemu 180 /tmp/nic-guest.sh "$TB_NIC_PT"

rx=$(( $(cat /sys/class/net/$l1if/statistics/rx_packets) - rx0 ))
tb_value l1_rx_packets "$rx"
[ "$rx" -gt 0 ] && tb_check l1-received pass "$rx packets reached L1's $l1if" || tb_check l1-received fail "L1's $l1if received nothing"
tb_unbind "$TB_NIC_PT"; tb_bind e1000e "$TB_NIC_PT"
ip addr flush dev "$l1if"
true
