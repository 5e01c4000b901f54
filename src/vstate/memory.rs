//! Guest RAM: anonymous, shared (memfd) or hugetlbfs-backed mappings laid out by `layout`.
//!
//! [`GuestMemory`] owns the host mappings jointly with every clone of it: an I/O thread, the
//! DMA-mapping thread or a device holding one keeps guest RAM mapped, so nothing can touch
//! unmapped (or, after a guest reset, re-used) memory; RAM is unmapped when the last holder
//! is gone.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};

use crate::config::MemoryConfig;
use crate::layout;

/// Guest RAM as vm-memory sees it, plus a share of the host mappings behind it.
#[derive(Clone, Debug)]
pub struct GuestMemory {
    /// Declared first, so dropped first: the regions point into `_mappings`.
    mem: GuestMemoryMmap<()>,
    _mappings: Arc<Vec<HostMapping>>,
}

impl GuestMemory {
    /// Memory that vm-memory maps and unmaps itself (tests).
    #[cfg(test)]
    pub fn from_ranges(ranges: &[(GuestAddress, usize)]) -> Result<Self, vm_memory::mmap::FromRangesError> {
        let mem = GuestMemoryMmap::from_ranges(ranges)?;
        Ok(Self { mem, _mappings: Arc::new(Vec::new()) })
    }
}

impl std::ops::Deref for GuestMemory {
    type Target = GuestMemoryMmap<()>;

    fn deref(&self) -> &Self::Target {
        &self.mem
    }
}

/// Delegated, so `GuestMemory` is itself a vm-memory `GuestMemory` (virtio queues, `Bytes`).
impl GuestMemoryBackend for GuestMemory {
    type R = GuestRegionMmap<()>;

    fn num_regions(&self) -> usize {
        self.mem.num_regions()
    }

    fn find_region(&self, addr: GuestAddress) -> Option<&Self::R> {
        self.mem.find_region(addr)
    }

    fn iter(&self) -> impl Iterator<Item = &Self::R> {
        self.mem.iter()
    }
}

