//! Memory slots follow BARs: the mmapped areas of a function's memory BARs
//! ([`PciDevice::mmap_areas`], an assigned device's registers) are guest memory exactly while
//! the function decodes memory and the bus has the BAR, at the BAR's bus address; elsewhere
//! and otherwise the BAR traps to the function like any other. The VMM's memory slots
//! (KVM_SET_USER_MEMORY_REGION) are behind [`MemorySlots`], so this stays testable.

use std::collections::HashMap;
use std::fmt::Display;

use crate::device::{BarIndex, BarKind, MmapArea, PciDevice};

/// The VMM's memory slots, implemented in the VMM.
pub trait MemorySlots: Send {
    /// Makes `[host_addr, host_addr + size)` the guest's memory at `gpa`; returns a slot id.
    fn map_slot(&mut self, gpa: u64, size: u64, host_addr: u64) -> std::io::Result<u32>;
    fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()>;
}

#[derive(Debug)]
struct LiveSlot {
    slot: u32,
    gpa: u64,
    /// Keeps the host mapping alive while the slot exists.
    area: MmapArea,
}

/// A BAR whose areas are (or were asked to be) guest memory at `base`.
#[derive(Debug)]
struct MappedBar {
    base: u64,
    slots: Vec<LiveSlot>,
}

/// The memory slots over every function's BAR areas. Functions are keyed by the identity
/// the caller gives them (the relocator's: a function's allocation).
pub struct BarMemslots {
    slots: Box<dyn MemorySlots>,
    /// Memory decode of each function, as its config writes reported it.
    decode: HashMap<usize, bool>,
    live: HashMap<(usize, BarIndex), MappedBar>,
}

impl BarMemslots {
    pub fn new(slots: Box<dyn MemorySlots>) -> Self {
        Self { slots, decode: HashMap::new(), live: HashMap::new() }
    }

    /// Brings function `id`'s slots in line after a config write: `decode` is the memory
    /// decode change the write reported (`None`: unchanged), `placed(bar)` where the bus has
    /// the BAR now (`None`: nowhere, e.g. a move refused for overlap). Slots that must go
    /// are removed before new ones are made, so two never overlap.
    pub fn sync(
        &mut self,
        name: &dyn Display,
        id: usize,
        device: &dyn PciDevice,
        decode: Option<bool>,
        placed: &dyn Fn(BarIndex) -> Option<u64>,
    ) {
        if let Some(on) = decode {
            self.decode.insert(id, on);
        }
        let on = self.decode.get(&id).copied().unwrap_or(false);
        let want: Vec<(BarIndex, Option<u64>)> = device
            .bars()
            .into_iter()
            .filter(|r| matches!(r.kind, BarKind::Mem32 { .. } | BarKind::Mem64 { .. }))
            .map(|r| (r.index, if on { placed(r.index) } else { None }))
            .collect();
        let stale: Vec<BarIndex> = self
            .live
            .iter()
            .filter(|((f, bar), m)| *f == id && !want.contains(&(*bar, Some(m.base))))
            .map(|((_, bar), _)| *bar)
            .collect();
        for bar in stale {
            self.unmap_bar(name, id, bar);
        }
        for (bar, base) in want {
            let Some(base) = base else { continue };
            if self.live.contains_key(&(id, bar)) {
                continue;
            }
            let mut mapped = MappedBar { base, slots: Vec::new() };
            for area in device.mmap_areas(bar) {
                let Some(gpa) = base.checked_add(area.offset) else { continue };
                match self.slots.map_slot(gpa, area.size, area.host_addr) {
                    Ok(slot) => mapped.slots.push(LiveSlot { slot, gpa, area }),
                    // The area stays trapped: slower, still correct. A guest can ask for this
                    // (a BAR moved over its own RAM), so the message is rate-limited.
                    Err(e) => ratelog::error_limited!(
                        "{name}: BAR{} area +{:#x} ({:#x} bytes) as guest memory at {gpa:#x}: {e}; accesses there \
                         stay trapped",
                        bar.0,
                        area.offset,
                        area.size
                    ),
                }
            }
            self.live.insert((id, bar), mapped);
        }
    }

