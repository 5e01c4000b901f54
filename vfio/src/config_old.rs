#![allow(dead_code, clippy::enum_variant_names)]
//! The config engine before it moved onto the pci crate, kept only to compare the two (see
//! `config_compare`).

//! Config-space virtualization of an assigned device: a pure model, no I/O.
//!
//! Every config bit is either *virtualized* (the guest reads and writes our shadow copy and
//! the write never reaches the device) or *passed through*. Virtualized: BARs and the ROM BAR,
//! the command register's I/O and memory decode bits, the MSI and MSI-X capabilities, the
//! capability pointers (to hide capabilities) and every byte of a hidden capability, the
//! multi-function bit, the interrupt line. A guest write is split byte by byte: bytes that
//! hold any passed-through bit go to the device with the virtualized bits replaced by the
//! values the VMM chose for the device ([`VirtConfig::host_fixed`]).

use pci::{BarIndex, BarKind, BarMove, BarRegion, ConfigEffects};
use pci_types::capability::PciCapability;
use pci_types::{ConfigRegionAccess, EndpointHeader, PciAddress, PciHeader};

pub const CONFIG_DWORDS: usize = 1024;

const COMMAND: usize = 0x04;
const CMD_IO: u32 = 1 << 0;
const CMD_MEM: u32 = 1 << 1;
const HEADER_TYPE_DWORD: usize = 0x0c / 4;
const CAP_PTR: usize = 0x34;
const BAR0: usize = 0x10;
const ROM_BAR: usize = 0x30;
const INTERRUPT_DWORD: usize = 0x3c / 4;
const STATUS_CAP_LIST: u32 = 1 << 20;

/// Standard capabilities a guest may see (others are hidden): PM, VPD, MSI, vendor-specific,
/// PCI Express, MSI-X, Advanced Features.
const STD_CAPS_VISIBLE: &[u8] = &[0x01, 0x03, 0x05, 0x09, 0x10, 0x11, 0x13];
/// Extended capabilities a guest must not touch: ACS, ARI, ATS, SR-IOV, MR-IOV, multicast,
/// PRI, resizable BAR, PASID, DPC, VF resizable BAR. They configure the host's view of the
/// device (function numbering, VFs, address translation, BAR sizes the VMM already mapped).
const EXT_CAPS_HIDDEN: &[u16] = &[0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x15, 0x1b, 0x1d, 0x24];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{bdf}: config space is {len} bytes, need at least 64")]
    ParseHeader { bdf: String, len: usize },
    #[error("{bdf}: header type {header_type:#x} is not a type-0 endpoint (bridges cannot be assigned)")]
    ParseHeaderType { bdf: String, header_type: u8 },
    #[error("{bdf}: BAR{index} region is {size:#x} bytes, not a power of two")]
    ParseBarSize { bdf: String, index: u8, size: u64 },
}

/// A BAR as the host describes it (type from config space, size from the VFIO region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    pub index: BarIndex,
    pub kind: BarKind,
    pub size: u64,
}

/// Where the MSI-X table and PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixInfo {
    pub cap: usize,
    pub table_size: u16,
    pub table_bar: BarIndex,
    pub table_offset: u64,
    pub pba_bar: BarIndex,
    pub pba_offset: u64,
}

impl MsixInfo {
    /// Bytes of the table: 16 per vector.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * 16
    }

    /// Bytes of the PBA: one bit per vector, in whole qwords.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiInfo {
    pub cap: usize,
    pub is_64bit: bool,
    pub per_vector_mask: bool,
    /// log2 of the number of vectors the device can do (MMC).
    pub max_log2: u8,
}

/// The guest's current MSI programming.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiState {
    pub enabled: bool,
    pub vectors: u32,
    pub address: u64,
    pub data: u16,
    pub mask: u32,
}

/// What a guest config write changed, for the device to act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigWrite {
    pub effects: ConfigEffects,
    /// Bytes to forward to the device: (config offset, bytes).
    pub host_writes: Vec<(u64, Vec<u8>)>,
    pub msi_changed: bool,
    pub msix_changed: bool,
}

/// Options the user gave for the ROM BAR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RomOptions {
    /// `rombar=off`: the guest sees no ROM BAR.
    pub hidden: bool,
    /// Size of a `romfile=` image (overrides the device's ROM), 0 if none.
    pub file_size: u64,
}

/// Reads a config snapshot for pci_types' parsers.
struct Snapshot<'a>(&'a [u8]);

impl ConfigRegionAccess for Snapshot<'_> {
    unsafe fn read(&self, _address: PciAddress, offset: u16) -> u32 {
        dword_at(self.0, offset as usize)
    }
    unsafe fn write(&self, _address: PciAddress, _offset: u16, _value: u32) {}
}

