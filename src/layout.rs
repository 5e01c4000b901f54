//! The guest physical address map, in one place. Every other module asks here where things go.
//!
//! ```text
//! 0x0000_0000 ..  0x0009_fc00  RAM (real-mode area; boot structures live here)
//! 0x0009_fc00 ..  0x0010_0000  reserved (EBDA, VGA hole, BIOS area: ACPI tables at 0xe0000)
//! 0x0010_0000 ..  LOW_RAM_END   RAM (kernel, initramfs at the top)
//! 0xc000_0000 ..  0xe000_0000  32-bit PCI MMIO window (BARs below 4 GiB)
//! 0xe000_0000 ..  0xf000_0000  PCIe ECAM (segment 0, room for buses 0..=255; MCFG advertises
//!                               only the buses in use)
//! 0xfec0_0000                  IOAPIC
//! 0xfee0_0000                  LAPIC
//! 0x1_0000_0000 .. +rest        RAM above 4 GiB (when the guest has more than 3 GiB)
//! after RAM, 1 GiB aligned      64-bit PCI MMIO window (large / prefetchable BARs)
//! ```
//!
//! Booting through firmware (`--firmware`) the map is QEMU's q35 one, which SeaBIOS and
//! OVMF are built for: RAM below 4 GiB ends at 2 GiB (or at 2.75 GiB for smaller guests),
//! the firmware places ECAM (at 0xb000_0000, both do) and the PCI windows itself, and the
//! firmware image sits at the top of 4 GiB:
//!
//! ```text
//! 0x0000_0000 .. low end        RAM (0xe_0000 .. 0x10_0000 starts as a copy of the
//!                               image's last 128 KiB: the BIOS entry a real-mode CPU needs)
//! low end .. 0xfec0_0000        firmware-assigned PCI MMIO, ECAM, ...
//! 0xfeff_c000 .. 0xff00_0000    KVM's real-mode TSS and identity map (reserved)
//! 4 GiB - image .. 4 GiB        the firmware image (code read-only, variables as flash)
//! ```

/// One gibibyte, for readability.
pub const GIB: u64 = 1 << 30;

/// End of conventional low memory; the EBDA and BIOS area follow.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of "high" memory in the Linux boot protocol sense (the kernel loads here or above).
pub const HIGH_RAM_START: u64 = 0x10_0000;

