#![cfg(feature = "testbed")]
//! Packets through a passed-through NIC (scenario nic-datapath): a whole e1000e assigned to
//! the guest (QEMU as the VMM for now) pings level 1 over a QEMU hub.

mod common;

#[test]
fn guest_pings_level1_through_the_assigned_nic() {
    let s = common::scenario("nic-datapath").expect("nic-datapath results");
    s.assert_check("l1-nic");
    s.assert_check("nic-vfio-bind");
    s.assert_check("qemu/boot");
    s.assert_check("qemu/e1000e-bound");
    s.assert_check("qemu/ping-l1");
    let replies = s.value_u64("qemu/ping_received").expect("ping_received");
    assert!(replies >= 4, "{replies} of 5 ping replies; log: {}", s.log.display());
    s.assert_check("qemu/nic-msix");
    assert!(s.value_u64("qemu/irqs").expect("irqs") > 0, "no NIC interrupts in the guest");
    s.assert_check("l1-received");
    assert!(s.value_u64("l1_rx_packets").expect("l1_rx_packets") >= replies);
    s.assert_passed();
}
