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

/// The last MSI GSI a VM can use when KVM allows `max_routes` routing entries
/// (KVM_CAP_IRQ_ROUTING): the default irqchip routes take 40 entries, every MSI GSI one more,
/// and every GSI must be below `max_routes`. `None` when there is no room for any.
pub fn msi_gsi_last(max_routes: usize) -> Option<u32> {
    let msi_routes = max_routes.checked_sub(crate::irq::gsi::DEFAULT_ROUTES)?.checked_sub(1)?;
    u32::try_from(msi_routes).ok()?.checked_add(MSI_GSI_FIRST)
}

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
    #[error("giving back {what} failed")]
    Free {
        what: String,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("allocating a {what} GSI failed: all {count} that KVM's interrupt routing table allows are in use")]
    AllocateGsi {
        what: &'static str,
        count: u32,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("KVM allows only {max_routes} interrupt routes (KVM_CAP_IRQ_ROUTING): none left for MSI")]
    NoMsiRoutes { max_routes: usize },
}

/// Something taken from [`Resources`] for one device, given back when it detaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allocation {
    Mmio32(RangeInclusive),
    Mmio64(RangeInclusive),
    Io(RangeInclusive),
    MsiGsi(u32),
}

pub struct Resources {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    io: AddressAllocator,
    msi_gsi: IdAllocator,
    msi_gsi_count: u32,
}

impl Resources {
    /// `mmio64`: the 64-bit MMIO window ([`layout::RamLayout::mmio64_window`]); `max_routes`:
    /// the interrupt routes KVM allows ([`crate::vstate::vm::Vm::max_irq_routes`]).
    pub fn new(mmio64: pci::bridge::Window, max_routes: usize) -> Result<Self, ResourceError> {
        let create = |what| move |source| ResourceError::Create { what, source };
        let msi_last = msi_gsi_last(max_routes).ok_or(ResourceError::NoMsiRoutes { max_routes })?;
        Ok(Self {
            mmio32: AddressAllocator::new(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE)
                .map_err(create("32-bit MMIO"))?,
            mmio64: AddressAllocator::new(mmio64.base, mmio64.size).map_err(create("64-bit MMIO"))?,
            io: AddressAllocator::new(
                u64::from(layout::PCI_IO_START),
                u64::from(layout::PCI_IO_END - layout::PCI_IO_START) + 1,
            )
            .map_err(create("I/O port"))?,
            msi_gsi: IdAllocator::new(MSI_GSI_FIRST, msi_last).map_err(create("MSI GSI"))?,
            msi_gsi_count: msi_last - MSI_GSI_FIRST + 1,
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
        let count = self.msi_gsi_count;
        self.msi_gsi.allocate_id().map_err(|source| ResourceError::AllocateGsi { what: "MSI", count, source })
    }

    /// Gives `a` back (a device detached); a failure means it was not allocated here.
    pub fn free(&mut self, a: &Allocation) -> Result<(), ResourceError> {
        let r = match a {
            Allocation::Mmio32(r) => self.mmio32.free(r),
            Allocation::Mmio64(r) => self.mmio64.free(r),
            Allocation::Io(r) => self.io.free(r),
            Allocation::MsiGsi(g) => self.msi_gsi.free_id(*g).map(|_| ()),
        };
        r.map_err(|source| ResourceError::Free { what: format!("{a:?}"), source })
    }
}

/// Resources taken for a device being built: given back if building fails (dropped), kept
/// (to be recorded with the device and given back when it detaches) with [`Self::keep`].
pub struct Taken<'a> {
    resources: &'a std::sync::Mutex<Resources>,
    list: Vec<Allocation>,
}

impl<'a> Taken<'a> {
    pub fn new(resources: &'a std::sync::Mutex<Resources>) -> Self {
        Self { resources, list: Vec::new() }
    }

