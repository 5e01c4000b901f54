#![no_main]
//! virtio-net RX and TX queues over an in-memory backend: any ring layout, descriptor table,
//! frames of any length (with or without a virtio-net header), mergeable buffers on or off.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use libfuzzer_sys::fuzz_target;
use virtio_fuzz::virtio::net::{FrameBackend, NetHandler, MAX_FRAME, RX_QUEUE, TX_QUEUE};
use virtio_fuzz::Input;

struct Frames {
    rx: VecDeque<Vec<u8>>,
    vnet: bool,
    sent: usize,
}

impl FrameBackend for Frames {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let f = self.rx.pop_front().ok_or(std::io::ErrorKind::WouldBlock)?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        assert!(frame.len() <= MAX_FRAME, "a {}-byte frame left the device", frame.len());
        self.sent += 1;
        Ok(frame.len())
    }
    fn has_vnet_hdr(&self) -> bool {
        self.vnet
    }
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let mut rx = VecDeque::new();
    for _ in 0..(flags >> 4) % 4 {
        // Lengths up to 2 x MAX_FRAME: the backend truncates like a tap read would.
        let len = usize::from(input.u16()) % (2 * MAX_FRAME / 64) * 64 + usize::from(input.u8() % 64);
        let fill = input.u8();
        rx.push_back(vec![fill; len]);
    }
    let backend = Frames { rx, vnet: flags & 1 == 1, sent: 0 };
    let mut handler = NetHandler::new("fuzz".into(), backend, flags & 2 == 2);
    let queue = if flags & 4 == 4 { TX_QUEUE } else { RX_QUEUE };
    let mem = virtio_fuzz::memory();
    virtio_fuzz::run(input.rest(), &mut handler, queue, &mem);
});
