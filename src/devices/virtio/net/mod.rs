//! virtio-net (spec 5.1) over a tap: queue 0 receives (tap -> guest), queue 1 transmits
//! (guest -> tap). When the tap carries the virtio-net header the device offers checksum and
//! TSO offloads both ways and the header passes through untouched; mergeable receive buffers
//! (VIRTIO_NET_F_MRG_RXBUF) let a 64 KiB GSO packet land in page-sized guest buffers.

pub mod tap;

use std::io::Write;
use std::os::fd::RawFd;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::{add_used_batch, iov, next_chain, QueueHandler, VirtioDevice, VirtioError};
use crate::vstate::memory::GuestMemory;
use tap::{Tap, VNET_HDR_LEN};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// The largest frame either way: a 64 KiB GSO packet, its Ethernet/VLAN header and the
/// virtio-net header, rounded up.
pub const MAX_FRAME: usize = 68 * 1024;
/// Offset of num_buffers in struct virtio_net_hdr_v1.
const NUM_BUFFERS_OFFSET: usize = 10;
/// TX chains completed per used-ring update during a long burst.
const TX_BATCH: usize = 64;

/// Where frames come from and go to: the tap, or a fake in tests and fuzzing.
pub trait FrameBackend: Send {
    /// Reads one frame; `ErrorKind::WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    /// Frames start with a [`VNET_HDR_LEN`]-byte virtio-net header.
    fn has_vnet_hdr(&self) -> bool;
    /// The fd that becomes readable when a frame waits (none for fakes).
    fn raw_fd(&self) -> Option<RawFd>;
}

impl FrameBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Tap::write_frame(self, frame)
    }
    fn has_vnet_hdr(&self) -> bool {
        Tap::has_vnet_hdr(self)
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(Tap::raw_fd(self))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap's name (for a passed fd, the name it is attached to).
    pub tap: String,
    /// A tap passed as an open fd (`--net fd=N`) instead of opened by name.
    pub fd: Option<std::os::fd::RawFd>,
    pub mac: [u8; 6],
}

pub struct Net {
    tap: Tap,
    config_space: [u8; 8],
}

/// The offloads offered when the tap carries the virtio-net header.
const OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6);

/// TUNSETOFFLOAD flags for what the driver accepts on receive.
pub fn tap_offload_flags(acked: u64) -> libc::c_uint {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    let mut flags = 0;
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        // The kernel refuses TSO without checksum offload.
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

impl Net {
    pub fn open(config: &NetConfig) -> Result<Self, VirtioError> {
        let tap = match config.fd {
            Some(fd) => Tap::from_fd(fd)?,
            None => Tap::open(&config.tap)?,
        };
        // struct virtio_net_config: mac[6] @0, status @6 (spec 5.1.4).
        let mut config_space = [0u8; 8];
        config_space[..6].copy_from_slice(&config.mac);
        config_space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Ok(Self { tap, config_space })
    }

    pub fn offloads(&self) -> bool {
        self.tap.has_vnet_hdr()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET
    }
    fn pci_class(&self) -> u32 {
        // Network controller, Ethernet.
        0x020000
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        let base = (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS) | (1 << VIRTIO_NET_F_MRG_RXBUF);
        if self.tap.has_vnet_hdr() {
            base | OFFLOAD_FEATURES
        } else {
            base
        }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|o| self.config_space.get(o)).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, acked: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        if self.tap.has_vnet_hdr() {
            self.tap.set_offload(tap_offload_flags(acked))?;
        }
        let mergeable = acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let name = self.tap.name().to_string();
        Ok(Box::new(NetHandler::new(name, self.tap.try_clone()?, mergeable)))
    }
}

/// What happened to the frame waiting for the guest.
enum Delivery {
    Delivered,
    /// Not enough receive buffers: the frame waits for the next RX notification.
    NoBuffers,
    /// The frame cannot be delivered in the buffers the driver gives (logged), dropped.
    Dropped,
}

pub struct NetHandler<B: FrameBackend> {
    name: String,
    backend: B,
    mergeable: bool,
    /// The frame read from the backend, header first; `rx_len` > 0 while it waits.
    rx_buf: Vec<u8>,
    rx_len: usize,
    tx_buf: Vec<u8>,
    used: Vec<(u16, u32)>,
    traffic: super::Traffic,
}