    fn unmap_bar(&mut self, name: &dyn Display, id: usize, bar: BarIndex) {
        let Some(mapped) = self.live.remove(&(id, bar)) else { return };
        for s in mapped.slots {
            if let Err(e) = self.slots.unmap_slot(s.slot) {
                log::error!("{name}: removing the BAR{} slot at {:#x}: {e}", bar.0, s.gpa);
            }
        }
    }

    /// Removes every slot of function `id` (it goes away); it is forgotten.
    pub fn unmap_function(&mut self, name: &dyn Display, id: usize) {
        let bars: Vec<BarIndex> = self.live.keys().filter(|(f, _)| *f == id).map(|(_, b)| *b).collect();
        for bar in bars {
            self.unmap_bar(name, id, bar);
        }
        self.decode.remove(&id);
    }

    /// Removes every slot of every function (the VM goes away).
    pub fn unmap_all(&mut self) {
        let ids: Vec<usize> = self.live.keys().map(|(f, _)| *f).chain(self.decode.keys().copied()).collect();
        for id in ids {
            self.unmap_function(&"PCI", id);
        }
    }

    /// Where the areas of function `id`'s BAR `bar` are guest memory now, with the guest
    /// address and size of each slot.
    pub fn slots(&self, id: usize, bar: BarIndex) -> Vec<(u64, u64)> {
        self.live.get(&(id, bar)).map_or_else(Vec::new, |m| m.slots.iter().map(|s| (s.gpa, s.area.size)).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::device::{BarRegion, ConfigEffects};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// Live slots by id: (gpa, size, host address).
    pub(crate) type LiveSlots = Arc<Mutex<BTreeMap<u32, (u64, u64, u64)>>>;

    #[derive(Clone, Default)]
    pub(crate) struct FakeSlots {
        pub live: LiveSlots,
        next: u32,
        /// Refuse maps at this guest address (a KVM error).
        pub refuse: Option<u64>,
    }

    impl MemorySlots for FakeSlots {
        fn map_slot(&mut self, gpa: u64, size: u64, host_addr: u64) -> std::io::Result<u32> {
            if self.refuse == Some(gpa) {
                return Err(std::io::Error::other("refused"));
            }
            let mut live = self.live.lock().unwrap();
            let end = gpa + size;
            assert!(live.values().all(|(g, s, _)| end <= *g || gpa >= g + s), "overlapping slots");
            self.next += 1;
            live.insert(self.next, (gpa, size, host_addr));
            Ok(self.next)
        }
        fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()> {
            self.live.lock().unwrap().remove(&slot).map(|_| ()).ok_or_else(|| std::io::Error::other("no such slot"))
        }
    }

    /// A function with a 16 KiB BAR0 (two mmapped areas around a trapped page), an I/O BAR1
    /// and a 64-bit BAR2 without areas.
    struct Mapped {
        bars: Vec<BarRegion>,
        backing: Arc<Vec<u8>>,
    }

    impl PciDevice for Mapped {
        fn bars(&self) -> Vec<BarRegion> {
            self.bars.clone()
        }
        fn read_config(&mut self, _reg: usize) -> u32 {
            0
        }
        fn write_config(&mut self, _reg: usize, _offset: u64, _data: &[u8]) -> ConfigEffects {
            ConfigEffects::default()
        }
        fn read_bar(&mut self, _bar: BarIndex, _offset: u64, _data: &mut [u8]) {}
        fn write_bar(&mut self, _bar: BarIndex, _offset: u64, _data: &[u8]) {}
        fn mmap_areas(&self, bar: BarIndex) -> Vec<MmapArea> {
            if bar != BarIndex(0) {
                return Vec::new();
            }
            let host = self.backing.as_ptr() as u64;
            [(0, 0x1000), (0x2000, 0x2000)]
                .iter()
                .map(|&(offset, size)| MmapArea {
                    offset,
                    size,
                    host_addr: host + offset,
                    mapping: self.backing.clone(),
                })
                .collect()
        }
    }

    fn mapped() -> Mapped {
        let region = |index, kind, addr, size| BarRegion { index: BarIndex(index), kind, addr, size };
        Mapped {
            bars: vec![
                region(0, BarKind::Mem32 { prefetchable: false }, 0xc000_0000, 0x4000),
                region(1, BarKind::Io, 0x1000, 0x20),
                region(2, BarKind::Mem64 { prefetchable: true }, 0x1_0000_0000, 0x4000),
            ],
            backing: Arc::new(vec![0; 0x4000]),
        }
    }

    fn gpas(slots: &FakeSlots) -> Vec<(u64, u64)> {
        slots.live.lock().unwrap().values().map(|(g, s, _)| (*g, *s)).collect()
    }

    #[test]
    fn slots_follow_decode_and_moves() {
        let fake = FakeSlots::default();
        let mut ms = BarMemslots::new(Box::new(fake.clone()));
        let mut dev = mapped();
        let at = |a: u64| move |b: BarIndex| (b == BarIndex(0)).then_some(a);
        ms.sync(&"f", 1, &dev, None, &at(0xc000_0000));
        assert!(gpas(&fake).is_empty(), "decode starts off");
        ms.sync(&"f", 1, &dev, Some(true), &at(0xc000_0000));
        assert_eq!(gpas(&fake), vec![(0xc000_0000, 0x1000), (0xc000_2000, 0x2000)]);
        assert_eq!(ms.slots(1, BarIndex(0)).len(), 2);
        assert_eq!(Arc::strong_count(&dev.backing), 3, "each slot holds the mapping");
        // A move: the old slots go before the new ones come (FakeSlots refuses overlaps).
        dev.bars[0].addr = 0xc000_1000;
        ms.sync(&"f", 1, &dev, None, &at(0xc000_1000));
        assert_eq!(gpas(&fake), vec![(0xc000_1000, 0x1000), (0xc000_3000, 0x2000)]);
        // The bus refused the move: no slots either.
        ms.sync(&"f", 1, &dev, None, &|_| None);
        assert!(gpas(&fake).is_empty());
        ms.sync(&"f", 1, &dev, None, &at(0xc000_1000));
        assert_eq!(gpas(&fake).len(), 2);
        ms.sync(&"f", 1, &dev, Some(false), &at(0xc000_1000));
        assert!(gpas(&fake).is_empty());
        assert_eq!(Arc::strong_count(&dev.backing), 1, "mappings released with their slots");
    }

    #[test]
    fn failed_slots_leave_the_area_trapped_and_teardown_removes_everything() {
        let fake = FakeSlots { refuse: Some(0xc000_2000), ..Default::default() };
        let mut ms = BarMemslots::new(Box::new(fake.clone()));
        let dev = mapped();
        ms.sync(&"a", 1, &dev, Some(true), &|b| (b == BarIndex(0)).then_some(0xc000_0000));
        ms.sync(&"b", 2, &dev, Some(true), &|b| (b == BarIndex(0)).then_some(0xd000_0000));
        assert_eq!(gpas(&fake), vec![(0xc000_0000, 0x1000), (0xd000_0000, 0x1000), (0xd000_2000, 0x2000)]);
        ms.unmap_function(&"b", 2);
        assert_eq!(gpas(&fake), vec![(0xc000_0000, 0x1000)]);
        ms.sync(&"b", 2, &dev, None, &|_| Some(0xd000_0000));
        assert_eq!(gpas(&fake).len(), 1, "a forgotten function starts with decode off");
        ms.unmap_all();
        assert!(gpas(&fake).is_empty());
        assert_eq!(Arc::strong_count(&dev.backing), 1);
    }
}
