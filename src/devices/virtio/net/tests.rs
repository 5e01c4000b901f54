use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;

const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// Frames to hand to the guest, and the frames the guest sent.
#[derive(Default, Clone)]
struct Fake {
    rx: Arc<Mutex<VecDeque<Vec<u8>>>>,
    tx: Arc<Mutex<Vec<Vec<u8>>>>,
    vnet: bool,
}

impl FrameBackend for Fake {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(f) = self.rx.lock().unwrap().pop_front() else {
            return Err(std::io::ErrorKind::WouldBlock.into());
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.tx.lock().unwrap().push(frame.to_vec());
        Ok(frame.len())
    }
    fn has_vnet_hdr(&self) -> bool {
        self.vnet
    }
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn frame(hdr_flags: u8, payload_len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = hdr_flags;
    f.extend((0..payload_len).map(|i| (i % 251) as u8));
    f
}

#[test]
fn transmit_passes_header_and_frame_to_a_vnet_tap() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let f = frame(1, 100);
    m.write_slice(&f[..VNET_HDR_LEN], GuestAddress(0x8000)).unwrap();
    m.write_slice(&f[VNET_HDR_LEN..], GuestAddress(0x9000)).unwrap();
    vq.add_desc_chains(&[desc(0x8000, 12, NEXT, 1), desc(0x9000, 100, 0, 0)], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let fake = Fake { vnet: true, ..Fake::default() };
    let mut h = NetHandler::new("t".into(), fake.clone(), true);
    assert!(h.process(TX_QUEUE, &mut q, &m));
    assert_eq!(*fake.tx.lock().unwrap(), vec![f.clone()], "header (NEEDS_CSUM) kept");
    assert_eq!(vq.used().idx().load(), 1);

    // Without a vnet header the tap gets the bare frame.
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(&[desc(0x8000, 12, NEXT, 1), desc(0x9000, 100, 0, 0)], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let fake = Fake::default();
    let mut h = NetHandler::new("t".into(), fake.clone(), true);
    assert!(h.process(TX_QUEUE, &mut q, &m));
    assert_eq!(fake.tx.lock().unwrap()[0], f[VNET_HDR_LEN..].to_vec());
}

#[test]
fn receive_merges_a_large_frame_over_several_buffers() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    // Four 1 KiB buffers, each its own chain.
    let descs: Vec<_> = (0..4).map(|i| desc(0x10000 + i * 0x1000, 1024, W, 0)).collect();
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let fake = Fake { vnet: true, ..Fake::default() };
    let f = frame(0, 2500); // 2512 bytes: three buffers
    fake.rx.lock().unwrap().push_back(f.clone());
    let mut h = NetHandler::new("t".into(), fake.clone(), true);
    assert!(h.process(RX_QUEUE, &mut q, &m));
    assert_eq!(vq.used().idx().load(), 3, "one frame, three buffers, published together");
    let lens: Vec<u32> = (0..3).map(|i| vq.used().ring().ref_at(i).unwrap().load().len()).collect();
    assert_eq!(lens, vec![1024, 1024, 464]);
    let mut got = vec![0u8; 2512];
    for i in 0..3u64 {
        let n = lens[i as usize] as usize;
        let at = (i as usize) * 1024;
        m.read_slice(&mut got[at..at + n], GuestAddress(0x10000 + i * 0x1000)).unwrap();
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    got[10] = 0;
    got[11] = 0;
    assert_eq!(got, f);
}

#[test]
fn receive_waits_for_buffers_then_delivers() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(&[desc(0x10000, 1024, W, 0)], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let fake = Fake::default();
    // A bare 1500-byte frame (no vnet header from the backend): needs two buffers.
    fake.rx.lock().unwrap().push_back(vec![0xab; 1500]);
    let mut h = NetHandler::new("t".into(), fake.clone(), true);
    assert!(!h.process(RX_QUEUE, &mut q, &m), "one buffer is not enough: nothing used");
    assert_eq!(vq.used().idx().load(), 0);
    // The driver adds a buffer and kicks.
    vq.desc_table().store(1, desc(0x11000, 1024, W, 0)).unwrap();
    vq.avail().ring().ref_at(1).unwrap().store(1);
    vq.avail().idx().store(2);
    assert!(h.process(RX_QUEUE, &mut q, &m));
    assert_eq!(vq.used().idx().load(), 2);
    let mut hdr = [0u8; 12];
    m.read_slice(&mut hdr, GuestAddress(0x10000)).unwrap();
    assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0], "zero header, num_buffers 2");
    let mut body = [0u8; 4];
    m.read_slice(&mut body, GuestAddress(0x11000 + 1512 - 1024 - 4)).unwrap();
    assert_eq!(body, [0xab; 4]);
}

