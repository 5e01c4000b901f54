#![no_main]
//! The API socket's request parsing: any bytes, delivered in any chunk size (the first byte).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| virtio_fuzz::api::harness::run(data));
