#![no_main]
//! Sequences of guest config-space, BAR (MSI-X table / PBA) and ECAM accesses against an
//! emulated topology; the harness and its invariants live in harness/config_msix.rs.

include!("../harness/config_msix.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
