//! BAR data paths: the mmappable parts of the device's regions, which the VMM makes guest
//! memory slots (through `pci::BusRelocator`, see `pci::memslots`), so the guest's driver
//! touches device registers without VM exits. The pages holding the MSI-X table and PBA
//! always stay trapped: the table is emulated (its writes become KVM routes). Without VFIO's
//! MSIX_MAPPABLE capability the kernel's sparse areas already leave those pages out; with
//! it, the areas cover the whole BAR and we carve the pages out ourselves. Every part of a
//! BAR that is not mapped is trapped and forwarded by [`crate::device::VfioPciDevice`].

use std::sync::Arc;

use pci::capability::msix::MsixConfig;
use pci::{BarIndex, BarSpec, MmapArea};

use crate::host::{HostDevice, HostError, RegionMapping, SparseArea};

const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RegionsError {
    #[error("mapping a BAR area failed")]
    MmapArea(#[source] HostError),
}

/// One mmapped part of a BAR.
#[derive(Debug)]
struct Area {
    bar: BarIndex,
    /// Offset in the BAR.
    offset: u64,
    /// Shared with the memory slots over it, which keep it mapped while they exist.
    mapping: Arc<RegionMapping>,
}

/// Subtracts the page-aligned span `[start, end)` from each area.
fn carve(areas: Vec<SparseArea>, start: u64, end: u64) -> Vec<SparseArea> {
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
            out.push(SparseArea { offset: a.offset, size: start - a.offset });
        }
        if end < a_end {
            out.push(SparseArea { offset: end, size: a_end - end });
        }
    }
    out
}

/// The parts of BAR `bar` to map: the kernel's sparse areas, page-aligned, without the
/// MSI-X table and PBA pages.
pub fn mappable_areas(host: &dyn HostDevice, bar: &BarSpec, msix: Option<MsixConfig>) -> Vec<SparseArea> {
    let Some(info) = host.region_info(u32::from(bar.index.0)) else { return Vec::new() };
    let mut areas: Vec<SparseArea> = info
        .mmap_areas
        .iter()
        .copied()
        .filter(|a| {
            a.offset % PAGE == 0 && a.size >= PAGE && a.offset.checked_add(a.size).is_some_and(|e| e <= info.size)
        })
        .map(|a| SparseArea { offset: a.offset, size: a.size & !(PAGE - 1) })
        .collect();
    if let Some(m) = msix {
        if m.table_bar == bar.index {
            let start = u64::from(m.table_offset);
            areas = carve(areas, start, start + m.table_bytes());
        }
        if m.pba_bar == bar.index {
            let start = u64::from(m.pba_offset);
            areas = carve(areas, start, start + m.pba_bytes());
        }
    }
    areas
}

/// The mmapped areas of every memory BAR.
#[derive(Debug, Default)]
pub struct BarMappings {
    areas: Vec<Area>,
}

impl BarMappings {
    /// mmaps every mappable area of the memory BARs (not yet visible to the guest).
    pub fn new(
        host: &dyn HostDevice,
        bars: impl Iterator<Item = BarSpec>,
        msix: Option<MsixConfig>,
    ) -> Result<Self, RegionsError> {
        let mut areas = Vec::new();
        for bar in bars {
            if matches!(bar.kind, pci::BarKind::Io | pci::BarKind::Rom) {
                continue;
            }
            for a in mappable_areas(host, &bar, msix) {
                let mapping = host.map_region(u32::from(bar.index.0), a).map_err(RegionsError::MmapArea)?;
                areas.push(Area { bar: bar.index, offset: a.offset, mapping: Arc::new(mapping) });
            }
        }
        Ok(Self { areas })
    }

    /// (BAR, offset, size) of every mmapped area.
    pub fn areas(&self) -> Vec<(BarIndex, u64, u64)> {
        self.areas.iter().map(|a| (a.bar, a.offset, a.mapping.size())).collect()
    }

    /// The areas of `bar`, for memory slots over them.
    pub fn mmap_areas(&self, bar: BarIndex) -> Vec<MmapArea> {
        self.areas
            .iter()
            .filter(|a| a.bar == bar)
            .map(|a| MmapArea {
                offset: a.offset,
                size: a.mapping.size(),
                host_addr: a.mapping.host_addr() as u64,
                mapping: a.mapping.clone(),
            })
            .collect()
    }

    /// Areas something else (a memory slot) still holds: they stay mapped, and so the
    /// device open in the kernel, until it lets go.
    pub fn held_elsewhere(&self) -> usize {
        self.areas.iter().filter(|a| Arc::strong_count(&a.mapping) > 1).count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::{sample_config, sample_sizes};
    use crate::config::{AssignedConfig, RomOptions};
    use crate::host::FakeHost;

    #[test]
    fn msix_pages_are_carved_out() {
        let host = FakeHost::new(&sample_config(), sample_sizes(), [1, 8, 4]);
        let cfg = AssignedConfig::new("t", &sample_config(), sample_sizes(), RomOptions::default()).unwrap();
        let msix = cfg.msix().map(|m| m.config());
        let bar0 = cfg.bar_specs()[0];
        let areas = mappable_areas(&host, &bar0, msix);
        // 16 KiB BAR, table page 0x2000 and PBA page 0x3000 trapped.
        assert_eq!(areas, vec![SparseArea { offset: 0, size: 0x2000 }]);
        let m = BarMappings::new(&host, cfg.bar_specs().into_iter(), msix).unwrap();
        let areas = m.mmap_areas(BarIndex(0));
        assert_eq!(areas.iter().map(|a| (a.offset, a.size)).collect::<Vec<_>>(), vec![(0, 0x2000)]);
        assert!(m.mmap_areas(BarIndex(2)).is_empty(), "I/O BARs are never mapped");
        assert_eq!(m.held_elsewhere(), 1, "the area handed out holds its mapping");
        drop(areas);
        assert_eq!(m.held_elsewhere(), 0);
    }

    #[test]
    fn carve_middle_and_edges() {
        let a = vec![SparseArea { offset: 0, size: 0x10000 }];
        assert_eq!(
            carve(a.clone(), 0x4010, 0x4020),
            vec![SparseArea { offset: 0, size: 0x4000 }, SparseArea { offset: 0x5000, size: 0xb000 }]
        );
        assert_eq!(carve(a.clone(), 0, 0x10000), vec![]);
        assert_eq!(carve(a, 0x20000, 0x30000), vec![SparseArea { offset: 0, size: 0x10000 }]);
    }
}
