//! A reusable emulated PCI function: config space, BARs, MSI and MSI-X wired together, so
//! an emulated device (the host bridge, root ports, virtio-pci later) implements
//! [`PciDevice`] by supplying only its BAR registers as a [`FunctionBackend`].

use crate::bar::{BarError, Bars};
use crate::capability::msi::{self, MsiCapability, MsiConfig, MsiError};
use crate::capability::msix::{MsixCapability, MsixChange, MsixConfig, MsixError, MsixRegion, Table};
use crate::capability::pcie::{add_pcie_capability, PcieCapabilityConfig};
use crate::capability::pm::add_pm_capability;
use crate::config_space::{ConfigSpace, ConfigSpaceError, DeviceIds, HeaderType, COMMAND_IO, COMMAND_MEMORY};
use crate::device::{BarIndex, BarKind, BarRegion, ConfigEffects, PciDevice};
use crate::interrupt::{InterruptError, MsiMessage, MsiVectors, VectorIndex};

/// The device-specific part: accesses to BAR bytes outside the MSI-X table and PBA.
pub trait FunctionBackend: Send {
    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]);
}

/// The backend of a function without device registers (bridges, the host bridge).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRegisters;

impl FunctionBackend for NoRegisters {
    fn read_bar(&mut self, _bar: BarIndex, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: BarIndex, _offset: u64, _data: &[u8]) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    pub index: BarIndex,
    pub kind: BarKind,
    pub size: u64,
}

/// Everything that shapes a function's config space.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    pub ids: DeviceIds,
    pub header: HeaderType,
    /// `Some` makes it a PCIe function (4 KiB config space, PCIe capability).
    pub pcie: Option<PcieCapabilityConfig>,
    pub power_management: bool,
    pub bars: Vec<BarSpec>,
    pub msi: Option<MsiConfig>,
    pub msix: Option<MsixConfig>,
    /// 0 = no INTx, 1..=4 = INTA..INTD.
    pub interrupt_pin: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("{name}: defining BAR failed")]
    DefineBar {
        name: String,
        #[source]
        source: BarError,
    },
    #[error("{name}: placing BAR {bar:?} at {addr:#x} failed")]
    PlaceBar {
        name: String,
        bar: BarIndex,
        addr: u64,
        #[source]
        source: BarError,
    },
    #[error("{name}: adding a capability failed")]
    AddCapability {
        name: String,
        #[source]
        source: ConfigSpaceError,
    },
    #[error("{name}: adding the MSI capability failed")]
    AddMsi {
        name: String,
        #[source]
        source: MsiError,
    },
    #[error("{name}: adding the MSI-X capability failed")]
    AddMsix {
        name: String,
        #[source]
        source: MsixError,
    },
    #[error("{name}: MSI-X {what} ({bytes:#x} bytes at {offset:#x}) does not fit in BAR {bar:?}")]
    MsixPlacement { name: String, what: &'static str, bar: BarIndex, offset: u64, bytes: u64 },
    #[error("{name}: raising vector {vector:?} failed")]
    Raise {
        name: String,
        vector: VectorIndex,
        #[source]
        source: InterruptError,
    },
}

/// An emulated function. `name` prefixes its log lines (e.g. its BDF).
pub struct EmulatedFunction<B> {
    name: String,
    config: ConfigSpace,
    bars: Bars,
    msi: Option<MsiCapability>,
    msix: Option<(MsixCapability, Table)>,
    vectors: Option<Box<dyn MsiVectors>>,
    backend: B,
}