fn dword_at(bytes: &[u8], offset: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = offset.checked_add(4).and_then(|end| bytes.get(offset..end)) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

#[derive(Clone)]
pub struct VirtConfig {
    bdf: String,
    shadow: Box<[u32; CONFIG_DWORDS]>,
    virt: Box<[u32; CONFIG_DWORDS]>,
    wmask: Box<[u32; CONFIG_DWORDS]>,
    /// For virtualized bits of dwords with passed-through bits too: what the device gets.
    host_fixed: Box<[u32; CONFIG_DWORDS]>,
    bars: [Option<BarInfo>; 7],
    /// Where the VMM has each BAR mapped now (None: not placed yet).
    mapped: [Option<u64>; 7],
    msi: Option<MsiInfo>,
    msix: Option<MsixInfo>,
    /// Config offsets of the hidden capabilities (std and extended), for tests and logs.
    hidden: Vec<(usize, usize)>,
}

impl VirtConfig {
    /// Builds the virtual config space from the host's config bytes (`config.len()` is the
    /// VFIO config region size, 256 or 4096) and the BAR sizes (VFIO region sizes, index 6 =
    /// ROM, 0 = absent).
    pub fn new(bdf: &str, config: &[u8], bar_sizes: [u64; 7], rom: RomOptions) -> Result<Self, ConfigError> {
        if config.len() < 64 {
            return Err(ConfigError::ParseHeader { bdf: bdf.into(), len: config.len() });
        }
        let header_type = config[0x0e] & 0x7f;
        if header_type != 0 {
            return Err(ConfigError::ParseHeaderType { bdf: bdf.into(), header_type });
        }
        let mut cfg = VirtConfig {
            bdf: bdf.into(),
            shadow: Box::new([0; CONFIG_DWORDS]),
            virt: Box::new([0; CONFIG_DWORDS]),
            wmask: Box::new([0; CONFIG_DWORDS]),
            host_fixed: Box::new([0; CONFIG_DWORDS]),
            bars: [None; 7],
            mapped: [None; 7],
            msi: None,
            msix: None,
            hidden: Vec::new(),
        };
        // Beyond the device's config region nothing reaches the host.
        let host_dwords = (config.len() / 4).min(CONFIG_DWORDS);
        for reg in host_dwords..CONFIG_DWORDS {
            cfg.virt[reg] = u32::MAX;
        }
        cfg.setup_header(config);
        cfg.setup_bars(config, bar_sizes, rom)?;
        cfg.setup_std_caps(config);
        if config.len() > 0x100 {
            cfg.setup_ext_caps(config);
        }
        Ok(cfg)
    }

    fn virtualize(&mut self, reg: usize, mask: u32, value: u32, writable: u32) {
        self.virt[reg] |= mask;
        self.shadow[reg] = (self.shadow[reg] & !mask) | (value & mask);
        self.wmask[reg] = (self.wmask[reg] & !mask) | (writable & mask);
    }

    /// Virtualizes every byte in `[start, end)` as read-only zero.
    fn blank(&mut self, start: usize, end: usize) {
        for off in start..end.min(CONFIG_DWORDS * 4) {
            let mask = 0xffu32 << ((off % 4) * 8);
            self.virtualize(off / 4, mask, 0, 0);
        }
    }

    fn setup_header(&mut self, config: &[u8]) {
        // Decode bits: the guest gets its own copy (starting off), the device keeps decoding
        // so the mmapped BARs work; the VMM unmaps slots while the guest's bit is off.
        self.virtualize(COMMAND / 4, CMD_IO | CMD_MEM, 0, CMD_IO | CMD_MEM);
        // Multi-function bit: the guest sees a single function.
        let ht = dword_at(config, HEADER_TYPE_DWORD * 4);
        self.virtualize(HEADER_TYPE_DWORD, 0x0080_0000, 0, 0);
        let _ = ht;
        // Interrupt line: firmware/guest bookkeeping only; pin read from the device.
        let intr = dword_at(config, INTERRUPT_DWORD * 4);
        self.virtualize(INTERRUPT_DWORD, 0xffff, intr & 0xff00, 0x00ff);
    }

    fn setup_bars(&mut self, config: &[u8], sizes: [u64; 7], rom: RomOptions) -> Result<(), ConfigError> {
        let mut i = 0usize;
        while i < 6 {
            let reg = BAR0 / 4 + i;
            let raw = dword_at(config, reg * 4);
            let size = sizes[i];
            self.virtualize(reg, u32::MAX, 0, 0);
            if size == 0 {
                i += 1;
                continue;
            }
            if !size.is_power_of_two() {
                return Err(ConfigError::ParseBarSize { bdf: self.bdf.clone(), index: i as u8, size });
            }
            let index = BarIndex(i as u8);
            if raw & 1 == 1 {
                let size = size.max(4);
                self.bars[i] = Some(BarInfo { index, kind: BarKind::Io, size });
                let mask = !(size as u32 - 1) & 0xffff_fffc;
                self.virtualize(reg, u32::MAX, 1, mask);
                i += 1;
                continue;
            }
            let prefetchable = raw & 0x8 != 0;
            let size = size.max(16);
            let is64 = (raw >> 1) & 3 == 2 && i < 5;
            let low_mask = (!(size - 1) as u32) & 0xffff_fff0;
            if is64 {
                self.bars[i] = Some(BarInfo { index, kind: BarKind::Mem64 { prefetchable }, size });
                self.virtualize(reg, u32::MAX, raw & 0xf, low_mask);
                self.virtualize(reg + 1, u32::MAX, 0, (!(size - 1) >> 32) as u32);
                i += 2;
            } else {
                if size > 1 << 31 {
                    return Err(ConfigError::ParseBarSize { bdf: self.bdf.clone(), index: i as u8, size });
                }
                self.bars[i] = Some(BarInfo { index, kind: BarKind::Mem32 { prefetchable }, size });
                self.virtualize(reg, u32::MAX, raw & 0xf, low_mask);
                i += 1;
            }
        }
        let rom_size = if rom.file_size != 0 { rom.file_size.next_power_of_two().max(2048) } else { sizes[6] };
        self.virtualize(ROM_BAR / 4, u32::MAX, 0, 0);
        if !rom.hidden && rom_size != 0 {
            if rom_size > 1 << 31 {
                return Err(ConfigError::ParseBarSize { bdf: self.bdf.clone(), index: 6, size: rom_size });
            }
            let rom_size = rom_size.next_power_of_two().max(2048);
            self.bars[6] = Some(BarInfo { index: BarIndex::ROM, kind: BarKind::Rom, size: rom_size });
            let mask = (!(rom_size - 1) as u32 & 0xffff_f800) | 1;
            self.virtualize(ROM_BAR / 4, u32::MAX, 0, mask);
        }
        // The device decodes whatever it has BARs for, whatever the guest's bits say: the
        // mmapped BARs only work while it does (and after a reset the guest's enable brings
        // these bits back through the forwarded command write).
        let mut decode = 0;
        for bar in self.bars.iter().flatten() {
            decode |= if bar.kind == BarKind::Io { CMD_IO } else { CMD_MEM };
        }
        self.host_fixed[COMMAND / 4] = decode;
        let _ = config;
        Ok(())
    }

    fn setup_std_caps(&mut self, config: &[u8]) {
        let status = dword_at(config, COMMAND);
        self.virtualize(CAP_PTR / 4, 0xff, 0, 0);
        if status & STATUS_CAP_LIST == 0 {
            return;
        }
        let access = Snapshot(&config[..config.len().min(256)]);
        let Some(header) = EndpointHeader::from_header(PciHeader::new(PciAddress::new(0, 0, 0, 0)), &access) else {
            return;
        };
        // pci_types follows the list blindly: a looping list from a broken device must not
        // hang the VMM, so stop at the first revisit and after 48 entries (256-64)/4.
        let mut seen = Vec::new();
        let mut caps = Vec::new();
        for cap in header.capabilities(&access).take(48) {
            let off = (cap.address().offset & 0xfc) as usize;
            if off < 0x40 || seen.contains(&off) {
                break;
            }
            seen.push(off);
            caps.push((off, config[off], cap));
        }
        let mut bounds: Vec<usize> = seen.clone();
        bounds.sort_unstable();
        let end_of = |off: usize| bounds.iter().copied().find(|&b| b > off).unwrap_or(0x100);

        let visible: Vec<usize> =
            caps.iter().filter(|(_, id, _)| STD_CAPS_VISIBLE.contains(id)).map(|(off, _, _)| *off).collect();
        self.shadow[CAP_PTR / 4] = (self.shadow[CAP_PTR / 4] & !0xff) | visible.first().copied().unwrap_or(0) as u32;
        for (off, id, cap) in &caps {
            let off = *off;
            if !STD_CAPS_VISIBLE.contains(id) {
                self.blank(off, end_of(off));
                self.hidden.push((off, end_of(off)));
                continue;
            }
            let pos = visible.iter().position(|&v| v == off).unwrap_or(0);
            let next = visible.get(pos + 1).copied().unwrap_or(0) as u32;
            let reg = off / 4;
            // id and next pointer: read-only copies with the rewritten chain.
            self.virtualize(reg, 0xffff, (next << 8) | u32::from(*id), 0);
            match cap {
                PciCapability::Msi(_) => self.setup_msi(config, off),
                PciCapability::MsiX(_) => self.setup_msix(config, off),
                _ => {}
            }
        }
        // Only advertise a capability list when something is left in it.
        if visible.is_empty() {
            self.virtualize(COMMAND / 4, STATUS_CAP_LIST, 0, 0);
        }
    }

    fn setup_msi(&mut self, config: &[u8], off: usize) {
        let d0 = dword_at(config, off);
        let ctrl = d0 >> 16;
        let is_64bit = ctrl & (1 << 7) != 0;
        let per_vector_mask = ctrl & (1 << 8) != 0;
        let max_log2 = ((ctrl >> 1) & 7).min(5) as u8;
        let reg = off / 4;
        // Control: enable and MME writable; MMC, 64-bit, PVM read-only from the device.
        let ro = ctrl & 0x018e;
        self.virtualize(reg, 0xffff_0000, ro << 16, 0x0071 << 16);
        self.virtualize(reg + 1, u32::MAX, 0, 0xffff_fffc);
        let mut next = reg + 2;
        if is_64bit {
            self.virtualize(next, u32::MAX, 0, u32::MAX);
            next += 1;
        }
        self.virtualize(next, u32::MAX, 0, 0xffff);
        next += 1;
        if per_vector_mask {
            self.virtualize(next, u32::MAX, 0, u32::MAX);
            self.virtualize(next + 1, u32::MAX, 0, 0);
        }
        self.msi = Some(MsiInfo { cap: off, is_64bit, per_vector_mask, max_log2 });
    }

    fn setup_msix(&mut self, config: &[u8], off: usize) {
        let ctrl = dword_at(config, off) >> 16;
        let table = dword_at(config, off + 4);
        let pba = dword_at(config, off + 8);
        let reg = off / 4;
        self.virtualize(reg, 0xffff_0000, (ctrl & 0x07ff) << 16, 0xc000 << 16);
        self.virtualize(reg + 1, u32::MAX, table, 0);
        self.virtualize(reg + 2, u32::MAX, pba, 0);
        self.msix = Some(MsixInfo {
            cap: off,
            table_size: (ctrl & 0x7ff) as u16 + 1,
            table_bar: BarIndex((table & 7) as u8),
            table_offset: u64::from(table & !7),
            pba_bar: BarIndex((pba & 7) as u8),
            pba_offset: u64::from(pba & !7),
        });
    }

    fn setup_ext_caps(&mut self, config: &[u8]) {
        let mut caps = Vec::new();
        let mut off = 0x100usize;
        while off >= 0x100 && caps.len() < (4096 - 256) / 4 && !caps.iter().any(|&(o, _)| o == off) {
            let header = dword_at(config, off);
            if header == 0 || header == u32::MAX {
                break;
            }
            caps.push((off, header));
            off = (header >> 20) as usize & 0xffc;
        }
        let mut bounds: Vec<usize> = caps.iter().map(|&(o, _)| o).collect();
        bounds.sort_unstable();
        let end_of = |off: usize| bounds.iter().copied().find(|&b| b > off).unwrap_or(0x1000);
        let is_hidden = |h: u32| EXT_CAPS_HIDDEN.contains(&((h & 0xffff) as u16));
        let visible: Vec<(usize, u32)> = caps.iter().copied().filter(|&(_, h)| !is_hidden(h)).collect();
        for &(off, header) in &caps {
            if is_hidden(header) {
                self.blank(off, end_of(off));
                self.hidden.push((off, end_of(off)));
            }
        }
        // Rewrite the chain. 0x100 must hold a header when anything is visible: if the cap
        // there is hidden, it becomes a null capability (id 0, version 0) pointing onwards.
        let first_visible = visible.first().map(|&(o, _)| o);
        if let Some(&(first_off, first_header)) = caps.first() {
            if is_hidden(first_header) {
                let next = first_visible.unwrap_or(0) as u32;
                self.virtualize(first_off / 4, u32::MAX, next << 20, 0);
            }
        }
        for (i, &(off, header)) in visible.iter().enumerate() {
            let next = visible.get(i + 1).map_or(0, |&(o, _)| o) as u32;
            self.virtualize(off / 4, u32::MAX, (header & 0x000f_ffff) | (next << 20), 0);
        }
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The bits of dword `reg` that come from the device.
    pub fn passthrough_mask(&self, reg: usize) -> u32 {
        self.virt.get(reg).map_or(0, |v| !v)
    }

    /// The guest's view of dword `reg`, given the device's current value of it.
    pub fn read(&self, reg: usize, host_value: u32) -> u32 {
        match (self.virt.get(reg), self.shadow.get(reg)) {
            (Some(v), Some(s)) => (host_value & !v) | (s & v),
            _ => u32::MAX,
        }
    }

    /// Applies a guest write of `data` at byte `offset` (0..4) of dword `reg`.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWrite {
        let mut out = ConfigWrite::default();
        let Some(off) = usize::try_from(offset).ok().filter(|o| *o < 4) else {
            return out;
        };
        if reg >= CONFIG_DWORDS || data.is_empty() || off + data.len() > 4 {
            return out;
        }
        let old_cmd = self.shadow[COMMAND / 4];
        let old_shadow = self.shadow[reg];
        let mut run: Option<(u64, Vec<u8>)> = None;
        for (i, &byte) in data.iter().enumerate() {
            let shift = (off + i) * 8;
            let virt = (self.virt[reg] >> shift) as u8;
            let wmask = (self.wmask[reg] >> shift) as u8 & virt;
            let shadow = (self.shadow[reg] >> shift) as u8;
            let new = (shadow & !wmask) | (byte & wmask);
            self.shadow[reg] = (self.shadow[reg] & !(0xff << shift)) | (u32::from(new) << shift);
            if virt == 0xff {
                if let Some(r) = run.take() {
                    out.host_writes.push(r);
                }
                continue;
            }
            let fixed = (self.host_fixed[reg] >> shift) as u8;
            let host_byte = (byte & !virt) | (fixed & virt);
            match run.as_mut() {
                Some((_, bytes)) => bytes.push(host_byte),
                None => run = Some(((reg * 4 + off + i) as u64, vec![host_byte])),
            }
        }
        if let Some(r) = run.take() {
            out.host_writes.push(r);
        }
        if self.shadow[reg] == old_shadow {
            return out;
        }
        if let Some(msi) = self.msi {
            let start = msi.cap / 4;
            if (start..start + 6).contains(&reg) {
                out.msi_changed = true;
            }
        }
        if let Some(msix) = self.msix {
            if reg == msix.cap / 4 {
                out.msix_changed = true;
            }
        }
        let new_cmd = self.shadow[COMMAND / 4];
        if (old_cmd ^ new_cmd) & CMD_MEM != 0 {
            out.effects.mem_decode = Some(new_cmd & CMD_MEM != 0);
        }
        if (old_cmd ^ new_cmd) & CMD_IO != 0 {
            out.effects.io_decode = Some(new_cmd & CMD_IO != 0);
        }
        out.effects.bar_moves = self.collect_moves();
        out
    }

    fn decodes(&self, kind: BarKind) -> bool {
        let cmd = self.shadow[COMMAND / 4];
        match kind {
            BarKind::Io => cmd & CMD_IO != 0,
            BarKind::Rom => cmd & CMD_MEM != 0 && self.shadow[ROM_BAR / 4] & 1 != 0,
            _ => cmd & CMD_MEM != 0,
        }
    }

    /// BARs whose register differs from where they are mapped, while their decode is on.
    /// Moves are deferred while decode is off (the guest is sizing or reprogramming).
    fn collect_moves(&mut self) -> Vec<BarMove> {
        let mut moves = Vec::new();
        for i in 0..7 {
            let Some(bar) = self.bars[i] else { continue };
            let Some(mapped) = self.mapped[i] else { continue };
            let addr = self.bar_register_addr(i);
            if addr != mapped && self.decodes(bar.kind) {
                moves.push(BarMove {
                    index: bar.index,
                    kind: bar.kind,
                    old_addr: mapped,
                    new_addr: addr,
                    size: bar.size,
                });
                self.mapped[i] = Some(addr);
            }
        }
        moves
    }

    fn bar_register_addr(&self, i: usize) -> u64 {
        match self.bars[i].map(|b| b.kind) {
            Some(BarKind::Io) => u64::from(self.shadow[BAR0 / 4 + i] & !3),
            Some(BarKind::Mem32 { .. }) => u64::from(self.shadow[BAR0 / 4 + i] & !0xf),
            Some(BarKind::Mem64 { .. }) => {
                u64::from(self.shadow[BAR0 / 4 + i] & !0xf) | (u64::from(self.shadow[BAR0 / 4 + i + 1]) << 32)
            }
            Some(BarKind::Rom) => u64::from(self.shadow[ROM_BAR / 4] & !0x7ff),
            None => 0,
        }
    }

    /// Places BAR `index` at `addr` (VMM set-up, before the guest runs).
    pub fn place_bar(&mut self, index: BarIndex, addr: u64) {
        let i = index.0 as usize;
        let Some(bar) = self.bars.get(i).copied().flatten() else { return };
        let addr = addr & !(bar.size - 1);
        match bar.kind {
            BarKind::Io | BarKind::Mem32 { .. } => {
                let reg = BAR0 / 4 + i;
                self.shadow[reg] = (self.shadow[reg] & self.flag_bits(bar.kind)) | addr as u32;
            }
            BarKind::Mem64 { .. } => {
                let reg = BAR0 / 4 + i;
                self.shadow[reg] = (self.shadow[reg] & 0xf) | addr as u32;
                self.shadow[reg + 1] = (addr >> 32) as u32;
            }
            BarKind::Rom => {
                let reg = ROM_BAR / 4;
                self.shadow[reg] = (self.shadow[reg] & 1) | addr as u32;
            }
        }
        self.mapped[i] = Some(addr);
    }

    fn flag_bits(&self, kind: BarKind) -> u32 {
        if kind == BarKind::Io {
            0x3
        } else {
            0xf
        }
    }

    pub fn bar_infos(&self) -> impl Iterator<Item = BarInfo> + '_ {
        self.bars.iter().flatten().copied()
    }

    pub fn bar_info(&self, index: BarIndex) -> Option<BarInfo> {
        self.bars.get(index.0 as usize).copied().flatten()
    }

    /// The BARs at the addresses the VMM has them mapped.
    pub fn bar_regions(&self) -> Vec<BarRegion> {
        self.bars
            .iter()
            .zip(self.mapped.iter())
            .filter_map(|(b, m)| {
                let (b, addr) = ((*b)?, (*m)?);
                Some(BarRegion { index: b.index, kind: b.kind, addr, size: b.size })
            })
            .collect()
    }

    pub fn mem_decode(&self) -> bool {
        self.shadow[COMMAND / 4] & CMD_MEM != 0
    }

    pub fn io_decode(&self) -> bool {
        self.shadow[COMMAND / 4] & CMD_IO != 0
    }

    /// Whether guest accesses to `index` reach the device now.
    pub fn bar_decodes(&self, index: BarIndex) -> bool {
        self.bar_info(index).is_some_and(|b| self.decodes(b.kind))
    }

    pub fn msi_info(&self) -> Option<MsiInfo> {
        self.msi
    }

    pub fn msix_info(&self) -> Option<MsixInfo> {
        self.msix
    }

    pub fn msi_state(&self) -> Option<MsiState> {
        let msi = self.msi?;
        let reg = msi.cap / 4;
        let ctrl = self.shadow[reg] >> 16;
        let mme = ((ctrl >> 4) & 7).min(u32::from(msi.max_log2));
        let lo = u64::from(self.shadow[reg + 1]);
        let (address, data_reg) =
            if msi.is_64bit { (lo | (u64::from(self.shadow[reg + 2]) << 32), reg + 3) } else { (lo, reg + 2) };
        let mask = if msi.per_vector_mask { self.shadow[data_reg + 1] } else { 0 };
        Some(MsiState { enabled: ctrl & 1 != 0, vectors: 1 << mme, address, data: self.shadow[data_reg] as u16, mask })
    }

    /// (enabled, function mask) of the guest's MSI-X control register.
    pub fn msix_control(&self) -> Option<(bool, bool)> {
        let msix = self.msix?;
        let ctrl = self.shadow[msix.cap / 4] >> 16;
        Some((ctrl & 0x8000 != 0, ctrl & 0x4000 != 0))
    }

    /// Interrupt pin as the device reports it (0 = no INTx).
    pub fn interrupt_pin(&self) -> u8 {
        (self.shadow[INTERRUPT_DWORD] >> 8) as u8
    }

    /// Byte ranges of hidden capabilities.
    pub fn hidden_ranges(&self) -> &[(usize, usize)] {
        &self.hidden
    }

    /// Whether any bit of byte `off` is virtualized (never written to the device as given).
    pub fn byte_is_virtualized(&self, off: usize) -> u8 {
        self.virt.get(off / 4).map_or(0xff, |v| (v >> ((off % 4) * 8)) as u8)
    }

    /// The value the device is given for virtualized bits of byte `off`.
    pub fn host_fixed_byte(&self, off: usize) -> u8 {
        self.host_fixed.get(off / 4).map_or(0, |v| (v >> ((off % 4) * 8)) as u8)
    }

    /// Back to the power-on state the guest expects after a reset: decode off, MSI/MSI-X off;
    /// BAR placement and the capability layout stay.
    pub fn reset(&mut self) {
        let cmd = COMMAND / 4;
        self.shadow[cmd] &= !(CMD_IO | CMD_MEM);
        if let Some(msi) = self.msi {
            self.shadow[msi.cap / 4] &= !(0x0071 << 16);
        }
        if let Some(msix) = self.msix {
            self.shadow[msix.cap / 4] &= !(0xc000 << 16);
        }
        self.shadow[ROM_BAR / 4] &= !1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A captured-style config space: NVMe-like endpoint with a 16 KiB 64-bit BAR0, PM at
    /// 0x40, MSI (64-bit, PVM) at 0x50, MSI-X at 0x70 (table BAR0+0x2000, PBA BAR0+0x3000,
    /// 4 vectors), PCI-X (hidden) at 0x68, PCIe at 0x80; extended: SR-IOV at 0x100, AER at 0x140, ARI at 0x180.
    pub fn sample_config() -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        fn put(c: &mut [u8], off: usize, v: u32) {
            c[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        put(&mut c, 0x00, 0x0010_1b36);
        put(&mut c, 0x04, 0x0010_0006); // cap list, bus master + mem on in the device
        put(&mut c, 0x08, 0x0108_0200);
        put(&mut c, 0x0c, 0x0080_0000); // multi-function bit set in the device
        put(&mut c, 0x10, 0xfebf_0004); // 64-bit mem
        put(&mut c, 0x14, 0x0000_0000);
        put(&mut c, 0x18, 0x0000_c001); // io BAR2
        put(&mut c, 0x34, 0x40);
        put(&mut c, 0x3c, 0x0000_010b);
        put(&mut c, 0x40, 0x0003_5001); // PM -> 0x50
        put(&mut c, 0x50, 0x0186_7005); // MSI, 64-bit + PVM, MMC=3 -> 0x70
        put(&mut c, 0x70, 0x0003_8011); // MSI-X 4 vectors -> 0x68 (PCI-X)
        put(&mut c, 0x74, 0x0000_2000);
        put(&mut c, 0x78, 0x0000_3000);
        put(&mut c, 0x68, 0x0000_8007); // PCI-X (hidden) -> 0x80
        c[0x71] = 0x68;
        put(&mut c, 0x80, 0x0002_0010); // PCIe, end
        put(&mut c, 0x100, 0x1401_0010); // SR-IOV -> 0x140
        put(&mut c, 0x104, 0xdead_beef);
        put(&mut c, 0x140, 0x1801_0001); // AER -> 0x180
        put(&mut c, 0x180, 0x0001_000e); // ARI, end
        c
    }

    pub fn sample_sizes() -> [u64; 7] {
        [0x4000, 0, 0x100, 0, 0, 0, 0x10000]
    }

    fn cfg() -> VirtConfig {
        VirtConfig::new("0000:02:00.0", &sample_config(), sample_sizes(), RomOptions::default()).unwrap()
    }

    fn guest_read(c: &VirtConfig, host: &[u8], off: usize) -> u32 {
        c.read(off / 4, dword_at(host, off & !3))
    }

    #[test]
    fn bars_size_and_relocate() {
        let mut c = cfg();
        let host = sample_config();
        c.place_bar(BarIndex(0), 0x1_0000_0000);
        assert_eq!(guest_read(&c, &host, 0x10), 0x0000_0004);
        assert_eq!(guest_read(&c, &host, 0x14), 1);
        // Sizing with decode off.
        let w = c.write(0x10 / 4, 0, &u32::MAX.to_le_bytes());
        assert!(w.host_writes.is_empty());
        assert_eq!(guest_read(&c, &host, 0x10), 0xffff_c004);
        c.write(0x14 / 4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(guest_read(&c, &host, 0x14), u32::MAX);
        c.write(0x10 / 4, 0, &0xe000_0000u32.to_le_bytes());
        c.write(0x14 / 4, 0, &0u32.to_le_bytes());
        assert!(c.bar_regions().iter().any(|b| b.addr == 0x1_0000_0000), "no move while decode off");
        // Decode on: the move is reported once.
        let w = c.write(COMMAND / 4, 0, &[0x06, 0x00]);
        assert_eq!(w.effects.mem_decode, Some(true));
        assert_eq!(w.effects.bar_moves.len(), 1);
        assert_eq!(w.effects.bar_moves[0].new_addr, 0xe000_0000);
        assert_eq!(w.effects.bar_moves[0].old_addr, 0x1_0000_0000);
        // Bus master (bit 2) goes to the device, decode bits as the VMM fixed them (on).
        assert_eq!(w.host_writes, vec![(4, vec![0x07, 0x00])]);
        let w = c.write(COMMAND / 4, 0, &[0x04]);
        assert_eq!(w.effects.mem_decode, Some(false));
        assert_eq!(w.host_writes, vec![(4, vec![0x07])], "device keeps decoding");
        // IO BAR and ROM sizing.
        c.write(0x18 / 4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(guest_read(&c, &host, 0x18), 0xffff_ff01);
        c.write(ROM_BAR / 4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(guest_read(&c, &host, 0x30), 0xffff_0001);
    }

    #[test]
    fn capability_chain_hides_pcix_and_sriov() {
        let c = cfg();
        let host = sample_config();
        assert_eq!(guest_read(&c, &host, 0x34) & 0xff, 0x40);
        assert_eq!((guest_read(&c, &host, 0x40) >> 8) & 0xff, 0x50);
        assert_eq!((guest_read(&c, &host, 0x50) >> 8) & 0xff, 0x70);
        assert_eq!((guest_read(&c, &host, 0x70) >> 8) & 0xff, 0x80, "PCI-X at 0x68 skipped");
        assert_eq!(guest_read(&c, &host, 0x68), 0);
        // 0x100 (SR-IOV) becomes a null cap pointing at AER; AER ends the list (ARI hidden).
        assert_eq!(guest_read(&c, &host, 0x100), 0x140 << 20);
        assert_eq!(guest_read(&c, &host, 0x104), 0);
        assert_eq!(guest_read(&c, &host, 0x140), 0x0001_0001);
        assert_eq!(guest_read(&c, &host, 0x180), 0);
        assert_eq!(guest_read(&c, &host, 0x0c) & 0x0080_0000, 0, "single function");
    }

    #[test]
    fn msi_and_msix_are_emulated() {
        let mut c = cfg();
        let host = sample_config();
        let w = c.write(0x54 / 4, 0, &0xfee0_1000u32.to_le_bytes());
        assert!(w.host_writes.is_empty() && w.msi_changed);
        c.write(0x5c / 4, 0, &[0x41, 0x00]);
        c.write(0x50 / 4, 2, &[0x21, 0x00]); // enable, MME=2 (4 vectors)
        let s = c.msi_state().unwrap();
        assert_eq!((s.enabled, s.vectors, s.address, s.data), (true, 4, 0xfee0_1000, 0x41));
        assert_eq!(guest_read(&c, &host, 0x50) >> 16, 0x01a7);
        let w = c.write(0x70 / 4, 2, &[0xff, 0xff]);
        assert!(w.msix_changed && w.host_writes.is_empty());
        assert_eq!(c.msix_control(), Some((true, true)));
        assert_eq!(guest_read(&c, &host, 0x70) >> 16, 0xc003, "table size read-only");
        let m = c.msix_info().unwrap();
        assert_eq!((m.table_size, m.table_bar, m.table_offset, m.pba_offset), (4, BarIndex(0), 0x2000, 0x3000));
    }

    #[test]
    fn spanning_write_is_split_per_byte() {
        let mut c = cfg();
        // Dword 0x3c: line (virtual, writable), pin (virtual, ro), min_gnt/max_lat (device).
        let w = c.write(0x3c / 4, 0, &[0x0a, 0x04, 0x11, 0x22]);
        assert_eq!(w.host_writes, vec![(0x3e, vec![0x11, 0x22])]);
        assert_eq!(c.read(0x3c / 4, 0), 0x0000_010a);
        // Status/command dword: command decode bits replaced by the fixed host value.
        let w = c.write(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(w.host_writes, vec![(4, vec![0xff, 0xff, 0xff, 0xff])]);
        let w = c.write(1, 0, &[0x00]);
        assert_eq!(w.host_writes, vec![(4, vec![0x03])], "guest cannot turn device decode off");
    }

    #[test]
    fn bad_input_is_ignored() {
        let mut c = cfg();
        assert_eq!(c.write(4096, 0, &[1]), ConfigWrite::default());
        assert_eq!(c.write(1, 3, &[1, 2]), ConfigWrite::default());
        assert_eq!(c.write(1, u64::MAX, &[1]), ConfigWrite::default());
        assert_eq!(c.read(5000, 0), u32::MAX);
        let looped = {
            let mut s = sample_config();
            s[0x81] = 0x40; // PCIe -> PM: a loop
            s[0x102..0x104].copy_from_slice(&[0x00, 0x10]); // SR-IOV -> itself
            s
        };
        VirtConfig::new("x", &looped, sample_sizes(), RomOptions::default()).unwrap();
        assert!(VirtConfig::new("x", &[0u8; 10], sample_sizes(), RomOptions::default()).is_err());
        let mut bridge = sample_config();
        bridge[0x0e] = 1;
        assert!(VirtConfig::new("x", &bridge, sample_sizes(), RomOptions::default()).is_err());
        assert!(VirtConfig::new("x", &sample_config(), [0x3000, 0, 0, 0, 0, 0, 0], RomOptions::default()).is_err());
    }

    #[test]
    fn rombar_off_hides_rom() {
        let c =
            VirtConfig::new("x", &sample_config(), sample_sizes(), RomOptions { hidden: true, file_size: 0 }).unwrap();
        assert!(c.bar_info(BarIndex::ROM).is_none());
        assert_eq!(c.read(ROM_BAR / 4, 0xffff_ffff), 0);
    }
}
