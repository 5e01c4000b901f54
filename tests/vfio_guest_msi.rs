#![cfg(feature = "testbed")]
//! MSI and INTx with a device that offers MSI (scenario vfio-guest-msi): level 0's ICH9 AHCI
//! controller (single-vector MSI, INTx, no MSI-X) passed to two guests in a row, the first
//! with MSI, the second with `pci=nomsi`. Each guest's ahci driver really uses that mode with
//! interrupts counted, level 1 sees vfio-pci's host interrupts of the same kind, each guest
//! reads level 0's signature by DMA, and each guest's token is in ahci.img on this machine.

mod common;

fn results() -> common::Scenario {
    common::scenario("vfio-guest-msi").expect("vfio-guest-msi results")
}

fn assert_run(s: &common::Scenario, run: &str, host_kind: &str) {
    s.assert_run_checks(run, &["boot", "ahci-bound", "read-signature", "write", "irq-mode", "done"]);
    s.assert_check(&format!("{run}/host-{host_kind}"));
    assert!(s.value_u64(&format!("{run}/irqs")).expect("irqs") > 0);
    let sig = s.signature("ahci.img").expect("ahci.sig");
    let read = s.detail(&format!("{run}/read-signature"));
    assert_eq!(read, sig, "{run} read another sector 0 than level 0 wrote");
    let token = s.value(&format!("{run}/token")).expect("token");
    let lba = s.value_u64(&format!("{run}/lba")).expect("lba");
    s.assert_sector("ahci.img", lba, &format!("VIADUCT-AHCI-WROTE {token}"), &format!("{run}'s write"));
}

#[test]
fn guest_uses_msi_and_its_disk_io_lands_in_level_0() {
    let s = results();
    s.assert_check("ahci-vfio-bind");
    assert_run(&s, "vahci-msi", "vfio-msi");
    let line = s.value("vahci-msi/irq_line").unwrap_or_default();
    assert!(line.contains("PCI-MSI"), "the guest's ahci interrupt is not an MSI: {line}");
}

#[test]
fn guest_with_pci_nomsi_uses_intx_on_the_same_device() {
    let s = results();
    assert_run(&s, "vahci-intx", "vfio-intx");
    let line = s.value("vahci-intx/irq_line").unwrap_or_default();
    assert!(line.contains("IO-APIC"), "the guest's ahci interrupt is not an IO-APIC line: {line}");
    s.assert_passed();
}
