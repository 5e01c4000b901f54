//! MSI-X (PCI 3.0 6.8.2): the capability in config space, and the vector table and pending
//! bit array that live inside a BAR.
//!
//! [`Table`] is pure: a guest access goes in, the route changes come out as an
//! [`MsixChange`]. The assigned-device path and emulated devices share it and apply the
//! change to their [`crate::MsiVectors`].

use super::{touches, CAP_ID_MSIX};
use crate::config_space::{ConfigSpace, ConfigSpaceError};
use crate::device::BarIndex;
use crate::interrupt::{MsiMessage, VectorIndex};

pub const ENTRY_SIZE: u64 = 16;
pub const MAX_VECTORS: u16 = 2048;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;
/// Header, Message Control, Table and PBA offset/BIR.
const CAPABILITY_BYTES: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    #[error("MSI-X supports 1..=2048 vectors, not {0}")]
    VectorCount(u16),
    #[error("MSI-X {what} offset {offset:#x} in BAR {bar:?} is not 8-byte aligned")]
    Unaligned { what: &'static str, bar: BarIndex, offset: u32 },
    #[error("adding the MSI-X capability failed")]
    AddCapability(#[source] ConfigSpaceError),
    #[error("the MSI-X capability at {offset:#x} does not fit in conventional config space")]
    Placement { offset: usize },
}

/// One vector table entry as the guest programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableEntry {
    pub address_lo: u32,
    pub address_hi: u32,
    pub data: u32,
    pub control: u32,
}

impl TableEntry {
    const MASKED: TableEntry = TableEntry { address_lo: 0, address_hi: 0, data: 0, control: ENTRY_MASKED };

    pub fn masked(&self) -> bool {
        self.control & ENTRY_MASKED != 0
    }

    pub fn message(&self) -> MsiMessage {
        MsiMessage { address: u64::from(self.address_lo) | (u64::from(self.address_hi) << 32), data: self.data }
    }

    fn dword(&self, i: usize) -> u32 {
        match i {
            0 => self.address_lo,
            1 => self.address_hi,
            2 => self.data,
            _ => self.control,
        }
    }

    /// Stores a guest dword. Address bits 1:0 and vector control bits 31:1 are reserved
    /// (read as 0).
    fn set_dword(&mut self, i: usize, v: u32) {
        match i {
            0 => self.address_lo = v & !0x3,
            1 => self.address_hi = v,
            2 => self.data = v,
            _ => self.control = v & ENTRY_MASKED,
        }
    }
}

/// Route updates produced by one access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsixChange {
    /// Vectors whose delivery changed: `Some` = deliver this message, `None` = masked.
    pub routes: Vec<(VectorIndex, Option<MsiMessage>)>,
    /// Vectors that became deliverable with their pending bit set: raise them once now
    /// (the pending bit has been cleared).
    pub fire: Vec<VectorIndex>,
}

impl MsixChange {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.fire.is_empty()
    }
}

/// The vector table, PBA and the capability's enable / function-mask state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    entries: Vec<TableEntry>,
    pending: Vec<u64>,
    enabled: bool,
    function_mask: bool,
}

