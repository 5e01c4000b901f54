//! The seam between Viaduct and `/dev/vfio`: everything that touches a VFIO device fd.
//!
//! [`HostDevice`] is implemented by [`VfioHost`] (a real `vfio_ioctls::VfioDevice`) and by
//! [`FakeHost`] (captured config-space bytes plus in-memory BARs) for unit tests and fuzzing.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Mutex;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_irq_set, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};

use crate::reset::HotResetDep;

/// VFIO region index of the config space.
pub const CONFIG_REGION: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
/// VFIO region index of the expansion ROM.
pub const ROM_REGION: u32 = VFIO_PCI_ROM_REGION_INDEX;

/// The VFIO interrupt index (VFIO_PCI_*_IRQ_INDEX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqIndex {
    Intx = 0,
    Msi = 1,
    Msix = 2,
    /// VFIO_PCI_ERR_IRQ_INDEX: the host kernel's AER handling found an uncorrectable error on
    /// the device (vfio-pci signals it from its `error_detected` callback).
    Err = 3,
}

/// A part of a region that may be mmapped (VFIO sparse mmap capability).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseArea {
    pub offset: u64,
    pub size: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    pub size: u64,
    pub readable: bool,
    pub writable: bool,
    /// The areas that may be mmapped. Empty when the region is not mmappable at all.
    pub mmap_areas: Vec<SparseArea>,
    /// VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: the MSI-X table may be mmapped too.
    pub msix_mappable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{bdf}: region {region} has no {len} bytes at offset {offset:#x}")]
    RegionBounds { bdf: String, region: u32, offset: u64, len: usize },
    #[error("{bdf}: reading region {region} at {offset:#x} failed")]
    RegionRead {
        bdf: String,
        region: u32,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: writing region {region} at {offset:#x} failed")]
    RegionWrite {
        bdf: String,
        region: u32,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: VFIO_DEVICE_SET_IRQS {index:?} start {start} count {count} failed")]
    SetIrqs {
        bdf: String,
        index: IrqIndex,
        start: u32,
        count: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: VFIO_DEVICE_RESET failed")]
    Reset {
        bdf: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: VFIO_DEVICE_GET_PCI_HOT_RESET_INFO failed")]
    HotResetInfo {
        bdf: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: VFIO_DEVICE_PCI_HOT_RESET failed")]
    HotReset {
        bdf: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: hot reset needs IOMMU group {group}, which this process does not hold")]
    GroupNotHeld { bdf: String, group: u32 },
    #[error("{bdf}: mmap of region {region} area {offset:#x}+{size:#x} failed")]
    Mmap {
        bdf: String,
        region: u32,
        offset: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

/// A host memory mapping of part of a device region. Unmapped on drop.
#[derive(Debug)]
pub struct RegionMapping {
    addr: *mut u8,
    size: usize,
    /// Fake mappings own their memory instead (tests).
    owned: Option<Vec<u8>>,
}

// SAFETY: the mapping is plain shared memory of the device; the pointer is only handed to KVM
// as a memslot backing and never dereferenced by Rust code.
unsafe impl Send for RegionMapping {}
// SAFETY: as above; no interior state besides the immutable pointer.
unsafe impl Sync for RegionMapping {}

impl RegionMapping {
    pub fn host_addr(&self) -> *mut u8 {
        self.addr
    }

    pub fn size(&self) -> u64 {
        self.size as u64
    }

    fn owned(size: usize) -> Self {
        let mut buf = vec![0u8; size];
        Self { addr: buf.as_mut_ptr(), size, owned: Some(buf) }
    }
}

impl Drop for RegionMapping {
    fn drop(&mut self) {
        if self.owned.is_none() {
            // SAFETY: addr/size come from a successful mmap in `VfioHost::map_region`, and
            // KVM's memslot over it was removed by the owner before the mapping is dropped.
            unsafe { libc::munmap(self.addr.cast(), self.size) };
        }
    }
}

/// Everything Viaduct does with an assigned device's VFIO fd.
pub trait HostDevice: Send + Sync {
    /// The device's name (its BDF), for logs and errors.
    fn bdf(&self) -> &str;
    fn region_info(&self, region: u32) -> Option<RegionInfo>;
    /// Number of interrupts the device offers under `index` (0 = none).
    fn irq_count(&self, index: IrqIndex) -> u32;
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), HostError>;
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), HostError>;
    /// VFIO_DEVICE_SET_IRQS with DATA_EVENTFD for vectors `start..start + fds.len()`;
    /// `None` de-assigns a vector's eventfd (fd -1) without freeing the host vector.
    fn set_irqs(&self, index: IrqIndex, start: u32, fds: &[Option<RawFd>]) -> Result<(), HostError>;
    /// Disables every vector of `index` (count 0, DATA_NONE).
    fn disable_irqs(&self, index: IrqIndex) -> Result<(), HostError>;
    /// INTx: VFIO unmasks the line when `fd` (KVM's resample eventfd) is signalled.
    fn set_intx_unmask_fd(&self, fd: RawFd) -> Result<(), HostError>;
    /// Resets the device; `Ok(false)` when it offers no reset method.
    fn reset(&self) -> Result<bool, HostError>;
    /// Whether the kernel can reset the device (VFIO_DEVICE_FLAGS_RESET). vfio-pci sets it
    /// only when the reset it does as it opens the device worked: true means the device
    /// was just reset.
    fn resettable(&self) -> bool;
    /// The kernel's reset methods for the device in the order it tries them (sysfs
    /// `reset_method`); empty when unreadable.
    fn kernel_reset_methods(&self) -> Vec<String>;
    /// The functions a bus or slot reset of the device would reset, itself included
    /// (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO; an error when no such reset is possible).
    fn hot_reset_info(&self) -> Result<Vec<HotResetDep>, HostError>;
    /// The IOMMU groups whose VFIO group this process holds open.
    fn held_groups(&self) -> Vec<u32>;
    /// VFIO_DEVICE_PCI_HOT_RESET, proving ownership of every affected function with the fds
    /// of `groups`.
    fn hot_reset(&self, groups: &[u32]) -> Result<(), HostError>;
    /// Maps `area` of a region into the VMM (for a KVM memslot).
    fn map_region(&self, region: u32, area: SparseArea) -> Result<RegionMapping, HostError>;
}

// Our own VFIO_DEVICE_SET_IRQS: vfio-ioctls' enable_irq always starts at vector 0 and has no
// way to leave a vector unassigned, which per-vector lazy enabling needs.
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, 0x3b, 100 + 10);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, 0x3b, 100 + 11);
// vfio-ioctls reads the device info when it opens a device but keeps the flags to itself.
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO, 0x3b, 100 + 7);
// vfio-ioctls defines these two but offers no call for them (and keeps its group fds,
// which the hot reset needs, private).
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b, 100 + 12);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, 0x3b, 100 + 13);

/// The functions in a VFIO_DEVICE_GET_PCI_HOT_RESET_INFO answer (in u32 words: argsz, flags,
/// count, then per function its group and segment/bus/devfn); a count beyond the buffer is
/// cut to what it holds.
fn decode_hot_reset_deps(buf: &[u32]) -> Vec<HotResetDep> {
    let count = buf.get(2).map_or(0, |c| *c as usize);
    buf.get(3..)
        .unwrap_or_default()
        .chunks_exact(2)
        .take(count)
        .map(|d| {
            let [seg_lo, seg_hi, bus, devfn] = d[1].to_le_bytes();
            let segment = u16::from_le_bytes([seg_lo, seg_hi]);
            HotResetDep { group: d[0], bdf: format!("{segment:04x}:{bus:02x}:{:02x}.{}", devfn >> 3, devfn & 7) }
        })
        .collect()
}

/// The VFIO groups this process holds open, as (group, fd): the legacy container's group
/// files `/dev/vfio/N`. vfio-ioctls opens them and keeps the files private, so they are found
/// by their `/proc/self/fd` links; an fd closed or reused meanwhile makes the kernel refuse
/// the hot reset (EBADF/EINVAL), never reset a device that is not ours.
fn held_vfio_groups() -> Vec<(u32, RawFd)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Vec::new() };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let group = target.to_str().and_then(|t| t.strip_prefix("/dev/vfio/")).and_then(|g| g.parse::<u32>().ok());
        if let Some(g) = group {
            out.push((g, fd));
        }
    }
    out.sort_unstable();
    out.dedup_by_key(|(g, _)| *g);
    out
}