impl<B: FunctionBackend> EmulatedFunction<B> {
    pub fn new(name: impl Into<String>, cfg: &FunctionConfig, backend: B) -> Result<Self, FunctionError> {
        let name = name.into();
        let mut config = ConfigSpace::new(cfg.ids, cfg.header, cfg.pcie.is_some());
        config.set_interrupt_pin(cfg.interrupt_pin);
        let cap_err = |source| FunctionError::AddCapability { name: name.clone(), source };
        if let Some(p) = cfg.pcie {
            add_pcie_capability(&mut config, p).map_err(cap_err)?;
        }
        if cfg.power_management {
            add_pm_capability(&mut config).map_err(cap_err)?;
        }
        let mut bars = Bars::new(cfg.header);
        for b in &cfg.bars {
            bars.add(b.index, b.kind, b.size)
                .map_err(|source| FunctionError::DefineBar { name: name.clone(), source })?;
        }
        let msi = cfg
            .msi
            .map(|m| MsiCapability::add(&mut config, m))
            .transpose()
            .map_err(|source| FunctionError::AddMsi { name: name.clone(), source })?;
        let msix = match cfg.msix {
            Some(m) => {
                let cap = MsixCapability::add(&mut config, m)
                    .map_err(|source| FunctionError::AddMsix { name: name.clone(), source })?;
                let table =
                    Table::new(m.vectors).map_err(|source| FunctionError::AddMsix { name: name.clone(), source })?;
                for (what, bar, offset, bytes) in [
                    ("table", m.table_bar, m.table_offset, table.table_bytes()),
                    ("PBA", m.pba_bar, m.pba_offset, table.pba_bytes()),
                ] {
                    let offset = u64::from(offset);
                    let fits = bars.size(bar).is_some_and(|size| offset + bytes <= size);
                    if !fits || bar == BarIndex::ROM {
                        return Err(FunctionError::MsixPlacement { name, what, bar, offset, bytes });
                    }
                }
                let (t, p) = (u64::from(m.table_offset), u64::from(m.pba_offset));
                if m.table_bar == m.pba_bar && t < p + table.pba_bytes() && p < t + table.table_bytes() {
                    return Err(FunctionError::MsixPlacement {
                        name,
                        what: "PBA (overlaps the table)",
                        bar: m.pba_bar,
                        offset: p,
                        bytes: table.pba_bytes(),
                    });
                }
                Some((cap, table))
            }
            None => None,
        };
        Ok(Self { name, config, bars, msi, msix, vectors: None, backend })
    }

    /// Hands the function its interrupt vectors (one per MSI or MSI-X vector).
    pub fn set_vectors(&mut self, vectors: Box<dyn MsiVectors>) {
        self.vectors = Some(vectors);
    }

