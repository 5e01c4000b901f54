#![cfg(feature = "testbed")]
//! viaduct as the L2 VMM with devices assigned.
//!
//! Scenario vfio-guest: igb VF + NVMe with MSI-X; the NVMe in the next guest with pci=nomsi
//! (INTx); the NVMe across a guest reboot (`--on-reboot restart`). Scenario vfio-guest-more:
//! a whole e1000e pinging level 1, the NVMe SR-IOV VF, a 4 GiB ivshmem BAR read in the guest,
//! the NVMe again after a SIGKILLed viaduct. Every check the scenarios emit is named here (a
//! missing one fails), and what the guests wrote is checked again in the level-0 images.

mod common;

use common::Scenario;

/// Every check a scenario must have emitted, each passed; then the whole scenario passed.
#[track_caller]
fn assert_checks(s: &Scenario, names: &[&str]) {
    for n in names {
        s.assert_check(n);
    }
    s.assert_passed();
}

#[test]
fn igbvf_and_nvme_with_msix() {
    let s = common::scenario("vfio-guest").expect("results");
    assert_checks(
        &s,
        &[
            "vfio-bind-0000:01:10.0",
            "vfio-bind-0000:02:00.0",
            "viaduct-msix/boot",
            "viaduct-msix/nvme-bound",
            "viaduct-msix/igbvf-bound",
            "viaduct-msix/nvme-read-signature",
            "viaduct-msix/nvme-write",
            "viaduct-msix/nvme-no-timeouts",
            "viaduct-msix/nvme-interrupts",
            "viaduct-msix/nvme-reset-at-start",
            "viaduct-msix/done",
        ],
    );
    let sig = s.signature("disk.img").unwrap();
    assert_eq!(s.sector_line("disk.img", common::GUEST_WRITE_LBA).unwrap(), format!("VIADUCT-GUEST-WROTE {sig}"));
    assert_eq!(s.value("viaduct-msix/nvme_irq_kind"), Some("msi"));
    assert!(s.value_u64("viaduct-msix/nvme_irqs").unwrap() > 0);
    assert!(s.value_u64("viaduct-msix/nvme_msi_vectors").unwrap() > 0, "nvme allocated MSI-X vectors");
    assert_eq!(s.value_u64("viaduct-msix/nvme_timeouts").unwrap(), 0);
    assert!(s.value_u64("viaduct-msix/igbvf_msi_vectors").unwrap() > 0, "igbvf allocated MSI-X vectors");
    assert_eq!(s.value_u64("viaduct-msix/vmm_rc").unwrap(), 0, "viaduct exits 0 when the guest powers off");
}

#[test]
fn nvme_with_intx_in_the_next_guest() {
    let s = common::scenario("vfio-guest").expect("results");
    assert_checks(
        &s,
        &[
            "viaduct-intx/boot",
            "viaduct-intx/nvme-bound",
            "viaduct-intx/nvme-read-signature",
            "viaduct-intx/nvme-reads-previous-guest-write",
            "viaduct-intx/nvme-write",
            "viaduct-intx/nvme-no-msi",
            "viaduct-intx/nvme-no-timeouts",
            "viaduct-intx/nvme-interrupts",
            "viaduct-intx/nvme-reset-at-start",
            "viaduct-intx/done",
            "nvme-released",
        ],
    );
    assert_eq!(s.value("viaduct-intx/nvme_irq_kind"), Some("intx"), "pci=nomsi: interrupts came on the INTx line");
    assert!(s.value_u64("viaduct-intx/nvme_irqs").unwrap() > 0);
    assert_eq!(s.value_u64("viaduct-intx/nvme_msi_vectors").unwrap(), 0);
    assert_eq!(s.value_u64("viaduct-intx/nvme_timeouts").unwrap(), 0, "no interrupt was lost and polled for");
    assert!(s.value("viaduct-intx/nvme_intx_line").unwrap_or_default().contains("fasteoi"), "a level-triggered line");
    // Two guests in a row with the same device: each wrote its own token, the second read the
    // first one's; both are in the level-0 image.
    for lba in [2056, 2064] {
        let token = s.value(&format!("token_lba{lba}")).expect("token value");
        assert_eq!(s.sector_line("disk.img", lba).unwrap(), token, "LBA {lba} of disk.img");
    }
}

