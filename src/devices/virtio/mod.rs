//! Virtio devices (virtio 1.x) on the PCI bus: the modern virtio-pci transport
//! ([`pci::VirtioPciDevice`]), the I/O thread that serves the queues ([`worker`]) and the
//! device models ([`block`], [`net`], [`rng`]). Queues are rust-vmm `virtio-queue` split
//! rings, whose descriptor walk bounds every address by guest memory and every chain by the
//! queue size.

pub mod block;
pub mod iov;
pub mod net;
pub mod pci;
pub mod registers;
pub mod rng;
pub mod worker;

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::vstate::memory::GuestMemory;

/// virtio 1.x: the device speaks the modern interface only (spec 6.1).
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Indirect descriptor tables (spec 2.7.5.3); virtio-queue walks them with the same bounds.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// used_event / avail_event notification suppression (spec 2.7.10): fewer kicks and fewer
/// interrupts under load.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// What a device model supplies to the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (spec 5): 2 = block, 4 = entropy.
    fn device_type(&self) -> u32;
    /// PCI class code (base, sub, prog-if) for the function.
    fn pci_class(&self) -> u32;
    /// The maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Every feature bit the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration structure.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Guest writes to the device configuration; the devices here have no writable fields.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ratelog::debug_limited!("virtio device config write at {offset:#x} ({} bytes) dropped", data.len());
    }
    /// The queue server handed to the I/O thread when the driver sets DRIVER_OK.
    fn activate(&mut self, acked_features: u64) -> Result<Box<dyn QueueHandler>, VirtioError>;
}

/// Serves a device's queues on the I/O thread.
pub trait QueueHandler: Send {
    /// Completes every available chain of queue `index`; returns whether any chain was
    /// put on the used ring (so the driver may need an interrupt).
    fn process(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool;
    /// Host fds the I/O thread also waits on (edge-triggered), each with the queue whose
    /// [`QueueHandler::process`] it triggers (e.g. a tap becoming readable feeds RX).
    fn extra_fds(&self) -> Vec<(RawFd, usize)> {
        Vec::new()
    }
    /// Bytes moved since the last call, for the device's counters (`vm.counters`).
    fn take_traffic(&mut self) -> Traffic {
        Traffic::default()
    }
}

/// Payload bytes a queue handler moved: from the guest's device-readable buffers (disk
/// writes, sent frames) and into its device-writable ones (disk reads, received frames,
/// entropy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub from_guest: u64,
    pub to_guest: u64,
}

impl Traffic {
    pub fn take(&mut self) -> Self {
        std::mem::take(self)
    }
}

/// The next available chain; when the ring looks empty, re-arms the driver's notification
/// (avail_event with EVENT_IDX, the used-ring flag without) and looks once more, so a chain
/// added meanwhile is not left waiting for a kick that will not come (spec 2.7.10).
pub fn next_chain<'a>(queue: &mut Queue, mem: &'a GuestMemory) -> Option<DescriptorChain<&'a GuestMemory>> {
    if let Some(c) = queue.pop_descriptor_chain(mem) {
        return Some(c);
    }
    match queue.enable_notification(mem) {
        Ok(true) => queue.pop_descriptor_chain(mem),
        _ => None,
    }
}

/// Puts `elems` (head, length) on the used ring and publishes them with one index update,
/// so the driver never sees part of a group (a merged RX packet spans several buffers).
pub fn add_used_batch(queue: &mut Queue, mem: &GuestMemory, elems: &[(u16, u32)]) -> Result<(), virtio_queue::Error> {
    let size = queue.size();
    if size == 0 {
        return Err(virtio_queue::Error::InvalidSize);
    }
    let used = GuestAddress(queue.used_ring());
    let mut next = queue.next_used();
    for &(head, len) in elems {
        if head >= size {
            return Err(virtio_queue::Error::InvalidDescriptorIndex);
        }
        // struct virtq_used_elem { le32 id; le32 len; } after flags and idx (spec 2.7.8).
        let at = 4 + 8 * u64::from(next % size);
        let addr = used.checked_add(at).ok_or(virtio_queue::Error::AddressOverflow)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, addr).map_err(virtio_queue::Error::GuestMemory)?;
        next = next.wrapping_add(1);
    }
    queue.set_next_used(next);
    let idx = used.checked_add(2).ok_or(virtio_queue::Error::AddressOverflow)?;
    mem.store(next.to_le(), idx, Ordering::Release).map_err(virtio_queue::Error::GuestMemory)
}

/// Whether the driver wants an interrupt for the used entries added since `old_used`
/// (spec 2.7.7.2 / 2.7.10): with EVENT_IDX when used_event was crossed, else unless the
/// driver set VRING_AVAIL_F_NO_INTERRUPT. Unreadable rings mean "interrupt".
pub fn needs_interrupt(queue: &Queue, mem: &GuestMemory, old_used: u16) -> bool {
    let new = queue.next_used();
    if new == old_used {
        return false;
    }
    // The used-ring writes must be visible before the driver's suppression field is read.
    std::sync::atomic::fence(Ordering::SeqCst);
    let avail = GuestAddress(queue.avail_ring());
    if queue.event_idx_enabled() {
        // used_event follows the avail ring: flags, idx, ring[size].
        let at = 4 + 2 * u64::from(queue.size());
        let Some(addr) = avail.checked_add(at) else { return true };
        let Ok(event) = mem.load::<u16>(addr, Ordering::Acquire).map(u16::from_le) else { return true };
        // vring_need_event(): new - event - 1 < new - old, in u16 arithmetic.
        return new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old_used);
    }
    let no_interrupt = virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;
    match mem.load::<u16>(avail, Ordering::Acquire) {
        Ok(flags) => u16::from_le(flags) & no_interrupt == 0,
        Err(_) => true,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("opening disk image {path}")]
    OpenDisk {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path}: reading its size")]
    DiskSize {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: duplicating a file handle for the I/O thread")]
    CloneFile {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the host entropy source {path}")]
    OpenEntropy {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: creating an eventfd")]
    EventFd {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: starting the I/O thread")]
    SpawnWorker {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tap {name}: {op} failed")]
    Tap {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: building the PCI function")]
    Function {
        name: String,
        #[source]
        source: ::pci::FunctionError,
    },
}