    /// Firmware-time BAR placement (before the guest runs).
    pub fn place_bar(&mut self, bar: BarIndex, addr: u64) -> Result<(), FunctionError> {
        self.bars.place(bar, addr).map_err(|source| FunctionError::PlaceBar {
            name: self.name.clone(),
            bar,
            addr,
            source,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// Device-side access to config space (status bits, bridge windows at set-up).
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn msi(&self) -> Option<MsiCapability> {
        self.msi
    }

    pub fn msix_table(&self) -> Option<&Table> {
        self.msix.as_ref().map(|(_, t)| t)
    }

    /// The device raises vector `v` (MSI-X if enabled, else MSI). Returns whether it was
    /// delivered now; a masked vector is left pending and fires on unmask.
    pub fn raise(&mut self, v: VectorIndex) -> Result<bool, FunctionError> {
        let deliver = if let Some((_, table)) = self.msix.as_mut().filter(|(_, t)| t.enabled()) {
            table.notify(v)
        } else if let Some(msi) = self.msi {
            let routed = msi.routes(&self.config).get(usize::from(v.0)).copied().flatten().is_some();
            if !routed && msi.enabled(&self.config) {
                msi.set_pending(&mut self.config, v, true);
            }
            routed
        } else {
            false
        };
        if deliver {
            if let Some(vectors) = &self.vectors {
                vectors.trigger(v).map_err(|source| FunctionError::Raise {
                    name: self.name.clone(),
                    vector: v,
                    source,
                })?;
            }
        }
        Ok(deliver)
    }

    fn apply_routes(&mut self, routes: &[(VectorIndex, Option<MsiMessage>)], fire: &[VectorIndex]) {
        if routes.is_empty() && fire.is_empty() {
            return;
        }
        let Some(vectors) = self.vectors.as_mut() else {
            ratelog::debug_limited!("{}: interrupt change with no vectors attached", self.name);
            return;
        };
        for (v, route) in routes {
            if let Err(e) = vectors.set_route(*v, *route) {
                ratelog::warn_limited!("{}: routing vector {:?} failed: {e}", self.name, v);
            }
        }
        if !routes.is_empty() {
            if let Err(e) = vectors.commit() {
                ratelog::warn_limited!("{}: committing interrupt routes failed: {e}", self.name);
            }
        }
        for v in fire {
            if let Err(e) = vectors.trigger(*v) {
                ratelog::warn_limited!("{}: raising pending vector {:?} failed: {e}", self.name, v);
            }
        }
    }

    fn apply_msix(&mut self, change: MsixChange) {
        self.apply_routes(&change.routes, &change.fire);
    }

    /// Which MSI-X structure an access falls in.
    fn msix_target(&self, bar: BarIndex, offset: u64, len: usize) -> Option<MsixRegion> {
        self.msix.as_ref()?.0.config().locate(bar, offset, len)
    }
}

impl<B: FunctionBackend> PciDevice for EmulatedFunction<B> {
    fn bars(&self) -> Vec<BarRegion> {
        self.bars.regions()
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if self.bars.is_bar_reg(reg) {
            return self.bars.read_reg(reg);
        }
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigEffects {
        let command_before = self.config.command();
        if self.bars.is_bar_reg(reg) {
            self.bars.write_reg(reg, offset, data);
        } else {
            let msi = self.msi.filter(|m| m.covers(reg));
            let msi_before = msi.map(|m| m.routes(&self.config));
            self.config.write(reg, offset, data);
            if let (Some(m), Some(before)) = (msi, msi_before) {
                let changes = msi::route_changes(&before, &m.routes(&self.config));
                self.apply_routes(&changes, &[]);
            }
            if let Some((cap, _)) = self.msix.as_ref().filter(|(c, _)| c.covers(reg)) {
                let (enabled, masked) = cap.control(&self.config);
                if let Some((_, table)) = self.msix.as_mut() {
                    let change = table.set_control(enabled, masked);
                    self.apply_msix(change);
                }
            }
        }
        let command = self.config.command();
        let changed = command ^ command_before;
        let (mem, io) = (command & COMMAND_MEMORY != 0, command & COMMAND_IO != 0);
        ConfigEffects {
            bar_moves: self.bars.take_moves(mem, io),
            mem_decode: (changed & COMMAND_MEMORY != 0).then_some(mem),
            io_decode: (changed & COMMAND_IO != 0).then_some(io),
            wait: None,
            windows: Vec::new(),
        }
    }

    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]) {
        match self.msix_target(bar, offset, data.len()) {
            Some(MsixRegion::Table(rel)) => self.msix.as_ref().map_or((), |(_, t)| t.read(rel, data)),
            Some(MsixRegion::Pba(rel)) => self.msix.as_ref().map_or((), |(_, t)| t.read_pba(rel, data)),
            Some(MsixRegion::Straddle) => data.fill(0xff),
            None => self.backend.read_bar(bar, offset, data),
        }
    }

    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]) {
        match self.msix_target(bar, offset, data.len()) {
            Some(MsixRegion::Table(rel)) => {
                if let Some((_, t)) = self.msix.as_mut() {
                    let change = t.write(rel, data);
                    self.apply_msix(change);
                }
            }
            // The PBA is read-only (PCI 3.0 6.8.2.10).
            Some(MsixRegion::Pba(_)) => ratelog::debug_limited!("{}: PBA write dropped", self.name),
            Some(MsixRegion::Straddle) => {
                ratelog::debug_limited!("{}: write straddling the MSI-X table or PBA dropped", self.name)
            }
            None => self.backend.write_bar(bar, offset, data),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capability::pcie::PciePortType;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    /// Records routes, commits and triggers.
    pub(crate) struct RecordingVectors {
        pub fds: Vec<EventFd>,
        pub log: Arc<Mutex<Vec<String>>>,
    }

    impl RecordingVectors {
        pub(crate) fn new(n: usize) -> (Self, Arc<Mutex<Vec<String>>>) {
            let log = Arc::new(Mutex::new(Vec::new()));
            let fds = (0..n).map(|_| EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap()).collect();
            (Self { fds, log: log.clone() }, log)
        }
    }

    impl MsiVectors for RecordingVectors {
        fn len(&self) -> usize {
            self.fds.len()
        }
        fn irqfd(&self, v: VectorIndex) -> Option<&EventFd> {
            self.fds.get(usize::from(v.0))
        }
        fn set_route(&mut self, v: VectorIndex, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
            let entry = match msg {
                Some(m) => format!("route {} {:#x}/{:#x}", v.0, m.address, m.data),
                None => format!("mask {}", v.0),
            };
            self.log.lock().unwrap().push(entry);
            Ok(())
        }
        fn commit(&mut self) -> Result<(), InterruptError> {
            self.log.lock().unwrap().push("commit".into());
            Ok(())
        }
        fn trigger(&self, v: VectorIndex) -> Result<(), InterruptError> {
            self.log.lock().unwrap().push(format!("fire {}", v.0));
            Ok(())
        }
    }

    /// A scratch register file behind BAR 0.
    pub(crate) struct Scratch(pub [u8; 64]);
    impl FunctionBackend for Scratch {
        fn read_bar(&mut self, _bar: BarIndex, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.0.get(offset as usize + i).copied().unwrap_or(0xff);
            }
        }
        fn write_bar(&mut self, _bar: BarIndex, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(r) = self.0.get_mut(offset as usize + i) {
                    *r = *b;
                }
            }
        }
    }

