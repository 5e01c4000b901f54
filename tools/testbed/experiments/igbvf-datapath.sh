# tb-description: experiment (not in the suite): an igb VF data path in level 1, no VMM: PF up first, 1 VF on igbvf, ping QEMU's user-net gateway through the VF
# tb-timeout: 180
# tb-check: vf-ping-gateway vf-netdev
# Run: tools/testbed/run --script tools/testbed/experiments/igbvf-datapath.sh, with
# TB_QEMU_EXTRA="-trace igb_* -trace e1000e_core_ctrl_* -D /tmp/igb-trace.log" to see the
# model's side. Fails today: see README "igb VF: PF still in reset". The check vf-ping-gateway
# passes once the VF moves packets.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below
pf=$TB_IGB_PF
ifc=$(ls /sys/bus/pci/devices/$pf/net)
tb_value pf_if "$ifc"
# The PF up before the VFs exist: creating them then closes and reopens it with VFs allocated,
# which is when igb writes CTRL_EXT.PFRSTD ("PF reset done") for the VFs.
ip link set "$ifc" up
sleep 4
tb_value pf_carrier "$(cat "/sys/class/net/$ifc/carrier" 2>/dev/null)"
vf=$(tb_create_vfs "$pf" 1 0 | head -n1)
tb_value vf "$vf"
sleep 4
tb_bind igbvf "$vf"
sleep 6
tb_value vf_driver "$(tb_driver "$vf")"
tb_value pf_other_irqs "$(grep " $ifc\$" /proc/interrupts | tr -s ' ')"
dmesg | grep -e igbvf -e 'igb ' | tail -n 12
vif=$(ls "/sys/bus/pci/devices/$vf/net" 2>/dev/null)
tb_value vf_if "$vif"
if [ -n "$vif" ]; then
    ip link set "$vif" up
    sleep 3
    ip addr add 10.0.2.15/24 dev "$vif"
    tb_value vf_carrier "$(cat "/sys/class/net/$vif/carrier" 2>/dev/null)"
    if ping -c 3 -W 2 10.0.2.2 >/tmp/ping.out 2>&1; then
        tb_check vf-ping-gateway pass "$(tail -n2 /tmp/ping.out | tr '\n' ' ')"
    else
        tb_check vf-ping-gateway fail "$(tail -n2 /tmp/ping.out | tr '\n' ' ')"
    fi
    tb_value vf_tx_rx_packets "$(cat "/sys/class/net/$vif/statistics/tx_packets") $(cat "/sys/class/net/$vif/statistics/rx_packets")"
else
    tb_check vf-netdev fail "igbvf made no network interface"
fi
true
