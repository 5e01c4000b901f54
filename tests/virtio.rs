#![cfg(feature = "testbed")]
//! virtio devices under viaduct in the nested testbed (scenario virtio-blk): a Linux guest
//! with three virtio-blk disks (read-write and read-only raw image files in level 1, and level
//! 1's NVMe namespace as a block device, whose backing file disk.img lives on level 0) and
//! virtio-rng. Bytes level 1 wrote are read by the guest, bytes the guest wrote are found by
//! level 1 in the image and by this test in disk.img itself, flushes reach the device, the
//! read-only disk refuses writes and stays unchanged, /dev/hwrng gives data, and completions
//! arrive as MSI-X interrupts.

mod common;

const RUN: &str = "viaduct-virtio";

fn results() -> common::Scenario {
    common::scenario("virtio-blk").expect("virtio-blk results")
}

#[test]
fn guest_sees_virtio_pci_functions_bound_to_virtio_pci() {
    let s = results();
    s.assert_check(&format!("{RUN}/boot"));
    s.assert_check(&format!("{RUN}/l1-nvme-blockdev"));
    s.assert_check(&format!("{RUN}/blk-functions"));
    s.assert_check(&format!("{RUN}/virtio-pci-bound"));
    s.assert_check(&format!("{RUN}/disk-serials"));
    s.assert_check(&format!("{RUN}/disk-capacity"));
    assert_eq!(s.value_u64(&format!("{RUN}/rw_sectors")).expect("rw_sectors"), 16384);
    assert_eq!(s.value_u64(&format!("{RUN}/ro_sectors")).expect("ro_sectors"), 4096);
    let blks = s.value(&format!("{RUN}/virtio_blk_functions")).unwrap_or("").to_string();
    assert_eq!(blks.split_whitespace().count(), 3, "virtio-blk functions: {blks}");
    for bdf in blks.split_whitespace() {
        // One vector per queue plus the configuration vector.
        let v = s.value_u64(&format!("{RUN}/msix_vectors_{bdf}")).expect("msix vectors");
        assert_eq!(v, 2, "{bdf}: {v} MSI-X vectors allocated; log: {}", s.log.display());
    }
}

#[test]
fn bytes_cross_between_level1_image_and_guest() {
    let s = results();
    s.assert_check(&format!("{RUN}/read-rw-signature"));
    s.assert_check(&format!("{RUN}/read-ro-signature"));
    s.assert_check(&format!("{RUN}/rw-pattern"));
    s.assert_check(&format!("{RUN}/write-rw"));
    s.assert_check(&format!("{RUN}/l1-sees-guest-write"));
    let token = s.value(&format!("{RUN}/token")).expect("token");
    let detail = &s.check(&format!("{RUN}/l1-sees-guest-write")).expect("check").detail;
    assert_eq!(detail, &format!("VIADUCT-GUEST-WROTE {token}"));
    let guest = s.value(&format!("{RUN}/pattern_md5")).expect("guest pattern md5");
    let host = s.value(&format!("{RUN}/l1_pattern_md5")).expect("L1 pattern md5");
    assert_eq!(guest, host, "the 1 MiB the guest wrote differs in the image; log: {}", s.log.display());
}

#[test]
fn guest_write_through_virtio_blk_is_in_the_level0_image() {
    let s = results();
    s.assert_check(&format!("{RUN}/nvme-disk-signature"));
    s.assert_check(&format!("{RUN}/nvme-disk-write"));
    s.assert_check(&format!("{RUN}/l1-sees-nvme-write"));
    // The NVMe's first sector (the signature the guest read through virtio-blk) and the line
    // the guest wrote, in the image file on this machine.
    let sig = s.signature("disk.img").expect("disk.img signature");
    assert_eq!(s.sector_line("disk.img", 0).expect("disk.img LBA 0"), sig);
    let lba = s.value_u64(&format!("{RUN}/nvme_lba")).expect("nvme_lba");
    let token = s.value(&format!("{RUN}/token")).expect("token");
    s.assert_sector("disk.img", lba, &format!("VIADUCT-VIRTIO-WROTE {token}"), "the guest's write through virtio-blk");
    // The rest of that sector is the zero padding dd's conv=sync wrote.
    let sector = s.read_file_at("disk.img", lba * 512, 512).expect("sector");
    let text_len = format!("VIADUCT-VIRTIO-WROTE {token}\n").len();
    assert!(sector[text_len..].iter().all(|&b| b == 0), "sector tail not zero-padded");
}

#[test]
fn flush_reaches_the_device() {
    let s = results();
    s.assert_check(&format!("{RUN}/flush"));
    assert_eq!(s.value(&format!("{RUN}/rw_write_cache")), Some("write back"));
    assert!(s.value_u64(&format!("{RUN}/rw_flushes")).expect("rw_flushes") > 0);
}

#[test]
fn readonly_disk_refuses_writes() {
    let s = results();
    s.assert_check(&format!("{RUN}/ro-flag"));
    s.assert_check(&format!("{RUN}/ro-write-refused"));
    s.assert_check(&format!("{RUN}/l1-ro-image-unchanged"));
}

#[test]
fn hwrng_gives_data() {
    let s = results();
    s.assert_check(&format!("{RUN}/hwrng-virtio"));
    s.assert_check(&format!("{RUN}/hwrng-data"));
    assert_eq!(s.value_u64(&format!("{RUN}/hwrng_bytes")).expect("hwrng_bytes"), 16384);
}

#[test]
fn completions_arrive_as_msix_interrupts_and_all_checks_pass() {
    let s = results();
    s.assert_check(&format!("{RUN}/blk-msix-interrupts"));
    s.assert_check(&format!("{RUN}/done"));
    s.assert_passed();
}