    pub(crate) fn test_config() -> FunctionConfig {
        FunctionConfig {
            ids: DeviceIds {
                vendor_id: 0x1af4,
                device_id: 0x1041,
                class_code: 0x020000,
                revision: 1,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 1,
            },
            header: HeaderType::Endpoint,
            pcie: Some(PcieCapabilityConfig {
                port_type: PciePortType::Endpoint,
                port_number: 0,
                slot_occupied: false,
            }),
            power_management: true,
            bars: vec![
                BarSpec { index: BarIndex(0), kind: BarKind::Mem32 { prefetchable: false }, size: 0x1000 },
                BarSpec { index: BarIndex(2), kind: BarKind::Mem64 { prefetchable: true }, size: 0x4000 },
            ],
            msi: Some(MsiConfig { vectors: 2, address_64bit: true, per_vector_mask: true }),
            msix: Some(MsixConfig {
                vectors: 4,
                table_bar: BarIndex(2),
                table_offset: 0,
                pba_bar: BarIndex(2),
                pba_offset: 0x2000,
            }),
            interrupt_pin: 1,
        }
    }

    fn function() -> (EmulatedFunction<Scratch>, Arc<Mutex<Vec<String>>>) {
        let mut f = EmulatedFunction::new("00:03.0", &test_config(), Scratch([0; 64])).unwrap();
        let (v, log) = RecordingVectors::new(4);
        f.set_vectors(Box::new(v));
        (f, log)
    }

    fn w32(f: &mut EmulatedFunction<Scratch>, reg: usize, v: u32) -> ConfigEffects {
        f.write_config(reg, 0, &v.to_le_bytes())
    }

