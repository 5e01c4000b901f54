//! Builds the guest's PCI topology the way firmware would leave it: each device behind
//! its own PCIe root port (or directly on bus 0), root port windows sized to what is
//! behind them, BARs allocated and programmed, decode enabled and BARs mapped on the buses.
//! The VMM then hands the guest the two config access devices, the MCFG window and the
//! DSDT piece from here.

use std::sync::{Arc, Mutex};

use crate::allocator::{AllocError, BarAllocator, BarPlacement, BarRequest, PciWindows, WindowReserve};
use crate::aml::{AmlError, HostBridgeResources, PciHostBridgeAml};
use crate::bar::{REG_BAR0, REG_ROM_ENDPOINT};
use crate::bdf::Bdf;
use crate::bridge::{BridgeWindows, Window};
use crate::bus::Bus;
use crate::config_access::{PciConfigIo, PciConfigMmio};
use crate::config_space::{COMMAND_BUS_MASTER, COMMAND_IO, COMMAND_MEMORY, REG_BIST_HEADER, REG_INTERRUPT};
use crate::device::{BarIndex, BarKind, ConfigEffects, SharedPciDevice};
use crate::intx::{IntxPin, IntxRouting};
use crate::root::{BusRelocator, ConfigEffectsHandler, PciRoot, RootError};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("setting up the root complex failed")]
    CreateRoot(#[source] RootError),
    #[error("setting up the PCI address pools failed")]
    CreatePools(#[source] AllocError),
    #[error("no free slot on bus 0 (or bus number) for another device")]
    SlotsExhausted,
    #[error("attaching {what} failed")]
    Attach {
        what: String,
        #[source]
        source: RootError,
    },
    #[error("allocating resources for {what} failed")]
    Allocate {
        what: String,
        #[source]
        source: AllocError,
    },
    #[error("{what} is a bridge; only endpoints can be attached")]
    NotAnEndpoint { what: String },
    #[error("ECAM window {base:#x}+{size:#x} must be a multiple of 1 MiB, at most 256 MiB")]
    EcamWindow { base: u64, size: u64 },
    #[error("describing the host bridge in ACPI failed")]
    Aml(#[source] AmlError),
}

/// The windows and policies the VMM's address layout gives the PCI segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopologyConfig {
    pub segment: u16,
    pub windows: PciWindows,
    /// ECAM window; its size decides the bus range (1 MiB per bus).
    pub ecam: Window,
    pub intx: IntxRouting,
    /// Extra room left in each root port's windows.
    pub port_reserve: WindowReserve,
}

/// Forwards config effects to the bus relocator, then to the VMM's own observer (which
/// moves what backs a BAR, e.g. a VFIO region's memslot).
struct Relay {
    relocator: Arc<Mutex<BusRelocator>>,
    observer: Option<Box<dyn ConfigEffectsHandler>>,
}

impl ConfigEffectsHandler for Relay {
    fn apply(&mut self, bdf: Bdf, device: &SharedPciDevice, effects: ConfigEffects) {
        if let Some(o) = self.observer.as_mut() {
            o.apply(bdf, device, effects.clone());
        }
        self.relocator.lock().unwrap_or_else(|e| e.into_inner()).apply(bdf, device, effects);
    }
}

pub struct PciTopology {
    cfg: TopologyConfig,
    root: Arc<Mutex<PciRoot>>,
    allocator: BarAllocator,
    relocator: Arc<Mutex<BusRelocator>>,
    next_slot: u8,
    next_bus: u8,
    /// (bdf, route to it: bus-0 slot then device numbers below)
    paths: Vec<(Bdf, Vec<u8>)>,
    /// The functions attached through the topology: it owns them (the root and the buses
    /// refer to them weakly).
    devices: Vec<SharedPciDevice>,
}

impl PciTopology {
    /// `mmio` and `pio` are the VMM's buses; BARs are mapped there as [`crate::BarSlot`]s.
    pub fn new(
        cfg: TopologyConfig,
        mmio: Arc<Bus>,
        pio: Arc<Bus>,
        observer: Option<Box<dyn ConfigEffectsHandler>>,
    ) -> Result<Self, TopologyError> {
        let ecam_ok = cfg.ecam.size >= 1 << 20 && cfg.ecam.size <= 1 << 28 && cfg.ecam.size % (1 << 20) == 0;
        if !ecam_ok {
            return Err(TopologyError::EcamWindow { base: cfg.ecam.base, size: cfg.ecam.size });
        }
        let relocator = Arc::new(Mutex::new(BusRelocator::new(mmio, pio)));
        let relay = Relay { relocator: relocator.clone(), observer };
        let root = PciRoot::new(cfg.segment, Box::new(relay)).map_err(TopologyError::CreateRoot)?;
        let allocator = BarAllocator::new(cfg.windows).map_err(TopologyError::CreatePools)?;
        Ok(Self {
            cfg,
            root: Arc::new(Mutex::new(root)),
            allocator,
            relocator,
            next_slot: 1,
            next_bus: 1,
            paths: Vec::new(),
            devices: Vec::new(),
        })
    }

    fn last_bus(&self) -> u8 {
        ((self.cfg.ecam.size >> 20) - 1).min(255) as u8
    }

    fn take_slot(&mut self) -> Result<u8, TopologyError> {
        if self.next_slot > 31 {
            return Err(TopologyError::SlotsExhausted);
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    /// Puts `dev` behind a new PCIe root port, with windows sized to its BARs.
    pub fn attach_behind_port(&mut self, name: &str, dev: SharedPciDevice) -> Result<Bdf, TopologyError> {
        check_endpoint(name, &dev)?;
        if self.next_bus > self.last_bus() {
            return Err(TopologyError::SlotsExhausted);
        }
        let slot = self.take_slot()?;
        let bus = self.next_bus;
        self.next_bus += 1;
        let attach_err = |source| TopologyError::Attach { what: name.to_string(), source };
        let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
        let port = root.add_root_port(slot, bus).map_err(attach_err)?;
        let bdf = root.attach_to_port(slot, 0, &dev).map_err(attach_err)?;
        let requests = bar_requests(bdf, &dev);
        let layout = self
            .allocator
            .allocate_port(port, &requests, self.cfg.port_reserve)
            .map_err(|source| TopologyError::Allocate { what: name.to_string(), source })?;
        program_root_port(&mut root, slot, &layout.windows).map_err(attach_err)?;
        program_bars(&mut root, bdf, &dev, &layout.bars);
        drop(root);
        self.paths.push((bdf, vec![slot, 0]));
        self.devices.push(dev);
        log::info!("{bdf}: {name} behind root port {port}, windows {:x?}", layout.windows);
        Ok(bdf)
    }

    /// Puts `dev` directly on bus 0 (a root complex integrated endpoint).
    pub fn attach_to_bus0(&mut self, name: &str, dev: SharedPciDevice) -> Result<Bdf, TopologyError> {
        check_endpoint(name, &dev)?;
        let slot = self.take_slot()?;
        let bdf = self
            .root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(slot, 0, &dev)
            .map_err(|source| TopologyError::Attach { what: name.to_string(), source })?;
        let mut placed = Vec::new();
        for req in bar_requests(bdf, &dev) {
            let addr = self
                .allocator
                .allocate_bar(req)
                .map_err(|source| TopologyError::Allocate { what: name.to_string(), source })?;
            placed.push(BarPlacement { bdf, bar: req.bar, addr });
        }
        program_bars(&mut self.root.lock().unwrap_or_else(|e| e.into_inner()), bdf, &dev, &placed);
        self.paths.push((bdf, vec![slot]));
        self.devices.push(dev);
        log::info!("{bdf}: {name} on bus 0");
        Ok(bdf)
    }

    pub fn root(&self) -> Arc<Mutex<PciRoot>> {
        self.root.clone()
    }

    /// Where BAR `bar` of `bdf` is mapped on the bus now.
    pub fn mapped(&self, bdf: Bdf, bar: BarIndex) -> Option<u64> {
        self.relocator.lock().unwrap_or_else(|e| e.into_inner()).mapped(bdf, bar)
    }

    /// The 0xCF8 device (insert at 0xCF8, length 8, on the port I/O bus).
    pub fn config_io(&self) -> PciConfigIo {
        PciConfigIo::new(&self.root)
    }

    /// The ECAM device (insert at `ecam_window().base` on the MMIO bus).
    pub fn config_mmio(&self) -> PciConfigMmio {
        PciConfigMmio::new(&self.root)
    }

    /// For MCFG: base address, segment, start bus 0, end bus.
    pub fn ecam_window(&self) -> (Window, u16, u8) {
        (self.cfg.ecam, self.cfg.segment, self.last_bus())
    }

    /// The DSDT objects for the host bridge.
    pub fn aml(&self) -> Result<PciHostBridgeAml, TopologyError> {
        let c = &self.cfg;
        PciHostBridgeAml::new(HostBridgeResources {
            segment: c.segment,
            last_bus: self.last_bus(),
            io: c.windows.io,
            mmio32: c.windows.mmio32,
            mmio32_above: None,
            io_isa: false,
            mmio64: c.windows.mmio64,
            ecam: c.ecam,
            intx: c.intx,
        })
        .map_err(TopologyError::Aml)
    }

    /// The GSI the guest will use for `bdf`'s INTx pin (per `_PRT` and bridge swizzling),
    /// or `None` when the function has no pin.
    pub fn intx_gsi(&self, bdf: Bdf) -> Option<u32> {
        let path = &self.paths.iter().find(|(b, _)| *b == bdf)?.1;
        let reg = self.root.lock().unwrap_or_else(|e| e.into_inner()).read_config(bdf, REG_INTERRUPT);
        let pin = IntxPin::from_register((reg >> 8) as u8)?;
        Some(self.cfg.intx.gsi(path, pin))
    }
}

/// Firmware-time set-up of the root port at 00:`port_device`.0: its forwarding windows,
/// then memory / I/O forwarding and bus mastering on, as firmware leaves bridges.
pub fn program_root_port(root: &mut PciRoot, port_device: u8, windows: &BridgeWindows) -> Result<(), RootError> {
    root.set_port_windows(port_device, windows)?;
    let port = Bdf::from_devfn(root.segment(), 0, port_device << 3);
    let command = COMMAND_MEMORY | COMMAND_IO | COMMAND_BUS_MASTER;
    root.write_config(port, 1, 0, &command.to_le_bytes());
    Ok(())
}

/// Writes a function's BAR registers like firmware and enables decode, through the root,
/// so the resulting BAR moves reach the root's effects handler (which maps the BARs).
pub fn program_bars(root: &mut PciRoot, bdf: Bdf, dev: &SharedPciDevice, placed: &[BarPlacement]) {
    let kinds: Vec<_> = dev.lock().unwrap_or_else(|e| e.into_inner()).bars();
    for p in placed {
        let Some(kind) = kinds.iter().find(|r| r.index == p.bar).map(|r| r.kind) else {
            continue;
        };
        if p.bar == BarIndex::ROM {
            root.write_config(bdf, REG_ROM_ENDPOINT, 0, &(p.addr as u32).to_le_bytes());
            continue;
        }
        let reg = REG_BAR0 + usize::from(p.bar.0);
        root.write_config(bdf, reg, 0, &(p.addr as u32).to_le_bytes());
        if matches!(kind, BarKind::Mem64 { .. }) {
            root.write_config(bdf, reg + 1, 0, &((p.addr >> 32) as u32).to_le_bytes());
        }
    }
    let command = COMMAND_MEMORY | COMMAND_IO;
    root.write_config(bdf, 1, 0, &command.to_le_bytes());
}

fn check_endpoint(name: &str, dev: &SharedPciDevice) -> Result<(), TopologyError> {
    let header = dev.lock().unwrap_or_else(|e| e.into_inner()).read_config(REG_BIST_HEADER);
    if (header >> 16) & 0x7f != 0 {
        return Err(TopologyError::NotAnEndpoint { what: name.to_string() });
    }
    Ok(())
}

/// One allocation request per BAR of `dev` (address `bdf`, for error messages).
pub fn bar_requests(bdf: Bdf, dev: &SharedPciDevice) -> Vec<BarRequest> {
    let d = dev.lock().unwrap_or_else(|e| e.into_inner());
    d.bars().into_iter().map(|r| BarRequest { bdf, bar: r.index, kind: r.kind, size: r.size }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::tests::{test_config, Scratch};
    use crate::function::{BarSpec, EmulatedFunction};
    use crate::{BusAccess, PciDevice};
    use acpi_tables::Aml;

    const GIB: u64 = 1 << 30;

    fn cfg() -> TopologyConfig {
        TopologyConfig {
            segment: 0,
            windows: PciWindows {
                mmio32: Window { base: 0xc000_0000, size: 0x2000_0000 },
                mmio64: crate::allocator::mmio64_window(4 * GIB, 40),
                io: Window { base: 0x1000, size: 0xf000 },
            },
            ecam: Window { base: 0xe000_0000, size: 16 << 20 },
            intx: IntxRouting::new(16, 8).unwrap(),
            port_reserve: WindowReserve::default(),
        }
    }

    #[test]
    fn firmware_like_topology_with_a_64_gib_bar() {
        let mmio = Arc::new(Bus::new());
        let pio = Arc::new(Bus::new());
        let mut topo = PciTopology::new(cfg(), mmio.clone(), pio.clone(), None).unwrap();
        let mut big = test_config();
        big.bars.push(BarSpec { index: BarIndex(4), kind: BarKind::Mem64 { prefetchable: true }, size: 64 * GIB });
        big.bars.push(BarSpec { index: BarIndex::ROM, kind: BarKind::Rom, size: 0x10000 });
        let gpu = Arc::new(Mutex::new(EmulatedFunction::new("gpu", &big, Scratch([0; 64])).unwrap()));
        let nic = Arc::new(Mutex::new(EmulatedFunction::new("nic", &test_config(), Scratch([0; 64])).unwrap()));
        let gpu_bdf = topo.attach_behind_port("gpu", gpu.clone()).unwrap();
        let nic_bdf = topo.attach_to_bus0("nic", nic.clone()).unwrap();
        assert_eq!(gpu_bdf.to_string(), "0000:01:00.0");
        assert_eq!(nic_bdf.to_string(), "0000:00:02.0");
        // Every BAR is programmed, mapped where its registers say, and inside its window.
        let windows = topo.root().lock().unwrap().port_windows(1).unwrap();
        for r in gpu.lock().unwrap().bars() {
            assert_eq!(topo.mapped(gpu_bdf, r.index), Some(r.addr), "{:?}", r.index);
            assert_eq!(r.addr % r.size, 0);
            let w = match r.kind {
                BarKind::Mem64 { prefetchable: true } => windows.prefetch,
                _ => windows.mem,
            };
            assert!(w.unwrap().contains(r.addr, r.size), "{:?} in its window", r.index);
        }
        assert_eq!(windows.prefetch.unwrap().size, 64 * GIB + (1 << 20));
        assert!(windows.io.is_none());
        // The guest reaches the GPU's BAR 0 registers through the MMIO bus...
        let bar0 = gpu.lock().unwrap().bars()[0].addr;
        assert!(mmio.write(bar0 + 3, &[0x5a]));
        assert_eq!(gpu.lock().unwrap().backend().0[3], 0x5a);
        // ...and its config space through ECAM.
        let ecam = topo.config_mmio();
        let mut id = [0u8; 4];
        ecam.read(gpu_bdf.ecam_offset(), &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1041_1af4);
        // INTx: device 0 behind the port in slot 1 uses the port's slot entry, INTA.
        assert_eq!(topo.intx_gsi(gpu_bdf), Some(16 + 1));
        assert_eq!(topo.intx_gsi(nic_bdf), Some(16 + 2));
        let mut aml = Vec::new();
        topo.aml().unwrap().to_aml_bytes(&mut aml);
        assert!(!aml.is_empty());
        assert_eq!(topo.ecam_window().2, 15);
    }

    #[test]
    fn errors_name_the_device() {
        let mut small = cfg();
        small.windows.mmio64 = crate::allocator::mmio64_window(4 * GIB, 36);
        let mut topo = PciTopology::new(small, Arc::new(Bus::new()), Arc::new(Bus::new()), None).unwrap();
        let mut big = test_config();
        big.bars.push(BarSpec { index: BarIndex(4), kind: BarKind::Mem64 { prefetchable: true }, size: 64 * GIB });
        let gpu = Arc::new(Mutex::new(EmulatedFunction::new("gpu", &big, Scratch([0; 64])).unwrap()));
        let e = topo.attach_behind_port("gpu 0000:41:00.0", gpu).unwrap_err();
        let msg = format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
        assert!(msg.contains("gpu 0000:41:00.0") && msg.contains("Mmio64"), "{msg}");
        let bad = TopologyConfig { ecam: Window { base: 0xe000_0000, size: 3 << 19 }, ..cfg() };
        assert!(matches!(
            PciTopology::new(bad, Arc::new(Bus::new()), Arc::new(Bus::new()), None),
            Err(TopologyError::EcamWindow { .. })
        ));
    }
}