impl<B: FrameBackend> NetHandler<B> {
    pub fn new(name: String, backend: B, mergeable: bool) -> Self {
        Self {
            name,
            backend,
            mergeable,
            rx_buf: vec![0; MAX_FRAME],
            rx_len: 0,
            tx_buf: vec![0; MAX_FRAME],
            used: Vec::new(),
            traffic: super::Traffic::default(),
        }
    }

    /// Reads the next frame into `rx_buf`; false when none waits.
    fn fill_rx(&mut self) -> bool {
        let plain = !self.backend.has_vnet_hdr();
        let start = if plain { VNET_HDR_LEN } else { 0 };
        loop {
            let Some(buf) = self.rx_buf.get_mut(start..) else { return false };
            match self.backend.read_frame(buf) {
                Ok(0) => return false,
                Ok(n) => {
                    if plain {
                        // No header from the backend: a plain frame, nothing offloaded.
                        self.rx_buf[..VNET_HDR_LEN].fill(0);
                    }
                    self.rx_len = start + n;
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    ratelog::warn_limited!("{}: reading a frame: {e}", self.name);
                    return false;
                }
            }
        }
    }

    /// Writes `data` into the chain's writable buffers; the bytes written.
    fn write_chain(chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory, data: &[u8]) -> usize {
        let Ok(mut w) = chain.writer(mem) else { return 0 };
        let n = w.available_bytes().min(data.len());
        match data.get(..n).map(|d| w.write_all(d)) {
            Some(Ok(())) => n,
            _ => w.bytes_written(),
        }
    }

    /// Puts the chains taken for a frame back on the available side.
    fn give_back(queue: &mut Queue, count: usize) {
        for _ in 0..count {
            queue.go_to_previous_position();
        }
    }

    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Delivery {
        let len = self.rx_len.min(self.rx_buf.len());
        if len < VNET_HDR_LEN {
            return Delivery::Dropped;
        }
        self.used.clear();
        if !self.mergeable {
            let Some(chain) = next_chain(queue, mem) else { return Delivery::NoBuffers };
            let capacity = chain.clone().writer(mem).map(|w| w.available_bytes()).unwrap_or(0);
            if capacity < len {
                ratelog::debug_limited!(
                    "{}: a {len}-byte frame does not fit a {capacity}-byte buffer: dropped",
                    self.name
                );
                Self::give_back(queue, 1);
                return Delivery::Dropped;
            }
            // Without MRG_RXBUF num_buffers is 1 (spec 5.1.6.3.2).
            self.rx_buf[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let head = chain.head_index();
            let n = Self::write_chain(chain, mem, &self.rx_buf[..len]);
            self.used.push((head, n as u32));
        } else {
            let mut off = 0;
            let mut first = None;
            while off < len {
                let Some(chain) = next_chain(queue, mem) else {
                    // The frame waits for more buffers; the ones taken go back untouched
                    // in the driver's view (nothing was published).
                    Self::give_back(queue, self.used.len());
                    return Delivery::NoBuffers;
                };
                if first.is_none() {
                    first = Some(chain.clone());
                }
                let head = chain.head_index();
                let n = Self::write_chain(chain, mem, &self.rx_buf[off..len]);
                self.used.push((head, n as u32));
                off += n;
                if self.used.len() >= usize::from(queue.size()) && off < len {
                    // Not even the whole ring holds it: a broken driver; drop the frame.
                    Self::give_back(queue, self.used.len());
                    ratelog::debug_limited!(
                        "{}: a {len}-byte frame does not fit the whole RX ring: dropped",
                        self.name
                    );
                    return Delivery::Dropped;
                }
            }
            let count = u16::try_from(self.used.len()).unwrap_or(u16::MAX);
            let mut hdr = [0u8; VNET_HDR_LEN];
            hdr.copy_from_slice(&self.rx_buf[..VNET_HDR_LEN]);
            hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&count.to_le_bytes());
            if let Some(chain) = first {
                Self::write_chain(chain, mem, &hdr);
            }
        }
        match add_used_batch(queue, mem, &self.used) {
            Ok(()) => {
                self.traffic.to_guest += self.used.iter().map(|&(_, n)| u64::from(n)).sum::<u64>();
                Delivery::Delivered
            }
            Err(e) => {
                ratelog::warn_limited!("{}: RX used ring: {e}", self.name);
                Delivery::Dropped
            }
        }
    }