impl Table {
    /// A table of `vectors` entries in their reset state (all masked).
    pub fn new(vectors: u16) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(MsixError::VectorCount(vectors));
        }
        Ok(Self {
            entries: vec![TableEntry::MASKED; usize::from(vectors)],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            enabled: false,
            function_mask: false,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the table occupies in its BAR.
    pub fn table_bytes(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Bytes the PBA occupies (whole qwords).
    pub fn pba_bytes(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    pub fn entry(&self, v: VectorIndex) -> Option<&TableEntry> {
        self.entries.get(usize::from(v.0))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_mask
    }

    /// Where vector `v` is delivered now: `None` when MSI-X is off or the vector is masked.
    pub fn route(&self, v: VectorIndex) -> Option<MsiMessage> {
        let e = self.entry(v)?;
        (self.enabled && !self.function_mask && !e.masked()).then(|| e.message())
    }

    pub fn is_pending(&self, v: VectorIndex) -> bool {
        let i = usize::from(v.0);
        self.pending.get(i / 64).is_some_and(|q| q & (1 << (i % 64)) != 0)
    }

    /// Sets or clears a pending bit (the device side: an assigned device's PBA, or an
    /// emulated device raising a masked vector).
    pub fn set_pending(&mut self, v: VectorIndex, pending: bool) {
        let i = usize::from(v.0);
        if let Some(q) = self.pending.get_mut(i / 64) {
            if pending {
                *q |= 1 << (i % 64);
            } else {
                *q &= !(1 << (i % 64));
            }
        }
    }

    /// The device wants to raise `v`: true when it may be delivered now; otherwise the
    /// pending bit is set and the vector fires when unmasked.
    pub fn notify(&mut self, v: VectorIndex) -> bool {
        if usize::from(v.0) >= self.entries.len() {
            return false;
        }
        if self.route(v).is_some() {
            return true;
        }
        self.set_pending(v, true);
        false
    }

    /// A guest read of the table at byte `offset` (any size up to 8; out of range or
    /// straddling reads return all-ones).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return;
        };
        if data.len() > 8 || end > self.table_bytes() {
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let e = &self.entries[(at / ENTRY_SIZE) as usize];
            *b = (e.dword(((at % ENTRY_SIZE) / 4) as usize) >> ((at % 4) * 8)) as u8;
        }
    }

    /// A guest write to the table at byte `offset`; returns the route changes.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> MsixChange {
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return MsixChange::default();
        };
        if data.is_empty() || data.len() > 8 || end > self.table_bytes() {
            ratelog::debug_limited!("MSI-X table write of {} bytes at {offset:#x} dropped", data.len());
            return MsixChange::default();
        }
        let first = (offset / ENTRY_SIZE) as usize;
        let last = ((end - 1) / ENTRY_SIZE) as usize;
        let before: Vec<_> = (first..=last).map(|v| self.route(VectorIndex(v as u16))).collect();
        for (i, b) in data.iter().enumerate() {
            let at = offset + i as u64;
            let e = &mut self.entries[(at / ENTRY_SIZE) as usize];
            let dw = ((at % ENTRY_SIZE) / 4) as usize;
            let shift = (at % 4) * 8;
            let v = (e.dword(dw) & !(0xff << shift)) | (u32::from(*b) << shift);
            e.set_dword(dw, v);
        }
        let mut change = MsixChange::default();
        for (i, b) in (first..=last).zip(before) {
            self.collect(VectorIndex(i as u16), b, &mut change);
        }
        change
    }

    /// PBA reads (the PBA is read-only; guest writes to it are dropped by the caller).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return;
        };
        if data.len() > 8 || end > self.pba_bytes() {
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset as usize + i;
            *b = (self.pending[at / 8] >> ((at % 8) * 8)) as u8;
        }
    }

    /// The capability's Message Control was written: enable and function mask.
    pub fn set_control(&mut self, enabled: bool, function_mask: bool) -> MsixChange {
        let before: Vec<_> = (0..self.entries.len()).map(|v| self.route(VectorIndex(v as u16))).collect();
        self.enabled = enabled;
        self.function_mask = function_mask;
        let mut change = MsixChange::default();
        for (i, b) in before.into_iter().enumerate() {
            self.collect(VectorIndex(i as u16), b, &mut change);
        }
        change
    }

    fn collect(&mut self, v: VectorIndex, before: Option<MsiMessage>, change: &mut MsixChange) {
        let after = self.route(v);
        if after != before {
            change.routes.push((v, after));
        }
        // PCI 3.0 6.8.2.9: a pending message is sent once the vector is unmasked.
        if before.is_none() && after.is_some() && self.is_pending(v) {
            self.set_pending(v, false);
            change.fire.push(v);
        }
    }
}

/// Where the table and PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixConfig {
    pub vectors: u16,
    pub table_bar: BarIndex,
    pub table_offset: u32,
    pub pba_bar: BarIndex,
    pub pba_offset: u32,
}

impl MsixConfig {
    /// Bytes of the vector table in its BAR.
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.vectors) * ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords).
    pub fn pba_bytes(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// Which MSI-X structure a BAR access of `len` bytes at `offset` of `bar` falls in.
    pub fn locate(&self, bar: BarIndex, offset: u64, len: usize) -> Option<MsixRegion> {
        // Saturating: an access wrapping past 2^64 counts as overlapping whatever lies above
        // its start, so it is dropped rather than passed on.
        let end = offset.saturating_add(len as u64);
        let inside = |b: BarIndex, start: u32, size: u64| {
            let start = u64::from(start);
            (b == bar && offset >= start && end <= start + size).then(|| offset - start)
        };
        let overlaps = |b: BarIndex, start: u32, size: u64| {
            let start = u64::from(start);
            b == bar && offset < start + size && end > start
        };
        let (table, pba) = (self.table_bytes(), self.pba_bytes());
        if let Some(rel) = inside(self.table_bar, self.table_offset, table) {
            return Some(MsixRegion::Table(rel));
        }
        if let Some(rel) = inside(self.pba_bar, self.pba_offset, pba) {
            return Some(MsixRegion::Pba(rel));
        }
        (overlaps(self.table_bar, self.table_offset, table) || overlaps(self.pba_bar, self.pba_offset, pba))
            .then_some(MsixRegion::Straddle)
    }
}

