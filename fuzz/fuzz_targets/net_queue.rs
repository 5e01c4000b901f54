#![no_main]
//! virtio-net RX and TX queues over an in-memory backend (the harness: fuzz/harness/queues.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| virtio_fuzz::net(data));
