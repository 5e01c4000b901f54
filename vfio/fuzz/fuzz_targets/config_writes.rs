//! Guest config-space and BAR writes against an assigned device backed by an in-memory
//! region (FakeHost): panics if any write reaches a host-only field (BAR addresses, MSI/MSI-X
//! capability, command decode bits, hidden capabilities). Run from vfio/fuzz:
//!     cargo +nightly fuzz run config_writes
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio::fuzz_support::run_guest_writes(data);
});
