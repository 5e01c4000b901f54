//! Reading a kernel image into guest RAM without copying the holes of a sparse file.
//!
//! Why: an extracted vmlinux is about half zeros (.bss, .brk and the init scratch area sit in
//! its last PT_LOAD segment with file size = memory size; 27 of Debian 6.1's 57 MiB), and
//! `vmlinux_cache` writes those blocks as holes. Guest RAM is mapped afresh for every boot
//! (`vmm::boot_once`), so it reads as zero already: skipping the holes saves copying and
//! faulting in those pages, which is most of the VMM's set-up time in a nested testbed. A
//! dense file, or a filesystem without SEEK_DATA/SEEK_HOLE, is simply read in full.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

/// A kernel image file for linux-loader whose holes are not written into guest memory.
/// Only for loading into freshly mapped (all-zero) guest RAM.
pub struct SparseImage(pub File);

impl Read for SparseImage {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for SparseImage {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

/// `lseek(fd, offset, whence)` for SEEK_DATA / SEEK_HOLE.
fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: lseek on a descriptor we own; it only moves the file offset (which every caller
    // sets again before reading) and reports errors through its return value.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// The data extents of `file` within `[start, end)`: (offset, length) pairs. Without hole
/// support the whole range is one extent.
fn data_extents(file: &File, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match lseek(file, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            // ENXIO: nothing but a hole from `pos` to the end of the file.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            // A filesystem that cannot tell: read the rest as data.
            Err(_) => pos,
        };
        if data >= end {
            break;
        }
        let hole = lseek(file, data, libc::SEEK_HOLE).unwrap_or(end).min(end);
        // A hole at or before the data would mean the file changed under us: read the rest.
        let hole = if hole > data { hole } else { end };
        extents.push((data, hole - data));
        pos = hole;
    }
    Ok(extents)
}

impl ReadVolatile for SparseImage {
    fn read_volatile<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let start = self.0.stream_position().map_err(VolatileMemoryError::IOError)?;
        let size = self.0.metadata().map_err(VolatileMemoryError::IOError)?.len();
        // Like read(2): at most up to the end of the file.
        let end = start.saturating_add(buf.len() as u64).min(size);
        if end <= start {
            return Ok(0);
        }
        for (data, len) in data_extents(&self.0, start, end).map_err(VolatileMemoryError::IOError)? {
            // Both fit in usize: they lie inside `buf`.
            let mut part = buf.subslice((data - start) as usize, len as usize)?;
            self.0.seek(SeekFrom::Start(data)).map_err(VolatileMemoryError::IOError)?;
            self.0.read_exact_volatile(&mut part)?;
        }
        self.0.seek(SeekFrom::Start(end)).map_err(VolatileMemoryError::IOError)?;
        Ok((end - start) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    type Mem = vm_memory::GuestMemoryMmap<()>;

    fn temp_file(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("viaduct-sparse-{}-{name}", std::process::id()))
    }

    /// Data at [0, 5000) and [1 MiB + 4096, + 3000), a hole between them and after.
    fn sparse_file(path: &std::path::Path) -> Vec<u8> {
        let len = (2 << 20) + 4096;
        let mut want = vec![0u8; len];
        let mut f = File::create(path).unwrap();
        f.set_len(len as u64).unwrap();
        for (at, n, v) in [(0usize, 5000usize, 0x11u8), ((1 << 20) + 4096, 3000, 0x22)] {
            want[at..at + n].fill(v);
            f.seek(SeekFrom::Start(at as u64)).unwrap();
            f.write_all(&want[at..at + n]).unwrap();
        }
        want
    }

    #[test]
    fn reads_the_same_bytes_as_a_plain_read_and_skips_holes() {
        let path = temp_file("read");
        let want = sparse_file(&path);
        let mem = Mem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        // Fresh (zero) guest memory: the result equals the file, holes included.
        let mut img = SparseImage(File::open(&path).unwrap());
        img.seek(SeekFrom::Start(100)).unwrap();
        let count = want.len() - 100 - 50;
        mem.read_exact_volatile_from(GuestAddress(0x1000), &mut img, count).unwrap();
        assert_eq!(img.stream_position().unwrap(), (100 + count) as u64, "position after the read");
        let mut got = vec![0u8; count];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, want[100..100 + count], "guest memory differs from the file");

        // Holes really are not written: pre-fill the guest with 0xee and read again.
        let mem2 = Mem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem2.write_slice(&vec![0xeeu8; want.len()], GuestAddress(0)).unwrap();
        let mut img = SparseImage(File::open(&path).unwrap());
        mem2.read_exact_volatile_from(GuestAddress(0), &mut img, want.len()).unwrap();
        let mut got = vec![0u8; want.len()];
        mem2.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert_eq!(got[..5000], want[..5000]);
        assert_eq!(got[(1 << 20) + 4096..(1 << 20) + 7096], want[(1 << 20) + 4096..(1 << 20) + 7096]);
        let f = File::open(&path).unwrap();
        if lseek(&f, 0, libc::SEEK_HOLE).map(|h| h < want.len() as u64).unwrap_or(false) {
            // The filesystem keeps holes: the 1 MiB hole after the first block stayed 0xee.
            assert!(got[8192..1 << 20].iter().all(|&b| b == 0xee), "a hole was copied");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn stops_at_the_end_of_the_file_like_read() {
        let path = temp_file("eof");
        std::fs::write(&path, [7u8; 10]).unwrap();
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut img = SparseImage(File::open(&path).unwrap());
        assert_eq!(mem.read_volatile_from(GuestAddress(0), &mut img, 100).unwrap(), 10);
        assert_eq!(mem.read_volatile_from(GuestAddress(0), &mut img, 100).unwrap(), 0);
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0), &mut SparseImage(File::open(&path).unwrap()), 11)
            .is_err());
        assert_eq!(mem.read_obj::<u8>(GuestAddress(9)).unwrap(), 7);
        assert_eq!(mem.num_regions(), 1);
        let _ = std::fs::remove_file(&path);
    }
}