#[test]
fn receive_without_mergeable_buffers_uses_one_chain_and_drops_what_does_not_fit() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(&[desc(0x10000, 12, W | NEXT, 1), desc(0x11000, 2048, W, 0), desc(0x12000, 100, W, 0)], 0)
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let fake = Fake { vnet: true, ..Fake::default() };
    fake.rx.lock().unwrap().push_back(frame(0, 1500));
    fake.rx.lock().unwrap().push_back(frame(0, 1500)); // the 100-byte buffer is too small
    let mut h = NetHandler::new("t".into(), fake.clone(), false);
    assert!(h.process(RX_QUEUE, &mut q, &m));
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 1512);
    assert!(fake.rx.lock().unwrap().is_empty(), "the second frame was dropped, not kept forever");
}

#[test]
fn malformed_chains_do_not_crash_or_hang() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let descs = [
        desc(0x8000, 12, NEXT, 1),
        desc(0x9000, 100, NEXT, 0),   // loops back to 0
        desc(0xffff_0000, 64, 0, 0),  // outside guest memory
        desc(0x8000, 4, 0, 0),        // shorter than a header
        desc(0x8000, u32::MAX, W, 0), // device-writable and huge
    ];
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    for (i, head) in [0u16, 2, 3, 4].iter().enumerate() {
        vq.avail().ring().ref_at(i).unwrap().store(*head);
    }
    vq.avail().idx().store(4);
    let mut q: Queue = vq.create_queue().unwrap();
    let fake = Fake { vnet: true, ..Fake::default() };
    let mut h = NetHandler::new("t".into(), fake.clone(), true);
    h.process(TX_QUEUE, &mut q, &m);
    assert_eq!(vq.used().idx().load(), 4, "every chain completed");
    // The loop ends after queue-size descriptors (virtio-queue's TTL): at most that much is
    // sent; the others are dropped.
    let sent = fake.tx.lock().unwrap().clone();
    assert!(
        sent.len() <= 1 && sent.iter().all(|f| f.len() <= 16 * 112),
        "{:?}",
        sent.iter().map(Vec::len).collect::<Vec<_>>()
    );

    // The same ring as RX: read-only or unreachable buffers hold nothing; no hang.
    let vq = MockSplitQueue::new(&m, 16);
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    for (i, head) in [0u16, 2, 3, 4].iter().enumerate() {
        vq.avail().ring().ref_at(i).unwrap().store(*head);
    }
    vq.avail().idx().store(4);
    let mut q: Queue = vq.create_queue().unwrap();
    fake.rx.lock().unwrap().push_back(frame(0, 64));
    let mut h = NetHandler::new("t".into(), fake.clone(), true);
    h.process(RX_QUEUE, &mut q, &m);
}

#[test]
fn offload_flags_follow_the_driver() {
    use virtio_bindings::virtio_net::*;
    assert_eq!(tap_offload_flags(0), 0);
    let tso_without_csum = 1u64 << VIRTIO_NET_F_GUEST_TSO4;
    assert_eq!(tap_offload_flags(tso_without_csum), 0);
    let all = (1u64 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO6);
    assert_eq!(tap_offload_flags(all), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
}

/// A datagram socket stands in for the tap: one message per frame, and a real fd, so the
/// writev path is what runs.
struct Socket {
    sock: std::os::unix::net::UnixDatagram,
    vnet: bool,
}

impl FrameBackend for Socket {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.sock.send(frame)
    }
    fn has_vnet_hdr(&self) -> bool {
        self.vnet
    }
    fn raw_fd(&self) -> Option<RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.sock.as_raw_fd())
    }
}

#[test]
fn transmit_with_an_fd_sends_each_chain_as_one_message_from_guest_memory() {
    for vnet in [true, false] {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let f = frame(1, 3000);
        m.write_slice(&f[..VNET_HDR_LEN], GuestAddress(0x8000)).unwrap();
        m.write_slice(&f[VNET_HDR_LEN..1000], GuestAddress(0x9000)).unwrap();
        m.write_slice(&f[1000..], GuestAddress(0xb000)).unwrap();
        let descs =
            [desc(0x8000, 12, NEXT, 1), desc(0x9000, 988, NEXT, 2), desc(0xb000, 2012, 0, 0), desc(0xc000, 4, 0, 0)];
        vq.add_desc_chains(&descs[..3], 0).unwrap();
        // A chain shorter than a header is dropped.
        vq.add_desc_chains(&descs[3..], 3).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut h = NetHandler::new("t".into(), Socket { sock: ours, vnet }, true);
        assert!(h.process(TX_QUEUE, &mut q, &m));
        assert_eq!(vq.used().idx().load(), 2);
        let mut buf = vec![0u8; MAX_FRAME];
        let n = theirs.recv(&mut buf).unwrap();
        let want = if vnet { &f[..] } else { &f[VNET_HDR_LEN..] };
        assert_eq!(&buf[..n], want, "vnet {vnet}");
        assert!(theirs.recv(&mut buf).is_err(), "only one message");
    }
}