const HUGEPAGE_SIZE: u64 = 2 << 20;
const HUGEPAGES_FREE: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {size:#x} is not a multiple of the 2 MiB huge page size")]
    HugepageAlignment { size: u64 },
    #[error(
        "hugepages=on needs {needed} free 2 MiB huge pages but {free} are free \
         (raise /proc/sys/vm/nr_hugepages, e.g. echo {needed} > /proc/sys/vm/nr_hugepages)"
    )]
    HugepagesExhausted { needed: u64, free: u64 },
    #[error("reading {HUGEPAGES_FREE} failed (is hugetlbfs supported by this kernel?)")]
    HugepagesUnavailable(#[source] std::io::Error),
    #[error("memfd_create for guest RAM failed")]
    CreateMemfd(#[source] std::io::Error),
    #[error("sizing the guest RAM memfd to {size:#x} bytes failed")]
    SizeMemfd {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping guest RAM at {addr:#x} (+{size:#x}) failed")]
    Map {
        addr: u64,
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest RAM regions are inconsistent")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

fn free_hugepages() -> Result<u64, MemoryError> {
    let text = std::fs::read_to_string(HUGEPAGES_FREE).map_err(MemoryError::HugepagesUnavailable)?;
    text.trim()
        .parse()
        .map_err(|_| MemoryError::HugepagesUnavailable(std::io::Error::other(format!("unexpected content {text:?}"))))
}

fn create_memfd(size: u64, hugepages: bool) -> Result<File, MemoryError> {
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: the name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"viaduct-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::CreateMemfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|source| MemoryError::SizeMemfd { size, source })?;
    Ok(file)
}

/// A host mapping backing guest RAM, unmapped on drop.
#[derive(Debug)]
struct HostMapping {
    addr: *mut libc::c_void,
    size: usize,
}

// SAFETY: the mapping is plain memory; HostMapping only unmaps it when dropped.
unsafe impl Send for HostMapping {}
// SAFETY: HostMapping has no interior state besides the immutable address and size.
unsafe impl Sync for HostMapping {}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: [addr, addr+size) was mapped by map_aligned and nothing refers to it any
        // more: the last GuestMemory holding these mappings dropped its regions first.
        if unsafe { libc::munmap(self.addr, self.size) } != 0 {
            log::warn!("munmap of guest RAM failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// Guest-physical RAM starts on 2 MiB boundaries; the host mapping must too, or KVM cannot
/// back guest huge pages with host huge pages (and every 4 KiB nested page fault costs).
const HOST_ALIGN: usize = 2 << 20;

/// Maps `size` bytes at a 2 MiB-aligned host address: anonymous private memory, or the
/// memfd `file` at `offset` (shared). Anonymous memory is advised to use transparent huge
/// pages, as QEMU does for guest RAM.
fn map_aligned(size: usize, file: Option<(&File, u64)>, addr: u64) -> Result<HostMapping, MemoryError> {
    let map_err = |source: std::io::Error| MemoryError::Map {
        addr,
        size: size as u64,
        source: vm_memory::mmap::MmapRegionError::Mmap(source),
    };
    let reserve =
        size.checked_add(HOST_ALIGN).ok_or_else(|| map_err(std::io::Error::from_raw_os_error(libc::ENOMEM)))?;
    // SAFETY: a fresh PROT_NONE reservation at an address of the kernel's choosing.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(map_err(std::io::Error::last_os_error()));
    }
    let start = (base as usize).next_multiple_of(HOST_ALIGN);
    let (flags, fd, offset) = match file {
        Some((f, off)) => (libc::MAP_SHARED, f.as_raw_fd(), off as libc::off_t),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
    };
    // SAFETY: [start, start+size) lies inside the reservation we own, so MAP_FIXED replaces
    // only our own PROT_NONE pages.
    let addr_mapped = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
            fd,
            offset,
        )
    };
    let mapped_err = (addr_mapped == libc::MAP_FAILED).then(std::io::Error::last_os_error);
    // Trim the reservation around the mapping (or all of it on failure).
    let head = start - base as usize;
    let tail = reserve - head - size;
    // SAFETY: these ranges are parts of our reservation that nothing uses.
    unsafe {
        if let Some(e) = mapped_err {
            libc::munmap(base, reserve);
            return Err(map_err(e));
        }
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((start + size) as *mut libc::c_void, tail);
        }
    }
    if file.is_none() {
        // SAFETY: advice on our own mapping; failure only means no THP.
        if unsafe { libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE) } != 0 {
            log::debug!("MADV_HUGEPAGE on guest RAM failed: {}", std::io::Error::last_os_error());
        }
    }
    Ok(HostMapping { addr: start as *mut libc::c_void, size })
}

/// Allocates and maps guest RAM. With `hugepages` or `shared`, RAM is a memfd mapped
/// MAP_SHARED (so another process, e.g. a vhost-user backend, can map it too).
pub fn create_guest_memory(cfg: &MemoryConfig, ram: &layout::RamLayout) -> Result<GuestMemory, MemoryError> {
    if cfg.hugepages {
        if cfg.size % HUGEPAGE_SIZE != 0 {
            return Err(MemoryError::HugepageAlignment { size: cfg.size });
        }
        let needed = cfg.size / HUGEPAGE_SIZE;
        let free = free_hugepages()?;
        if free < needed {
            return Err(MemoryError::HugepagesExhausted { needed, free });
        }
    }
    let memfd = if cfg.hugepages || cfg.shared { Some(Arc::new(create_memfd(cfg.size, cfg.hugepages)?)) } else { None };
    let mut regions = Vec::new();
    let mut mappings = Vec::new();
    let mut file_offset = 0u64;
    for (addr, size) in ram.regions() {
        let mapping = map_aligned(size as usize, memfd.as_deref().map(|f| (f, file_offset)), addr)?;
        let builder = MmapRegionBuilder::new(size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_hugetlbfs(cfg.hugepages);
        let builder = match &memfd {
            Some(file) => builder
                .with_file_offset(FileOffset::from_arc(file.clone(), file_offset))
                .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE),
            None => builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
        };
        // SAFETY: `mapping` is a live mapping of exactly `size` bytes that every GuestMemory
        // built from these regions keeps (shared) until its regions are gone.
        let region = unsafe { builder.with_raw_mmap_pointer(mapping.addr.cast()) }
            .build()
            .map_err(|source| MemoryError::Map { addr, size, source })?;
        mappings.push(mapping);
        let region = GuestRegionMmap::new(region, GuestAddress(addr)).ok_or(MemoryError::Map {
            addr,
            size,
            source: vm_memory::mmap::MmapRegionError::InvalidPointer,
        })?;
        regions.push(region);
        file_offset += size;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)?;
    Ok(GuestMemory { mem, _mappings: Arc::new(mappings) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn anonymous_and_shared_memory_are_usable() {
        for shared in [false, true] {
            let cfg = MemoryConfig { size: 64 << 20, hugepages: false, shared };
            let mem = create_guest_memory(&cfg, &layout::RamLayout::direct(cfg.size)).unwrap();
            assert_eq!(mem.num_regions(), 1);
            let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
            assert_eq!(host % HOST_ALIGN, 0, "guest RAM must be 2 MiB aligned on the host");
            mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
            assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xdead_beef);
        }
    }

    /// Whether `addr` is mapped in this process (mincore fails with ENOMEM on a hole).
    fn is_mapped(addr: usize) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: mincore only reads the page tables for one page and writes one byte.
        unsafe { libc::mincore(addr as *mut libc::c_void, 4096, vec.as_mut_ptr()) == 0 }
    }

    #[test]
    fn ram_stays_mapped_while_any_clone_lives() {
        let cfg = MemoryConfig { size: 16 << 20, hugepages: false, shared: true };
        let mem = create_guest_memory(&cfg, &layout::RamLayout::direct(cfg.size)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let worker_copy = mem.clone();
        drop(mem);
        assert!(is_mapped(host), "a clone (an I/O thread's) keeps RAM mapped");
        let t = std::thread::spawn(move || {
            worker_copy.write_obj(0x5a5a_u16, GuestAddress(0x2000)).unwrap();
            worker_copy.read_obj::<u16>(GuestAddress(0x2000)).unwrap()
        });
        assert_eq!(t.join().unwrap(), 0x5a5a);
        assert!(!is_mapped(host), "the last holder gone: RAM unmapped");
    }

    #[test]
    fn hugepages_shortage_is_a_clear_error() {
        let cfg = MemoryConfig { size: 1 << 40, hugepages: true, shared: false };
        match create_guest_memory(&cfg, &layout::RamLayout::direct(cfg.size)) {
            Err(MemoryError::HugepagesExhausted { needed, .. }) => assert_eq!(needed, 1 << 19),
            Err(MemoryError::HugepagesUnavailable(_)) => {}
            Err(other) => panic!("unexpected {other:?}"),
            Ok(_) => panic!("1 TiB of huge pages should not be free"),
        }
        let cfg = MemoryConfig { size: (64 << 20) + 4096, hugepages: true, shared: false };
        assert!(matches!(
            create_guest_memory(&cfg, &layout::RamLayout::direct(cfg.size)),
            Err(MemoryError::HugepageAlignment { .. })
        ));
    }
}
