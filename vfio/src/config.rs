//! Config-space virtualization of an assigned device, on the pci crate's model: the
//! device's registers in a [`PassthroughConfig`] (a `pci::ConfigSpace` shadow for what is
//! emulated, a mask layer for what goes to the device), its BARs in `pci::Bars`, MSI and
//! MSI-X in pci's capability types. Pure: no I/O.
//!
//! Emulated: BARs and the ROM BAR, the command register's I/O and memory decode bits, the
//! MSI and MSI-X capabilities, the capability pointers (to hide capabilities) and every byte
//! of a hidden capability, the multi-function bit, the interrupt line. Everything else is the
//! device's. A guest write to a dword holding device bits is forwarded with its emulated bits
//! replaced by the values the VMM chose for the device (the decode bits: always on).

use std::ops::Range;

use pci::bar::{BarError, Bars, REG_BAR0, REG_ROM_ENDPOINT};
use pci::capability::msi::{MsiCapability, MsiError};
use pci::capability::msix::{MsixCapability, MsixError};
use pci::capability::{CAP_ID_MSI, CAP_ID_MSIX};
use pci::config_space::{COMMAND_IO, COMMAND_MEMORY, REG_BIST_HEADER, REG_COMMAND_STATUS, REG_INTERRUPT};
use pci::{
    BarIndex, BarKind, BarRegion, BarSpec, ConfigEffects, ConfigSpace, DeviceWrite, HeaderType, PassthroughConfig,
};

/// Standard capabilities a guest may see (others are hidden): PM, VPD, MSI, vendor-specific,
/// PCI Express, MSI-X, Advanced Features.
const STD_CAPS_VISIBLE: &[u16] = &[0x01, 0x03, 0x05, 0x09, 0x10, 0x11, 0x13];
/// Extended capabilities a guest must not touch: ACS, ARI, ATS, SR-IOV, MR-IOV, multicast,
/// PRI, resizable BAR, PASID, DPC, VF resizable BAR. They configure the host's view of the
/// device (function numbering, VFs, address translation, BAR sizes the VMM already mapped).
const EXT_CAPS_HIDDEN: &[u16] = &[0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x15, 0x1b, 0x1d, 0x24];
/// Header type register: the multi-function bit (the guest sees a single function).
const HEADER_MULTI_FUNCTION: u32 = 0x0080_0000;
const DECODE: u32 = (COMMAND_IO | COMMAND_MEMORY) as u32;
const MSI_CONTROL_ENABLE_MME: u8 = 0x71;
const MSIX_CONTROL_ENABLE_MASK: u8 = 0xc0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{bdf}: config space is {len} bytes, need at least 64")]
    ParseHeader { bdf: String, len: usize },
    #[error("{bdf}: header type {header_type:#x} is not a type-0 endpoint (bridges cannot be assigned)")]
    ParseHeaderType { bdf: String, header_type: u8 },
    #[error("{bdf}: BAR{index} region is {size:#x} bytes, not a power of two")]
    ParseBarSize { bdf: String, index: u8, size: u64 },
    #[error("{bdf}: the device's BAR{index} cannot be emulated")]
    DefineBar {
        bdf: String,
        index: u8,
        #[source]
        source: BarError,
    },
    #[error("{bdf}: the device's MSI capability cannot be emulated")]
    ParseMsi {
        bdf: String,
        #[source]
        source: MsiError,
    },
    #[error("{bdf}: the device's MSI-X capability cannot be emulated")]
    ParseMsix {
        bdf: String,
        #[source]
        source: MsixError,
    },
}

/// What a guest config write changed, for the device to act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigWrite {
    pub effects: ConfigEffects,
    /// Bytes to forward to the device.
    pub device_writes: Vec<DeviceWrite>,
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

