#![cfg(feature = "testbed")]
//! virtio devices under viaduct in the nested testbed (scenario virtio-blk): a Linux guest
//! with two virtio-blk disks (read-write and read-only, raw image files in level 1) and
//! virtio-rng. Bytes level 1 wrote are read by the guest, bytes the guest wrote are found by
//! level 1 in the image, the read-only disk refuses writes and stays unchanged, /dev/hwrng
//! gives data, and completions arrive as MSI-X interrupts.

mod common;

const RUN: &str = "viaduct-virtio";

fn results() -> common::Scenario {
    common::scenario("virtio-blk").expect("virtio-blk results")
}

#[test]
fn guest_sees_virtio_pci_functions_bound_to_virtio_pci() {
    let s = results();
    s.assert_check(&format!("{RUN}/boot"));
    s.assert_check(&format!("{RUN}/blk-functions"));
    s.assert_check(&format!("{RUN}/virtio-pci-bound"));
    s.assert_check(&format!("{RUN}/disk-serials"));
    s.assert_check(&format!("{RUN}/disk-capacity"));
    assert_eq!(s.value_u64(&format!("{RUN}/rw_sectors")).expect("rw_sectors"), 16384);
    assert_eq!(s.value_u64(&format!("{RUN}/ro_sectors")).expect("ro_sectors"), 4096);
    let blks = s.value(&format!("{RUN}/virtio_blk_functions")).unwrap_or("").to_string();
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
