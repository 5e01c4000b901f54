//! Address-range dispatch for MMIO and port I/O.
//!
//! A bus range dispatches to a [`BusAccess`]: either a `Mutex` around a [`BusDevice`] (the
//! usual case, one access at a time) or an adapter that locks what it needs itself, so it
//! can wait with no lock held (the config-access devices wait for a Bus Master enable's DMA
//! mapping that way, see [`crate::root`]). The bus holds its entries, never the devices
//! behind adapters: those are owned by the VMM's device manager.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reached by guest accesses. Infallible on purpose: a guest cannot receive an
/// error, so bad accesses read as all-ones and writes are dropped (and logged, rate-limited).
pub trait BusDevice: Send {
    /// `offset` is relative to the start of the range the device was inserted at.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// What a bus range dispatches to; it synchronizes itself (see the module docs).
pub trait BusAccess: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

/// One access at a time. A lock poisoned by a panic in the device means its state is
/// unknown: the device is treated as failed (reads all-ones, writes dropped), never used
/// again. The panic itself stops the VM (every VMM thread's panic does).
impl<T: BusDevice> BusAccess for Mutex<T> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match self.lock() {
            Ok(mut d) => d.read(offset, data),
            Err(_) => {
                data.fill(0xff);
                failed_device(std::any::type_name::<T>());
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match self.lock() {
            Ok(mut d) => d.write(offset, data),
            Err(_) => failed_device(std::any::type_name::<T>()),
        }
    }
}

/// An entry that refers to its device without keeping it alive: the device's owner (the
/// VMM's device manager) decides when it goes; after that the range reads all-ones.
impl BusAccess for std::sync::Weak<dyn BusAccess> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match self.upgrade() {
            Some(d) => d.read(offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some(d) = self.upgrade() {
            d.write(offset, data);
        }
    }
}

/// Logs (rate-limited) that a device's lock was poisoned by a panic.
pub fn failed_device(what: &str) {
    ratelog::error_limited!("{what}: a panic left the device in an unknown state; it is treated as failed");
}

/// A half-open address range `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusRange {
    pub base: u64,
    pub len: u64,
}

impl BusRange {
    /// The last address inside the range, or `None` for an empty or wrapping range.
    pub fn last(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        self.base.checked_add(self.len - 1)
    }

    pub fn overlaps(&self, other: &BusRange) -> bool {
        match (self.last(), other.last()) {
            (Some(a_last), Some(b_last)) => self.base <= b_last && other.base <= a_last,
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps the address space")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {new:#x?} overlaps {existing:#x?}")]
    Overlap { new: BusRange, existing: BusRange },
    #[error("no device at bus address {0:#x}")]
    NotFound(u64),
}

pub type SharedDevice = Arc<dyn BusAccess>;

/// Maps address ranges to devices. Overlaps are refused; accesses that straddle the end of a
/// range are rejected (they would reach a neighbour's registers).
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<Ranges>,
}

type Ranges = BTreeMap<u64, (BusRange, SharedDevice)>;

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    // Only map operations run under this lock, none calls out or leaves the map half
    // changed when it panics: a poisoned lock still guards a consistent map.
    fn read_ranges(&self) -> std::sync::RwLockReadGuard<'_, Ranges> {
        self.ranges.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_ranges(&self) -> std::sync::RwLockWriteGuard<'_, Ranges> {
        self.ranges.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let new = BusRange { base, len };
        let new_last = new.last().ok_or(BusError::InvalidRange { base, len })?;
        let mut ranges = self.write_ranges();
        // The only candidates for overlap: the last range starting at or before new_last.
        if let Some((_, (existing, _))) = ranges.range(..=new_last).next_back() {
            if existing.overlaps(&new) {
                return Err(BusError::Overlap { new, existing: *existing });
            }
        }
        ranges.insert(base, (new, device));
        Ok(())
    }

    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        let mut ranges = self.write_ranges();
        ranges.remove(&base).map(|(_, d)| d).ok_or(BusError::NotFound(base))
    }

    /// Moves the range starting at `old_base` to `new_base` (a BAR was reprogrammed).
    /// On overlap the old mapping stays in place.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut ranges = self.write_ranges();
        let (range, device) = ranges.remove(&old_base).ok_or(BusError::NotFound(old_base))?;
        let moved = BusRange { base: new_base, len: range.len };
        let clash =
            moved.last().ok_or(BusError::InvalidRange { base: new_base, len: range.len }).and_then(|last| match ranges
                .range(..=last)
                .next_back()
            {
                Some((_, (existing, _))) if existing.overlaps(&moved) => {
                    Err(BusError::Overlap { new: moved, existing: *existing })
                }
                _ => Ok(()),
            });
        match clash {
            Ok(()) => {
                ranges.insert(new_base, (moved, device));
                Ok(())
            }
            Err(e) => {
                ranges.insert(old_base, (range, device));
                Err(e)
            }
        }
    }

    /// The device covering all of `[addr, addr + len)` and the offset of `addr` in its range.
    pub fn resolve(&self, addr: u64, len: usize) -> Option<(SharedDevice, u64)> {
        let ranges = self.read_ranges();
        let (_, (range, device)) = ranges.range(..=addr).next_back()?;
        let offset = addr - range.base;
        let end = offset.checked_add(len as u64)?;
        if len == 0 || end > range.len {
            return None;
        }
        Some((device.clone(), offset))
    }

    /// Returns false when no device claims the whole access (the caller reads all-ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }

    /// Every range on the bus (tests and diagnostics).
    pub fn ranges(&self) -> Vec<BusRange> {
        self.read_ranges().values().map(|(r, _)| *r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn dev(v: u8) -> SharedDevice {
        Arc::new(Mutex::new(Reg(v)))
    }

    #[test]
    fn dispatch_and_offsets() {
        let bus = Bus::new();
        bus.insert(dev(10), 0x1000, 0x10).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x1004, &mut b));
        assert_eq!(b[0], 14);
        assert!(!bus.read(0x1010, &mut b));
        assert!(!bus.read(0xfff, &mut b));
    }

    #[test]
    fn overlap_refused_and_straddle_rejected() {
        let bus = Bus::new();
        bus.insert(dev(0), 0x1000, 0x10).unwrap();
        assert!(matches!(bus.insert(dev(0), 0x100f, 1), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(dev(0), 0xff0, 0x11), Err(BusError::Overlap { .. })));
        bus.insert(dev(0), 0x1010, 0x10).unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x100e, &mut b), "straddles two devices");
        assert_eq!(bus.insert(dev(0), u64::MAX, 2), Err(BusError::InvalidRange { base: u64::MAX, len: 2 }));
        assert_eq!(bus.insert(dev(0), 5, 0), Err(BusError::InvalidRange { base: 5, len: 0 }));
    }

    #[test]
    fn relocate_keeps_old_on_clash() {
        let bus = Bus::new();
        bus.insert(dev(1), 0x1000, 0x10).unwrap();
        bus.insert(dev(2), 0x2000, 0x10).unwrap();
        assert!(bus.relocate(0x1000, 0x2008).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x1000, &mut b));
        bus.relocate(0x1000, 0x3000).unwrap();
        assert!(!bus.read(0x1000, &mut b));
        assert!(bus.read(0x3000, &mut b));
        assert_eq!(b[0], 1);
    }
}
