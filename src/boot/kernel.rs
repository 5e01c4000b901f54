//! Loading the kernel (bzImage or PVH ELF), initramfs and command line; the zero page or the
//! PVH start info that tells the kernel where everything is.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress};

use super::cpu::BootEntry;
use super::e820::{self, E820Entry};
use crate::layout;
use crate::vstate::memory::GuestMemory;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// XLF_KERNEL_64: the kernel has the 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("opening kernel image {path} failed")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `reason` is the loader's innermost message: linux-loader's errors repeat their
    /// sources in their own text, so chaining them would print it three times.
    #[error("loading kernel image {path} failed: {reason} (is it a bzImage, or an ELF vmlinux with a PVH note?)")]
    LoadKernel { path: PathBuf, reason: String },
    #[error("kernel {path} is an ELF image without a PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); use a bzImage")]
    NoPvhEntry { path: PathBuf },
    #[error("kernel {path} does not support the 64-bit boot protocol (XLF_KERNEL_64)")]
    No64BitEntry { path: PathBuf },
    #[error("opening initramfs {path} failed")]
    OpenInitramfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "initramfs {path} ({size} bytes) does not fit in guest RAM below {limit:#x}; give the guest more --memory"
    )]
    InitramfsTooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("reading initramfs {path} into guest memory failed")]
    ReadInitramfs {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line is invalid or longer than {max} bytes")]
    Cmdline {
        max: usize,
        #[source]
        source: linux_loader::cmdline::Error,
    },
    #[error("writing the kernel command line into guest memory failed")]
    WriteCmdline(#[source] loader::Error),
    #[error("writing the boot parameters into guest memory failed")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
}

#[derive(Clone, Copy, Debug)]
struct Initramfs {
    addr: u64,
    size: u64,
}

/// Refuses a kernel or initramfs that cannot be opened (missing, unreadable, a directory)
/// before any VM resource exists.
pub fn check_readable(kernel: &Path, initramfs: Option<&Path>) -> Result<(), KernelError> {
    let open = |path: &Path| -> std::io::Result<()> {
        let f = File::open(path)?;
        if f.metadata()?.is_dir() {
            return Err(std::io::Error::other("it is a directory"));
        }
        Ok(())
    };
    open(kernel).map_err(|source| KernelError::OpenKernel { path: kernel.into(), source })?;
    if let Some(p) = initramfs {
        open(p).map_err(|source| KernelError::OpenInitramfs { path: p.into(), source })?;
    }
    Ok(())
}

fn is_elf(path: &Path) -> Result<bool, KernelError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|source| KernelError::OpenKernel { path: path.into(), source })?;
    Ok(f.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF")
}

/// Loads the kernel and returns how to enter it plus the loader's view of the image.
fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<(BootEntry, KernelLoaderResult), KernelError> {
    let mut file = File::open(path).map_err(|source| KernelError::OpenKernel { path: path.into(), source })?;
    let load_err = |e: loader::Error| {
        let mut inner: &dyn std::error::Error = &e;
        while let Some(next) = inner.source() {
            inner = next;
        }
        KernelError::LoadKernel { path: path.into(), reason: inner.to_string() }
    };
    if is_elf(path)? {
        // Guest RAM is fresh (zero) on every boot: the holes of a sparse vmlinux (the
        // extracted kernel cache writes its zero blocks as holes) need not be copied.
        let mut image = super::sparse::SparseImage(file);
        let result = Elf::load(mem, None, &mut image, Some(GuestAddress(layout::HIGH_RAM_START))).map_err(load_err)?;
        match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(entry) => Ok((BootEntry::Pvh { entry: entry.0 }, result)),
            _ => Err(KernelError::NoPvhEntry { path: path.into() }),
        }
    } else {
        let result =
            BzImage::load(mem, None, &mut file, Some(GuestAddress(layout::HIGH_RAM_START))).map_err(load_err)?;
        let xloadflags = result.setup_header.map(|h| h.xloadflags).unwrap_or(0);
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(KernelError::No64BitEntry { path: path.into() });
        }
        // Boot protocol: the 64-bit entry point is 0x200 past the protected-mode kernel.
        Ok((BootEntry::Linux64 { entry: result.kernel_load.0 + 0x200 }, result))
    }
}

/// Puts the initramfs as high as allowed in low RAM, page aligned.
fn load_initramfs(mem: &GuestMemory, path: &Path, max_end: u64, kernel_end: u64) -> Result<Initramfs, KernelError> {
    let mut file = File::open(path).map_err(|source| KernelError::OpenInitramfs { path: path.into(), source })?;
    let size = file.metadata().map_err(|source| KernelError::OpenInitramfs { path: path.into(), source })?.len();
    let too_large = || KernelError::InitramfsTooLarge { path: path.into(), size, limit: max_end };
    let addr = max_end.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| KernelError::ReadInitramfs { path: path.into(), source })?;
    Ok(Initramfs { addr, size })
}

