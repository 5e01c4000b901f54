//! A function's configuration space: 256 bytes conventional plus 4 KiB extended (PCIe),
//! with per-bit write masks and write-1-to-clear bits, type 0 and type 1 headers, and
//! capability lists built and walked generically.
//!
//! BAR registers are not kept here: [`crate::bar::Bars`] owns their sizing/relocation rules
//! and the function model routes those dwords there.

use std::collections::HashSet;

/// Dwords in a PCIe function's config space (4 KiB).
pub const CONFIG_SPACE_DWORDS: usize = 1024;
/// Dwords in conventional PCI config space (256 B).
pub const CONVENTIONAL_DWORDS: usize = 64;
/// First byte offset of the extended capability list.
pub const EXTENDED_CAPS_START: usize = 0x100;

pub const REG_ID: usize = 0;
pub const REG_COMMAND_STATUS: usize = 1;
pub const REG_CLASS_REVISION: usize = 2;
pub const REG_BIST_HEADER: usize = 3;
pub const REG_CAPABILITIES_PTR: usize = 13;
pub const REG_INTERRUPT: usize = 15;
/// Type 1: primary / secondary / subordinate bus numbers, secondary latency timer.
pub const REG_BRIDGE_BUSES: usize = 6;
/// Type 1: I/O base, I/O limit, secondary status.
pub const REG_BRIDGE_IO_STATUS: usize = 7;
pub const REG_BRIDGE_MEMORY: usize = 8;
pub const REG_BRIDGE_PREFETCH: usize = 9;
pub const REG_BRIDGE_PREFETCH_BASE_UPPER: usize = 10;
pub const REG_BRIDGE_PREFETCH_LIMIT_UPPER: usize = 11;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_PARITY_RESPONSE: u16 = 1 << 6;
pub const COMMAND_SERR: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a PCIe function implements (PCIe base spec 7.5.1.1); the rest are RO 0.
const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_PARITY_RESPONSE | COMMAND_SERR | COMMAND_INTX_DISABLE;
pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Error bits of the (secondary) status register: master data parity error, signaled /
/// received target abort, received master abort, signaled system error, detected parity
/// error. All write-1-to-clear.
pub const STATUS_ERRORS_RW1C: u16 = 0xf900;

/// Which header layout a function has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderType {
    /// Type 0: an endpoint (six BARs).
    Endpoint,
    /// Type 1: a PCI-to-PCI bridge or PCIe root/downstream port (two BARs, bus numbers and
    /// forwarding windows).
    Bridge,
}

/// The identity of a function as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceIds {
    pub vendor_id: u16,
    pub device_id: u16,
    /// Base class, subclass and programming interface (24 bits).
    pub class_code: u32,
    pub revision: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigSpaceError {
    #[error("capability {id:#x} of {len} bytes does not fit in conventional config space")]
    AddCapability { id: u8, len: usize },
    #[error("extended capability {id:#x} of {len} bytes does not fit in extended config space")]
    AddExtendedCapability { id: u16, len: usize },
    #[error("extended capability {id:#x} needs a PCIe (4 KiB) config space")]
    NoExtendedSpace { id: u16 },
}

/// One entry found while walking a capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityRef {
    pub id: u16,
    /// Byte offset of the capability header.
    pub offset: usize,
    /// Extended capabilities only: the capability version.
    pub version: u8,
}

