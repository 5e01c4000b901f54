//! BAR data paths: mmappable parts of the device's regions become guest memory slots, so the
//! guest's driver touches device registers without VM exits. The pages holding the MSI-X
//! table and PBA always stay trapped: the table is emulated (its writes become KVM routes).
//! Without VFIO's MSIX_MAPPABLE capability the kernel's sparse areas already leave those
//! pages out; with it, the areas cover the whole BAR and we carve the pages out ourselves.
//! Every part of a BAR that is not mapped is trapped and forwarded by
//! [`crate::device::VfioPciDevice`].

use pci::BarIndex;

use crate::config::{BarInfo, MsixInfo};
use crate::host::{HostDevice, HostError, MmapArea, RegionMapping};

const PAGE: u64 = 4096;

/// The VMM's memory slots (KVM_SET_USER_MEMORY_REGION), implemented in the VMM.
pub trait MemorySlots: Send {
    /// Makes `[host_addr, host_addr + size)` the guest's memory at `gpa`; returns a slot id.
    fn map_slot(&mut self, gpa: u64, size: u64, host_addr: u64) -> std::io::Result<u32>;
    fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum RegionsError {
    #[error("mapping a BAR area failed")]
    MmapArea(#[source] HostError),
    #[error("{bdf}: BAR{bar} area +{offset:#x} ({size:#x} bytes) as a memory slot at {gpa:#x}")]
    MapSlot {
        bdf: String,
        bar: u8,
        offset: u64,
        size: u64,
        gpa: u64,
        #[source]
        source: std::io::Error,
    },
}

/// One mmapped part of a BAR.
#[derive(Debug)]
struct Area {
    bar: BarIndex,
    /// Offset in the BAR.
    offset: u64,
    mapping: RegionMapping,
    /// (slot id, guest address) while mapped into the guest.
    slot: Option<(u32, u64)>,
}

/// Subtracts the page-aligned span `[start, end)` from each area.
fn carve(areas: Vec<MmapArea>, start: u64, end: u64) -> Vec<MmapArea> {
    let start = start & !(PAGE - 1);
    let end = end.saturating_add(PAGE - 1) & !(PAGE - 1);
    let mut out = Vec::new();
    for a in areas {
        let a_end = a.offset.saturating_add(a.size);
        if end <= a.offset || start >= a_end {
            out.push(a);
            continue;
        }
        if start > a.offset {
            out.push(MmapArea { offset: a.offset, size: start - a.offset });
        }
        if end < a_end {
            out.push(MmapArea { offset: end, size: a_end - end });
        }
    }
    out
}

/// The parts of BAR `bar` to map: the kernel's sparse areas, page-aligned, without the
/// MSI-X table and PBA pages.
pub fn mappable_areas(host: &dyn HostDevice, bar: &BarInfo, msix: Option<MsixInfo>) -> Vec<MmapArea> {
    let Some(info) = host.region_info(u32::from(bar.index.0)) else { return Vec::new() };
    let mut areas: Vec<MmapArea> = info
        .mmap_areas
        .iter()
        .copied()
        .filter(|a| {
            a.offset % PAGE == 0 && a.size >= PAGE && a.offset.checked_add(a.size).is_some_and(|e| e <= info.size)
        })
        .map(|a| MmapArea { offset: a.offset, size: a.size & !(PAGE - 1) })
        .collect();
    if let Some(m) = msix {
        if m.table_bar == bar.index {
            areas = carve(areas, m.table_offset, m.table_offset + m.table_len());
        }
        if m.pba_bar == bar.index {
            areas = carve(areas, m.pba_offset, m.pba_offset + m.pba_len());
        }
    }
    areas
}

/// The mmapped areas of every BAR and their memory slots.
#[derive(Debug, Default)]
pub struct BarMappings {
    bdf: String,
    areas: Vec<Area>,
}

impl BarMappings {
    /// mmaps every mappable area of the memory BARs (not yet visible to the guest).
    pub fn new(
        host: &dyn HostDevice,
        bars: impl Iterator<Item = BarInfo>,
        msix: Option<MsixInfo>,
    ) -> Result<Self, RegionsError> {
        let mut areas = Vec::new();
        for bar in bars {
            if matches!(bar.kind, pci::BarKind::Io | pci::BarKind::Rom) {
                continue;
            }
            for a in mappable_areas(host, &bar, msix) {
                let mapping = host.map_region(u32::from(bar.index.0), a).map_err(RegionsError::MmapArea)?;
                areas.push(Area { bar: bar.index, offset: a.offset, mapping, slot: None });
            }
        }
        Ok(Self { bdf: host.bdf().to_string(), areas })
    }

    /// (BAR, offset, size) of every mmapped area.
    pub fn areas(&self) -> Vec<(BarIndex, u64, u64)> {
        self.areas.iter().map(|a| (a.bar, a.offset, a.mapping.size())).collect()
    }

    /// Number of areas currently visible to the guest.
    pub fn mapped_count(&self) -> usize {
        self.areas.iter().filter(|a| a.slot.is_some()).count()
    }

    /// Maps every area of `bar` into the guest with the BAR at `bar_addr`.
    pub fn map_bar(&mut self, slots: &mut dyn MemorySlots, bar: BarIndex, bar_addr: u64) -> Result<(), RegionsError> {
        for a in self.areas.iter_mut().filter(|a| a.bar == bar && a.slot.is_none()) {
            let gpa = bar_addr.wrapping_add(a.offset);
            let size = a.mapping.size();
            let id = slots.map_slot(gpa, size, a.mapping.host_addr() as u64).map_err(|source| {
                RegionsError::MapSlot { bdf: self.bdf.clone(), bar: bar.0, offset: a.offset, size, gpa, source }
            })?;
            a.slot = Some((id, gpa));
        }
        Ok(())
    }

    /// Removes `bar`'s areas from the guest (decode off, before a move, teardown).
    pub fn unmap_bar(&mut self, slots: &mut dyn MemorySlots, bar: BarIndex) {
        for a in self.areas.iter_mut().filter(|a| a.bar == bar) {
            if let Some((id, gpa)) = a.slot.take() {
                if let Err(e) = slots.unmap_slot(id) {
                    log::error!("{}: removing BAR{} slot at {gpa:#x}: {e}", self.bdf, bar.0);
                }
            }
        }
    }

    pub fn unmap_all(&mut self, slots: &mut dyn MemorySlots) {
        let bars: Vec<BarIndex> = self.areas.iter().map(|a| a.bar).collect();
        for b in bars {
            self.unmap_bar(slots, b);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::{sample_config, sample_sizes};
    use crate::config::{RomOptions, VirtConfig};
    use crate::host::FakeHost;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct FakeSlots {
        pub next: u32,
        pub live: BTreeMap<u32, (u64, u64)>,
    }

    impl MemorySlots for FakeSlots {
        fn map_slot(&mut self, gpa: u64, size: u64, _host_addr: u64) -> std::io::Result<u32> {
            self.next += 1;
            self.live.insert(self.next, (gpa, size));
            Ok(self.next)
        }
        fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()> {
            self.live.remove(&slot).map(|_| ()).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))
        }
    }

    #[test]
    fn msix_pages_are_carved_out() {
        let host = FakeHost::new(&sample_config(), sample_sizes(), [1, 8, 4]);
        let cfg = VirtConfig::new("t", &sample_config(), sample_sizes(), RomOptions::default()).unwrap();
        let bar0 = cfg.bar_info(BarIndex(0)).unwrap();
        let areas = mappable_areas(&host, &bar0, cfg.msix_info());
        // 16 KiB BAR, table page 0x2000 and PBA page 0x3000 trapped.
        assert_eq!(areas, vec![MmapArea { offset: 0, size: 0x2000 }]);
        let mut m = BarMappings::new(&host, cfg.bar_infos(), cfg.msix_info()).unwrap();
        let mut slots = FakeSlots::default();
        m.map_bar(&mut slots, BarIndex(0), 0xe000_0000).unwrap();
        assert_eq!(slots.live.values().copied().collect::<Vec<_>>(), vec![(0xe000_0000, 0x2000)]);
        m.unmap_bar(&mut slots, BarIndex(0));
        assert!(slots.live.is_empty());
        assert_eq!(m.mapped_count(), 0);
    }

    #[test]
    fn carve_middle_and_edges() {
        let a = vec![MmapArea { offset: 0, size: 0x10000 }];
        assert_eq!(
            carve(a.clone(), 0x4010, 0x4020),
            vec![MmapArea { offset: 0, size: 0x4000 }, MmapArea { offset: 0x5000, size: 0xb000 }]
        );
        assert_eq!(carve(a.clone(), 0, 0x10000), vec![]);
        assert_eq!(carve(a, 0x20000, 0x30000), vec![MmapArea { offset: 0, size: 0x10000 }]);
    }
}