/// Where a BAR access lands relative to the MSI-X table and PBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixRegion {
    /// Inside the vector table, at this offset from its start.
    Table(u64),
    /// Inside the PBA, at this offset from its start.
    Pba(u64),
    /// Partly inside the table or the PBA. Only misaligned accesses can do that (both start
    /// 8-byte aligned and are whole qwords long; the spec allows aligned dword and qword
    /// accesses only): dropped, or read as all-ones, so no byte of it reaches a device's
    /// own table (an assigned device's belongs to the host kernel).
    Straddle,
}

/// The MSI-X capability in config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    offset: usize,
    config: MsixConfig,
}

impl MsixCapability {
    pub fn add(cs: &mut ConfigSpace, config: MsixConfig) -> Result<Self, MsixError> {
        if config.vectors == 0 || config.vectors > MAX_VECTORS {
            return Err(MsixError::VectorCount(config.vectors));
        }
        for (what, bar, offset) in
            [("table", config.table_bar, config.table_offset), ("PBA", config.pba_bar, config.pba_offset)]
        {
            if offset % 8 != 0 {
                return Err(MsixError::Unaligned { what, bar, offset });
            }
        }
        let mut body = [0u8; 10];
        body[..2].copy_from_slice(&(config.vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(config.table_offset | u32::from(config.table_bar.0 & 7)).to_le_bytes());
        body[6..].copy_from_slice(&(config.pba_offset | u32::from(config.pba_bar.0 & 7)).to_le_bytes());
        let offset = cs.add_capability(CAP_ID_MSIX, &body).map_err(MsixError::AddCapability)?;
        cs.set_write_mask(offset / 4, u32::from(CONTROL_ENABLE | CONTROL_FUNCTION_MASK) << 16);
        Ok(Self { offset, config })
    }

    /// The MSI-X capability a function already has at `offset` (an assigned device's, as
    /// its config space holds it): table size, BIRs and offsets are read from it; Message
    /// Control starts as [`Self::add`] leaves it (disabled, unmasked), with the same masks.
    pub fn parse(cs: &mut ConfigSpace, offset: usize) -> Result<Self, MsixError> {
        if offset < 0x40 || offset + CAPABILITY_BYTES > crate::config_space::CONVENTIONAL_DWORDS * 4 {
            return Err(MsixError::Placement { offset });
        }
        let vectors = (cs.word(offset + 2) & 0x7ff) + 1;
        let (table, pba) = (cs.dword(offset + 4), cs.dword(offset + 8));
        let config = MsixConfig {
            vectors,
            table_bar: BarIndex((table & 7) as u8),
            table_offset: table & !7,
            pba_bar: BarIndex((pba & 7) as u8),
            pba_offset: pba & !7,
        };
        cs.set_bytes(offset + 2, &(vectors - 1).to_le_bytes());
        cs.set_write_mask(offset / 4, u32::from(CONTROL_ENABLE | CONTROL_FUNCTION_MASK) << 16);
        Ok(Self { offset, config })
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn config(&self) -> MsixConfig {
        self.config
    }

    /// Whether a write to dword `reg` can change the enable / function mask bits.
    pub fn covers(&self, reg: usize) -> bool {
        touches(self.offset + 2, 2, reg)
    }

    /// (enabled, function masked) as the guest last wrote them.
    pub fn control(&self, cs: &ConfigSpace) -> (bool, bool) {
        let c = cs.word(self.offset + 2);
        (c & CONTROL_ENABLE != 0, c & CONTROL_FUNCTION_MASK != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: MsiMessage = MsiMessage { address: 0xfee0_0000, data: 0x41 };

    fn program(t: &mut Table, v: u16, msg: MsiMessage) -> MsixChange {
        let base = u64::from(v) * ENTRY_SIZE;
        t.write(base, &(msg.address as u32).to_le_bytes());
        t.write(base + 4, &((msg.address >> 32) as u32).to_le_bytes());
        t.write(base + 8, &msg.data.to_le_bytes())
    }

    #[test]
    fn reset_state_all_masked() {
        let t = Table::new(3).unwrap();
        let mut b = [0u8; 4];
        t.read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        t.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        assert_eq!((t.table_bytes(), t.pba_bytes()), (48, 8));
        assert_eq!(Table::new(0), Err(MsixError::VectorCount(0)));
        assert_eq!(Table::new(2049), Err(MsixError::VectorCount(2049)));
        assert!(Table::new(2048).is_ok());
    }

    #[test]
    fn unmask_routes_and_mask_unroutes() {
        let mut t = Table::new(4).unwrap();
        assert!(t.set_control(true, false).is_empty(), "all entries masked");
        assert!(program(&mut t, 2, MSG).is_empty(), "programming a masked entry");
        let c = t.write(2 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(c.routes, vec![(VectorIndex(2), Some(MSG))]);
        assert!(c.fire.is_empty());
        let new = MsiMessage { data: 0x42, ..MSG };
        let c = t.write(2 * 16 + 8, &0x42u32.to_le_bytes());
        assert_eq!(c.routes, vec![(VectorIndex(2), Some(new))], "live retarget");
        let c = t.write(2 * 16 + 12, &[1]);
        assert_eq!(c.routes, vec![(VectorIndex(2), None)]);
    }

    #[test]
    fn function_mask_and_enable_affect_all() {
        let mut t = Table::new(2).unwrap();
        program(&mut t, 0, MSG);
        program(&mut t, 1, MSG);
        t.write(12, &[0]);
        t.write(28, &[0]);
        let c = t.set_control(true, true);
        assert!(c.is_empty(), "function masked");
        let c = t.set_control(true, false);
        assert_eq!(c.routes.len(), 2);
        let c = t.set_control(false, false);
        assert_eq!(c.routes, vec![(VectorIndex(0), None), (VectorIndex(1), None)]);
    }

    #[test]
    fn pending_fires_once_on_unmask() {
        let mut t = Table::new(70).unwrap();
        t.set_control(true, false);
        program(&mut t, 65, MSG);
        assert!(!t.notify(VectorIndex(65)), "masked: becomes pending");
        assert!(!t.notify(VectorIndex(700)));
        let mut b = [0u8; 8];
        t.read_pba(8, &mut b);
        assert_eq!(u64::from_le_bytes(b), 2);
        let c = t.write(65 * 16 + 12, &0u32.to_le_bytes());
        assert_eq!(c.fire, vec![VectorIndex(65)]);
        assert!(!t.is_pending(VectorIndex(65)));
        assert!(t.notify(VectorIndex(65)), "unmasked: deliver now");
        // Pending + function mask: fires when the function mask drops.
        t.set_control(true, true);
        assert!(!t.notify(VectorIndex(65)));
        let c = t.set_control(true, false);
        assert_eq!(c.fire, vec![VectorIndex(65)]);
    }

    #[test]
    fn reserved_bits_and_odd_accesses() {
        let mut t = Table::new(2).unwrap();
        t.write(0, &u32::MAX.to_le_bytes());
        t.write(12, &u32::MAX.to_le_bytes());
        let mut b = [0u8; 4];
        t.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xffff_fffc);
        t.read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1);
        // A qword write across two dwords of one entry, then bytes.
        t.write(16, &0x0000_0001_fee0_0000u64.to_le_bytes());
        assert_eq!(t.entry(VectorIndex(1)).map(|e| e.message().address), Some(0x1_fee0_0000));
        t.write(24, &[0x11]);
        t.write(25, &[0x22]);
        assert_eq!(t.entry(VectorIndex(1)).map(|e| e.data), Some(0x2211));
        // Out of range, oversized, wrapping: ignored, reads all-ones.
        let snapshot = t.clone();
        assert!(t.write(32, &[0]).is_empty());
        assert!(t.write(28, &[0; 8]).is_empty());
        assert!(t.write(u64::MAX, &[0; 2]).is_empty());
        assert!(t.write(0, &[0; 16]).is_empty());
        assert_eq!(t, snapshot);
        let mut q = [0u8; 8];
        t.read(28, &mut q);
        assert_eq!(q, [0xff; 8]);
        t.read_pba(4, &mut q);
        assert_eq!(q, [0xff; 8]);
    }

    #[test]
    fn locate_table_pba_and_straddles() {
        let cfg = MsixConfig {
            vectors: 4,
            table_bar: BarIndex(0),
            table_offset: 0x2000,
            pba_bar: BarIndex(0),
            pba_offset: 0x3000,
        };
        assert_eq!((cfg.table_bytes(), cfg.pba_bytes()), (64, 8));
        assert_eq!(cfg.locate(BarIndex(0), 0x2010, 4), Some(MsixRegion::Table(0x10)));
        assert_eq!(cfg.locate(BarIndex(0), 0x2038, 8), Some(MsixRegion::Table(0x38)));
        assert_eq!(cfg.locate(BarIndex(0), 0x3000, 8), Some(MsixRegion::Pba(0)));
        for (offset, len) in [(0x1ffc, 8), (0x1fff, 2), (0x203c, 8), (0x3007, 2), (0x2ffc, 8), (u64::MAX, 2)] {
            let want = if offset == u64::MAX { None } else { Some(MsixRegion::Straddle) };
            assert_eq!(cfg.locate(BarIndex(0), offset, len), want, "{offset:#x}+{len}");
        }
        assert_eq!(cfg.locate(BarIndex(0), 0x1ffc, 4), None, "just before the table");
        assert_eq!(cfg.locate(BarIndex(0), 0x3008, 2), None, "just after the PBA");
        assert_eq!(cfg.locate(BarIndex(2), 0x2000, 4), None, "another BAR");
        assert_eq!(cfg.locate(BarIndex(0), 0xffff_ffff_ffff_fff0, 0x20), None, "wraps, far from both");
    }

    #[test]
    fn parse_an_existing_capability() {
        use crate::config_space::HeaderType;
        let mut image = vec![0u8; 0x100];
        // 65 vectors, enabled and masked; table in BAR0 at 0x2000, PBA in BAR4 at 0x3000.
        image[0x40..0x4c].copy_from_slice(&[0x11, 0x80, 0x40, 0xc0, 0x00, 0x20, 0, 0, 0x04, 0x30, 0, 0]);
        let mut cs = ConfigSpace::from_image(HeaderType::Endpoint, false, &image);
        let cap = MsixCapability::parse(&mut cs, 0x40).unwrap();
        let cfg = cap.config();
        assert_eq!((cfg.vectors, cfg.table_bar, cfg.table_offset), (65, BarIndex(0), 0x2000));
        assert_eq!((cfg.pba_bar, cfg.pba_offset, cfg.pba_bytes()), (BarIndex(4), 0x3000, 16));
        assert_eq!(cs.read(0x10), 0x0040_8011, "disabled, unmasked");
        cs.write(0x10, 0, &[0xff; 4]);
        assert_eq!(cs.read(0x10), 0xc040_8011);
        assert_eq!(cap.control(&cs), (true, true));
        assert_eq!(MsixCapability::parse(&mut cs, 0xf8), Err(MsixError::Placement { offset: 0xf8 }));
    }

    #[test]
    fn capability_registers() {
        use crate::config_space::{DeviceIds, HeaderType};
        let ids = DeviceIds {
            vendor_id: 1,
            device_id: 2,
            class_code: 0,
            revision: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        let mut cs = ConfigSpace::new(ids, HeaderType::Endpoint, true);
        let cfg = MsixConfig {
            vectors: 5,
            table_bar: BarIndex(2),
            table_offset: 0x2000,
            pba_bar: BarIndex(2),
            pba_offset: 0x3000,
        };
        let cap = MsixCapability::add(&mut cs, cfg).unwrap();
        let o = cap.offset();
        assert_eq!(cs.read(o / 4), 0x0004_0011);
        assert_eq!(cs.read(o / 4 + 1), 0x2002);
        assert_eq!(cs.read(o / 4 + 2), 0x3002);
        cs.write(o / 4, 0, &[0xff; 4]);
        assert_eq!(cs.read(o / 4), 0xc004_0011, "only enable and function mask writable");
        assert_eq!(cap.control(&cs), (true, true));
        cs.write(o / 4 + 1, 0, &[0; 4]);
        assert_eq!(cs.read(o / 4 + 1), 0x2002);
        assert!(cap.covers(o / 4) && !cap.covers(o / 4 + 1));
        let bad = MsixConfig { table_offset: 0x2004, ..cfg };
        assert!(matches!(MsixCapability::add(&mut cs, bad), Err(MsixError::Unaligned { .. })));
    }
}
