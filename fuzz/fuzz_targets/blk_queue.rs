#![no_main]
//! virtio-blk request queue: any ring layout, descriptor table and request headers.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio_fuzz::virtio::block::{Block, DiskConfig};
use virtio_fuzz::virtio::VirtioDevice;

/// A 64 KiB image in the temp dir, created once per fuzzing process.
fn image() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("virtio-fuzz-blk-{}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; 64 * 1024]).expect("fuzz image");
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let readonly = flags & 1 == 1;
    let cfg = DiskConfig { path: image().to_path_buf(), readonly, serial: "fuzz".into() };
    let Ok(mut blk) = Block::open(cfg) else { return };
    let Ok(mut handler) = blk.activate(0) else { return };
    let mem = virtio_fuzz::memory();
    virtio_fuzz::run(rest, handler.as_mut(), 0, &mem);
});