    // Allocator calls cannot panic halfway: a poisoned lock still holds whole allocators.
    fn lock(&self) -> std::sync::MutexGuard<'a, Resources> {
        self.resources.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn msi_gsi(&mut self) -> Result<u32, ResourceError> {
        let gsi = self.lock().allocate_msi_gsi()?;
        self.list.push(Allocation::MsiGsi(gsi));
        Ok(gsi)
    }

    pub fn mmio32(&mut self, size: u64, align: u64) -> Result<u64, ResourceError> {
        let r = self.lock().allocate_mmio32(size, align)?;
        let start = r.start();
        self.list.push(Allocation::Mmio32(r));
        Ok(start)
    }

    pub fn mmio64(&mut self, size: u64, align: u64) -> Result<u64, ResourceError> {
        let r = self.lock().allocate_mmio64(size, align)?;
        let start = r.start();
        self.list.push(Allocation::Mmio64(r));
        Ok(start)
    }

    pub fn io(&mut self, size: u64, align: u64) -> Result<u64, ResourceError> {
        let r = self.lock().allocate_io(size, align)?;
        let start = r.start();
        self.list.push(Allocation::Io(r));
        Ok(start)
    }

    /// What was taken, now owned by the caller.
    pub fn keep(mut self) -> Vec<Allocation> {
        std::mem::take(&mut self.list)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let list = std::mem::take(&mut self.list);
        let mut r = self.lock();
        for a in &list {
            if let Err(e) = r.free(a) {
                log::warn!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_gsis() {
        let mut r = Resources::new(layout::RamLayout::direct(256 << 20).mmio64_window(40), 4096).unwrap();
        let a = r.allocate_mmio32(0x4000, 0x4000).unwrap();
        assert_eq!(a.start(), layout::PCI_MMIO32_START);
        let b = r.allocate_mmio64(1 << 30, 1 << 30).unwrap();
        assert_eq!(b.start(), 4 << 30);
        assert_eq!(r.allocate_msi_gsi().unwrap(), MSI_GSI_FIRST);
        assert_eq!(r.allocate_msi_gsi().unwrap(), MSI_GSI_FIRST + 1);
        // KVM's 4096 routes: 40 default ones, so 4056 MSI GSIs (24..=4079).
        for _ in MSI_GSI_FIRST + 2..=4079 {
            r.allocate_msi_gsi().unwrap();
        }
        let e = r.allocate_msi_gsi().unwrap_err();
        assert!(e.to_string().contains("all 4056"), "{e}");
        assert!(r.allocate_mmio32(layout::PCI_MMIO32_SIZE, 4096).is_err());
        // What a detached device gives back is handed out again.
        r.free(&Allocation::MsiGsi(MSI_GSI_FIRST + 1)).unwrap();
        assert_eq!(r.allocate_msi_gsi().unwrap(), MSI_GSI_FIRST + 1);
        r.free(&Allocation::Mmio32(a)).unwrap();
        assert_eq!(r.allocate_mmio32(0x4000, 0x4000).unwrap(), a);
        assert!(r.free(&Allocation::Mmio64(a)).is_err(), "not from that window");
    }

    #[test]
    fn the_msi_range_follows_kvms_route_limit() {
        assert_eq!(msi_gsi_last(4096), Some(4079));
        assert_eq!(msi_gsi_last(1024), Some(1007));
        assert_eq!(msi_gsi_last(41), Some(24));
        assert_eq!(msi_gsi_last(40), None);
        assert_eq!(msi_gsi_last(0), None);
        let w = layout::RamLayout::direct(256 << 20).mmio64_window(40);
        assert!(matches!(Resources::new(w, 40), Err(ResourceError::NoMsiRoutes { max_routes: 40 })));
        let mut r = Resources::new(w, 42).unwrap();
        assert_eq!(r.allocate_msi_gsi().unwrap(), 24);
        assert_eq!(r.allocate_msi_gsi().unwrap(), 25);
        assert!(r.allocate_msi_gsi().is_err());
    }
}