    /// Moves frames from the backend to the guest until the backend is empty or the guest
    /// has no buffer left.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used = false;
        loop {
            if self.rx_len == 0 && !self.fill_rx() {
                break;
            }
            match self.deliver(queue, mem) {
                Delivery::Delivered => {
                    used = true;
                    self.rx_len = 0;
                }
                Delivery::Dropped => self.rx_len = 0,
                Delivery::NoBuffers => break,
            }
        }
        used
    }

    fn flush_tx_used(&mut self, queue: &mut Queue, mem: &GuestMemory) {
        if let Err(e) = add_used_batch(queue, mem, &self.used) {
            ratelog::warn_limited!("{}: TX used ring: {e}", self.name);
        }
        self.used.clear();
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool {
        self.used.clear();
        let mut any = false;
        while let Some(chain) = next_chain(queue, mem) {
            let head = chain.head_index();
            self.send(chain, mem);
            self.used.push((head, 0));
            any = true;
            // Publish in batches so the driver can reuse buffers during a long burst.
            if self.used.len() >= TX_BATCH {
                self.flush_tx_used(queue, mem);
            }
        }
        if !self.used.is_empty() {
            self.flush_tx_used(queue, mem);
        }
        any
    }

    /// Sends one TX chain: header + frame, device-readable (spec 5.1.6.2).
    fn send(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) {
        // Straight from guest memory to the tap (one writev) when the buffers allow.
        if let (Some(fd), Some((mut frame, _))) = (self.backend.raw_fd(), iov::chain_iovecs(&chain, mem)) {
            let n = frame.len();
            self.traffic.from_guest += n as u64;
            if !(VNET_HDR_LEN..=MAX_FRAME).contains(&n) {
                ratelog::debug_limited!("{}: TX chain of {n} bytes dropped", self.name);
                return;
            }
            if !self.backend.has_vnet_hdr() {
                frame.skip_front(VNET_HDR_LEN);
            }
            if let Err(e) = iov::write_message(fd, &frame) {
                ratelog::debug_limited!("{}: sending a {n}-byte frame: {e}", self.name);
            }
            return;
        }
        let mut reader = match chain.reader(mem) {
            Ok(r) => r,
            Err(e) => {
                ratelog::debug_limited!("{}: bad TX chain: {e}", self.name);
                return;
            }
        };
        let n = reader.available_bytes();
        self.traffic.from_guest += n as u64;
        if !(VNET_HDR_LEN..=self.tx_buf.len()).contains(&n) {
            ratelog::debug_limited!("{}: TX chain of {n} bytes dropped", self.name);
            return;
        }
        if std::io::Read::read_exact(&mut reader, &mut self.tx_buf[..n]).is_err() {
            ratelog::debug_limited!("{}: TX chain unreadable", self.name);
            return;
        }
        let start = if self.backend.has_vnet_hdr() { 0 } else { VNET_HDR_LEN };
        if let Err(e) = self.backend.write_frame(&self.tx_buf[start..n]) {
            ratelog::debug_limited!("{}: sending a {n}-byte frame: {e}", self.name);
        }
    }
}

impl<B: FrameBackend> QueueHandler for NetHandler<B> {
    fn process(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => false,
        }
    }

    fn extra_fds(&self) -> Vec<(RawFd, usize)> {
        self.backend.raw_fd().map(|fd| vec![(fd, RX_QUEUE)]).unwrap_or_default()
    }

    fn take_traffic(&mut self) -> super::Traffic {
        self.traffic.take()
    }
}

/// The seccomp filter of a virtio-net I/O thread: the worker's calls, and frames read from
/// and written to its tap (writev straight from guest memory).
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    super::worker::seccomp_rules(r);
    r.allow(&[libc::SYS_readv, libc::SYS_writev]);
}

#[cfg(test)]
mod tests;
