//! virtio-rng (entropy device, spec 5.4): one queue of device-writable buffers filled from
//! the host's /dev/urandom.

use std::fs::File;
use std::io::{Read, Write};

use virtio_queue::{Queue, QueueT};

use super::{QueueHandler, VirtioDevice, VirtioError};
use crate::vstate::memory::GuestMemory;

pub const ENTROPY_SOURCE: &str = "/dev/urandom";
const QUEUE_SIZES: [u16; 1] = [256];
/// Bytes served per request at most, so one huge buffer cannot keep the thread busy.
const MAX_REQUEST: usize = 64 * 1024;

pub struct Rng {
    source: File,
}

impl Rng {
    pub fn open() -> Result<Self, VirtioError> {
        let source =
            File::open(ENTROPY_SOURCE).map_err(|source| VirtioError::OpenEntropy { path: ENTROPY_SOURCE, source })?;
        Ok(Self { source })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_RNG
    }
    fn pci_class(&self) -> u32 {
        // Unclassified device (the class QEMU gives virtio-rng).
        0x00ff00
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _acked: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        let source =
            self.source.try_clone().map_err(|source| VirtioError::CloneFile { what: ENTROPY_SOURCE.into(), source })?;
        Ok(Box::new(RngHandler { source, buf: vec![0; MAX_REQUEST], traffic: super::Traffic::default() }))
    }
}

pub struct RngHandler {
    source: File,
    buf: Vec<u8>,
    traffic: super::Traffic,
}

impl RngHandler {
    /// Fills the chain's writable buffers; returns the bytes written.
    fn fill(&mut self, chain: virtio_queue::DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let mut writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(e) => {
                ratelog::debug_limited!("virtio-rng: bad descriptor chain: {e}");
                return 0;
            }
        };
        let n = writer.available_bytes().min(MAX_REQUEST);
        let Some(buf) = self.buf.get_mut(..n) else { return 0 };
        if let Err(e) = self.source.read_exact(buf) {
            ratelog::warn_limited!("virtio-rng: reading {ENTROPY_SOURCE}: {e}");
            return 0;
        }
        match writer.write_all(buf) {
            Ok(()) => n as u32,
            Err(e) => {
                ratelog::debug_limited!("virtio-rng: writing to the guest: {e}");
                writer.bytes_written() as u32
            }
        }
    }
}

impl QueueHandler for RngHandler {
    fn process(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used = false;
        while let Some(chain) = super::next_chain(queue, mem) {
            let head = chain.head_index();
            let len = self.fill(chain, mem);
            if let Err(e) = queue.add_used(mem, head, len) {
                ratelog::warn_limited!("virtio-rng: add_used: {e}");
                break;
            }
            self.traffic.to_guest += u64::from(len);
            used = true;
        }
        used
    }

    fn take_traffic(&mut self) -> super::Traffic {
        self.traffic.take()
    }
}

/// The seccomp filter of a virtio-rng I/O thread: the worker's calls; its entropy is read
/// from the already open /dev/urandom.
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    super::worker::seccomp_rules(r);
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn fills_writable_buffers_and_survives_bad_addresses() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 64, VRING_DESC_F_WRITE as u16, 0)),
            // Outside guest memory: completed with 0 bytes, no crash.
            RawDescriptor::from(SplitDescriptor::new(0xffff_0000, 64, VRING_DESC_F_WRITE as u16, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut h = Rng::open().unwrap().activate(0).unwrap();
        assert!(h.process(0, &mut q, &m));
        let used0 = vq.used().ring().ref_at(0).unwrap().load();
        let used1 = vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!((used0.id(), used0.len()), (0, 64));
        assert_eq!((used1.id(), used1.len()), (1, 0));
        let mut got = [0u8; 64];
        m.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_ne!(got, [0u8; 64]);
    }
}