/// The kernel and initramfs as loaded into guest memory: the slow part of preparing a boot
/// (reading tens of MiB), which needs nothing but guest RAM and so can run while devices
/// are attached.
pub struct LoadedImages {
    entry: BootEntry,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    initramfs: Option<Initramfs>,
}

/// Loads the kernel, then the initramfs as high in low RAM as the kernel allows.
pub fn load_images(
    mem: &GuestMemory,
    kernel: &Path,
    initramfs: Option<&Path>,
    ram_size: u64,
) -> Result<LoadedImages, KernelError> {
    let (entry, result) = load_kernel(mem, kernel)?;
    let low_end = layout::low_ram_end(ram_size);
    let max_end = match result.setup_header {
        // initrd_addr_max is the last byte the initrd may occupy.
        Some(h) if h.initrd_addr_max != 0 => low_end.min(u64::from(h.initrd_addr_max) + 1),
        _ => low_end,
    };
    let initramfs = initramfs.map(|p| load_initramfs(mem, p, max_end, result.kernel_end)).transpose()?;
    Ok(LoadedImages { entry, setup_header: result.setup_header, initramfs })
}

/// What the kernel is told beside its images.
pub struct BootInfo<'a> {
    pub cmdline: &'a str,
    pub ram_size: u64,
    pub rsdp_addr: u64,
}

/// Writes the command line and the boot protocol structures (zero page or PVH start info)
/// for loaded images; returns the vCPU entry state.
pub fn write_boot_info(mem: &GuestMemory, images: &LoadedImages, info: &BootInfo) -> Result<BootEntry, KernelError> {
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE)
        .map_err(|source| KernelError::Cmdline { max: layout::CMDLINE_MAX_SIZE, source })?;
    cmdline
        .insert_str(info.cmdline)
        .map_err(|source| KernelError::Cmdline { max: layout::CMDLINE_MAX_SIZE, source })?;
    loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline).map_err(KernelError::WriteCmdline)?;
    let cmdline_len = info.cmdline.len() as u32 + 1;
    let map = e820::memory_map(info.ram_size);

    match images.entry {
        BootEntry::Linux64 { .. } => {
            let mut params = boot_params::default();
            if let Some(h) = images.setup_header {
                params.hdr = h;
            }
            params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline_len;
            if let Some(i) = images.initramfs {
                params.hdr.ramdisk_image = i.addr as u32;
                params.hdr.ramdisk_size = i.size as u32;
            }
            params.acpi_rsdp_addr = info.rsdp_addr;
            for (slot, e) in params.e820_table.iter_mut().zip(&map) {
                *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind };
            }
            params.e820_entries = map.len().min(params.e820_table.len()) as u8;
            let bp = BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem).map_err(KernelError::WriteBootParams)?;
        }
        BootEntry::Pvh { .. } => write_pvh_info(mem, &map, images.initramfs, info.rsdp_addr)?,
    }
    Ok(images.entry)
}

fn write_pvh_info(
    mem: &GuestMemory,
    map: &[E820Entry],
    initramfs: Option<Initramfs>,
    rsdp_addr: u64,
) -> Result<(), KernelError> {
    let info_addr = GuestAddress(layout::PVH_INFO_START);
    let modlist_addr = info_addr.unchecked_add(std::mem::size_of::<hvm_start_info>() as u64);
    let memmap_addr = modlist_addr.unchecked_add(std::mem::size_of::<hvm_modlist_entry>() as u64);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: memmap_addr.raw_value(),
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if initramfs.is_some() {
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr.raw_value();
    }
    let mut bp = BootParams::new::<hvm_start_info>(&info, info_addr);
    if let Some(i) = initramfs {
        bp.set_modules(&[hvm_modlist_entry { paddr: i.addr, size: i.size, ..Default::default() }], modlist_addr);
    }
    let entries: Vec<hvm_memmap_table_entry> =
        map.iter().map(|e| hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind, reserved: 0 }).collect();
    bp.set_sections(&entries, memmap_addr);
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem).map_err(KernelError::WriteBootParams)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemoryConfig;
    use crate::vstate::memory::create_guest_memory;

    #[test]
    fn garbage_kernel_is_a_clear_error() {
        let cfg = MemoryConfig { size: 64 << 20, hugepages: false, shared: false };
        let ram = create_guest_memory(&cfg, &crate::layout::RamLayout::direct(cfg.size)).unwrap();
        let mem = &ram;
        let dir = std::env::temp_dir().join(format!("viaduct-kernel-test-{}", std::process::id()));
        std::fs::write(&dir, b"not a kernel at all, just some bytes").unwrap();
        let err = load_images(mem, &dir, None, 64 << 20).err().unwrap();
        std::fs::remove_file(&dir).ok();
        assert!(matches!(err, KernelError::LoadKernel { .. }), "{err}");
        let missing = load_images(mem, Path::new("/nonexistent/k"), None, 64 << 20);
        assert!(matches!(missing, Err(KernelError::OpenKernel { .. })));
    }
}
