#![no_main]
//! virtio-rng request queue: any ring layout and descriptor table.

use libfuzzer_sys::fuzz_target;
use virtio_fuzz::virtio::rng::Rng;
use virtio_fuzz::virtio::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let Ok(mut rng) = Rng::open() else { return };
    let Ok(mut handler) = rng.activate(0) else { return };
    let mem = virtio_fuzz::memory();
    virtio_fuzz::run(data, handler.as_mut(), 0, &mem);
});
