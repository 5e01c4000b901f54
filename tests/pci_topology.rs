#![cfg(feature = "testbed")]
//! The guest enumerates viaduct's PCI topology (scenario pci-topology): host bridge, PCIe
//! root ports, two synthetic functions behind them with the BAR sizes we gave (a 64 GiB
//! prefetchable BAR among them), through ECAM, with no BAR assignment errors in its log.

mod common;

const RUN: &str = "pci-topology";

#[test]
fn guest_enumerates_through_ecam_without_bar_errors() {
    let s = common::scenario("pci-topology").expect("pci-topology results");
    s.assert_check(&format!("{RUN}/ecam"));
    s.assert_check(&format!("{RUN}/no-bar-errors"));
    assert_eq!(s.value(&format!("{RUN}/bar_errors")).unwrap_or("missing"), "", "log: {}", s.log.display());
    s.assert_check(&format!("{RUN}/host-bridge"));
    s.assert_check(&format!("{RUN}/root-ports"));
}

#[test]
fn synthetic_functions_have_the_bar_sizes_we_gave() {
    let s = common::scenario("pci-topology").expect("pci-topology results");
    s.assert_check(&format!("{RUN}/synthetic-count"));
    let want = [("fn1", "0:16384 2:68719476736 4:8192"), ("fn2", "0:1048576 1:256 2:33554432 6:65536")];
    for (f, bars) in want {
        s.assert_check(&format!("{RUN}/{f}-bar-sizes"));
        assert_eq!(s.value(&format!("{RUN}/{f}/bars")).unwrap_or(""), bars, "{f}; log: {}", s.log.display());
        s.assert_check(&format!("{RUN}/{f}-behind-port"));
        // A PCIe function reached through ECAM exposes its whole 4 KiB config space.
        let bytes = s.value_u64(&format!("{RUN}/{f}/config_bytes")).expect("config_bytes");
        assert_eq!(bytes, 4096, "{f}: config space size seen by the guest");
    }
    s.assert_passed();
}
