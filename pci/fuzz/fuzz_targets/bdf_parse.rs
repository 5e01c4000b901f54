#![no_main]
//! Bdf parsing: never panics, and whatever parses prints back to a string that parses to
//! the same address; the harness lives in harness/bdf_parse.rs.

include!("../harness/bdf_parse.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
