//! The platform pieces that firmware built for QEMU's q35 machine (Debian's SeaBIOS and
//! OVMF) expects around the PCI root complex, as pure models:
//!
//! - [`fw_cfg`]: QEMU's firmware configuration interface (I/O ports 0x510/0x511, DMA at
//!   0x514), its file directory and the items firmware reads (memory map, CPU counts, boot
//!   order, ACPI through the [`table_loader`], [`smbios`] tables, a kernel to boot);
//! - [`q35`]: the MCH host bridge (8086:29c0: PCIEXBAR, PAM, SMRAM) and the ICH9 LPC
//!   bridge (8086:2918: PMBASE, ACPI_CNTL), with the ACPI PM registers and PM timer
//!   ([`q35::pm`]) and the reset control register at 0xCF9;
//! - [`flash`]: a CFI (Intel command set) flash for UEFI variables.
//!
//! No KVM and no host resources here: guest memory for fw_cfg DMA comes through
//! [`fw_cfg::DmaMemory`], power requests leave through [`PowerControl`], and bus changes a
//! guest asks for are returned as data (`pci::ConfigEffects::windows`,
//! [`flash::FlashWrite`]). Every guest-input parser has a fuzz target (`platform/fuzz`).

pub mod debugcon;
pub mod flash;
pub mod fw_cfg;
pub mod q35;
pub mod smbios;
pub mod table_loader;

/// What a guest-visible register asks of the machine as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PowerRequest {
    /// ACPI S5 (soft off).
    PowerOff,
    /// A platform reset.
    Reset,
    /// The firmware needs something this platform does not offer; the VM cannot go on.
    Unsupported(String),
}

/// Receives [`PowerRequest`]s (the VMM's stop path). Called on vCPU threads.
pub trait PowerControl: Send + Sync {
    fn request(&self, request: PowerRequest);
}

/// A clock for the ACPI PM timer: time since an arbitrary fixed origin.
pub trait Clock: Send {
    fn now(&self) -> std::time::Duration;
}

/// [`Clock`] over the host's monotonic clock.
pub struct MonotonicClock(std::time::Instant);

impl MonotonicClock {
    pub fn new() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> std::time::Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use super::{PowerControl, PowerRequest};

    /// Records power requests.
    #[derive(Default)]
    pub struct Requests(pub Mutex<Vec<PowerRequest>>);

    impl PowerControl for Requests {
        fn request(&self, request: PowerRequest) {
            self.0.lock().unwrap().push(request);
        }
    }

    impl Requests {
        pub fn taken(&self) -> Vec<PowerRequest> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}
