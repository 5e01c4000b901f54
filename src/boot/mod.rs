//! Direct kernel boot: kernel, initramfs and command line (linux-loader), the E820 map, ACPI
//! tables and the boot vCPU's initial state.

pub mod acpi;
mod cache_dir;
pub mod cpu;
pub mod e820;
pub mod firmware;
pub mod fw_cfg;
pub mod kernel;
pub mod reset_vector;
mod sparse;
pub mod vmlinux_cache;

pub use cpu::BootEntry;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuSetupError),
    #[error(transparent)]
    ResetVector(#[from] reset_vector::ResetVectorError),
}

pub use kernel::{load_images, LoadedImages};

/// Writes what the guest finds in memory at power-on beside its loaded images: ACPI tables,
/// the reset vector, the command line and the boot protocol structures. Returns the boot
/// vCPU's entry.
pub fn prepare(
    mem: &crate::vstate::memory::GuestMemory,
    images: &LoadedImages,
    cmdline: &str,
    ram_size: u64,
    acpi_cfg: &acpi::AcpiConfig,
) -> Result<BootEntry, BootError> {
    let rsdp_addr = acpi::write_tables(mem, acpi_cfg)?;
    reset_vector::write(mem)?;
    let entry = kernel::write_boot_info(mem, images, &kernel::BootInfo { cmdline, ram_size, rsdp_addr })?;
    cpu::write_boot_structures(mem, entry)?;
    Ok(entry)
}

/// The seccomp filter of the kernel loader thread: open and read the kernel and initramfs
/// (skipping a cached kernel's holes with SEEK_DATA/SEEK_HOLE) into guest RAM. The fallback
/// to the bzImage reopens a file, so opening stays allowed.
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    r.allow(&[
        libc::SYS_openat,
        libc::SYS_read,
        libc::SYS_pread64,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
    ]);
}
