#![cfg(feature = "testbed")]
//! viaduct as the L2 VMM with devices assigned.
//!
//! Scenario vfio-guest: igb VF + NVMe with MSI-X; the same NVMe in the next guest with
//! pci=nomsi (INTx); the NVMe across a guest reboot (`--on-reboot restart`), reset in between
//! (the guest reads the controller's registers back at their reset values). Scenario
//! vfio-guest-more: a whole e1000e pinging level 1 in three guests in a row (MSI-X, MSI with
//! `e1000e.IntMode=1`, INTx with `pci=nomsi`), the NVMe SR-IOV VF, a 4 GiB ivshmem BAR read
//! in the guest, the NVMe again after a SIGKILLed viaduct. Every check the scenarios emit is
//! named here (a missing one fails), and what the guests wrote is checked again in the
//! level-0 images.

mod common;

use common::Scenario;

/// CC and CSTS from a value "CC=0x... CSTS=0x..." (or the guest's "0x... 0x... 0x..." read).
fn nvme_regs(s: &Scenario, key: &str) -> (u32, u32) {
    let v = s.value(key).unwrap_or_else(|| panic!("value {key} missing; log: {}", s.log.display()));
    let nums: Vec<u32> = v
        .split_whitespace()
        .map(|w| w.rsplit('=').next().unwrap_or(w))
        .map(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{key} = {v:?}: {e}")))
        .collect();
    assert!(nums.len() >= 2, "{key} = {v:?}: CC and CSTS expected");
    (nums[0], nums[1])
}

/// The controller registers a reset leaves: CC all zero (EN=0, SHN=00), CSTS.RDY=0, SHST=00.
#[track_caller]
fn assert_nvme_reset(s: &Scenario, key: &str) {
    let (cc, csts) = nvme_regs(s, key);
    assert_eq!(cc, 0, "{key}: CC {cc:#x} is not its reset value");
    assert_eq!(csts & 0xd, 0, "{key}: CSTS {csts:#x} has RDY or SHST set");
}

#[test]
fn igbvf_and_nvme_with_msix() {
    let s = common::scenario("vfio-guest").expect("results");
    s.assert_checks(&["vfio-bind-0000:01:10.0", "vfio-bind-0000:02:00.0"]);
    s.assert_run_checks(
        "viaduct-msix",
        &[
            "boot",
            "nvme-reset-state",
            "nvme-bound",
            "igbvf-bound",
            "nvme-read-signature",
            "nvme-write",
            "nvme-no-timeouts",
            "nvme-interrupts",
            "done",
        ],
    );
    s.assert_passed();
    let sig = s.signature("disk.img").unwrap();
    assert_eq!(s.sector_line("disk.img", common::GUEST_WRITE_LBA).unwrap(), format!("VIADUCT-GUEST-WROTE {sig}"));
    // Every nvme queue interrupt that counted came as MSI-X, by the guest's /proc/interrupts.
    assert_eq!(s.value("viaduct-msix/nvme_irq_kind"), Some("msix"), "{:?}", s.value("viaduct-msix/nvme_irq_lines"));
    assert_nvme_reset(&s, "viaduct-msix/nvme_regs_at_start");
    assert!(s.value_u64("viaduct-msix/nvme_irqs").unwrap() > 0);
    assert!(s.value_u64("viaduct-msix/nvme_msi_vectors").unwrap() > 0, "nvme allocated MSI-X vectors");
    assert_eq!(s.value_u64("viaduct-msix/nvme_timeouts").unwrap(), 0);
    assert!(s.value_u64("viaduct-msix/igbvf_msi_vectors").unwrap() > 0, "igbvf allocated MSI-X vectors");
    assert_eq!(s.value_u64("viaduct-msix/vmm_rc").unwrap(), 0, "viaduct exits 0 when the guest powers off");
}

#[test]
fn nvme_with_intx_in_the_next_guest() {
    let s = common::scenario("vfio-guest").expect("results");
    s.assert_run_checks(
        "viaduct-intx",
        &[
            "boot",
            "nvme-reset-state",
            "nvme-bound",
            "nvme-read-signature",
            "nvme-reads-previous-guest-write",
            "nvme-write",
            "nvme-no-msi",
            "nvme-no-timeouts",
            "nvme-interrupts",
            "done",
        ],
    );
    s.assert_check("nvme-released");
    s.assert_passed();
    // pci=nomsi: the guest's /proc/interrupts shows its nvme queues on an IO-APIC line.
    let lines = s.value("viaduct-intx/nvme_irq_lines").unwrap_or_default();
    assert_eq!(s.value("viaduct-intx/nvme_irq_kind"), Some("intx"), "{lines}");
    assert!(s.value_u64("viaduct-intx/nvme_irqs").unwrap() > 0);
    assert_eq!(s.value_u64("viaduct-intx/nvme_msi_vectors").unwrap(), 0);
    assert_eq!(s.value_u64("viaduct-intx/nvme_timeouts").unwrap(), 0, "no interrupt was lost and polled for");
    assert!(lines.contains("IO-APIC") && lines.contains("fasteoi"), "a level-triggered IO-APIC line: {lines}");
    // The first guest left the controller enabled; this one got it reset.
    assert_nvme_reset(&s, "viaduct-intx/nvme_regs_at_start");
}

/// Issue 5: "two guests in a row get the same device". Runs viaduct-msix and viaduct-intx of
/// vfio-guest are two viaduct processes, one after the other, both given L1's NVMe
/// 0000:02:00.0; the second starts as soon as the first exited. Each guest wrote its own
/// token; the second read the first one's through the device before writing; both tokens
/// are in the level-0 image.
#[test]
fn two_guests_in_a_row_get_the_same_nvme() {
    let s = common::scenario("vfio-guest").expect("results");
    s.assert_checks(&[
        "vfio-bind-0000:02:00.0",
        "viaduct-msix/nvme-bound",
        "viaduct-msix/nvme-write",
        "viaduct-msix/done",
        "viaduct-intx/nvme-bound",
        "viaduct-intx/nvme-reads-previous-guest-write",
        "viaduct-intx/nvme-write",
        "viaduct-intx/done",
    ]);
    s.assert_passed();
    assert_eq!(s.value_u64("viaduct-msix/vmm_rc").unwrap(), 0, "the first viaduct exited cleanly");
    assert_eq!(s.value_u64("viaduct-intx/vmm_rc").unwrap(), 0, "the second viaduct exited cleanly");
    let tok1 = s.value("token_lba2056").expect("first guest's token").to_string();
    let tok2 = s.value("token_lba2064").expect("second guest's token").to_string();
    // (Distinct tokens, or the hand-over below would prove nothing.)
    assert_ne!(tok1, tok2);
    // What the second guest read at LBA 2056 is what the first one wrote there.
    assert_eq!(s.detail("viaduct-intx/nvme-reads-previous-guest-write").trim(), tok1);
    assert_eq!(s.sector_line("disk.img", 2056).unwrap(), tok1, "LBA 2056 of disk.img (first guest)");
    assert_eq!(s.sector_line("disk.img", 2064).unwrap(), tok2, "LBA 2064 of disk.img (second guest)");
}

#[test]
fn nvme_across_a_guest_reboot() {
    let s = common::scenario("vfio-guest").expect("results");
    s.assert_run_checks(
        "viaduct-reboot",
        &[
            "boot",
            "boot1-nvme-reset-state",
            "boot1-read-signature",
            "boot1-nvme-changed",
            "boot1-rebooting",
            "boot2-found-token",
            "boot2-nvme-reset-state",
            "boot2-nvme-bound",
            "boot2-read-signature",
            "boot2-interrupts",
            "boot2-no-timeouts",
            "done",
            "restarted",
        ],
    );
    s.assert_passed();
    assert_eq!(s.value_u64("viaduct-reboot/guest_inits").unwrap(), 2);
    // The first boot's driver left the controller enabled (and shut down); after the guest's
    // reboot, before any driver, it was back at its reset values: the device was reset.
    let (cc, csts) = nvme_regs(&s, "viaduct-reboot/boot1_regs_before_reboot");
    assert!(cc != 0 || csts & 0xd != 0, "boot 1's driver left CC {cc:#x} CSTS {csts:#x}: nothing to reset");
    assert_nvme_reset(&s, "viaduct-reboot/boot2_regs_at_start");
    assert!(s.value_u64("viaduct-reboot/boot2_irqs").unwrap() > 0);
    // The second boot cleared the token the first one wrote at LBA 4096.
    assert_eq!(s.read_file_at("disk.img", 4096 * 512, 512).unwrap(), vec![0u8; 512]);
}

/// Level 1's "vfio-KIND:VECTORS/COUNT ..." value of a NIC run: (vectors, total) of `kind`.
fn host_irqs(s: &Scenario, run: &str, kind: &str) -> Option<(u64, u64)> {
    let hosts = s.value(&format!("{run}/host_irqs"))?;
    hosts.split_whitespace().find_map(|e| {
        let (name, rest) = e.split_once(':')?;
        let (vecs, total) = rest.split_once('/')?;
        (name == kind).then(|| (vecs.parse().ok(), total.parse().ok())).and_then(|(v, t)| Some((v?, t?)))
    })
}

/// One e1000e guest run: pings L1 both ways, and the guest's driver and level 1's vfio-pci
/// both used interrupt mode `mode` (the guest's msi_irqs mode or its IO-APIC line; the host
/// interrupts vfio-pci opened for the device while viaduct ran).
#[track_caller]
fn assert_nic_run(s: &Scenario, run: &str, mode: &str) {
    s.assert_run_checks(
        run,
        &[
            "boot",
            "e1000e-bound",
            "ping-l1",
            "nic-both-ways",
            "nic-interrupts",
            "done",
            "l1-received",
            "l1-sent",
            "host-irq-mode",
        ],
    );
    let num = |k: &str| s.value_u64(&format!("{run}/{k}")).unwrap_or_else(|e| panic!("{run}: {e}"));
    assert!(num("ping_received") >= 4, "{run}: echo replies the guest got");
    assert!(num("guest_tx_packets") >= 5, "{run}");
    assert!(num("guest_rx_packets") >= 4, "{run}");
    assert!(num("l1_rx_packets") >= 5, "{run}: echo requests level 1 got");
    assert!(num("l1_tx_packets") >= 4, "{run}");
    assert!(num("nic_irqs") > 0, "{run}: interrupts in the guest");
    assert_eq!(s.value(&format!("{run}/nic_irq_mode")), Some(mode), "{run}: the guest driver's interrupt mode");
    let hosts = s.value(&format!("{run}/host_irqs")).unwrap_or_default();
    let want = format!("vfio-{mode}");
    let (vecs, total) = host_irqs(s, run, &want).unwrap_or_else(|| panic!("{run}: no {want} in level 1: {hosts}"));
    assert!(vecs >= 1 && total > 0, "{run}: {want} fired in level 1: {hosts}");
    match mode {
        "msix" => {
            assert!(num("nic_vectors") > 1, "{run}: e1000e uses several MSI-X vectors");
            assert!(host_irqs(s, run, "vfio-msi").is_none(), "{run}: level 1 had MSI: {hosts}");
        }
        "msi" => {
            assert_eq!(num("nic_vectors"), 1, "{run}: e1000e uses one MSI vector");
            assert!(host_irqs(s, run, "vfio-msix").is_none(), "{run}: level 1 had MSI-X: {hosts}");
        }
        _ => {
            assert_eq!(num("nic_vectors"), 0, "{run}: no MSI vectors on INTx");
            assert!(host_irqs(s, run, "vfio-msix").is_none(), "{run}: level 1 had MSI-X: {hosts}");
            let line = s.value(&format!("{run}/nic_intx_line")).unwrap_or_default();
            assert!(
                line.contains("IO-APIC") && line.contains("fasteoi"),
                "{run}: a level-triggered IO-APIC line: {line}"
            );
        }
    }
}

/// The same whole e1000e in three guests in a row, one per interrupt mode it offers: MSI-X
/// (the driver's default), MSI (`e1000e.IntMode=1`), INTx (`pci=nomsi`).
#[test]
fn nic_pings_level1_with_msix_msi_and_intx() {
    let s = common::scenario("vfio-guest-more").expect("results");
    s.assert_check("nic-vfio-bind");
    assert_nic_run(&s, "vnic", "msix");
    s.assert_check("vnic/nic-irq-mode");
    assert_nic_run(&s, "vnic-intx", "intx");
    s.assert_check("vnic-intx/nic-irq-mode");
    assert!(host_irqs(&s, "vnic-intx", "vfio-msi").is_none(), "pci=nomsi: no MSI in level 1");

    // MSI: viaduct must have put the device in MSI mode on the host when the guest enabled
    // it. Whether the guest then keeps MSI is up to e1000e's own MSI self-test, which level
    // 0's e1000e model only answers by chance (the scenario's comment says why): a skip there
    // is reported as not shown, never as a pass.
    s.assert_check("vnic-msi/host-msi-enabled");
    let c = s.check("vnic-msi/nic-irq-mode").expect("check vnic-msi/nic-irq-mode");
    match c.status.as_str() {
        "pass" => assert_nic_run(&s, "vnic-msi", "msi"),
        "skip" => {
            assert!(c.detail.contains("MSI self-test"), "{}", c.detail);
            // The device went back to INTx and still moved packets both ways.
            assert_nic_run(&s, "vnic-msi", "intx");
            let (vecs, _) = host_irqs(&s, "vnic-msi", "vfio-msi").expect("vfio-msi in level 1");
            assert_eq!(vecs, 1, "e1000e has one MSI vector");
            eprintln!("NOTE vnic-msi: SKIPPED, the guest kept INTx: {}", c.detail);
        }
        other => panic!("vnic-msi/nic-irq-mode is {other}: {}\n  log: {}", c.detail, s.log.display()),
    }
    s.assert_passed();
}

#[test]
fn nvme_sriov_vf_reads_and_writes() {
    let s = common::scenario("vfio-guest-more").expect("results");
    s.assert_check("nvmevf-bind");
    s.assert_run_checks("vnvmevf", &["boot", "nvme-bound", "read-signature", "write", "msix", "no-timeouts", "done"]);
    s.assert_passed();
    let sig = s.signature("sriov.img").unwrap();
    assert_eq!(s.detail("vnvmevf/read-signature").trim(), sig);
    assert_eq!(s.sector_line("sriov.img", common::GUEST_WRITE_LBA).unwrap(), format!("VIADUCT-GUEST-WROTE {sig}"));
}

#[test]
fn ivshmem_4_gib_bar_read_in_the_guest() {
    let s = common::scenario("vfio-guest-more").expect("results");
    s.assert_run_checks("vivshmem", &["boot", "bar2-placed", "done"]);
    s.assert_passed();
    let run_id = s.signature("disk.img").unwrap().rsplit("run=").next().unwrap().to_string();
    for o in [0u64, 0x4000_0000, 0x8000_0000, 0xffff_f000] {
        s.assert_check(&format!("vivshmem/read-VIADUCT-IVSHMEM@{o:#x}"));
        let want = format!("VIADUCT-IVSHMEM@{o:#x} run={run_id}");
        let read = s.detail(&format!("vivshmem/read-VIADUCT-IVSHMEM@{o:#x}"));
        assert_eq!(read.trim(), want, "what the guest read at BAR2+{o:#x}");
        let l0 = s.read_file_at("ivshmem.img", o, want.len()).unwrap();
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
    s.assert_check("killed-guest-ran");
    s.assert_run_checks("vafterkill", &["boot", "read-signature", "msix", "no-timeouts", "done"]);
    s.assert_passed();
    let sig = s.signature("disk.img").unwrap();
    assert_eq!(s.detail("vafterkill/read-signature").trim(), sig);
}
