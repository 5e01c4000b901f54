#![no_main]
//! virtio-rng request queue (the harness: fuzz/harness/queues.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_fuzz::rng(data));
