#![no_main]
//! See harness/fw_cfg.rs for what is driven and which invariants are checked.

include!("../harness/fw_cfg.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