// Boot structures in low RAM (below EBDA_START).
pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` and its memory map follow each other here.
pub const PVH_INFO_START: u64 = 0x6000;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
/// Four page directories (2 MiB pages) identity-map the first 4 GiB.
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 4096;

/// ACPI tables live in the BIOS area, where Linux also scans for the RSDP.
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = RESET_VECTOR;
/// Where an x86 CPU starts after reset (F000:FFF0), and where Linux's BIOS reboot method
/// jumps: we put a tiny reset stub there (see `boot::reset_vector`).
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// The 32-bit hole for MMIO starts here; RAM beyond this goes above 4 GiB.
pub const MEM_32BIT_HOLE_START: u64 = 0xc000_0000;
pub const MEM_32BIT_HOLE_END: u64 = 1 << 32;

pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;

pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// The last bus the ECAM window decodes (and reserves in E820); MCFG and the host bridge's
/// `_CRS` advertise only up to the topology's last bus (`PciSegment::last_bus`).
pub const PCI_ECAM_LAST_BUS: u8 = 0xff;

pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;

/// PCI I/O port window handed to the root complex (everything above the legacy ISA ports).
pub const PCI_IO_START: u16 = 0x1000;
pub const PCI_IO_END: u16 = 0xffff;

// Legacy port I/O devices.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_GSI: u32 = 4;
pub const I8042_PORT: u64 = 0x60;
pub const I8042_LEN: u64 = 5;
pub const CMOS_PORT: u64 = 0x70;
pub const CMOS_LEN: u64 = 2;
/// ACPI sleep control / status and reset registers (hardware-reduced ACPI, one byte).
pub const ACPI_SLEEP_CONTROL_PORT: u64 = 0x600;
pub const ACPI_RESET_VALUE: u8 = 1;
/// The Generic Event Device's event register (one byte, see `devices::ged`) and its
/// interrupt, an ISA line no other device uses. The port lies past the 128-byte ICH9 PM
/// block that firmware places at 0x600 on the q35 platform.
pub const GED_PORT: u64 = 0x680;
pub const GED_GSI: u32 = 5;
pub const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
pub const PCI_CONFIG_IO_LEN: u64 = 8;

/// The S5 (soft-off) sleep type announced by the DSDT's `_S5_` package.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;

/// Guest RAM regions `(start, size)` for `ram_size` bytes (direct boot): below the 32-bit
/// hole first, the rest from 4 GiB up.
pub fn ram_regions(ram_size: u64) -> Vec<(u64, u64)> {
    RamLayout::direct(ram_size).regions()
}

/// The end (exclusive) of RAM below the 32-bit hole (direct boot).
pub fn low_ram_end(ram_size: u64) -> u64 {
    RamLayout::direct(ram_size).low_end
}

/// Firmware boot: RAM below 4 GiB ends here for guests of at least
/// [`FIRMWARE_LOW_RAM_MAX`] bytes (QEMU's q35 rule, which keeps 1 GiB-aligned RAM above).
pub const FIRMWARE_LOW_RAM_LARGE: u64 = 0x8000_0000;
/// Firmware boot: the most RAM below 4 GiB, where SeaBIOS and OVMF put ECAM.
pub const FIRMWARE_LOW_RAM_MAX: u64 = 0xb000_0000;
/// Firmware boot: the 32-bit PCI windows firmware may use end at the IOAPIC.
pub const FIRMWARE_MMIO32_END: u64 = IOAPIC_START;
/// The legacy BIOS segment a real-mode reset enters (F000:FFF0 after the first far jump)
/// and the BIOS extension area below it: 128 KiB copied from the top of the image.
pub const BIOS_ALIAS_START: u64 = 0xe_0000;
pub const BIOS_ALIAS_SIZE: u64 = 0x2_0000;
/// The largest firmware image: it must end at 4 GiB and stay above the KVM pages.
pub const FIRMWARE_MAX_SIZE: u64 = 16 << 20;
/// KVM's identity page table (one page) and real-mode TSS (three pages) on Intel hosts,
/// where QEMU puts them: outside every PCI window and below the firmware image.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfeff_c000;
pub const KVM_TSS_START: u64 = KVM_IDENTITY_MAP_START + 0x1000;
pub const KVM_PRIVATE_SIZE: u64 = 0x4000;

/// RAM below and above 4 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    pub low_end: u64,
    pub high_size: u64,
}

impl RamLayout {
    /// Direct kernel boot: RAM up to the 32-bit hole at 3 GiB.
    pub fn direct(ram_size: u64) -> Self {
        let low_end = ram_size.min(MEM_32BIT_HOLE_START);
        Self { low_end, high_size: ram_size - low_end }
    }

    /// Boot through firmware: QEMU's q35 split.
    pub fn firmware(ram_size: u64) -> Self {
        let limit = if ram_size >= FIRMWARE_LOW_RAM_MAX { FIRMWARE_LOW_RAM_LARGE } else { FIRMWARE_LOW_RAM_MAX };
        let low_end = ram_size.min(limit);
        Self { low_end, high_size: ram_size - low_end }
    }

    /// The RAM regions `(start, size)`.
    pub fn regions(&self) -> Vec<(u64, u64)> {
        let mut r = vec![(0, self.low_end)];
        if self.high_size > 0 {
            r.push((MEM_32BIT_HOLE_END, self.high_size));
        }
        r
    }

    /// The 64-bit MMIO window starts after the last RAM byte, aligned to 1 GiB, never below
    /// 4 GiB.
    pub fn mmio64_start(&self) -> u64 {
        (MEM_32BIT_HOLE_END + self.high_size).next_multiple_of(GIB)
    }

    /// The 64-bit MMIO window: from [`Self::mmio64_start`] to the top of what the guest CPU
    /// can address with `phys_bits` (CPUID 0x8000_0008 EAX[7:0]; capped at 2^48 by pci's
    /// `mmio64_window`). BARs are allocated from its bottom up, so a large window costs
    /// nothing; with 39 or more physical address bits it holds a naturally aligned 64 GiB BAR.
    pub fn mmio64_window(&self, phys_bits: u8) -> pci::bridge::Window {
        pci::allocator::mmio64_window(self.mmio64_start(), phys_bits)
    }
}

/// Firmware boot: the 32-bit ranges firmware may give BARs and bridge windows, as the host
/// bridge's `_CRS` must describe them: from the end of low RAM to the IOAPIC, less the
/// ECAM window the firmware placed there (SeaBIOS allocates from 0xc000_0000, OVMF from
/// 2 GiB or the end of the ECAM).
pub fn firmware_mmio32_windows(low_ram_end: u64, ecam: Option<pci::bridge::Window>) -> Vec<pci::bridge::Window> {
    use pci::bridge::Window;
    let start = low_ram_end.next_multiple_of(1 << 20);
    let end = FIRMWARE_MMIO32_END;
    let mut out = Vec::new();
    let mut push = |from: u64, to: u64| {
        if from < to {
            out.push(Window { base: from, size: to - from });
        }
    };
    match ecam.filter(|e| e.base < end && e.end() > start) {
        Some(e) => {
            push(start, e.base);
            push(e.end().max(start), end);
        }
        None => push(start, end),
    }
    out
}

// The fixed areas must not overlap: checked at compile time.
const _: () = {
    assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= PCI_ECAM_START);
    assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
    assert!(MEM_32BIT_HOLE_START <= PCI_MMIO32_START);
    assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(ACPI_END <= RESET_VECTOR && RESET_VECTOR + 16 <= HIGH_RAM_START);
    assert!(FIRMWARE_LOW_RAM_MAX <= MEM_32BIT_HOLE_END && FIRMWARE_MMIO32_END <= LAPIC_START);
    assert!(LAPIC_START + 0x10_0000 <= KVM_IDENTITY_MAP_START);
    assert!(KVM_IDENTITY_MAP_START + KVM_PRIVATE_SIZE <= MEM_32BIT_HOLE_END - FIRMWARE_MAX_SIZE);
    assert!(BIOS_ALIAS_START + BIOS_ALIAS_SIZE == HIGH_RAM_START);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(RamLayout::direct(256 << 20).mmio64_start(), 4 * GIB);
        let w = RamLayout::direct(256 << 20).mmio64_window(40);
        assert_eq!((w.base, w.base + w.size), (4 * GIB, 1 << 40));
    }

    const PCI_MMIO64_MAX_BAR: u64 = 64 * GIB;

    #[test]
    fn the_64bit_window_holds_an_aligned_max_bar_with_39_or_more_phys_bits() {
        for bits in [39u8, 40, 46, 48, 52] {
            for ram in [64 << 20, 3 * GIB, 4 * GIB, 61 * GIB, 64 * GIB, 200 * GIB] {
                let w = RamLayout::direct(ram).mmio64_window(bits);
                let block = w.base.next_multiple_of(PCI_MMIO64_MAX_BAR);
                assert!(block + PCI_MMIO64_MAX_BAR <= w.base + w.size, "ram {ram:#x}, {bits} bits");
            }
        }
        // Too few address bits for RAM and a window: an empty window, not an overflow.
        assert_eq!(RamLayout::direct(64 * GIB).mmio64_window(36).size, 0);
    }

    #[test]
    fn firmware_layout_is_qemus_q35() {
        assert_eq!(RamLayout::firmware(256 << 20).regions(), vec![(0, 256 << 20)]);
        assert_eq!(RamLayout::firmware(0xb000_0000 - 4096).regions(), vec![(0, 0xb000_0000 - 4096)]);
        let big = RamLayout::firmware(4 * GIB);
        assert_eq!(big.regions(), vec![(0, 2 * GIB), (4 * GIB, 2 * GIB)]);
        assert_eq!(big.mmio64_start(), 6 * GIB);
        let ecam = pci::bridge::Window { base: 0xb000_0000, size: 256 << 20 };
        let w = firmware_mmio32_windows(256 << 20, Some(ecam));
        assert_eq!(
            w.iter().map(|w| (w.base, w.end())).collect::<Vec<_>>(),
            vec![(256 << 20, 0xb000_0000), (0xc000_0000, FIRMWARE_MMIO32_END)]
        );
        // ECAM right at the end of RAM, or not enabled yet.
        let w = firmware_mmio32_windows(0xb000_0000, Some(ecam));
        assert_eq!(w.iter().map(|w| (w.base, w.end())).collect::<Vec<_>>(), vec![(0xc000_0000, FIRMWARE_MMIO32_END)]);
        let w = firmware_mmio32_windows(2 * GIB, None);
        assert_eq!(w.iter().map(|w| (w.base, w.end())).collect::<Vec<_>>(), vec![(2 * GIB, FIRMWARE_MMIO32_END)]);
    }

    #[test]
    fn large_ram_splits_around_the_hole() {
        let r = ram_regions(4 * GIB);
        assert_eq!(r, vec![(0, 3 * GIB), (4 * GIB, GIB)]);
        assert_eq!(RamLayout::direct(4 * GIB).mmio64_start(), 5 * GIB);
        assert_eq!(low_ram_end(4 * GIB), 3 * GIB);
    }
}
