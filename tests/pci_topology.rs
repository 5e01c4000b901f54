#![cfg(feature = "testbed")]
//! The guest enumerates viaduct's PCI topology (scenario pci-topology, viaduct started with
//! three `--pci-synthetic` functions): host bridge, two PCIe root ports, one function on
//! bus 0 and two behind the root ports with the BAR sizes we gave (a 64 GiB 64-bit
//! prefetchable BAR among them), through ECAM, with no BAR assignment errors in its log.

mod common;

const RUN: &str = "pci-topology";
const GIB64: u64 = 64 << 30;

fn results() -> common::Scenario {
    common::scenario("pci-topology").expect("pci-topology results")
}

#[test]
fn guest_enumerates_through_ecam_without_bar_errors() {
    let s = results();
    s.assert_check(&format!("{RUN}/boot"));
    s.assert_check(&format!("{RUN}/ecam"));
    let ecam = s.value(&format!("{RUN}/ecam")).unwrap_or("");
    assert!(ecam.contains("0xe0000000"), "MCFG window seen by the guest: {ecam:?}");
    s.assert_check(&format!("{RUN}/no-bar-errors"));
    assert_eq!(s.value(&format!("{RUN}/bar_errors")).unwrap_or("missing"), "", "log: {}", s.log.display());
    s.assert_check(&format!("{RUN}/host-bridge"));
    s.assert_check(&format!("{RUN}/root-ports"));
    let ports = s.value(&format!("{RUN}/root_ports")).unwrap_or("");
    assert_eq!(ports.split_whitespace().count(), 2, "root ports: {ports:?}");
}

#[test]
fn synthetic_functions_have_the_bar_sizes_we_gave() {
    let s = results();
    s.assert_check(&format!("{RUN}/synthetic-count"));
    // In BDF order: the port=off function on bus 0, then one behind each root port.
    let want = [
        ("fn1", "0:4096 1:32", "pci0000:00"),
        ("fn2", "0:16384 2:68719476736 4:8192", ""),
        ("fn3", "0:1048576 1:256 2:33554432 6:65536", ""),
    ];
    for (f, bars, parent) in want {
        s.assert_check(&format!("{RUN}/{f}-bar-sizes"));
        assert_eq!(s.value(&format!("{RUN}/{f}/bars")).unwrap_or(""), bars, "{f}; log: {}", s.log.display());
        s.assert_check(&format!("{RUN}/{f}-placement"));
        let seen_parent = s.value(&format!("{RUN}/{f}/parent")).unwrap_or("");
        if parent.is_empty() {
            assert_ne!(seen_parent, "pci0000:00", "{f} must sit behind a root port");
            assert!(seen_parent.starts_with("0000:00:"), "{f} parent {seen_parent}");
        } else {
            assert_eq!(seen_parent, parent, "{f} parent");
        }
        // A PCIe function reached through ECAM exposes its whole 4 KiB config space.
        let bytes = s.value_u64(&format!("{RUN}/{f}/config_bytes")).expect("config_bytes");
        assert_eq!(bytes, 4096, "{f}: config space size seen by the guest");
    }
}

#[test]
fn the_64_gib_bar_is_64_bit_prefetchable_and_aligned() {
    let s = results();
    s.assert_check(&format!("{RUN}/big-bar-64bit-pref"));
    let line = s.value(&format!("{RUN}/big_bar")).expect("big_bar value");
    let nums: Vec<u64> = line
        .split_whitespace()
        .map(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).expect("hex in sysfs resource"))
        .collect();
    let [start, end, flags] = nums[..] else { panic!("resource line {line:?}") };
    assert_eq!(end - start + 1, GIB64);
    assert_eq!(start % GIB64, 0, "natural alignment");
    assert_ne!(flags & 0x2000, 0, "IORESOURCE_PREFETCH");
    assert_ne!(flags & 0x10_0000, 0, "IORESOURCE_MEM_64");
    s.assert_check(&format!("{RUN}/msix-capability"));
    s.assert_passed();
}
