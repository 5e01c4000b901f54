//! Direct kernel boot: kernel, initramfs and command line (linux-loader), the E820 map, ACPI
//! tables and the boot vCPU's initial state.

pub mod acpi;
pub mod cpu;
pub mod e820;
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

/// Writes everything the guest finds in memory at power-on; returns the boot vCPU's entry.
pub fn prepare(
    mem: &crate::vstate::memory::GuestMemory,
    kernel_cfg: kernel::KernelConfig,
    acpi_cfg: &acpi::AcpiConfig,
) -> Result<BootEntry, BootError> {
    let rsdp_addr = acpi::write_tables(mem, acpi_cfg)?;
    reset_vector::write(mem)?;
    let entry = kernel::load(mem, &kernel::KernelConfig { rsdp_addr, ..kernel_cfg })?;
    cpu::write_boot_structures(mem, entry)?;
    Ok(entry)
}
