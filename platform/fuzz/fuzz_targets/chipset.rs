#![no_main]
//! See harness/chipset.rs for what is driven and which invariants are checked.

include!("../harness/chipset.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
