#![cfg(feature = "testbed")]
//! QEMU 10 as the L2 VMM (scenario qemu-reference): what a correct VMM achieves with an igb
//! VF, the NVMe controller and an NVMe SR-IOV VF passed through. Also asserts that the bytes
//! the guest wrote reached the disk image files on level 0 (DMA through two IOMMU levels).

mod common;

use common::GUEST_WRITE_LBA;

#[test]
fn guest_sees_and_drives_the_assigned_devices() {
    let s = common::scenario("qemu-reference").expect("qemu-reference results");
    s.assert_check("nvme-sriov-vf-created");
    s.assert_check("qemu/boot");
    s.assert_check("qemu/igbvf-bound");
    s.assert_check("qemu/nvme-bound");
    s.assert_check("qemu/nvme-read-signature");
    s.assert_check("qemu/nvme-vf-read-signature");
    s.assert_check("qemu/igbvf-msix-vectors");
    s.assert_check("qemu/done");
    let nvme: Vec<String> = s.value("qemu/nvme_bdfs").unwrap_or("").split_whitespace().map(String::from).collect();
    assert_eq!(nvme.len(), 2, "guest NVMe functions {nvme:?}; log: {}", s.log.display());
    for bdf in &nvme {
        s.assert_check(&format!("qemu/nvme-msix-{bdf}"));
        let irqs = s.value_u64(&format!("qemu/irqs_{bdf}")).expect("irq count");
        assert!(irqs > 0, "no MSI-X interrupts on guest {bdf}; log: {}", s.log.display());
    }
    s.assert_passed();
}

#[test]
fn guest_writes_reach_the_l0_disk_images() {
    let s = common::scenario("qemu-reference").expect("qemu-reference results");
    s.assert_check("qemu/nvme-write");
    s.assert_check("qemu/nvme-vf-write");
    for image in ["disk.img", "sriov.img"] {
        let sig = s.signature(image).expect("signature");
        assert_eq!(s.sector_line(image, 0).expect("sector 0"), sig, "{image} sector 0");
        let wrote = s.sector_line(image, GUEST_WRITE_LBA).expect("guest sector");
        assert_eq!(
            wrote,
            format!("VIADUCT-GUEST-WROTE {sig}"),
            "{image} LBA {GUEST_WRITE_LBA} does not hold the guest's write; log: {}",
            s.log.display()
        );
    }
}

#[test]
fn reference_numbers_for_benchmarks() {
    let s = common::scenario("qemu-reference").expect("qemu-reference results");
    let init_ms = s.value_u64("qemu/init_ms").expect("init_ms");
    let rss = s.value_u64("qemu/peak_rss_kb").expect("peak_rss_kb");
    eprintln!("QEMU reference: VMM start to guest init {init_ms} ms, peak RSS {rss} kB");
    assert!(init_ms > 0 && rss > 0, "init_ms={init_ms} rss={rss}");
}
