//! Base address registers: the sizing protocol, guest relocation and the expansion ROM.
//!
//! Relocations are reported, never executed: [`Bars::take_moves`] returns a [`BarMove`] for
//! each BAR whose decoded address changed while its decode is enabled, so a half-written
//! 64-bit BAR (Linux turns memory decode off while it rewrites one, see
//! `pci_std_update_resource`) or a sizing probe never reaches the bus.

use crate::config_space::HeaderType;
use crate::device::{BarIndex, BarKind, BarMove, BarRegion};

/// Register dword of BAR 0; BARs follow consecutively.
pub const REG_BAR0: usize = 4;
pub const REG_ROM_ENDPOINT: usize = 12;
pub const REG_ROM_BRIDGE: usize = 14;

const IO_FLAG: u32 = 0x1;
const MEM64_FLAG: u32 = 0x4;
const PREFETCH_FLAG: u32 = 0x8;
const ROM_ENABLE: u32 = 0x1;
/// Minimum sizes: 16 B memory (PCI 3.0 6.2.5.1), 4 B I/O, 2 KiB ROM.
const MIN_MEM: u64 = 16;
const MIN_IO: u64 = 4;
const MIN_ROM: u64 = 2048;
/// x86 port I/O is 16-bit; an I/O BAR above 256 B is not allowed by the spec.
const MAX_IO: u64 = 256;
const MAX_MEM32: u64 = 1 << 31;
const MAX_ROM: u64 = 1 << 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarError {
    #[error("BAR {index:?} size {size:#x} is not a power of two within {min:#x}..={max:#x} for {kind:?}")]
    AddBar { index: BarIndex, kind: BarKind, size: u64, min: u64, max: u64 },
    #[error(
        "BAR {index:?} does not exist (or a 64-bit BAR would run past the last BAR register) in this {header:?} header"
    )]
    NoSuchBar { index: BarIndex, header: HeaderType },
    #[error("BAR {index:?} overlaps a BAR already defined in the same registers")]
    RegisterInUse { index: BarIndex },
    #[error("BAR {index:?} is not defined")]
    Undefined { index: BarIndex },
    #[error("address {addr:#x} is not naturally aligned for BAR {index:?} of size {size:#x}")]
    Unaligned { index: BarIndex, addr: u64, size: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bar {
    kind: BarKind,
    size: u64,
    /// The address the registers currently decode to.
    addr: u64,
    /// Where the owner has the BAR on its bus (last reported position).
    mapped: u64,
}

impl Bar {
    fn mask(&self) -> u64 {
        !(self.size - 1)
    }

    /// The highest address bits the registers implement.
    fn addr_bits(&self) -> u64 {
        match self.kind {
            BarKind::Io => 0xffff,
            BarKind::Mem32 { .. } | BarKind::Rom => 0xffff_ffff,
            BarKind::Mem64 { .. } => u64::MAX,
        }
    }

    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => IO_FLAG,
            BarKind::Mem32 { prefetchable } => (prefetchable as u32) * PREFETCH_FLAG,
            BarKind::Mem64 { prefetchable } => MEM64_FLAG | ((prefetchable as u32) * PREFETCH_FLAG),
            BarKind::Rom => 0,
        }
    }

    /// True while the registers hold the all-ones sizing pattern rather than an address.
    fn is_sizing(&self) -> bool {
        let all = self.addr_bits() & self.mask();
        match self.kind {
            BarKind::Mem64 { .. } => {
                // A half with no address bits (a BAR of 4 GiB or more has none in its low
                // dword) says nothing about sizing.
                let (low, high) = (all as u32, (all >> 32) as u32);
                (low != 0 && self.addr as u32 == low) || (self.addr >> 32) as u32 == high
            }
            _ => self.addr == all,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Unused,
    Bar(Bar),
    /// The upper dword of the 64-bit BAR in the slot before.
    Upper,
}

/// The BAR registers of one function.
#[derive(Clone, Debug)]
pub struct Bars {
    header: HeaderType,
    slots: [Slot; 6],
    rom: Option<Bar>,
    rom_enable: bool,
}

impl Bars {
    pub fn new(header: HeaderType) -> Self {
        Self { header, slots: [Slot::Unused; 6], rom: None, rom_enable: false }
    }

    fn bar_count(&self) -> usize {
        match self.header {
            HeaderType::Endpoint => 6,
            HeaderType::Bridge => 2,
        }
    }

    fn rom_reg(&self) -> usize {
        match self.header {
            HeaderType::Endpoint => REG_ROM_ENDPOINT,
            HeaderType::Bridge => REG_ROM_BRIDGE,
        }
    }

    /// Whether config dword `reg` is a BAR or ROM register (routed here by the function).
    pub fn is_bar_reg(&self, reg: usize) -> bool {
        (REG_BAR0..REG_BAR0 + self.bar_count()).contains(&reg) || reg == self.rom_reg()
    }

    /// Defines a BAR. Sizes are powers of two; a 64-bit BAR also takes the next register.
    pub fn add(&mut self, index: BarIndex, kind: BarKind, size: u64) -> Result<(), BarError> {
        let (min, max) = match kind {
            BarKind::Io => (MIN_IO, MAX_IO),
            BarKind::Mem32 { .. } => (MIN_MEM, MAX_MEM32),
            BarKind::Mem64 { .. } => (MIN_MEM, 1 << 63),
            BarKind::Rom => (MIN_ROM, MAX_ROM),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(BarError::AddBar { index, kind, size, min, max });
        }
        let bar = Bar { kind, size, addr: 0, mapped: 0 };
        let no_such = BarError::NoSuchBar { index, header: self.header };
        if kind == BarKind::Rom || index == BarIndex::ROM {
            if kind != BarKind::Rom || index != BarIndex::ROM {
                return Err(no_such);
            }
            if self.rom.is_some() {
                return Err(BarError::RegisterInUse { index });
            }
            self.rom = Some(bar);
            return Ok(());
        }
        let i = usize::from(index.0);
        let wide = matches!(kind, BarKind::Mem64 { .. });
        let last = i + usize::from(wide);
        if last >= self.bar_count() {
            return Err(no_such);
        }
        if self.slots[i..=last].iter().any(|s| *s != Slot::Unused) {
            return Err(BarError::RegisterInUse { index });
        }
        self.slots[i] = Slot::Bar(bar);
        if wide {
            self.slots[last] = Slot::Upper;
        }
        Ok(())
    }

    fn bar(&self, index: BarIndex) -> Option<&Bar> {
        if index == BarIndex::ROM {
            return self.rom.as_ref();
        }
        match self.slots.get(usize::from(index.0)) {
            Some(Slot::Bar(b)) => Some(b),
            _ => None,
        }
    }

    fn bar_mut(&mut self, index: BarIndex) -> Option<&mut Bar> {
        if index == BarIndex::ROM {
            return self.rom.as_mut();
        }
        match self.slots.get_mut(usize::from(index.0)) {
            Some(Slot::Bar(b)) => Some(b),
            _ => None,
        }
    }

    /// Firmware-time placement: programs the registers and records the BAR as mapped
    /// there, so no move is reported for it.
    pub fn place(&mut self, index: BarIndex, addr: u64) -> Result<(), BarError> {
        let bar = self.bar_mut(index).ok_or(BarError::Undefined { index })?;
        if addr & (bar.size - 1) != 0 || addr & !bar.addr_bits() != 0 {
            return Err(BarError::Unaligned { index, addr, size: bar.size });
        }
        bar.addr = addr;
        bar.mapped = addr;
        Ok(())
    }

    /// The guest-visible value of BAR/ROM register `reg`.
    pub fn read_reg(&self, reg: usize) -> u32 {
        if reg == self.rom_reg() {
            return match &self.rom {
                Some(b) => (b.addr & b.mask()) as u32 | ((self.rom_enable as u32) * ROM_ENABLE),
                None => 0,
            };
        }
        let Some(i) = reg.checked_sub(REG_BAR0).filter(|i| *i < self.bar_count()) else {
            return 0;
        };
        match self.slots[i] {
            Slot::Unused => 0,
            Slot::Bar(b) => ((b.addr & b.mask() & b.addr_bits()) as u32) | b.flags(),
            Slot::Upper => match i.checked_sub(1).map(|p| self.slots[p]) {
                Some(Slot::Bar(b)) => ((b.addr & b.mask()) >> 32) as u32,
                _ => 0,
            },
        }
    }

    /// A guest write to BAR/ROM register `reg`: address bits below the size and the flag
    /// bits are read-only, which is what makes the all-ones sizing probe work.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some((value, bytes)) = crate::config_space::merge_bytes(offset, data) else {
            return;
        };
        let old = self.read_reg(reg);
        let merged = (old & !bytes) | (value & bytes);
        if reg == self.rom_reg() {
            if let Some(b) = self.rom.as_mut() {
                b.addr = u64::from(merged) & b.mask() & 0xffff_f800;
                self.rom_enable = merged & ROM_ENABLE != 0;
            }
            return;
        }
        let Some(i) = reg.checked_sub(REG_BAR0).filter(|i| *i < self.bar_count()) else {
            return;
        };
        match self.slots[i] {
            Slot::Unused => {}
            Slot::Bar(mut b) => {
                let flag_bits: u64 = if b.kind == BarKind::Io { 0x3 } else { 0xf };
                let low = u64::from(merged) & b.mask() & b.addr_bits() & 0xffff_ffff & !flag_bits;
                b.addr = (b.addr & !0xffff_ffff) | low;
                self.slots[i] = Slot::Bar(b);
            }
            Slot::Upper => {
                if let Some(Slot::Bar(mut b)) = i.checked_sub(1).map(|p| self.slots[p]) {
                    let high = (u64::from(merged) << 32) & b.mask();
                    b.addr = (b.addr & 0xffff_ffff) | high;
                    self.slots[i - 1] = Slot::Bar(b);
                }
            }
        }
    }

    fn all_mut(&mut self) -> impl Iterator<Item = (BarIndex, &mut Bar)> {
        let rom = self.rom.as_mut().map(|b| (BarIndex::ROM, b));
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Bar(b) => Some((BarIndex(i as u8), b)),
                _ => None,
            })
            .chain(rom)
    }

    /// The moves to make now, given the command register's decode bits: every decoded BAR
    /// whose registers hold a real address different from where it is mapped. The BARs
    /// are then considered mapped at their new addresses.
    pub fn take_moves(&mut self, mem_decode: bool, io_decode: bool) -> Vec<BarMove> {
        let mut moves = Vec::new();
        for (index, bar) in self.all_mut() {
            let decoded = if bar.kind == BarKind::Io { io_decode } else { mem_decode };
            if decoded && bar.addr != bar.mapped && !bar.is_sizing() {
                moves.push(BarMove { index, kind: bar.kind, old_addr: bar.mapped, new_addr: bar.addr, size: bar.size });
                bar.mapped = bar.addr;
            }
        }
        moves
    }

    /// Every defined BAR at the address where it is mapped.
    pub fn regions(&self) -> Vec<BarRegion> {
        let rom = self.rom.map(|b| (BarIndex::ROM, b));
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Bar(b) => Some((BarIndex(i as u8), *b)),
                _ => None,
            })
            .chain(rom)
            .map(|(index, b)| BarRegion { index, kind: b.kind, addr: b.mapped, size: b.size })
            .collect()
    }

    pub fn size(&self, index: BarIndex) -> Option<u64> {
        self.bar(index).map(|b| b.size)
    }

    pub fn kind(&self, index: BarIndex) -> Option<BarKind> {
        self.bar(index).map(|b| b.kind)
    }

    pub fn rom_enabled(&self) -> bool {
        self.rom_enable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem64(pf: bool) -> BarKind {
        BarKind::Mem64 { prefetchable: pf }
    }

    fn write32(bars: &mut Bars, reg: usize, v: u32) {
        bars.write_reg(reg, 0, &v.to_le_bytes());
    }

    #[test]
    fn sizing_protocol_32bit_io_rom() {
        let mut bars = Bars::new(HeaderType::Endpoint);
        bars.add(BarIndex(0), BarKind::Mem32 { prefetchable: false }, 0x4000).unwrap();
        bars.add(BarIndex(1), BarKind::Io, 0x20).unwrap();
        bars.add(BarIndex(2), BarKind::Mem32 { prefetchable: true }, 0x100).unwrap();
        bars.add(BarIndex::ROM, BarKind::Rom, 0x10000).unwrap();
        for reg in [4, 5, 6, 12] {
            write32(&mut bars, reg, u32::MAX);
        }
        assert_eq!(bars.read_reg(4), 0xffff_c000);
        assert_eq!(bars.read_reg(5), 0x0000_ffe1);
        assert_eq!(bars.read_reg(6), 0xffff_ff08);
        assert_eq!(bars.read_reg(12), 0xffff_0001);
        assert_eq!(bars.read_reg(7), 0, "unused BAR reads 0");
        write32(&mut bars, 4, 0xc000_1234);
        assert_eq!(bars.read_reg(4), 0xc000_0000);
        write32(&mut bars, 12, 0xc001_0000);
        assert_eq!(bars.read_reg(12), 0xc001_0000);
        assert!(!bars.rom_enabled());
    }

    #[test]
    fn sizing_protocol_64bit_large() {
        let mut bars = Bars::new(HeaderType::Endpoint);
        bars.add(BarIndex(2), mem64(true), 64 << 30).unwrap();
        write32(&mut bars, 6, u32::MAX);
        write32(&mut bars, 7, u32::MAX);
        assert_eq!(bars.read_reg(6), 0x0000_000c);
        assert_eq!(bars.read_reg(7), 0xffff_fff0, "64 GiB: low 36 bits are size");
        write32(&mut bars, 6, 0);
        write32(&mut bars, 7, 0x10);
        assert_eq!(bars.regions()[0].size, 64 << 30);
        let moves = bars.take_moves(true, false);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].new_addr, 0x10_0000_0000);
    }

    #[test]
    fn sub_dword_writes() {
        let mut bars = Bars::new(HeaderType::Endpoint);
        bars.add(BarIndex(0), BarKind::Mem32 { prefetchable: false }, 0x1000).unwrap();
        bars.write_reg(4, 2, &[0x34, 0x12]);
        bars.write_reg(4, 1, &[0xff]);
        assert_eq!(bars.read_reg(4), 0x1234_f000);
        bars.write_reg(4, 3, &[1, 2]);
        assert_eq!(bars.read_reg(4), 0x1234_f000, "straddling write dropped");
    }

    #[test]
    fn moves_only_with_decode_and_never_while_sizing() {
        let mut bars = Bars::new(HeaderType::Endpoint);
        bars.add(BarIndex(0), mem64(false), 0x4000).unwrap();
        bars.add(BarIndex(2), BarKind::Io, 0x10).unwrap();
        bars.place(BarIndex(0), 0xc000_0000).unwrap();
        bars.place(BarIndex(2), 0x1000).unwrap();
        assert!(bars.take_moves(true, true).is_empty(), "placement is not a move");
        write32(&mut bars, 4, u32::MAX);
        write32(&mut bars, 5, u32::MAX);
        assert!(bars.take_moves(true, true).is_empty(), "sizing pattern never mapped");
        write32(&mut bars, 4, 0xd000_0000);
        write32(&mut bars, 5, 0);
        write32(&mut bars, 6, 0x2000);
        assert!(bars.take_moves(false, false).is_empty(), "decode off");
        let moves = bars.take_moves(true, false);
        assert_eq!(
            moves,
            vec![BarMove {
                index: BarIndex(0),
                kind: mem64(false),
                old_addr: 0xc000_0000,
                new_addr: 0xd000_0000,
                size: 0x4000
            }]
        );
        let io = bars.take_moves(true, true);
        assert_eq!((io.len(), io[0].old_addr, io[0].new_addr), (1, 0x1000, 0x2000));
        assert!(bars.take_moves(true, true).is_empty());
        assert_eq!(bars.regions()[0].addr, 0xd000_0000);
    }

    #[test]
    fn definition_errors() {
        let mut bars = Bars::new(HeaderType::Bridge);
        assert!(matches!(bars.add(BarIndex(0), BarKind::Io, 3), Err(BarError::AddBar { .. })));
        assert!(matches!(bars.add(BarIndex(0), BarKind::Io, 512), Err(BarError::AddBar { .. })));
        assert!(matches!(bars.add(BarIndex(1), mem64(false), 0x1000), Err(BarError::NoSuchBar { .. })));
        assert!(matches!(bars.add(BarIndex(2), BarKind::Io, 4), Err(BarError::NoSuchBar { .. })));
        assert!(matches!(bars.add(BarIndex(0), BarKind::Rom, 0x800), Err(BarError::NoSuchBar { .. })));
        bars.add(BarIndex(0), mem64(false), 0x1000).unwrap();
        assert_eq!(bars.add(BarIndex(1), BarKind::Io, 4), Err(BarError::RegisterInUse { index: BarIndex(1) }));
        assert_eq!(
            bars.place(BarIndex(0), 0x1800),
            Err(BarError::Unaligned { index: BarIndex(0), addr: 0x1800, size: 0x1000 })
        );
        assert_eq!(bars.place(BarIndex(1), 0), Err(BarError::Undefined { index: BarIndex(1) }));
        assert!(bars.is_bar_reg(4) && bars.is_bar_reg(5) && !bars.is_bar_reg(6) && bars.is_bar_reg(14));
    }

    proptest::proptest! {
        /// Whatever the guest writes, a BAR keeps its flag bits and never shows address
        /// bits below its size; and a move is only reported for a decoded, real address.
        #[test]
        fn bar_registers_keep_their_shape(
            writes in proptest::collection::vec((4usize..13, 0u64..4, proptest::collection::vec(proptest::num::u8::ANY, 1..5)), 0..24),
            log2 in 4u32..40, decode in proptest::bool::ANY,
        ) {
            let mut bars = Bars::new(HeaderType::Endpoint);
            bars.add(BarIndex(0), BarKind::Io, 0x40).unwrap();
            bars.add(BarIndex(1), BarKind::Mem32 { prefetchable: true }, 1 << log2.min(31)).unwrap();
            bars.add(BarIndex(2), mem64(true), 1u64 << log2).unwrap();
            bars.add(BarIndex::ROM, BarKind::Rom, 0x8000).unwrap();
            for (reg, off, data) in writes {
                bars.write_reg(reg, off, &data);
                for m in bars.take_moves(decode, decode) {
                    proptest::prop_assert!(decode);
                    proptest::prop_assert_eq!(m.new_addr % m.size, 0);
                }
                proptest::prop_assert_eq!(bars.read_reg(4) & 0x3f, 0x1);
                proptest::prop_assert_eq!(bars.read_reg(5) & 0xf, 0x8);
                let size1 = 1u64 << log2.min(31);
                proptest::prop_assert_eq!(u64::from(bars.read_reg(5)) & (size1 - 1) & !0xf, 0);
                proptest::prop_assert_eq!(bars.read_reg(6) & 0xf, 0xc);
                let size2 = 1u64 << log2;
                let addr2 = u64::from(bars.read_reg(6) & !0xf) | (u64::from(bars.read_reg(7)) << 32);
                proptest::prop_assert_eq!(addr2 & (size2 - 1), 0);
                proptest::prop_assert_eq!(bars.read_reg(12) & 0x7fe, 0);
                proptest::prop_assert_eq!(bars.read_reg(8) | bars.read_reg(9), 0);
            }
        }
    }

    #[test]
    fn io_bar_upper_bits_hardwired() {
        let mut bars = Bars::new(HeaderType::Endpoint);
        bars.add(BarIndex(0), BarKind::Io, 0x100).unwrap();
        write32(&mut bars, 4, 0xffff_ffff);
        assert_eq!(bars.read_reg(4), 0x0000_ff01);
    }
}