#[test]
fn nvme_across_a_guest_reboot() {
    let s = common::scenario("vfio-guest").expect("results");
    assert_checks(
        &s,
        &[
            "viaduct-reboot/boot",
            "viaduct-reboot/boot1-read-signature",
            "viaduct-reboot/boot1-rebooting",
            "viaduct-reboot/boot2-found-token",
            "viaduct-reboot/boot2-nvme-bound",
            "viaduct-reboot/boot2-read-signature",
            "viaduct-reboot/boot2-interrupts",
            "viaduct-reboot/boot2-no-timeouts",
            "viaduct-reboot/done",
            "viaduct-reboot/restarted",
            "viaduct-reboot/nvme-reset-each-boot",
        ],
    );
    assert_eq!(s.value_u64("viaduct-reboot/guest_inits").unwrap(), 2);
    assert!(s.value_u64("viaduct-reboot/nvme_resets").unwrap() >= 2);
    assert!(s.value_u64("viaduct-reboot/boot2_irqs").unwrap() > 0);
    // The second boot cleared the token the first one wrote at LBA 4096.
    assert_eq!(s.read_file_at("disk.img", 4096 * 512, 512).unwrap(), vec![0u8; 512]);
}

#[test]
fn nic_pings_level1_both_ways() {
    let s = common::scenario("vfio-guest-more").expect("results");
    assert_checks(
        &s,
        &[
            "nic-vfio-bind",
            "vnic/boot",
            "vnic/e1000e-bound",
            "vnic/ping-l1",
            "vnic/nic-both-ways",
            "vnic/nic-msix",
            "vnic/done",
            "nic-l1-received",
            "nic-l1-sent",
        ],
    );
    assert!(s.value_u64("vnic/ping_received").unwrap() >= 4, "echo replies the guest got");
    assert!(s.value_u64("vnic/guest_tx_packets").unwrap() >= 5);
    assert!(s.value_u64("vnic/guest_rx_packets").unwrap() >= 4);
    assert!(s.value_u64("nic_l1_rx_packets").unwrap() >= 5, "echo requests level 1 got");
    assert!(s.value_u64("nic_l1_tx_packets").unwrap() >= 4);
    assert!(s.value_u64("vnic/nic_irqs").unwrap() > 0);
}

#[test]
fn nvme_sriov_vf_reads_and_writes() {
    let s = common::scenario("vfio-guest-more").expect("results");
    assert_checks(
        &s,
        &[
            "nvmevf-bind",
            "vnvmevf/boot",
            "vnvmevf/nvme-bound",
            "vnvmevf/read-signature",
            "vnvmevf/write",
            "vnvmevf/msix",
            "vnvmevf/no-timeouts",
            "vnvmevf/done",
        ],
    );
    let sig = s.signature("sriov.img").unwrap();
    assert_eq!(s.check("vnvmevf/read-signature").unwrap().detail.trim(), sig);
    assert_eq!(s.sector_line("sriov.img", common::GUEST_WRITE_LBA).unwrap(), format!("VIADUCT-GUEST-WROTE {sig}"));
}

#[test]
fn ivshmem_4_gib_bar_read_in_the_guest() {
    let s = common::scenario("vfio-guest-more").expect("results");
    let offsets = [0u64, 0x4000_0000, 0x8000_0000, 0xffff_f000];
    let names: Vec<String> = offsets.iter().map(|o| format!("vivshmem/read-VIADUCT-IVSHMEM@{o:#x}")).collect();
    let mut all = vec!["vivshmem/boot", "vivshmem/bar2-placed", "vivshmem/done"];
    all.extend(names.iter().map(String::as_str));
    assert_checks(&s, &all);
    let run_id = s.signature("disk.img").unwrap().rsplit("run=").next().unwrap().to_string();
    for (o, name) in offsets.iter().zip(&names) {
        let want = format!("VIADUCT-IVSHMEM@{o:#x} run={run_id}");
        assert_eq!(s.check(name).unwrap().detail.trim(), want, "what the guest read at BAR2+{o:#x}");
        let l0 = s.read_file_at("ivshmem.img", *o, want.len()).unwrap();
        assert_eq!(String::from_utf8_lossy(&l0), want, "level 0's backing file at {o:#x}");
    }
    let bar = s.value("vivshmem/bar2").unwrap_or_default();
    let start = bar.split_whitespace().next().and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok());
    assert!(start.is_some_and(|a| a >= 1 << 32), "BAR2 above 4 GiB: {bar}");
    assert!(bar.ends_with("size 4294967296"), "{bar}");
}

#[test]
fn nvme_assignable_again_after_sigkill() {
    let s = common::scenario("vfio-guest-more").expect("results");
    assert_checks(
        &s,
        &[
            "killed-guest-ran",
            "vafterkill/boot",
            "vafterkill/read-signature",
            "vafterkill/msix",
            "vafterkill/no-timeouts",
            "vafterkill/done",
        ],
    );
    let sig = s.signature("disk.img").unwrap();
    assert_eq!(s.check("vafterkill/read-signature").unwrap().detail.trim(), sig);
}
