//! virtio-blk (spec 5.2) over a raw image file: read, write, flush and the serial number
//! (GET_ID). A read-only disk offers VIRTIO_BLK_F_RO and fails writes with IOERR.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};

use super::iov::{self, IoVecs};
use super::{QueueHandler, VirtioDevice, VirtioError};
use crate::vstate::memory::GuestMemory;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Data segments per request: the queue size minus the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest data transfer served in one request (Linux sends at most max_sectors, 1.25 MiB
/// by default); larger requests fail with IOERR rather than allocate what the guest asks.
const MAX_TRANSFER: usize = 32 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// The serial number the guest reads with GET_ID (at most 20 bytes are used).
    pub serial: String,
}

pub struct Block {
    config: DiskConfig,
    file: File,
    capacity_sectors: u64,
    config_space: [u8; 24],
}

impl Block {
    pub fn open(config: DiskConfig) -> Result<Self, VirtioError> {
        let path = config.path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!config.readonly)
            .open(&config.path)
            .map_err(|source| VirtioError::OpenDisk { path: path.clone(), source })?;
        // Seeking to the end sizes regular files and block devices alike (a block device's
        // metadata length is 0), so `--disk path=/dev/nvme0n1` works too.
        let bytes = (&file).seek(SeekFrom::End(0)).map_err(|source| VirtioError::DiskSize { path, source })?;
        let capacity_sectors = bytes / SECTOR_SIZE;
        if bytes % SECTOR_SIZE != 0 {
            log::warn!(
                "{}: size {bytes} is not a multiple of 512; the last partial sector is hidden",
                config.path.display()
            );
        }
        // struct virtio_blk_config: capacity @0, size_max @8, seg_max @12, geometry @16,
        // blk_size @20 (spec 5.2.4).
        let mut config_space = [0u8; 24];
        config_space[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Ok(Self { config, file, capacity_sectors, config_space })
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
    }
    fn pci_class(&self) -> u32 {
        // Mass storage, other.
        0x018000
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_FLUSH) | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if self.config.readonly {
            f |= 1u64 << VIRTIO_BLK_F_RO;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|o| self.config_space.get(o)).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, _acked: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        let file = self
            .file
            .try_clone()
            .map_err(|source| VirtioError::CloneFile { what: self.config.path.display().to_string(), source })?;
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let id = self.config.serial.as_bytes();
        let n = id.len().min(serial.len());
        serial[..n].copy_from_slice(&id[..n]);
        Ok(Box::new(BlockHandler {
            name: self.config.path.display().to_string(),
            file,
            readonly: self.config.readonly,
            capacity_bytes: self.capacity_sectors * SECTOR_SIZE,
            serial,
            buf: Vec::new(),
            traffic: super::Traffic::default(),
        }))
    }
}

/// The request header (struct virtio_blk_outhdr, spec 5.2.6).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: plain little-endian integers with no padding; every bit pattern is valid.
unsafe impl vm_memory::ByteValued for RequestHeader {}

pub struct BlockHandler {
    name: String,
    file: File,
    readonly: bool,
    capacity_bytes: u64,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    buf: Vec<u8>,
    traffic: super::Traffic,
}

