//! Virtio devices (virtio 1.x) on the PCI bus: the modern virtio-pci transport
//! ([`pci::VirtioPciDevice`]), the I/O thread that serves the queues ([`worker`]) and the
//! device models ([`block`], [`rng`]). Queues are rust-vmm `virtio-queue` split rings, whose
//! descriptor walk bounds every address by guest memory and every chain by the queue size.

pub mod block;
pub mod pci;
pub mod registers;
pub mod rng;
pub mod worker;

use virtio_queue::Queue;

use crate::vstate::memory::GuestMemory;

/// virtio 1.x: the device speaks the modern interface only (spec 6.1).
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Indirect descriptor tables (spec 2.7.5.3); virtio-queue walks them with the same bounds.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

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
        log::debug!("virtio device config write at {offset:#x} ({} bytes) dropped", data.len());
    }
    /// The queue server handed to the I/O thread when the driver sets DRIVER_OK.
    fn activate(&mut self, acked_features: u64) -> Result<Box<dyn QueueHandler>, VirtioError>;
}

/// Serves a device's queues on the I/O thread.
pub trait QueueHandler: Send {
    /// Completes every available chain of queue `index`; returns whether any chain was
    /// put on the used ring (so the driver may need an interrupt).
    fn process(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool;
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
    #[error("{name}: building the PCI function")]
    Function {
        name: String,
        #[source]
        source: ::pci::FunctionError,
    },
}
