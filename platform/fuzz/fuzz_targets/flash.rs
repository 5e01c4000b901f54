#![no_main]
//! See harness/flash.rs for what is driven and which invariants are checked.

include!("../harness/flash.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
