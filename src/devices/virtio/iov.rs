//! Host iovecs over a descriptor chain's guest buffers, so a device can move data between a
//! file or tap and guest memory in one syscall (preadv/pwritev/writev) instead of copying it
//! through a bounce buffer: in the nested testbed the VMM's own memcpy runs under TCG and
//! costs more than the syscall. A chain whose buffer crosses a memory-region boundary (or
//! lies outside guest memory) yields `None`, and the caller takes its copying path.

use std::os::fd::RawFd;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend as _};

use crate::vstate::memory::GuestMemory;

/// Host iovecs into guest memory; valid while the `GuestMemory` they came from is alive
/// (its regions stay mapped as long as a clone of it exists).
#[derive(Default)]
pub struct IoVecs {
    iovs: Vec<libc::iovec>,
}

// SAFETY: the iovecs point into guest memory mappings, which are shared with the vCPUs by
// design; sending the descriptors to another thread changes nothing about that.
unsafe impl Send for IoVecs {}

impl IoVecs {
    pub fn len(&self) -> usize {
        self.iovs.iter().map(|v| v.iov_len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, base: *mut u8, len: usize) {
        if len > 0 {
            self.iovs.push(libc::iovec { iov_base: base.cast(), iov_len: len });
        }
    }

    /// Drops the first `n` bytes.
    pub fn skip_front(&mut self, mut n: usize) {
        let mut first = 0;
        for v in &mut self.iovs {
            if n == 0 {
                break;
            }
            let k = n.min(v.iov_len);
            // Inside the buffer the iovec describes.
            v.iov_base = v.iov_base.cast::<u8>().wrapping_add(k).cast();
            v.iov_len -= k;
            n -= k;
            if v.iov_len == 0 {
                first += 1;
            }
        }
        self.iovs.drain(..first);
    }

    /// Drops the last `n` bytes.
    pub fn trim_back(&mut self, mut n: usize) {
        while n > 0 {
            let Some(v) = self.iovs.last_mut() else { return };
            let k = n.min(v.iov_len);
            v.iov_len -= k;
            n -= k;
            if v.iov_len == 0 {
                self.iovs.pop();
            }
        }
    }

    fn as_slice(&self) -> &[libc::iovec] {
        &self.iovs
    }
}

/// The device-readable and device-writable buffers of `chain` as host iovecs, in order.
pub fn chain_iovecs(chain: &DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> Option<(IoVecs, IoVecs)> {
    let (mut readable, mut writable) = (IoVecs::default(), IoVecs::default());
    let mut total: usize = 0;
    for desc in chain.clone() {
        let len = usize::try_from(desc.len()).ok()?;
        total = total.checked_add(len)?;
        let slice = mem.get_slice(GuestAddress(desc.addr().0), len).ok()?;
        let base = slice.ptr_guard_mut().as_ptr();
        if desc.is_write_only() {
            writable.push(base, len);
        } else {
            readable.push(base, len);
        }
    }
    Some((readable, writable))
}

/// Calls `op` (one preadv/pwritev/readv/writev) until `iovs` is done, a short transfer of 0
/// bytes, or an error; the bytes moved.
fn transfer_all(iovs: &mut IoVecs, mut op: impl FnMut(&[libc::iovec], u64) -> isize) -> std::io::Result<usize> {
    let mut done = 0usize;
    while !iovs.is_empty() {
        let n = op(iovs.as_slice(), done as u64);
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        done += n;
        iovs.skip_front(n);
    }
    Ok(done)
}

fn iov_count(iovs: &[libc::iovec]) -> libc::c_int {
    // IOV_MAX is 1024; a chain holds at most a queue's worth (256) of descriptors.
    libc::c_int::try_from(iovs.len().min(1024)).unwrap_or(1024)
}

/// Reads file bytes at `offset` into the buffers (preadv).
pub fn read_at(fd: RawFd, mut iovs: IoVecs, offset: u64) -> std::io::Result<usize> {
    transfer_all(&mut iovs, |v, done| {
        let at = offset.saturating_add(done) as libc::off_t;
        // SAFETY: every iovec describes mapped guest memory of its length (chain_iovecs).
        unsafe { libc::preadv(fd, v.as_ptr(), iov_count(v), at) }
    })
}

/// Writes the buffers to the file at `offset` (pwritev).
pub fn write_at(fd: RawFd, mut iovs: IoVecs, offset: u64) -> std::io::Result<usize> {
    transfer_all(&mut iovs, |v, done| {
        let at = offset.saturating_add(done) as libc::off_t;
        // SAFETY: every iovec describes mapped guest memory of its length (chain_iovecs).
        unsafe { libc::pwritev(fd, v.as_ptr(), iov_count(v), at) }
    })
}

/// Sends the buffers as one message (writev on a tap or datagram socket: one frame).
pub fn write_message(fd: RawFd, iovs: &IoVecs) -> std::io::Result<usize> {
    let v = iovs.as_slice();
    if v.len() > 1024 {
        return Err(std::io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    // SAFETY: every iovec describes mapped guest memory of its length (chain_iovecs).
    let n = unsafe { libc::writev(fd, v.as_ptr(), iov_count(v)) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::Bytes;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    #[test]
    fn iovecs_split_and_move_file_data_both_ways() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x1000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let (n, w) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        vq.add_desc_chains(&[desc(0x8000, 16, n, 1), desc(0x9000, 100, w | n, 2), desc(0xa000, 28, w, 0)], 0).unwrap();
        // A buffer crossing the end of a region: no iovecs.
        vq.add_desc_chains(&[desc(0xf_fff0, 32, w, 0)], 3).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let (r, mut wr) = chain_iovecs(&chain, &mem).unwrap();
        assert_eq!((r.len(), wr.len()), (16, 128));
        wr.skip_front(90);
        wr.trim_back(1);
        assert_eq!(wr.len(), 37);

        let path = std::env::temp_dir().join(format!("viaduct-iov-{}", std::process::id()));
        let data: Vec<u8> = (0..200u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        assert_eq!(read_at(f.as_raw_fd(), wr, 10).unwrap(), 37);
        let mut got = [0u8; 37];
        mem.read_slice(&mut got[..10], GuestAddress(0x9000 + 90)).unwrap();
        mem.read_slice(&mut got[10..], GuestAddress(0xa000)).unwrap();
        assert_eq!(&got[..], &data[10..47]);

        mem.write_slice(b"0123456789abcdef", GuestAddress(0x8000)).unwrap();
        assert_eq!(write_at(f.as_raw_fd(), r, 150).unwrap(), 16);
        assert_eq!(&std::fs::read(&path).unwrap()[150..166], b"0123456789abcdef");
        std::fs::remove_file(&path).unwrap();

        let outside = q.pop_descriptor_chain(&mem).unwrap();
        assert!(chain_iovecs(&outside, &mem).is_none());
    }
}