fn dword_at(bytes: &[u8], offset: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = offset.checked_add(4).and_then(|end| bytes.get(offset..end)) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

/// The guest's view of an assigned function's config space.
#[derive(Clone, Debug)]
pub struct AssignedConfig {
    bdf: String,
    regs: PassthroughConfig,
    bars: Bars,
    msi: Option<MsiCapability>,
    msix: Option<MsixCapability>,
    /// Byte ranges of the hidden capabilities (standard and extended).
    hidden: Vec<Range<usize>>,
}

impl AssignedConfig {
    /// Builds the guest's view from the device's config bytes (`config.len()` is the VFIO
    /// config region size, 256 or 4096) and its region sizes (index 6 = ROM, 0 = absent).
    pub fn new(bdf: &str, config: &[u8], bar_sizes: [u64; 7], rom: RomOptions) -> Result<Self, ConfigError> {
        if config.len() < 64 {
            return Err(ConfigError::ParseHeader { bdf: bdf.into(), len: config.len() });
        }
        let header_type = config[0x0e] & 0x7f;
        if header_type != 0 {
            return Err(ConfigError::ParseHeaderType { bdf: bdf.into(), header_type });
        }
        let mut regs = PassthroughConfig::new(HeaderType::Endpoint, config);
        // First, while the shadow still holds the device's lists as they are.
        let std = regs.hide_capabilities(|id| STD_CAPS_VISIBLE.contains(&id));
        let ext = regs.hide_extended_capabilities(|id| !EXT_CAPS_HIDDEN.contains(&id));
        let mut cfg = Self {
            bdf: bdf.into(),
            regs,
            bars: Bars::new(HeaderType::Endpoint),
            msi: None,
            msix: None,
            hidden: std.hidden.into_iter().chain(ext.hidden).collect(),
        };
        cfg.emulate_header();
        cfg.define_bars(config, bar_sizes, rom)?;
        for cap in std.visible {
            match u8::try_from(cap.id) {
                Ok(CAP_ID_MSI) if cfg.msi.is_none() => cfg.emulate_msi(cap.offset)?,
                Ok(CAP_ID_MSIX) if cfg.msix.is_none() => cfg.emulate_msix(cap.offset)?,
                _ => {}
            }
        }
        Ok(cfg)
    }

    fn emulate_header(&mut self) {
        // Decode bits: the guest gets its own copy (starting off); the device keeps
        // decoding so the mmapped BARs work (the memory slots go while the guest's bit is off).
        self.regs.emulate_value(REG_COMMAND_STATUS, DECODE, 0);
        self.regs.space_mut().set_write_mask(REG_COMMAND_STATUS, DECODE);
        self.regs.emulate_value(REG_BIST_HEADER, HEADER_MULTI_FUNCTION, 0);
        // Interrupt line: firmware/guest bookkeeping only; the pin is the device's.
        self.regs.emulate_value(REG_INTERRUPT, 0xff, 0);
        self.regs.emulate(REG_INTERRUPT, 0xff00);
        self.regs.space_mut().set_write_mask(REG_INTERRUPT, 0xff);
    }

    fn define_bars(&mut self, config: &[u8], sizes: [u64; 7], rom: RomOptions) -> Result<(), ConfigError> {
        for reg in (REG_BAR0..REG_BAR0 + 6).chain([REG_ROM_ENDPOINT]) {
            self.regs.emulate_value(reg, u32::MAX, 0);
        }
        let mut i = 0usize;
        while i < 6 {
            let raw = dword_at(config, (REG_BAR0 + i) * 4);
            let size = sizes[i];
            if size == 0 {
                i += 1;
                continue;
            }
            if !size.is_power_of_two() {
                return Err(ConfigError::ParseBarSize { bdf: self.bdf.clone(), index: i as u8, size });
            }
            let prefetchable = raw & 0x8 != 0;
            // A 64-bit type in the last BAR has no upper register: taken as 32-bit.
            let (kind, size, regs) = if raw & 1 == 1 {
                (BarKind::Io, size.max(4), 1)
            } else if (raw >> 1) & 3 == 2 && i < 5 {
                (BarKind::Mem64 { prefetchable }, size.max(16), 2)
            } else {
                (BarKind::Mem32 { prefetchable }, size.max(16), 1)
            };
            self.define_bar(BarIndex(i as u8), kind, size)?;
            i += regs;
        }
        let rom_size = if rom.file_size != 0 { rom.file_size } else { sizes[6] };
        if !rom.hidden && rom_size != 0 {
            self.define_bar(BarIndex::ROM, BarKind::Rom, rom_size.next_power_of_two().max(2048))?;
        }
        // The device decodes whatever it has BARs for, whatever the guest's bits say: the
        // mmapped BARs only work while it does (and after a reset the guest's enable brings
        // these bits back through the forwarded command write).
        let decode =
            self.bars.regions().iter().fold(0, |d, b| {
                d | if b.kind == BarKind::Io { u32::from(COMMAND_IO) } else { u32::from(COMMAND_MEMORY) }
            });
        self.regs.set_device_value(REG_COMMAND_STATUS, DECODE, decode);
        Ok(())
    }

    fn define_bar(&mut self, index: BarIndex, kind: BarKind, size: u64) -> Result<(), ConfigError> {
        self.bars.add(index, kind, size).map_err(|source| ConfigError::DefineBar {
            bdf: self.bdf.clone(),
            index: index.0,
            source,
        })
    }

    fn emulate_msi(&mut self, offset: usize) -> Result<(), ConfigError> {
        let msi = MsiCapability::parse(self.regs.space_mut(), offset)
            .map_err(|source| ConfigError::ParseMsi { bdf: self.bdf.clone(), source })?;
        self.regs.emulate_bytes(offset + 2..offset + msi.size());
        self.msi = Some(msi);
        Ok(())
    }

    fn emulate_msix(&mut self, offset: usize) -> Result<(), ConfigError> {
        let msix = MsixCapability::parse(self.regs.space_mut(), offset)
            .map_err(|source| ConfigError::ParseMsix { bdf: self.bdf.clone(), source })?;
        // Message Control, Table and PBA offset/BIR: the guest's own table is emulated.
        self.regs.emulate_bytes(offset + 2..offset + 12);
        self.msix = Some(msix);
        Ok(())
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The bits of dword `reg` that come from the device (0: no need to read it).
    pub fn device_bits(&self, reg: usize) -> u32 {
        if self.bars.is_bar_reg(reg) {
            return 0;
        }
        self.regs.device_bits(reg)
    }

    /// The guest's view of dword `reg`, given the device's current value of it.
    pub fn read(&self, reg: usize, device_value: u32) -> u32 {
        if self.bars.is_bar_reg(reg) {
            return self.bars.read_reg(reg);
        }
        self.regs.read(reg, device_value)
    }

    /// Applies a guest write of `data` at byte `offset` (0..4) of dword `reg`.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigWrite {
        let mut out = ConfigWrite::default();
        let command_before = self.regs.space().command();
        if self.bars.is_bar_reg(reg) {
            self.bars.write_reg(reg, offset, data);
        } else {
            let before = self.regs.space().read(reg);
            out.device_writes = self.regs.write(reg, offset, data);
            if self.regs.space().read(reg) != before {
                out.msi_changed = self.msi.is_some_and(|m| m.covers(reg));
                out.msix_changed = self.msix.is_some_and(|m| m.covers(reg));
            }
        }
        let command = self.regs.space().command();
        let changed = command ^ command_before;
        let (mem, io) = (command & COMMAND_MEMORY != 0, command & COMMAND_IO != 0);
        out.effects = ConfigEffects {
            bar_moves: self.bars.take_moves(mem, io),
            mem_decode: (changed & COMMAND_MEMORY != 0).then_some(mem),
            io_decode: (changed & COMMAND_IO != 0).then_some(io),
            wait: None,
            windows: Vec::new(),
        };
        out
    }

    /// Places BAR `index` at `addr` (VMM set-up, before the guest runs).
    pub fn place_bar(&mut self, index: BarIndex, addr: u64) -> Result<(), BarError> {
        self.bars.place(index, addr)
    }

    /// The BARs to place: index, kind and size.
    pub fn bar_specs(&self) -> Vec<BarSpec> {
        self.bars.regions().into_iter().map(|r| BarSpec { index: r.index, kind: r.kind, size: r.size }).collect()
    }

    /// The BARs at the addresses the VMM has them mapped.
    pub fn bar_regions(&self) -> Vec<BarRegion> {
        self.bars.regions()
    }

    /// Whether guest accesses to `index` reach the device now.
    pub fn bar_decodes(&self, index: BarIndex) -> bool {
        let command = self.regs.space().command();
        let mem = command & COMMAND_MEMORY != 0;
        match self.bars.kind(index) {
            Some(BarKind::Io) => command & COMMAND_IO != 0,
            Some(BarKind::Rom) => mem && self.bars.rom_enabled(),
            Some(_) => mem,
            None => false,
        }
    }

    /// The emulated registers (MSI and MSI-X state lives there).
    pub fn space(&self) -> &ConfigSpace {
        self.regs.space()
    }

    pub fn msi(&self) -> Option<MsiCapability> {
        self.msi
    }

    pub fn msix(&self) -> Option<MsixCapability> {
        self.msix
    }

    /// Interrupt pin as the device reports it (0 = no INTx).
    pub fn interrupt_pin(&self) -> u8 {
        (self.regs.space().read(REG_INTERRUPT) >> 8) as u8
    }

    /// Byte ranges of hidden capabilities.
    pub fn hidden_ranges(&self) -> &[Range<usize>] {
        &self.hidden
    }

    /// The emulated bits of config byte `off` (never written to the device as the guest
    /// gave them); all of them beyond the config space.
    pub fn byte_emulated(&self, off: usize) -> u8 {
        let reg = off / 4;
        let bits = if self.bars.is_bar_reg(reg) { u32::MAX } else { self.regs.emulated(reg) };
        (bits >> ((off % 4) * 8)) as u8
    }

    /// The value the device is given for the emulated bits of byte `off`.
    pub fn device_value_byte(&self, off: usize) -> u8 {
        (self.regs.device_value(off / 4) >> ((off % 4) * 8)) as u8
    }

    /// Back to the power-on state the guest expects after a reset: decode off, MSI, MSI-X
    /// and the ROM off; BAR placement and the capability layout stay.
    pub fn reset(&mut self) {
        self.regs.emulate_value(REG_COMMAND_STATUS, DECODE, 0);
        let space = self.regs.space_mut();
        if let Some(msi) = self.msi {
            let control = space.bytes::<1>(msi.offset() + 2)[0];
            space.set_bytes(msi.offset() + 2, &[control & !MSI_CONTROL_ENABLE_MME]);
        }
        if let Some(msix) = self.msix {
            let control = space.bytes::<1>(msix.offset() + 3)[0];
            space.set_bytes(msix.offset() + 3, &[control & !MSIX_CONTROL_ENABLE_MASK]);
        }
        let rom = self.bars.read_reg(REG_ROM_ENDPOINT);
        self.bars.write_reg(REG_ROM_ENDPOINT, 0, &[(rom & !1) as u8]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A captured-style config space: NVMe-like endpoint with a 16 KiB 64-bit BAR0, PM at
    /// 0x40, MSI (64-bit, PVM) at 0x50, MSI-X at 0x70 (table BAR0+0x2000, PBA BAR0+0x3000,
    /// 4 vectors), PCI-X (hidden) at 0x68, PCIe at 0x80; extended: SR-IOV at 0x100, AER at
    /// 0x140, ARI at 0x180.
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

    fn cfg() -> AssignedConfig {
        AssignedConfig::new("0000:02:00.0", &sample_config(), sample_sizes(), RomOptions::default()).unwrap()
    }

    fn guest_read(c: &AssignedConfig, host: &[u8], off: usize) -> u32 {
        c.read(off / 4, dword_at(host, off & !3))
    }

    fn forwarded(w: &ConfigWrite) -> Vec<(u64, Vec<u8>)> {
        w.device_writes.iter().map(|d| (d.offset, d.data.clone())).collect()
    }

    #[test]
    fn bars_size_and_relocate() {
        let mut c = cfg();
        let host = sample_config();
        c.place_bar(BarIndex(0), 0x1_0000_0000).unwrap();
        assert_eq!(guest_read(&c, &host, 0x10), 0x0000_0004);
        assert_eq!(guest_read(&c, &host, 0x14), 1);
        // Sizing with decode off.
        let w = c.write(0x10 / 4, 0, &u32::MAX.to_le_bytes());
        assert!(w.device_writes.is_empty());
        assert_eq!(guest_read(&c, &host, 0x10), 0xffff_c004);
        c.write(0x14 / 4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(guest_read(&c, &host, 0x14), u32::MAX);
        c.write(0x10 / 4, 0, &0xe000_0000u32.to_le_bytes());
        c.write(0x14 / 4, 0, &0u32.to_le_bytes());
        assert!(c.bar_regions().iter().any(|b| b.addr == 0x1_0000_0000), "no move while decode off");
        // Decode on: the move is reported once.
        let w = c.write(REG_COMMAND_STATUS, 0, &[0x06, 0x00]);
        assert_eq!(w.effects.mem_decode, Some(true));
        assert_eq!(w.effects.bar_moves.len(), 1);
        assert_eq!(w.effects.bar_moves[0].new_addr, 0xe000_0000);
        assert_eq!(w.effects.bar_moves[0].old_addr, 0x1_0000_0000);
        // Bus master (bit 2) goes to the device, decode bits as the VMM fixed them (on).
        assert_eq!(forwarded(&w), vec![(4, vec![0x07, 0x00])]);
        let w = c.write(REG_COMMAND_STATUS, 0, &[0x04]);
        assert_eq!(w.effects.mem_decode, Some(false));
        assert_eq!(forwarded(&w), vec![(4, vec![0x07])], "device keeps decoding");
        // IO BAR (16-bit port addresses) and ROM sizing.
        c.write(0x18 / 4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(guest_read(&c, &host, 0x18), 0x0000_ff01);
        c.write(0x30 / 4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(guest_read(&c, &host, 0x30), 0xffff_0001);
        assert!(!c.bar_decodes(BarIndex::ROM), "memory decode is off");
        c.write(REG_COMMAND_STATUS, 0, &[0x02]);
        assert!(c.bar_decodes(BarIndex::ROM) && c.bar_decodes(BarIndex(0)) && !c.bar_decodes(BarIndex(2)));
        assert!(!c.bar_decodes(BarIndex(1)), "no BAR1");
        c.reset();
        assert!(!c.bar_decodes(BarIndex(0)));
        assert_eq!(guest_read(&c, &host, 0x30) & 1, 0, "ROM disabled by a reset");
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
        assert_eq!(c.hidden_ranges(), &[0x68..0x70, 0x100..0x140, 0x180..0x1000]);
    }

    #[test]
    fn msi_and_msix_are_emulated() {
        let mut c = cfg();
        let host = sample_config();
        let w = c.write(0x54 / 4, 0, &0xfee0_1000u32.to_le_bytes());
        assert!(w.device_writes.is_empty() && w.msi_changed);
        c.write(0x5c / 4, 0, &[0x41, 0x00]);
        c.write(0x50 / 4, 2, &[0x21, 0x00]); // enable, MME=2 (4 vectors)
        let msi = c.msi().unwrap();
        let routes = msi.routes(c.space());
        assert_eq!(routes.iter().flatten().map(|m| (m.address, m.data)).collect::<Vec<_>>().len(), 4);
        assert_eq!(routes[3].map(|m| (m.address, m.data)), Some((0xfee0_1000, 0x43)));
        assert_eq!(guest_read(&c, &host, 0x50) >> 16, 0x01a7);
        let w = c.write(0x70 / 4, 2, &[0xff, 0xff]);
        assert!(w.msix_changed && w.device_writes.is_empty());
        let msix = c.msix().unwrap();
        assert_eq!(msix.control(c.space()), (true, true));
        assert_eq!(guest_read(&c, &host, 0x70) >> 16, 0xc003, "table size read-only");
        let m = msix.config();
        assert_eq!((m.vectors, m.table_bar, m.table_offset, m.pba_offset), (4, BarIndex(0), 0x2000, 0x3000));
        assert!(!c.write(0x70 / 4, 2, &[0xff, 0xff]).msix_changed, "no change, nothing to do");
        c.reset();
        assert_eq!(msix.control(c.space()), (false, false));
        assert!(!msi.enabled(c.space()));
    }

    #[test]
    fn spanning_write_is_split_per_byte() {
        let mut c = cfg();
        // Dword 0x3c: line (virtual, writable), pin (virtual, ro), min_gnt/max_lat (device).
        let w = c.write(0x3c / 4, 0, &[0x0a, 0x04, 0x11, 0x22]);
        assert_eq!(forwarded(&w), vec![(0x3e, vec![0x11, 0x22])]);
        assert_eq!(c.read(0x3c / 4, 0), 0x0000_010a);
        assert_eq!(c.interrupt_pin(), 1);
        // Status/command dword: command decode bits replaced by the fixed host value.
        let w = c.write(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(forwarded(&w), vec![(4, vec![0xff, 0xff, 0xff, 0xff])]);
        let w = c.write(1, 0, &[0x00]);
        assert_eq!(forwarded(&w), vec![(4, vec![0x03])], "guest cannot turn device decode off");
        assert_eq!((c.byte_emulated(4), c.device_value_byte(4)), (0x03, 0x03));
        assert_eq!((c.byte_emulated(0x10), c.byte_emulated(0x42), c.byte_emulated(5000)), (0xff, 0, 0xff));
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
        AssignedConfig::new("x", &looped, sample_sizes(), RomOptions::default()).unwrap();
        assert!(AssignedConfig::new("x", &[0u8; 10], sample_sizes(), RomOptions::default()).is_err());
        let mut bridge = sample_config();
        bridge[0x0e] = 1;
        assert!(AssignedConfig::new("x", &bridge, sample_sizes(), RomOptions::default()).is_err());
        let err = AssignedConfig::new("x", &sample_config(), [0x3000, 0, 0, 0, 0, 0, 0], RomOptions::default());
        assert!(matches!(err, Err(ConfigError::ParseBarSize { index: 0, .. })));
        let err = AssignedConfig::new("x", &sample_config(), [0x4000, 0, 0x1000, 0, 0, 0, 0], RomOptions::default());
        assert!(matches!(err, Err(ConfigError::DefineBar { index: 2, .. })), "a 4 KiB I/O BAR");
        let mut msi_at_end = sample_config();
        msi_at_end[0x41] = 0xf0; // PM -> an MSI capability running past 0x100
        msi_at_end[0xf0..0xf4].copy_from_slice(&0x0180_0005u32.to_le_bytes());
        let err = AssignedConfig::new("x", &msi_at_end, sample_sizes(), RomOptions::default());
        assert!(matches!(err, Err(ConfigError::ParseMsi { .. })), "{err:?}");
    }

    #[test]
    fn rombar_off_hides_rom_and_romfile_sizes_it() {
        let c = AssignedConfig::new("x", &sample_config(), sample_sizes(), RomOptions { hidden: true, file_size: 0 })
            .unwrap();
        assert!(c.bar_specs().iter().all(|b| b.index != BarIndex::ROM));
        assert_eq!(c.read(0x30 / 4, 0xffff_ffff), 0);
        let c =
            AssignedConfig::new("x", &sample_config(), sample_sizes(), RomOptions { hidden: false, file_size: 3000 })
                .unwrap();
        assert_eq!(c.bar_specs().iter().find(|b| b.index == BarIndex::ROM).map(|b| b.size), Some(4096));
        let no_rom = [0x4000, 0, 0x100, 0, 0, 0, 0];
        let c = AssignedConfig::new("x", &sample_config(), no_rom, RomOptions::default()).unwrap();
        assert!(c.bar_specs().iter().all(|b| b.index != BarIndex::ROM));
    }

    #[test]
    fn a_conventional_device_has_no_extended_space() {
        let c = AssignedConfig::new("x", &sample_config()[..256], sample_sizes(), RomOptions::default()).unwrap();
        assert_eq!(c.device_bits(0x40), 0);
        assert_eq!(c.read(0x40, 0x1234_5678), 0);
        assert_eq!(c.read(11, 0x1234_5678), 0x1234_5678, "subsystem ids are the device's");
        assert_eq!(c.device_bits(4), 0, "BARs are emulated");
    }
}
