//! The guest's physical memory map as firmware would report it (E820 / PVH memmap).

use crate::layout;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM with the legacy BIOS area carved out, and the ECAM window reserved: Linux only trusts
/// an MCFG region that firmware reserved (arch/x86/pci/mmconfig-shared.c, is_mmconf_reserved).
pub fn memory_map(ram_size: u64) -> Vec<E820Entry> {
    let low_end = layout::low_ram_end(ram_size);
    let mut map = vec![
        E820Entry { addr: 0, size: layout::EBDA_START, kind: E820_RAM },
        E820Entry { addr: layout::EBDA_START, size: layout::HIGH_RAM_START - layout::EBDA_START, kind: E820_RESERVED },
        E820Entry { addr: layout::HIGH_RAM_START, size: low_end - layout::HIGH_RAM_START, kind: E820_RAM },
        E820Entry { addr: layout::PCI_ECAM_START, size: layout::PCI_ECAM_SIZE, kind: E820_RESERVED },
        E820Entry { addr: layout::KVM_IDENTITY_MAP_START, size: layout::KVM_PRIVATE_SIZE, kind: E820_RESERVED },
    ];
    for (addr, size) in layout::ram_regions(ram_size).into_iter().skip(1) {
        map.push(E820Entry { addr, size, kind: E820_RAM });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_total_matches_and_entries_are_sorted() {
        for size in [256 << 20, 3 << 30, 5u64 << 30] {
            let map = memory_map(size);
            let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
            // The legacy BIOS area is the only RAM not reported.
            assert_eq!(ram, size - (layout::HIGH_RAM_START - layout::EBDA_START));
            assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
        }
    }
}
