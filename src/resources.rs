//! Guest resources handed out at device attach time: GSIs and MMIO / port ranges
//! (vm-allocator). The PCI root complex may carve BARs out of the windows it is given.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive};

use crate::layout;

/// IOAPIC pins 16..=23 carry PCI INTx (the ISA IRQs 0..=15 stay legacy). They are not
/// allocated: the `_PRT` routing (`pci::intx`) maps each slot's pins onto them.
pub const INTX_GSI_FIRST: u32 = 16;
pub const INTX_GSI_LAST: u32 = 23;
/// MSI / MSI-X routes start after the IOAPIC's 24 pins.
pub const MSI_GSI_FIRST: u32 = 24;
/// KVM_MAX_IRQ_ROUTES is 4096 on x86.
pub const MSI_GSI_LAST: u32 = 4095;

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("creating the {what} allocator failed")]
    Create {
        what: &'static str,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("allocating {what} ({size:#x} bytes, alignment {align:#x}) failed: the window is full")]
    AllocateRange {
        what: &'static str,
        size: u64,
        align: u64,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("allocating a {what} GSI failed: all are in use")]
    AllocateGsi {
        what: &'static str,
        #[source]
        source: vm_allocator::Error,
    },
}

pub struct Resources {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    io: AddressAllocator,
    msi_gsi: IdAllocator,
}

impl Resources {
    /// `mmio64`: the 64-bit MMIO window ([`layout::mmio64_window`]).
    pub fn new(mmio64: pci::bridge::Window) -> Result<Self, ResourceError> {
        let create = |what| move |source| ResourceError::Create { what, source };
        Ok(Self {
            mmio32: AddressAllocator::new(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE)
                .map_err(create("32-bit MMIO"))?,
            mmio64: AddressAllocator::new(mmio64.base, mmio64.size).map_err(create("64-bit MMIO"))?,
            io: AddressAllocator::new(
                u64::from(layout::PCI_IO_START),
                u64::from(layout::PCI_IO_END - layout::PCI_IO_START) + 1,
            )
            .map_err(create("I/O port"))?,
            msi_gsi: IdAllocator::new(MSI_GSI_FIRST, MSI_GSI_LAST).map_err(create("MSI GSI"))?,
        })
    }

    fn range(
        a: &mut AddressAllocator,
        what: &'static str,
        size: u64,
        align: u64,
    ) -> Result<RangeInclusive, ResourceError> {
        a.allocate(size, align, AllocPolicy::FirstMatch).map_err(|source| ResourceError::AllocateRange {
            what,
            size,
            align,
            source,
        })
    }

    pub fn allocate_mmio32(&mut self, size: u64, align: u64) -> Result<RangeInclusive, ResourceError> {
        Self::range(&mut self.mmio32, "32-bit MMIO", size, align)
    }

    pub fn allocate_mmio64(&mut self, size: u64, align: u64) -> Result<RangeInclusive, ResourceError> {
        Self::range(&mut self.mmio64, "64-bit MMIO", size, align)
    }

    pub fn allocate_io(&mut self, size: u64, align: u64) -> Result<RangeInclusive, ResourceError> {
        Self::range(&mut self.io, "I/O port", size, align)
    }

    pub fn allocate_msi_gsi(&mut self) -> Result<u32, ResourceError> {
        self.msi_gsi.allocate_id().map_err(|source| ResourceError::AllocateGsi { what: "MSI", source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_gsis() {
        let mut r = Resources::new(layout::mmio64_window(256 << 20, 40)).unwrap();
        let a = r.allocate_mmio32(0x4000, 0x4000).unwrap();
        assert_eq!(a.start(), layout::PCI_MMIO32_START);
        let b = r.allocate_mmio64(1 << 30, 1 << 30).unwrap();
        assert_eq!(b.start(), 4 << 30);
        assert_eq!(r.allocate_msi_gsi().unwrap(), MSI_GSI_FIRST);
        assert_eq!(r.allocate_msi_gsi().unwrap(), MSI_GSI_FIRST + 1);
        for _ in MSI_GSI_FIRST + 2..=MSI_GSI_LAST {
            r.allocate_msi_gsi().unwrap();
        }
        assert!(r.allocate_msi_gsi().is_err());
        assert!(r.allocate_mmio32(layout::PCI_MMIO32_SIZE, 4096).is_err());
    }
}