impl BlockHandler {
    /// The byte offset of a `len`-byte transfer at `sector`, if it lies inside the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        (end <= self.capacity_bytes && len <= MAX_TRANSFER).then_some(offset)
    }

    /// Runs one request; returns its status and the bytes written into the data buffers.
    fn execute(
        &mut self,
        header: RequestHeader,
        reader: &mut Reader<'_>,
        data: &mut Writer<'_>,
        iovs: Option<(IoVecs, IoVecs)>,
    ) -> (u32, usize) {
        let kind = u32::from_le(header.request_type);
        let sector = u64::from_le(header.sector);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = data.available_bytes();
                let Some(offset) = self.range(sector, len) else {
                    ratelog::debug_limited!("{}: read of {len} bytes at sector {sector} outside the disk", self.name);
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                // Straight into guest memory when the buffers allow (the data buffers are
                // the writable ones minus the status byte).
                if let Some((_, mut buffers)) = iovs {
                    buffers.trim_back(1);
                    if buffers.len() == len {
                        return match iov::read_at(self.file.as_raw_fd(), buffers, offset) {
                            Ok(n) if n == len => (VIRTIO_BLK_S_OK, len),
                            Ok(n) => {
                                ratelog::warn_limited!("{}: short read at {offset:#x}: {n} of {len} bytes", self.name);
                                (VIRTIO_BLK_S_IOERR, n)
                            }
                            Err(e) => {
                                ratelog::warn_limited!("{}: read at {offset:#x}: {e}", self.name);
                                (VIRTIO_BLK_S_IOERR, 0)
                            }
                        };
                    }
                }
                self.buf.resize(len, 0);
                if let Err(e) = self.file.read_exact_at(&mut self.buf, offset) {
                    ratelog::warn_limited!("{}: read at {offset:#x}: {e}", self.name);
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match data.write_all(&self.buf) {
                    Ok(()) => (VIRTIO_BLK_S_OK, len),
                    Err(_) => (VIRTIO_BLK_S_IOERR, data.bytes_written()),
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.readonly {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let len = reader.available_bytes();
                let Some(offset) = self.range(sector, len) else {
                    ratelog::debug_limited!("{}: write of {len} bytes at sector {sector} outside the disk", self.name);
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                self.traffic.from_guest += len as u64;
                if let Some((mut buffers, _)) = iovs {
                    buffers.skip_front(std::mem::size_of::<RequestHeader>());
                    if buffers.len() == len {
                        return match iov::write_at(self.file.as_raw_fd(), buffers, offset) {
                            Ok(n) if n == len => (VIRTIO_BLK_S_OK, 0),
                            Ok(n) => {
                                ratelog::warn_limited!("{}: short write at {offset:#x}: {n} of {len} bytes", self.name);
                                (VIRTIO_BLK_S_IOERR, 0)
                            }
                            Err(e) => {
                                ratelog::warn_limited!("{}: write at {offset:#x}: {e}", self.name);
                                (VIRTIO_BLK_S_IOERR, 0)
                            }
                        };
                    }
                }
                self.buf.resize(len, 0);
                if reader.read_exact(&mut self.buf).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match self.file.write_all_at(&self.buf, offset) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(e) => {
                        ratelog::warn_limited!("{}: write at {offset:#x}: {e}", self.name);
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    ratelog::warn_limited!("{}: flush: {e}", self.name);
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = data.available_bytes().min(self.serial.len());
                match data.write_all(&self.serial[..n]) {
                    Ok(()) => (VIRTIO_BLK_S_OK, n),
                    Err(_) => (VIRTIO_BLK_S_IOERR, data.bytes_written()),
                }
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// Serves one chain; returns the used length (bytes the device wrote, status included).
    fn serve(&mut self, chain: DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> u32 {
        let iovs = iov::chain_iovecs(&chain, mem);
        let (mut reader, mut writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(r), Ok(w)) => (r, w),
            (Err(e), _) | (_, Err(e)) => {
                ratelog::debug_limited!("{}: bad descriptor chain: {e}", self.name);
                return 0;
            }
        };
        // The status byte is the last writable byte (spec 5.2.6).
        let Some(data_len) = writer.available_bytes().checked_sub(1) else {
            ratelog::debug_limited!("{}: request without a status byte", self.name);
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(data_len) else { return 0 };
        let (status, written) = match reader.read_obj::<RequestHeader>() {
            Ok(header) => self.execute(header, &mut reader, &mut writer, iovs),
            Err(_) => (VIRTIO_BLK_S_IOERR, 0),
        };
        if status_writer.write_all(&[status as u8]).is_err() {
            return written as u32;
        }
        (written + 1) as u32
    }
}

impl QueueHandler for BlockHandler {
    fn process(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemory) -> bool {
        let mut used = false;
        while let Some(chain) = super::next_chain(queue, mem) {
            let head = chain.head_index();
            let len = self.serve(chain, mem);
            if let Err(e) = queue.add_used(mem, head, len) {
                ratelog::warn_limited!("{}: add_used: {e}", self.name);
                break;
            }
            self.traffic.to_guest += u64::from(len);
            used = true;
        }
        // Keep the buffer from pinning a large allocation between bursts.
        if self.buf.capacity() > (4 << 20) {
            self.buf = Vec::new();
        }
        used
    }

    fn take_traffic(&mut self) -> super::Traffic {
        self.traffic.take()
    }
}

/// The seccomp filter of a virtio-blk I/O thread: the worker's calls, and reads, writes and
/// flushes of its disk file (vectored straight into guest memory where the chain allows).
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    super::worker::seccomp_rules(r);
    r.allow(&[
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_fdatasync,
        libc::SYS_fsync,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn image(name: &str, sectors: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("viaduct-blk-{}-{name}.img", std::process::id()));
        let mut data = vec![0u8; (sectors * SECTOR_SIZE) as usize];
        data[..5].copy_from_slice(b"HELLO");
        std::fs::write(&p, data).unwrap();
        p
    }

    fn header(m: &GuestMemory, at: u64, kind: u32, sector: u64) {
        m.write_obj(
            RequestHeader { request_type: kind.to_le(), reserved: 0, sector: sector.to_le() },
            GuestAddress(at),
        )
        .unwrap();
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn handler(path: &Path, readonly: bool) -> Box<dyn QueueHandler> {
        let cfg = DiskConfig { path: path.to_path_buf(), readonly, serial: "disk-serial-0123456789ABC".into() };
        Block::open(cfg).unwrap().activate(0).unwrap()
    }

    fn status(m: &GuestMemory, at: u64) -> u8 {
        m.read_obj::<u8>(GuestAddress(at)).unwrap()
    }

    #[test]
    fn read_write_flush_get_id() {
        let m = mem();
        let p = image("rw", 16);
        let vq = MockSplitQueue::new(&m, 16);
        header(&m, 0x8000, VIRTIO_BLK_T_IN, 0);
        header(&m, 0x8100, VIRTIO_BLK_T_OUT, 2);
        m.write_slice(b"WRITTEN!", GuestAddress(0xa000)).unwrap();
        header(&m, 0x8200, VIRTIO_BLK_T_FLUSH, 0);
        header(&m, 0x8300, VIRTIO_BLK_T_GET_ID, 0);
        header(&m, 0x8400, VIRTIO_BLK_T_IN, 16); // past the end
        let descs = [
            desc(0x8000, 16, NEXT, 1),
            desc(0x9000, 512, W | NEXT, 2),
            desc(0x9f00, 1, W, 0),
            desc(0x8100, 16, NEXT, 4),
            desc(0xa000, 512, NEXT, 5),
            desc(0xaf00, 1, W, 0),
            desc(0x8200, 16, NEXT, 7),
            desc(0xbf00, 1, W, 0),
            desc(0x8300, 16, NEXT, 9),
            desc(0xc000, 20, W | NEXT, 10),
            desc(0xcf00, 1, W, 0),
            desc(0x8400, 16, NEXT, 12),
            desc(0xd000, 512, W | NEXT, 13),
            desc(0xdf00, 1, W, 0),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut h = handler(&p, false);
        assert!(h.process(0, &mut q, &m));
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(&got, b"HELLO");
        assert_eq!(status(&m, 0x9f00), VIRTIO_BLK_S_OK as u8);
        assert_eq!(status(&m, 0xaf00), VIRTIO_BLK_S_OK as u8);
        let disk = std::fs::read(&p).unwrap();
        assert_eq!(&disk[1024..1032], b"WRITTEN!");
        assert_eq!(status(&m, 0xbf00), VIRTIO_BLK_S_OK as u8);
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0xc000)).unwrap();
        assert_eq!(&id, b"disk-serial-01234567");
        assert_eq!(status(&m, 0xcf00), VIRTIO_BLK_S_OK as u8);
        assert_eq!(status(&m, 0xdf00), VIRTIO_BLK_S_IOERR as u8);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 513);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn readonly_refuses_writes() {
        let m = mem();
        let p = image("ro", 8);
        let blk = Block::open(DiskConfig { path: p.clone(), readonly: true, serial: String::new() }).unwrap();
        assert_ne!(blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let vq = MockSplitQueue::new(&m, 16);
        header(&m, 0x8000, VIRTIO_BLK_T_OUT, 0);
        m.write_slice(b"NOPE", GuestAddress(0xa000)).unwrap();
        vq.add_desc_chains(&[desc(0x8000, 16, NEXT, 1), desc(0xa000, 512, NEXT, 2), desc(0xaf00, 1, W, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut h = handler(&p, true);
        assert!(h.process(0, &mut q, &m));
        assert_eq!(status(&m, 0xaf00), VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(&std::fs::read(&p).unwrap()[..5], b"HELLO");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn malformed_chains_do_not_crash_or_hang() {
        let m = mem();
        let p = image("bad", 8);
        let vq = MockSplitQueue::new(&m, 16);
        // 0: a loop (desc 0 -> 1 -> 0); 2: outside guest memory; 3: no status byte;
        // 4: header truncated; 5: length overflow.
        let descs = [
            desc(0x8000, 16, NEXT, 1),
            desc(0x9000, 16, W | NEXT, 0),
            desc(0xffff_f000, 16, NEXT, 0),
            desc(0x8000, 16, 0, 0),
            desc(0x8000, 4, W, 0),
            desc(0x8000, u32::MAX, W, 0),
        ];
        // add_desc_chains rewrites `next`, so write the ring by hand.
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        for (i, head) in [0u16, 2, 3, 4, 5].iter().enumerate() {
            vq.avail().ring().ref_at(i).unwrap().store(*head);
        }
        vq.avail().idx().store(5);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut h = handler(&p, false);
        h.process(0, &mut q, &m);
        assert_eq!(vq.used().idx().load(), 5, "every chain completed");
        std::fs::remove_file(p).unwrap();
    }
}