/// A function's config space registers and their access rules.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: Box<[u32]>,
    write_mask: Box<[u32]>,
    w1c_mask: Box<[u32]>,
    header: HeaderType,
    extended: bool,
    /// Byte offset of the "next" pointer of the last standard capability.
    last_cap_next: Option<usize>,
    next_free_cap: usize,
    last_ext_cap: Option<usize>,
    next_free_ext: usize,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("id", &format_args!("{:#010x}", self.regs[REG_ID]))
            .field("header", &self.header)
            .field("extended", &self.extended)
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A config space with the standard header registers and their masks. `extended`
    /// gives the function the 4 KiB PCIe space (a PCIe function); otherwise offsets at or
    /// above 0x100 read as 0 and ignore writes.
    pub fn new(ids: DeviceIds, header: HeaderType, extended: bool) -> Self {
        let mut cs = Self {
            regs: vec![0; CONFIG_SPACE_DWORDS].into_boxed_slice(),
            write_mask: vec![0; CONFIG_SPACE_DWORDS].into_boxed_slice(),
            w1c_mask: vec![0; CONFIG_SPACE_DWORDS].into_boxed_slice(),
            header,
            extended,
            last_cap_next: None,
            next_free_cap: 0x40,
            last_ext_cap: None,
            next_free_ext: EXTENDED_CAPS_START,
        };
        cs.regs[REG_ID] = u32::from(ids.vendor_id) | (u32::from(ids.device_id) << 16);
        cs.regs[REG_CLASS_REVISION] = u32::from(ids.revision) | ((ids.class_code & 0xff_ffff) << 8);
        cs.write_mask[REG_COMMAND_STATUS] = u32::from(COMMAND_WRITABLE);
        cs.w1c_mask[REG_COMMAND_STATUS] = u32::from(STATUS_ERRORS_RW1C) << 16;
        let header_type: u32 = match header {
            HeaderType::Endpoint => 0,
            HeaderType::Bridge => 1,
        };
        cs.regs[REG_BIST_HEADER] = header_type << 16;
        // Cache line size is read/write storage; the latency timer is RO 0 on PCIe.
        cs.write_mask[REG_BIST_HEADER] = 0xff;
        // Interrupt line is scratch storage for the OS; the pin is set by the device model.
        cs.write_mask[REG_INTERRUPT] = 0xff;
        match header {
            HeaderType::Endpoint => {
                cs.regs[11] = u32::from(ids.subsystem_vendor_id) | (u32::from(ids.subsystem_id) << 16);
            }
            HeaderType::Bridge => {
                cs.write_mask[REG_BRIDGE_BUSES] = 0x00ff_ffff;
                // I/O base/limit: bits 15:12 of the address; the low nibble says 16-bit I/O.
                cs.write_mask[REG_BRIDGE_IO_STATUS] = 0x0000_f0f0;
                cs.w1c_mask[REG_BRIDGE_IO_STATUS] = u32::from(STATUS_ERRORS_RW1C) << 16;
                cs.write_mask[REG_BRIDGE_MEMORY] = 0xfff0_fff0;
                // Prefetchable window: the low nibble 1 advertises 64-bit addressing.
                cs.regs[REG_BRIDGE_PREFETCH] = 0x0001_0001;
                cs.write_mask[REG_BRIDGE_PREFETCH] = 0xfff0_fff0;
                cs.write_mask[REG_BRIDGE_PREFETCH_BASE_UPPER] = u32::MAX;
                cs.write_mask[REG_BRIDGE_PREFETCH_LIMIT_UPPER] = u32::MAX;
                // Bridge control: parity/SERR enable, ISA, VGA, VGA16, master abort mode,
                // secondary bus reset.
                cs.write_mask[REG_INTERRUPT] |= 0x007f << 16;
            }
        }
        cs
    }

    /// A config space holding a device's own registers (`image`: its config bytes, e.g. an
    /// assigned function's as the host reads them; missing bytes read 0), with nothing
    /// writable: the owner sets the masks of the bits it emulates. Capabilities are already
    /// in the image, so [`Self::add_capability`] is not for this kind of space.
    pub fn from_image(header: HeaderType, extended: bool, image: &[u8]) -> Self {
        let mut regs = vec![0u32; CONFIG_SPACE_DWORDS];
        for (r, chunk) in regs.iter_mut().zip(image.chunks(4)) {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            *r = u32::from_le_bytes(b);
        }
        Self {
            regs: regs.into_boxed_slice(),
            write_mask: vec![0; CONFIG_SPACE_DWORDS].into_boxed_slice(),
            w1c_mask: vec![0; CONFIG_SPACE_DWORDS].into_boxed_slice(),
            header,
            extended,
            last_cap_next: None,
            next_free_cap: CONVENTIONAL_DWORDS * 4,
            last_ext_cap: None,
            next_free_ext: CONFIG_SPACE_DWORDS * 4,
        }
    }

    pub fn header(&self) -> HeaderType {
        self.header
    }

    pub fn is_extended(&self) -> bool {
        self.extended
    }

    fn reg_implemented(&self, reg: usize) -> bool {
        reg < CONVENTIONAL_DWORDS || (self.extended && reg < CONFIG_SPACE_DWORDS)
    }

    /// The guest's view of dword `reg`. Out-of-range dwords read as all-ones (no such
    /// register); the unimplemented extended space of a conventional function reads 0.
    pub fn read(&self, reg: usize) -> u32 {
        if reg >= CONFIG_SPACE_DWORDS {
            return u32::MAX;
        }
        if !self.reg_implemented(reg) {
            return 0;
        }
        self.regs[reg]
    }

    /// A guest write of `data` (1..=4 bytes) at byte `offset` inside dword `reg`. Only
    /// writable bits change; write-1-to-clear bits clear where `data` has ones. Malformed
    /// accesses are dropped.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let Some((value, bytes)) = merge_bytes(offset, data) else {
            ratelog::debug_limited!("config write of {} bytes at {reg:#x}+{offset} dropped", data.len());
            return;
        };
        if !self.reg_implemented(reg) {
            return;
        }
        let wmask = self.write_mask[reg] & bytes;
        let clear = self.w1c_mask[reg] & bytes & value;
        self.regs[reg] = ((self.regs[reg] & !wmask) | (value & wmask)) & !clear;
    }

    /// Device-side store of a whole dword, ignoring masks (the model sets RO values).
    pub fn set(&mut self, reg: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(reg) {
            *r = value;
        }
    }

    /// Device-side store of `data` at byte offset `offset`, ignoring masks.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            if let Some(r) = self.regs.get_mut(at / 4) {
                let shift = (at % 4) * 8;
                *r = (*r & !(0xff << shift)) | (u32::from(*b) << shift);
            }
        }
    }

    /// Reads `N` bytes at byte `offset` as the device sees them (little-endian).
    pub fn bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            let at = offset + i;
            if let Some(r) = self.regs.get(at / 4) {
                *o = (r >> ((at % 4) * 8)) as u8;
            }
        }
        out
    }

    pub fn word(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.bytes(offset))
    }

    pub fn dword(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.bytes(offset))
    }

    /// Sets which bits of dword `reg` the guest may write.
    pub fn set_write_mask(&mut self, reg: usize, mask: u32) {
        if let Some(m) = self.write_mask.get_mut(reg) {
            *m = mask;
        }
        if let Some(m) = self.w1c_mask.get_mut(reg) {
            *m &= !mask;
        }
    }

    /// Sets which bits of dword `reg` are write-1-to-clear (they are not plain-writable).
    pub fn set_w1c_mask(&mut self, reg: usize, mask: u32) {
        if let Some(m) = self.w1c_mask.get_mut(reg) {
            *m = mask;
        }
        if let Some(m) = self.write_mask.get_mut(reg) {
            *m &= !mask;
        }
    }

    pub fn write_mask(&self, reg: usize) -> u32 {
        self.write_mask.get(reg).copied().unwrap_or(0)
    }

    pub fn w1c_mask(&self, reg: usize) -> u32 {
        self.w1c_mask.get(reg).copied().unwrap_or(0)
    }

    pub fn command(&self) -> u16 {
        self.regs[REG_COMMAND_STATUS] as u16
    }

    pub fn status(&self) -> u16 {
        (self.regs[REG_COMMAND_STATUS] >> 16) as u16
    }

    /// Device-side update of the status register's interrupt bit (INTx asserted).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let bit = u32::from(STATUS_INTERRUPT) << 16;
        if asserted {
            self.regs[REG_COMMAND_STATUS] |= bit;
        } else {
            self.regs[REG_COMMAND_STATUS] &= !bit;
        }
    }

    /// Sets the interrupt pin register (0 = none, 1..=4 = INTA..INTD).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        let r = &mut self.regs[REG_INTERRUPT];
        *r = (*r & !0xff00) | (u32::from(pin.min(4)) << 8);
    }

    /// Marks the function as one of several in its device (header type bit 7).
    pub fn set_multifunction(&mut self, on: bool) {
        let bit = 0x80 << 16;
        if on {
            self.regs[REG_BIST_HEADER] |= bit;
        } else {
            self.regs[REG_BIST_HEADER] &= !bit;
        }
    }

    /// Appends a standard capability whose header is `id` and whose body (from byte 2 on)
    /// is `body`; links it into the list and returns its byte offset. The body is RO until
    /// the caller sets write masks for it.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, ConfigSpaceError> {
        let len = 2 + body.len();
        let offset = self.next_free_cap;
        let end = offset + len;
        if end > CONVENTIONAL_DWORDS * 4 {
            return Err(ConfigSpaceError::AddCapability { id, len });
        }
        self.set_bytes(offset, &[id, 0]);
        self.set_bytes(offset + 2, body);
        match self.last_cap_next {
            Some(next) => self.set_bytes(next, &[offset as u8]),
            None => {
                self.set_bytes(REG_CAPABILITIES_PTR * 4, &[offset as u8]);
                self.regs[REG_COMMAND_STATUS] |= u32::from(STATUS_CAPABILITIES) << 16;
            }
        }
        self.last_cap_next = Some(offset + 1);
        self.next_free_cap = end.next_multiple_of(4);
        Ok(offset)
    }

    /// Appends an extended capability (`id`, `version`, then `body` after the 4-byte
    /// header) and returns its byte offset.
    pub fn add_extended_capability(&mut self, id: u16, version: u8, body: &[u8]) -> Result<usize, ConfigSpaceError> {
        if !self.extended {
            return Err(ConfigSpaceError::NoExtendedSpace { id });
        }
        let len = 4 + body.len();
        let offset = self.next_free_ext;
        let end = offset + len;
        if end > CONFIG_SPACE_DWORDS * 4 {
            return Err(ConfigSpaceError::AddExtendedCapability { id, len });
        }
        let header = u32::from(id) | (u32::from(version & 0xf) << 16);
        self.set(offset / 4, header);
        self.set_bytes(offset + 4, body);
        if let Some(prev) = self.last_ext_cap {
            let r = &mut self.regs[prev / 4];
            *r = (*r & 0x000f_ffff) | ((offset as u32) << 20);
        }
        self.last_ext_cap = Some(offset);
        self.next_free_ext = end.next_multiple_of(4);
        Ok(offset)
    }

    pub fn capabilities(&self) -> Vec<CapabilityRef> {
        walk_capabilities(|reg| self.read(reg))
    }

    pub fn extended_capabilities(&self) -> Vec<CapabilityRef> {
        walk_extended_capabilities(|reg| self.read(reg))
    }
}

