#![cfg(feature = "testbed")]
//! virtio and VFIO in one guest (scenario virtio-vfio): the NVMe passed through and a
//! virtio-blk disk + virtio-rng beside it. Both disks read what was written outside the guest,
//! data copies between them, the guest's NVMe write is in disk.img on this machine, its
//! virtio-blk write is in level 1's image, and both devices count MSI-X interrupts.

mod common;

const RUN: &str = "viaduct-virtio-vfio";

fn results() -> common::Scenario {
    common::scenario("virtio-vfio").expect("virtio-vfio results")
}

#[test]
fn both_kinds_of_device_work_in_one_guest() {
    let s = results();
    s.assert_run_checks(
        RUN,
        &[
            "vfio-bind",
            "boot",
            "nvme-bound",
            "virtio-bound",
            "nvme-read",
            "virtio-read",
            "copy-nvme-to-virtio",
            "hwrng",
            "msix-both",
        ],
    );
    assert!(s.value_u64(&format!("{RUN}/nvme_irqs")).expect("nvme_irqs") > 0);
    assert!(s.value_u64(&format!("{RUN}/virtio_blk_irqs")).expect("virtio_blk_irqs") > 0);
}

#[test]
fn writes_of_both_devices_land_in_their_images() {
    let s = results();
    s.assert_check(&format!("{RUN}/nvme-write"));
    s.assert_check(&format!("{RUN}/virtio-write"));
    s.assert_check(&format!("{RUN}/l1-sees-virtio-write"));
    let token = s.value(&format!("{RUN}/token")).expect("token");
    let lba = s.value_u64(&format!("{RUN}/nvme_lba")).expect("nvme_lba");
    s.assert_sector("disk.img", lba, &format!("VIADUCT-VIRTIO-VFIO-NVME {token}"), "the guest's NVMe write");
    s.assert_check(&format!("{RUN}/nvme-restored"));
    s.assert_passed();
}
