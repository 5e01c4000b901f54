#![cfg(feature = "testbed")]
//! viaduct as the L2 VMM with devices assigned (scenario vfio-guest): igb VF + NVMe with
//! MSI-X, then the NVMe with the guest on INTx (pci=nomsi). The NVMe's read and write are
//! checked in the guest and the write again here, in the level-0 disk image.

mod common;

#[test]
fn igbvf_and_nvme_with_msix() {
    let s = common::scenario("vfio-guest").expect("results");
    for c in ["viaduct-msix/boot", "viaduct-msix/nvme-bound", "viaduct-msix/igbvf-bound", "viaduct-msix/nvme-read-signature", "viaduct-msix/nvme-write", "viaduct-msix/nvme-interrupts"] {
        s.assert_check(c);
    }
    let sig = s.signature("disk.img").unwrap();
    assert_eq!(s.sector_line("disk.img", common::GUEST_WRITE_LBA).unwrap(), format!("VIADUCT-GUEST-WROTE {sig}"));
    assert!(s.value_u64("viaduct-msix/nvme_irqs").unwrap() > 0);
    assert_eq!(s.value("viaduct-msix/nvme_irq_kind"), Some("msi"));
    assert!(s.value_u64("viaduct-msix/igbvf_msi_vectors").unwrap() > 0, "igbvf allocated MSI-X vectors");
}

#[test]
fn nvme_with_intx() {
    let s = common::scenario("vfio-guest").expect("results");
    for c in ["viaduct-intx/boot", "viaduct-intx/nvme-bound", "viaduct-intx/nvme-read-signature", "viaduct-intx/nvme-write", "viaduct-intx/nvme-interrupts", "nvme-released"] {
        s.assert_check(c);
    }
    assert_eq!(s.value("viaduct-intx/nvme_irq_kind"), Some("intx"), "pci=nomsi: interrupts came on the INTx line");
    assert!(s.value_u64("viaduct-intx/nvme_irqs").unwrap() > 0);
}