/// Places 1..=4 bytes at byte `offset` of a dword: the value and the mask of bytes touched.
/// `None` for an access that does not fit in the dword.
pub fn merge_bytes(offset: u64, data: &[u8]) -> Option<(u32, u32)> {
    let offset = usize::try_from(offset).ok()?;
    if data.is_empty() || offset.checked_add(data.len())? > 4 {
        return None;
    }
    let mut value = 0u32;
    let mut mask = 0u32;
    for (i, b) in data.iter().enumerate() {
        let shift = (offset + i) * 8;
        value |= u32::from(*b) << shift;
        mask |= 0xff << shift;
    }
    Some((value, mask))
}

/// Walks a standard capability list through `read` (a dword reader of config space), so
/// the same code serves emulated functions and host devices. Stops at loops, pointers into
/// the header, and after 48 entries (the most that fit in 192 bytes).
pub fn walk_capabilities(read: impl Fn(usize) -> u32) -> Vec<CapabilityRef> {
    let mut out = Vec::new();
    if (read(REG_COMMAND_STATUS) >> 16) as u16 & STATUS_CAPABILITIES == 0 {
        return out;
    }
    let mut seen = HashSet::new();
    let mut ptr = (read(REG_CAPABILITIES_PTR) & 0xfc) as usize;
    while ptr >= 0x40 && out.len() < 48 && seen.insert(ptr) {
        let header = read(ptr / 4);
        out.push(CapabilityRef { id: (header & 0xff) as u16, offset: ptr, version: 0 });
        ptr = ((header >> 8) & 0xfc) as usize;
    }
    out
}

