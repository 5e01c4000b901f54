#![cfg(feature = "testbed")]
//! The testbed's optional level-0 devices (scenario testbed-devices): ivshmem with a large
//! 64-bit BAR whose contents L0 wrote, and a PCIe-to-PCI bridge whose devices share one
//! IOMMU group.

mod common;

#[test]
fn ivshmem_large_bar_shows_the_l0_pattern() {
    let s = common::scenario("testbed-devices").expect("testbed-devices results");
    s.assert_check("ivshmem-present");
    s.assert_check("ivshmem-bar-size");
    s.assert_check("ivshmem-bar-64bit");
    let size = s.value_u64("ivshmem_bar2_size").expect("bar size");
    assert!(size >= 1 << 32, "BAR2 is {size} bytes");
    // What L1 read through the BAR is what L0 wrote into the backing file.
    s.assert_check("ivshmem-pattern-0x0");
    s.assert_check(&format!("ivshmem-pattern-{:#x}", size / 2));
    let head = s.read_file_at("ivshmem.img", size / 2, 16).expect("ivshmem.img");
    assert_eq!(&head, b"VIADUCT-IVSHMEM@");
}

#[test]
fn devices_behind_a_pci_bridge_share_a_group() {
    let s = common::scenario("testbed-devices").expect("testbed-devices results");
    s.assert_check("bridge-shared-group");
    let members = s.value("bridge_group_members").unwrap_or("");
    for bdf in ["0000:07:00.0", "0000:08:01.0", "0000:08:02.0"] {
        assert!(members.contains(bdf), "{bdf} not in the bridge's group: {members}");
    }
    s.assert_check("bridge-group-vfio");
    s.assert_passed();
}
