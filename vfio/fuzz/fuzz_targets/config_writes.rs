#![no_main]
//! Guest config-space and BAR writes against an assigned device backed by an in-memory
//! region (FakeHost), its config effects applied by pci::BusRelocator: panics if any write
//! reaches a host-only field (BAR addresses, MSI/MSI-X capability, MSI-X table and PBA,
//! command decode bits, hidden capabilities) or a memory slot goes where it must not. Run
//! from vfio/fuzz:
//!     cargo +nightly fuzz run config_writes
//! The harness and its oracles live in harness/config_writes.rs (also replayed by
//! `cargo test -p vfio`, vfio/tests/fuzz_replay.rs).

include!("../harness/config_writes.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