/// Walks the extended capability list from 0x100 (PCIe base spec 7.6.3). A header of 0 or
/// all-ones means no list.
pub fn walk_extended_capabilities(read: impl Fn(usize) -> u32) -> Vec<CapabilityRef> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut ptr = EXTENDED_CAPS_START;
    while (EXTENDED_CAPS_START..CONFIG_SPACE_DWORDS * 4).contains(&ptr) && seen.insert(ptr) {
        let header = read(ptr / 4);
        if header == 0 || header == u32::MAX {
            break;
        }
        out.push(CapabilityRef { id: (header & 0xffff) as u16, offset: ptr, version: ((header >> 16) & 0xf) as u8 });
        ptr = ((header >> 20) & 0xffc) as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ids() -> DeviceIds {
        DeviceIds {
            vendor_id: 0x1b36,
            device_id: 0x0010,
            class_code: 0x01_08_02,
            revision: 2,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        }
    }

    #[test]
    fn ids_and_class_are_read_only() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, true);
        assert_eq!(cs.read(0), 0x0010_1b36);
        assert_eq!(cs.read(2), 0x0108_0202);
        assert_eq!(cs.read(11), 0x1100_1af4);
        cs.write(0, 0, &[0xff; 4]);
        cs.write(2, 0, &[0xff; 4]);
        cs.write(11, 0, &[0xff; 4]);
        assert_eq!(cs.read(0), 0x0010_1b36);
        assert_eq!(cs.read(2), 0x0108_0202);
        assert_eq!(cs.read(11), 0x1100_1af4);
    }

    #[test]
    fn command_writable_bits_only() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, false);
        cs.write(1, 0, &[0xff, 0xff]);
        assert_eq!(cs.command(), 0x0547);
        cs.write(1, 0, &[0x02]);
        assert_eq!(cs.command(), 0x0502, "byte write leaves the other byte alone");
        cs.write(1, 1, &[0x00]);
        assert_eq!(cs.command(), 0x0002);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, false);
        cs.set(1, 0xf918_0000);
        cs.write(1, 2, &[0x00, 0x00]);
        assert_eq!(cs.status(), 0xf918, "writing zeros clears nothing");
        cs.write(1, 2, &[0x00, 0x80]);
        assert_eq!(cs.status(), 0x7918);
        cs.write(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(cs.status(), 0x0018, "RO bits (caps list, interrupt) stay");
    }

    #[test]
    fn header_type_bist_latency_read_only_cache_line_writable() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Bridge, false);
        cs.write(3, 0, &[0xff; 4]);
        assert_eq!(cs.read(3), 0x0001_00ff);
        cs.set_multifunction(true);
        assert_eq!(cs.read(3) >> 16 & 0xff, 0x81);
    }

    #[test]
    fn interrupt_line_writable_pin_read_only() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, false);
        cs.set_interrupt_pin(1);
        cs.write(15, 0, &[0xff; 4]);
        assert_eq!(cs.read(15), 0x0000_01ff);
    }

    #[test]
    fn bridge_registers() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Bridge, true);
        cs.write(6, 0, &[0xff; 4]);
        assert_eq!(cs.read(6), 0x00ff_ffff, "secondary latency timer RO");
        cs.write(7, 0, &[0xff; 4]);
        assert_eq!(cs.read(7), 0x0000_f0f0);
        cs.write(8, 0, &[0xff; 4]);
        assert_eq!(cs.read(8), 0xfff0_fff0);
        cs.write(9, 0, &[0; 4]);
        assert_eq!(cs.read(9), 0x0001_0001, "64-bit prefetch flag stays");
        cs.write(10, 0, &[0xff; 4]);
        assert_eq!(cs.read(10), u32::MAX);
        cs.write(12, 0, &[0xff; 4]);
        assert_eq!(cs.read(12), 0, "no 32-bit I/O");
        cs.write(15, 0, &[0xff; 4]);
        assert_eq!(cs.read(15), 0x007f_00ff);
    }

    #[test]
    fn malformed_and_out_of_range_accesses() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, false);
        let before = cs.read(1);
        cs.write(1, 3, &[0xff, 0xff]);
        cs.write(1, 4, &[0xff]);
        cs.write(1, u64::MAX, &[0xff]);
        cs.write(1, 0, &[]);
        cs.write(1, 0, &[0xff; 5]);
        assert_eq!(cs.read(1), before);
        assert_eq!(cs.read(64), 0, "conventional function: no extended space");
        cs.write(64, 0, &[0xff; 4]);
        assert_eq!(cs.read(1024), u32::MAX);
        cs.write(usize::MAX, 0, &[0xff; 4]);
    }

    #[test]
    fn capability_list_build_and_walk() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, true);
        assert!(cs.capabilities().is_empty());
        let a = cs.add_capability(0x01, &[0; 6]).unwrap();
        let b = cs.add_capability(0x05, &[0; 9]).unwrap();
        let c = cs.add_capability(0x10, &[0; 58]).unwrap();
        assert_eq!((a, b, c), (0x40, 0x48, 0x54));
        assert_ne!(cs.status() & STATUS_CAPABILITIES, 0);
        let ids: Vec<_> = cs.capabilities().iter().map(|c| (c.id, c.offset)).collect();
        assert_eq!(ids, vec![(1, 0x40), (5, 0x48), (0x10, 0x54)]);
        // A capability that would run past 0x100 is refused.
        assert_eq!(cs.add_capability(0x11, &[0; 0x100]), Err(ConfigSpaceError::AddCapability { id: 0x11, len: 0x102 }));
        // The guest cannot rewire the list.
        cs.write(13, 0, &[0x80]);
        cs.write(0x40 / 4, 1, &[0x00]);
        assert_eq!(cs.capabilities().len(), 3);
    }

    #[test]
    fn extended_capability_list() {
        let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, true);
        assert!(cs.extended_capabilities().is_empty());
        let a = cs.add_extended_capability(0x0001, 2, &[0; 0x44]).unwrap();
        let b = cs.add_extended_capability(0x000e, 1, &[0; 4]).unwrap();
        assert_eq!((a, b), (0x100, 0x148));
        let caps = cs.extended_capabilities();
        assert_eq!(caps.len(), 2);
        assert_eq!((caps[1].id, caps[1].offset, caps[1].version), (0xe, 0x148, 1));
        let mut conv = ConfigSpace::new(ids(), HeaderType::Endpoint, false);
        assert_eq!(conv.add_extended_capability(1, 1, &[]), Err(ConfigSpaceError::NoExtendedSpace { id: 1 }));
    }

    proptest::proptest! {
        /// Any write, at any offset and size, to any register: exactly the writable bits
        /// take the new value, RW1C bits clear only where ones were written, everything
        /// else keeps its value.
        #[test]
        fn write_obeys_masks(
            reg in 0usize..1100, offset in 0u64..6, data in proptest::collection::vec(proptest::num::u8::ANY, 0..6),
            initial in proptest::num::u32::ANY, wmask in proptest::num::u32::ANY, w1c in proptest::num::u32::ANY,
        ) {
            let mut cs = ConfigSpace::new(ids(), HeaderType::Endpoint, true);
            cs.set(reg, initial);
            cs.set_w1c_mask(reg, w1c);
            cs.set_write_mask(reg, wmask);
            let (wm, c) = (cs.write_mask(reg), cs.w1c_mask(reg));
            proptest::prop_assert_eq!(wm & c, 0);
            let before = cs.read(reg);
            cs.write(reg, offset, &data);
            let after = cs.read(reg);
            match merge_bytes(offset, &data).filter(|_| reg < CONFIG_SPACE_DWORDS) {
                Some((value, bytes)) => {
                    let expect = ((before & !(wm & bytes)) | (value & wm & bytes)) & !(c & bytes & value);
                    proptest::prop_assert_eq!(after, expect);
                }
                None => proptest::prop_assert_eq!(after, before),
            }
            proptest::prop_assert_eq!((after ^ before) & !(wm | c), 0);
        }
    }

    #[test]
    fn from_image_holds_the_bytes_with_nothing_writable() {
        let mut image = vec![0u8; 0x102];
        image[..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
        image[4] = 0x06;
        image[0x100..].copy_from_slice(&[0x01, 0x00]);
        let mut cs = ConfigSpace::from_image(HeaderType::Endpoint, true, &image);
        assert_eq!((cs.read(0), cs.command(), cs.read(0x40)), (0x0010_1b36, 0x0006, 0x0001));
        assert_eq!(cs.read(0x41), 0, "beyond the image reads 0");
        for reg in [1, 3, 15, 0x40] {
            cs.write(reg, 0, &[0xff; 4]);
            assert_eq!((cs.write_mask(reg), cs.w1c_mask(reg)), (0, 0));
        }
        assert_eq!(cs.read(1), 0x0000_0006);
        assert!(cs.add_capability(0x05, &[0; 8]).is_err(), "no room for appended capabilities");
        assert!(cs.add_extended_capability(0x01, 1, &[0; 4]).is_err());
    }

    #[test]
    fn walkers_survive_loops_and_garbage() {
        // A list that points to itself, read from a hostile host device.
        let read = |reg: usize| match reg {
            1 => 0x0010_0000,
            13 => 0x40,
            16 => 0x4005,
            _ => 0,
        };
        assert_eq!(walk_capabilities(read).len(), 1);
        let ext = |reg: usize| if reg == 0x40 { 0x1000_0001 } else { 0 };
        assert_eq!(walk_extended_capabilities(ext).len(), 1);
        assert_eq!(walk_extended_capabilities(|_| u32::MAX).len(), 0);
    }
}