    #[test]
    fn capabilities_present_in_order() {
        let (f, _) = function();
        let ids: Vec<u16> = f.config().capabilities().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![0x10, 0x01, 0x05, 0x11]);
    }

    #[test]
    fn bar_sizing_relocation_and_decode() {
        let (mut f, _) = function();
        f.place_bar(BarIndex(0), 0xc000_0000).unwrap();
        f.place_bar(BarIndex(2), 0x1_0000_0000).unwrap();
        assert!(w32(&mut f, 4, u32::MAX).is_empty());
        assert_eq!(f.read_config(4), 0xffff_f000);
        assert!(w32(&mut f, 4, 0xc010_0000).is_empty(), "decode is off");
        let e = w32(&mut f, 1, u32::from(COMMAND_MEMORY));
        assert_eq!(e.mem_decode, Some(true));
        assert_eq!(e.bar_moves.len(), 1);
        assert_eq!((e.bar_moves[0].old_addr, e.bar_moves[0].new_addr), (0xc000_0000, 0xc010_0000));
        let e = w32(&mut f, 4, 0xc020_0000);
        assert_eq!(e.bar_moves[0].new_addr, 0xc020_0000, "32-bit BAR moves with decode on");
        assert_eq!(e.mem_decode, None);
        let regions = f.bars();
        assert_eq!(regions.iter().map(|r| r.addr).collect::<Vec<_>>(), vec![0xc020_0000, 0x1_0000_0000]);
        let e = w32(&mut f, 1, 0);
        assert_eq!(e.mem_decode, Some(false));
    }

    #[test]
    fn msix_table_through_bar_routes_vectors() {
        let (mut f, log) = function();
        let cap = f.config().capabilities()[3].offset;
        f.write_config(cap / 4, 2, &0x8000u16.to_le_bytes());
        f.write_bar(BarIndex(2), 16, &0xfee0_0000u32.to_le_bytes());
        f.write_bar(BarIndex(2), 24, &0x31u32.to_le_bytes());
        assert!(!f.raise(VectorIndex(1)).unwrap(), "masked: pending");
        let mut pba = [0u8; 8];
        f.read_bar(BarIndex(2), 0x2000, &mut pba);
        assert_eq!(pba[0], 2);
        f.write_bar(BarIndex(2), 0x2000, &[0]);
        f.read_bar(BarIndex(2), 0x2000, &mut pba);
        assert_eq!(pba[0], 2, "PBA is read-only");
        f.write_bar(BarIndex(2), 28, &0u32.to_le_bytes());
        assert_eq!(*log.lock().unwrap(), vec!["route 1 0xfee00000/0x31", "commit", "fire 1"]);
        assert!(f.raise(VectorIndex(1)).unwrap());
        // Non-MSI-X BAR bytes reach the backend.
        f.write_bar(BarIndex(0), 4, &[7]);
        let mut b = [0u8; 1];
        f.read_bar(BarIndex(0), 4, &mut b);
        assert_eq!(b[0], 7);
    }

    #[test]
    fn msi_enable_routes_vectors() {
        let (mut f, log) = function();
        let cap = f.config().capabilities()[2].offset;
        w32(&mut f, cap / 4 + 1, 0xfee0_0000);
        w32(&mut f, cap / 4 + 3, 0x40);
        f.write_config(cap / 4, 2, &[0x11]);
        assert_eq!(*log.lock().unwrap(), vec!["route 0 0xfee00000/0x40", "route 1 0xfee00000/0x41", "commit"]);
        w32(&mut f, cap / 4 + 4, 1);
        assert_eq!(log.lock().unwrap()[3], "mask 0");
        assert!(!f.raise(VectorIndex(0)).unwrap());
        assert!(f.raise(VectorIndex(1)).unwrap());
    }

    #[test]
    fn bad_msix_placement_refused() {
        let mut cfg = test_config();
        cfg.msix = Some(MsixConfig {
            vectors: 4,
            table_bar: BarIndex(2),
            table_offset: 0x3ff8,
            pba_bar: BarIndex(2),
            pba_offset: 0x2000,
        });
        assert!(matches!(EmulatedFunction::new("x", &cfg, NoRegisters), Err(FunctionError::MsixPlacement { .. })));
        cfg.msix = Some(MsixConfig {
            vectors: 4,
            table_bar: BarIndex(0),
            table_offset: 0,
            pba_bar: BarIndex(0),
            pba_offset: 0x20,
        });
        assert!(matches!(EmulatedFunction::new("x", &cfg, NoRegisters), Err(FunctionError::MsixPlacement { .. })));
        cfg.msix = Some(MsixConfig {
            vectors: 4,
            table_bar: BarIndex(4),
            table_offset: 0,
            pba_bar: BarIndex(0),
            pba_offset: 0x20,
        });
        assert!(matches!(EmulatedFunction::new("x", &cfg, NoRegisters), Err(FunctionError::MsixPlacement { .. })));
    }

    /// Every config write, of any size at any offset of any register, to an endpoint (MSI,
    /// MSI-X, PCIe, PM) and to a root port: read-only bits never change, write-1-to-clear
    /// bits only clear, registers past 4 KiB read all-ones. BAR registers have their own
    /// property test in bar.rs.
    fn masks_hold<B: FunctionBackend>(
        f: &mut EmulatedFunction<B>,
        writes: &[(usize, u64, Vec<u8>)],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let masks = f.config().clone();
        for (reg, offset, data) in writes {
            let reg = *reg;
            if f.bars.is_bar_reg(reg) {
                continue;
            }
            let before = f.read_config(reg);
            f.write_config(reg, *offset, data);
            let after = f.read_config(reg);
            let (wm, c) = (masks.write_mask(reg), masks.w1c_mask(reg));
            proptest::prop_assert_eq!(
                (after ^ before) & !(wm | c),
                0,
                "RO bits of reg {:#x} changed: {:#x} -> {:#x}",
                reg,
                before,
                after
            );
            proptest::prop_assert_eq!(after & !before & c, 0, "RW1C bit set in reg {:#x}", reg);
            if reg >= 1024 {
                proptest::prop_assert_eq!(after, u32::MAX);
            }
        }
        Ok(())
    }

    fn any_writes() -> impl proptest::strategy::Strategy<Value = Vec<(usize, u64, Vec<u8>)>> {
        use proptest::prelude::*;
        proptest::collection::vec(
            (prop_oneof![0usize..64, 0usize..1100], 0u64..6, proptest::collection::vec(any::<u8>(), 0..6)),
            0..48,
        )
    }

    proptest::proptest! {
        #[test]
        fn endpoint_config_writes_respect_masks(writes in any_writes()) {
            let (mut f, _) = function();
            masks_hold(&mut f, &writes)?;
        }

        #[test]
        fn root_port_config_writes_respect_masks(writes in any_writes()) {
            let buses = crate::bridge::BusNumbers { primary: 0, secondary: 1, subordinate: 1 };
            let mut port = crate::bridge::root_port("rp", 1, buses).unwrap();
            masks_hold(&mut port, &writes)?;
        }
    }
}