/// A real VFIO device.
pub struct VfioHost {
    bdf: String,
    device: VfioDevice,
}

impl VfioHost {
    pub fn new(bdf: String, device: VfioDevice) -> Self {
        Self { bdf, device }
    }

    pub fn device(&self) -> &VfioDevice {
        &self.device
    }

    fn check_bounds(&self, region: u32, offset: u64, len: usize) -> Result<u64, HostError> {
        let size = self.device.get_region_size(region);
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= size => Ok(self.device.get_region_offset(region) + offset),
            _ => Err(HostError::RegionBounds { bdf: self.bdf.clone(), region, offset, len }),
        }
    }

    fn irq_set_ioctl(&self, flags: u32, index: IrqIndex, start: u32, fds: &[RawFd]) -> Result<(), HostError> {
        // vfio_irq_set is followed by `count` u32 eventfds; build it in a u32 buffer so the
        // alignment is right.
        let header_words = std::mem::size_of::<vfio_irq_set>() / 4;
        let mut buf = vec![0u32; header_words + fds.len()];
        let argsz = (buf.len() * 4) as u32;
        buf[0] = argsz;
        buf[1] = flags;
        buf[2] = index as u32;
        buf[3] = start;
        buf[4] = fds.len() as u32;
        for (slot, fd) in buf[header_words..].iter_mut().zip(fds) {
            *slot = *fd as u32;
        }
        // SAFETY: buf holds a complete vfio_irq_set header followed by `count` fds, argsz
        // says so, and the kernel only reads it.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ptr(&self.device, VFIO_DEVICE_SET_IRQS(), buf.as_ptr()) };
        if ret < 0 {
            return Err(HostError::SetIrqs {
                bdf: self.bdf.clone(),
                index,
                start,
                count: fds.len() as u32,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl HostDevice for VfioHost {
    fn bdf(&self) -> &str {
        &self.bdf
    }

    fn region_info(&self, region: u32) -> Option<RegionInfo> {
        let size = self.device.get_region_size(region);
        if size == 0 {
            return None;
        }
        let flags = self.device.get_region_flags(region);
        let caps = self.device.get_region_caps(region);
        let mut info = RegionInfo {
            size,
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap_areas: Vec::new(),
            msix_mappable: caps.iter().any(|c| matches!(c, VfioRegionInfoCap::MsixMappable)),
        };
        if flags & VFIO_REGION_INFO_FLAG_MMAP != 0 {
            let sparse = caps.iter().find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(s),
                _ => None,
            });
            info.mmap_areas = match sparse {
                Some(s) => s.areas.iter().map(|a| SparseArea { offset: a.offset, size: a.size }).collect(),
                None => vec![SparseArea { offset: 0, size }],
            };
        }
        Some(info)
    }

    fn irq_count(&self, index: IrqIndex) -> u32 {
        self.device.get_irq_info(index as u32).map_or(0, |i| i.count)
    }

    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), HostError> {
        let pos = self.check_bounds(region, offset, data.len())?;
        // SAFETY: pread into a live, correctly sized buffer on a valid fd.
        let n =
            unsafe { libc::pread(self.device.as_raw_fd(), data.as_mut_ptr().cast(), data.len(), pos as libc::off_t) };
        if n != data.len() as isize {
            let source = if n < 0 {
                std::io::Error::last_os_error()
            } else {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short read")
            };
            return Err(HostError::RegionRead { bdf: self.bdf.clone(), region, offset, source });
        }
        Ok(())
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), HostError> {
        let pos = self.check_bounds(region, offset, data.len())?;
        // SAFETY: pwrite from a live buffer on a valid fd.
        let n = unsafe { libc::pwrite(self.device.as_raw_fd(), data.as_ptr().cast(), data.len(), pos as libc::off_t) };
        if n != data.len() as isize {
            let source = if n < 0 {
                std::io::Error::last_os_error()
            } else {
                std::io::Error::new(std::io::ErrorKind::WriteZero, "short write")
            };
            return Err(HostError::RegionWrite { bdf: self.bdf.clone(), region, offset, source });
        }
        Ok(())
    }

    fn set_irqs(&self, index: IrqIndex, start: u32, fds: &[Option<RawFd>]) -> Result<(), HostError> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.unwrap_or(-1)).collect();
        self.irq_set_ioctl(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index, start, &raw)
    }

    fn disable_irqs(&self, index: IrqIndex) -> Result<(), HostError> {
        self.irq_set_ioctl(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, &[])
    }

    fn set_intx_unmask_fd(&self, fd: RawFd) -> Result<(), HostError> {
        self.irq_set_ioctl(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK, IrqIndex::Intx, 0, &[fd])
    }

    fn reset(&self) -> Result<bool, HostError> {
        // vfio-ioctls' reset() swallows the result; we want to know.
        // SAFETY: argument-less ioctl on a valid VFIO device fd.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(&self.device, VFIO_DEVICE_RESET()) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            // ENOTTY/EINVAL: the device has no reset method.
            if matches!(err.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) {
                return Ok(false);
            }
            return Err(HostError::Reset { bdf: self.bdf.clone(), source: err });
        }
        Ok(true)
    }

    fn resettable(&self) -> bool {
        let mut info = vfio_device_info { argsz: std::mem::size_of::<vfio_device_info>() as u32, ..Default::default() };
        // SAFETY: VFIO_DEVICE_GET_INFO writes at most argsz bytes into `info`, which is that large.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.device, VFIO_DEVICE_GET_INFO(), &mut info) };
        ret >= 0 && info.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    fn kernel_reset_methods(&self) -> Vec<String> {
        std::fs::read_to_string(format!("/sys/bus/pci/devices/{}/reset_method", self.bdf))
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn hot_reset_info(&self) -> Result<Vec<HotResetDep>, HostError> {
        let err = |source| HostError::HotResetInfo { bdf: self.bdf.clone(), source };
        // vfio_pci_hot_reset_info (argsz, flags, count) and `count` vfio_pci_dependent_device
        // (group u32, segment u16, bus u8, devfn u8), in u32 words. The first call with no
        // room fails with ENOSPC and says how many there are.
        let mut count = 0u32;
        for _ in 0..2 {
            let mut buf = vec![0u32; 3 + 2 * count as usize];
            buf[0] = (buf.len() * 4) as u32;
            // SAFETY: the kernel writes at most argsz bytes (buf's size) into buf.
            let ret = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                    &self.device,
                    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
                    buf.as_mut_ptr(),
                )
            };
            if ret < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOSPC) && buf[2] > count && buf[2] <= 256 {
                    count = buf[2];
                    continue;
                }
                return Err(err(e));
            }
            return Ok(decode_hot_reset_deps(&buf));
        }
        Err(err(std::io::Error::from_raw_os_error(libc::ENOSPC)))
    }

    fn held_groups(&self) -> Vec<u32> {
        held_vfio_groups().into_iter().map(|(g, _)| g).collect()
    }

    fn hot_reset(&self, groups: &[u32]) -> Result<(), HostError> {
        let held = held_vfio_groups();
        let mut fds = Vec::new();
        for g in groups {
            match held.iter().find(|(h, _)| h == g) {
                Some((_, fd)) => fds.push(*fd),
                None => return Err(HostError::GroupNotHeld { bdf: self.bdf.clone(), group: *g }),
            }
        }
        fds.sort_unstable();
        fds.dedup();
        // vfio_pci_hot_reset (argsz, flags, count) followed by the group fds.
        let mut buf = vec![0i32; 3 + fds.len()];
        buf[0] = (buf.len() * 4) as i32;
        buf[2] = fds.len() as i32;
        buf[3..].copy_from_slice(&fds);
        // SAFETY: buf is a complete vfio_pci_hot_reset with `count` fds; the kernel only reads it.
        let ret =
            unsafe { vmm_sys_util::ioctl::ioctl_with_ptr(&self.device, VFIO_DEVICE_PCI_HOT_RESET(), buf.as_ptr()) };
        if ret < 0 {
            return Err(HostError::HotReset { bdf: self.bdf.clone(), source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    fn map_region(&self, region: u32, area: SparseArea) -> Result<RegionMapping, HostError> {
        let pos = self.check_bounds(region, area.offset, area.size as usize)?;
        let err =
            |source| HostError::Mmap { bdf: self.bdf.clone(), region, offset: area.offset, size: area.size, source };
        let size = usize::try_from(area.size).map_err(|_| err(std::io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        // SAFETY: a fresh shared mapping of the device fd at a kernel-described offset; the
        // result is checked and owned by RegionMapping, which unmaps it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                pos as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(RegionMapping { addr: addr.cast(), size, owned: None })
    }
}

/// One recorded VFIO_DEVICE_SET_IRQS call of a [`FakeHost`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqCall {
    Set { index: IrqIndex, start: u32, fds: Vec<Option<RawFd>> },
    Disable(IrqIndex),
    IntxUnmaskFd(RawFd),
}

/// An in-memory device: config space from a captured dump, BARs as byte arrays.
pub struct FakeHost {
    bdf: String,
    /// Index 0..=6 BARs + ROM, 7 config space.
    regions: Mutex<Vec<Vec<u8>>>,
    infos: Vec<Option<RegionInfo>>,
    irq_counts: [u32; 3],
    /// Whether the device offers the error interrupt (VFIO_PCI_ERR_IRQ_INDEX).
    pub error_irq: bool,
    pub irq_calls: Mutex<Vec<IrqCall>>,
    pub resets: Mutex<u32>,
    /// What the host says about resets ([`HostDevice::resettable`] and the rest).
    pub reset_facts: FakeResetFacts,
    /// Hot resets done, with the groups given.
    pub hot_resets: Mutex<Vec<Vec<u32>>>,
    /// The device went away (surprise removal): every access fails with ENODEV.
    pub gone: std::sync::atomic::AtomicBool,
}

/// A [`FakeHost`]'s answers about resets.
#[derive(Clone, Debug)]
pub struct FakeResetFacts {
    pub function_reset: bool,
    pub kernel_methods: Vec<String>,
    pub hot_reset: Option<Vec<HotResetDep>>,
    pub held_groups: Vec<u32>,
}

impl Default for FakeResetFacts {
    fn default() -> Self {
        Self { function_reset: true, kernel_methods: vec!["flr".into()], hot_reset: None, held_groups: Vec::new() }
    }
}

impl FakeHost {
    /// `config` is a config-space dump (256 or 4096 bytes); `bars[i]` the size of BAR i
    /// (0 = absent), described as fully mmappable.
    pub fn new(config: &[u8], bars: [u64; 7], irq_counts: [u32; 3]) -> Self {
        let mut cfg = config.to_vec();
        cfg.resize(4096, 0);
        let mut regions = Vec::new();
        let mut infos = Vec::new();
        for size in bars {
            regions.push(vec![0u8; size.min(1 << 20) as usize]);
            infos.push((size != 0).then(|| RegionInfo {
                size,
                readable: true,
                writable: true,
                mmap_areas: vec![SparseArea { offset: 0, size }],
                msix_mappable: false,
            }));
        }
        regions.push(cfg);
        infos.push(Some(RegionInfo { size: 4096, readable: true, writable: true, ..Default::default() }));
        Self {
            bdf: "0000:00:00.0".into(),
            regions: Mutex::new(regions),
            infos,
            irq_counts,
            error_irq: false,
            irq_calls: Mutex::new(Vec::new()),
            resets: Mutex::new(0),
            reset_facts: FakeResetFacts::default(),
            hot_resets: Mutex::new(Vec::new()),
            gone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn set_region_info(&mut self, region: u32, info: RegionInfo) {
        if let Some(slot) = self.infos.get_mut(region as usize) {
            *slot = Some(info);
        }
    }

    fn is_gone(&self) -> bool {
        self.gone.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn gone_error(&self, index: IrqIndex) -> HostError {
        let source = std::io::Error::from_raw_os_error(libc::ENODEV);
        HostError::SetIrqs { bdf: self.bdf.clone(), index, start: 0, count: 0, source }
    }

    /// Raw bytes of a region as the device holds them now.
    pub fn region_bytes(&self, region: u32) -> Vec<u8> {
        let regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        regions.get(region as usize).cloned().unwrap_or_default()
    }

    fn with_region<R>(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, HostError> {
        if self.is_gone() {
            let source = std::io::Error::from_raw_os_error(libc::ENODEV);
            return Err(HostError::RegionRead { bdf: self.bdf.clone(), region, offset, source });
        }
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let bounds = || HostError::RegionBounds { bdf: self.bdf.clone(), region, offset, len };
        let bytes = regions.get_mut(region as usize).ok_or_else(bounds)?;
        let start = usize::try_from(offset).map_err(|_| bounds())?;
        let end = start.checked_add(len).ok_or_else(bounds)?;
        let slice = bytes.get_mut(start..end).ok_or_else(bounds)?;
        Ok(f(slice))
    }
}

impl HostDevice for FakeHost {
    fn bdf(&self) -> &str {
        &self.bdf
    }

    fn region_info(&self, region: u32) -> Option<RegionInfo> {
        self.infos.get(region as usize).cloned().flatten()
    }

    fn irq_count(&self, index: IrqIndex) -> u32 {
        match index {
            IrqIndex::Err => u32::from(self.error_irq),
            i => self.irq_counts.get(i as usize).copied().unwrap_or(0),
        }
    }

    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), HostError> {
        self.with_region(region, offset, data.len(), |s| data.copy_from_slice(s))
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), HostError> {
        self.with_region(region, offset, data.len(), |s| s.copy_from_slice(data))
    }

    fn set_irqs(&self, index: IrqIndex, start: u32, fds: &[Option<RawFd>]) -> Result<(), HostError> {
        if self.is_gone() {
            return Err(self.gone_error(index));
        }
        let end = start as u64 + fds.len() as u64;
        if end > self.irq_count(index) as u64 {
            return Err(HostError::SetIrqs {
                bdf: self.bdf.clone(),
                index,
                start,
                count: fds.len() as u32,
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        self.irq_calls.lock().unwrap_or_else(|e| e.into_inner()).push(IrqCall::Set { index, start, fds: fds.to_vec() });
        Ok(())
    }

    fn disable_irqs(&self, index: IrqIndex) -> Result<(), HostError> {
        if self.is_gone() {
            return Err(self.gone_error(index));
        }
        self.irq_calls.lock().unwrap_or_else(|e| e.into_inner()).push(IrqCall::Disable(index));
        Ok(())
    }

    fn set_intx_unmask_fd(&self, fd: RawFd) -> Result<(), HostError> {
        self.irq_calls.lock().unwrap_or_else(|e| e.into_inner()).push(IrqCall::IntxUnmaskFd(fd));
        Ok(())
    }

    fn reset(&self) -> Result<bool, HostError> {
        if self.is_gone() {
            return Err(HostError::Reset {
                bdf: self.bdf.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            });
        }
        if !self.reset_facts.function_reset {
            return Ok(false);
        }
        *self.resets.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(true)
    }

    fn resettable(&self) -> bool {
        self.reset_facts.function_reset
    }

    fn kernel_reset_methods(&self) -> Vec<String> {
        self.reset_facts.kernel_methods.clone()
    }

    fn hot_reset_info(&self) -> Result<Vec<HotResetDep>, HostError> {
        self.reset_facts.hot_reset.clone().ok_or_else(|| HostError::HotResetInfo {
            bdf: self.bdf.clone(),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    fn held_groups(&self) -> Vec<u32> {
        self.reset_facts.held_groups.clone()
    }

    fn hot_reset(&self, groups: &[u32]) -> Result<(), HostError> {
        if let Some(g) = groups.iter().find(|g| !self.reset_facts.held_groups.contains(g)) {
            return Err(HostError::GroupNotHeld { bdf: self.bdf.clone(), group: *g });
        }
        self.hot_resets.lock().unwrap_or_else(|e| e.into_inner()).push(groups.to_vec());
        Ok(())
    }

    fn map_region(&self, region: u32, area: SparseArea) -> Result<RegionMapping, HostError> {
        let info = self.region_info(region);
        let fits = info.is_some_and(|i| area.offset.checked_add(area.size).is_some_and(|e| e <= i.size));
        if !fits {
            return Err(HostError::RegionBounds {
                bdf: self.bdf.clone(),
                region,
                offset: area.offset,
                len: area.size as usize,
            });
        }
        Ok(RegionMapping::owned(area.size.min(1 << 20) as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_reset_info_answers_decode_to_bdfs_and_groups() {
        // Two functions: group 7 at 0000:05:00.0, group 8 at 0001:05:1f.7.
        let dep = |seg: u16, bus: u8, devfn: u8| u32::from_le_bytes([seg as u8, (seg >> 8) as u8, bus, devfn]);
        let buf = [28, 0, 2, 7, dep(0, 5, 0), 8, dep(1, 5, (0x1f << 3) | 7)];
        assert_eq!(
            decode_hot_reset_deps(&buf),
            vec![
                HotResetDep { group: 7, bdf: "0000:05:00.0".into() },
                HotResetDep { group: 8, bdf: "0001:05:1f.7".into() }
            ]
        );
        assert_eq!(decode_hot_reset_deps(&[12, 0, 5, 7, dep(0, 5, 0)]).len(), 1, "count beyond the buffer is cut");
        assert!(decode_hot_reset_deps(&[12]).is_empty());
    }
}
