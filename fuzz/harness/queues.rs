// The virtio queue harness, shared by the cargo-fuzz targets (fuzz/fuzz_targets) and the
// replay test that runs in `cargo test -p viaduct` (src/devices/virtio_fuzz_replay.rs).
// Included with `include!`, so plain comments only. The includer brings the device models
// into scope as `virtio` and the guest memory type as `GuestMemory`.
//
// [`run`] lays a guest out from the fuzz input: a small RAM region with a hole after it, the
// split-ring addresses and size, the descriptor table, rings and buffers all taken from the
// input, then several rounds of "the driver publishes avail idx N and kicks". Whatever the
// guest wrote, the handler must return (libFuzzer's -timeout catches hangs) without
// panicking, and the used ring must stay consistent: never more entries than were offered,
// every id a valid head. [`blk`], [`net`] and [`rng`] are the three targets' whole bodies.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use virtio::block::{Block, DiskConfig};
use virtio::net::{FrameBackend, NetHandler, MAX_FRAME, RX_QUEUE, TX_QUEUE};
use virtio::rng::Rng;
use virtio::{QueueHandler, VirtioDevice};

/// RAM at 0..64 KiB and 128..132 KiB: addresses in the hole or past the end are outside.
pub const RAM: [(u64, usize); 2] = [(0, 0x1_0000), (0x2_0000, 0x1000)];

/// Reads the fuzz input front to back; past its end everything is zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    pub fn u8(&mut self) -> u8 {
        let (b, rest) = self.data.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.data = rest;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }
}

/// A guest address from 16 fuzz bits: mostly inside RAM (scaled to 16-byte steps), sometimes
/// in the hole, at the end, or near the top of the address space.
fn address(v: u16) -> u64 {
    match v >> 14 {
        0..=2 => u64::from(v & 0x0fff) * 16,
        _ => match v & 3 {
            0 => 0x1_0000 - u64::from((v >> 2) & 0xff),
            1 => 0x2_0000 + u64::from((v >> 2) & 0x0fff),
            2 => u64::MAX - u64::from((v >> 2) & 0xff),
            _ => 0x1_0000_0000 + u64::from(v),
        },
    }
}

pub fn memory() -> GuestMemory {
    let ranges: Vec<(GuestAddress, usize)> = RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestMemory::from_ranges(&ranges).expect("guest memory")
}

/// One fuzz case against queue `index` of `handler`: header, memory image, rounds.
pub fn run(data: &[u8], handler: &mut dyn QueueHandler, index: usize, mem: &GuestMemory) {
    let mut input = Input::new(data);
    let size = 1u16 << (input.u8() % 9); // 1..256
    let desc = address(input.u16());
    let avail = address(input.u16());
    let used = address(input.u16());
    let event_idx = input.u8() & 1 == 1;
    let rounds = 1 + input.u8() % 4;
    let mut kicks = Vec::new();
    for _ in 0..rounds {
        kicks.push(input.u16());
    }
    // The rest is the guest's RAM image (descriptors, rings, buffers).
    let image = input.rest();
    let _ = mem.write_slice(&image[..image.len().min(RAM[0].1)], GuestAddress(0));

    let mut q = match Queue::new(256) {
        Ok(q) => q,
        Err(_) => return,
    };
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_ready(true);
    q.set_event_idx(event_idx);
    if !q.is_valid(mem) {
        return;
    }
    for kick in kicks {
        // The driver publishes an avail index (possibly absurd) and notifies.
        if let Some(at) = avail.checked_add(2) {
            let _ = mem.store(kick.to_le(), GuestAddress(at), Ordering::Release);
        }
        let before = q.next_used();
        let offered = q.avail_idx(mem, Ordering::Acquire).map(|i| i.0.wrapping_sub(q.next_avail())).unwrap_or(0);
        handler.process(index, &mut q, mem);
        let added = q.next_used().wrapping_sub(before);
        // Never more used entries than chains the driver offered in this round (a chain
        // is popped once; merged RX frames use one entry per chain).
        assert!(added <= offered, "{added} used entries for {offered} offered chains");
        assert!(added <= size, "more used entries than the ring holds");
        let _ = virtio::needs_interrupt(&q, mem, before);
    }
}

/// A 64 KiB image in the temp dir, created once per process.
fn blk_image() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("virtio-fuzz-blk-{}.img", std::process::id()));
        std::fs::write(&p, vec![0u8; 64 * 1024]).expect("fuzz image");
        p
    })
}

/// virtio-blk request queue: any ring layout, descriptor table and request headers.
pub fn blk(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let readonly = flags & 1 == 1;
    let cfg = DiskConfig { path: blk_image().to_path_buf(), readonly, serial: "fuzz".into() };
    let Ok(mut blk) = Block::open(cfg) else { return };
    let Ok(mut handler) = blk.activate(0) else { return };
    let mem = memory();
    run(rest, handler.as_mut(), 0, &mem);
}

/// An in-memory frame backend: frames to receive queued up front, sent frames counted.
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

/// virtio-net RX and TX queues over an in-memory backend: any ring layout, descriptor table,
/// frames of any length (with or without a virtio-net header), mergeable buffers on or off.
pub fn net(data: &[u8]) {
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
    let mem = memory();
    run(input.rest(), &mut handler, queue, &mem);
}

/// virtio-rng request queue: any ring layout and descriptor table.
pub fn rng(data: &[u8]) {
    let Ok(mut rng) = Rng::open() else { return };
    let Ok(mut handler) = rng.activate(0) else { return };
    let mem = memory();
    run(data, handler.as_mut(), 0, &mem);
}
