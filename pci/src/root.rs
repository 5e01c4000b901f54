//! The root complex: host bridge at 00:00.0, device slots on bus 0, PCIe root ports with
//! one slot each behind them; the guest reaches it through [`crate::config_access`].
//!
//! Config writes return [`ConfigEffects`]; the root hands them to a
//! [`ConfigEffectsHandler`] together with the function, outside the function's lock. The
//! [`BusRelocator`] is that handler for every function, emulated or assigned: it moves BARs'
//! bus entries and, with [`BusRelocator::set_memory_slots`], the memory slots over their
//! mmapped areas.
//!
//! Ownership: the root owns the host bridge and its root ports; the functions it routes to
//! are owned by the VMM's device manager and held here (and in the relocator's BAR slots)
//! weakly. The config-access devices on the buses hold the root weakly too, so nothing on a
//! bus keeps the root, and through it the buses, alive.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::bdf::Bdf;
use crate::bridge::{self, BridgeWindows, BusNumbers};
use crate::bus::{failed_device, Bus, BusError};
use crate::capability::{pcie, CAP_ID_PCIE};
use crate::device::{
    lock_function, BarIndex, BarKind, BarMove, BarRegion, BarSlot, ConfigEffects, ConfigWait, SharedPciDevice,
    WeakPciDevice,
};
use crate::function::{EmulatedFunction, FunctionError, NoRegisters};
use crate::memslots::{BarMemslots, MemorySlots};

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("PCI slot {bdf} is already occupied")]
    SlotInUse { bdf: Bdf },
    #[error("PCI device number {device} is out of range or reserved for the host bridge")]
    InvalidSlot { device: u8 },
    #[error("no root port at 0000:00:{device:02x}.0")]
    NoSuchPort { device: u8 },
    #[error("bus number {bus} is already used by another root port")]
    BusInUse { bus: u8 },
    #[error("creating {what} failed")]
    CreateFunction {
        what: String,
        #[source]
        source: FunctionError,
    },
    #[error("{bdf}: mapping BAR {bar:?} at {addr:#x} on the bus failed")]
    MapBar {
        bdf: Bdf,
        bar: BarIndex,
        addr: u64,
        #[source]
        source: BusError,
    },
}

/// Receives what a guest config write asks for (BAR moves, decode changes).
pub trait ConfigEffectsHandler: Send {
    fn apply(&mut self, bdf: Bdf, device: &SharedPciDevice, effects: ConfigEffects);
}

/// Keeps each BAR's [`BarSlot`] on the MMIO or port I/O bus where the guest put it.
/// Remembers where it mapped every BAR of every function (by function identity, since the
/// guest may renumber buses and so change a function's BDF), so a move never touches
/// another device's range. A move onto an occupied range is refused: the BAR is unmapped
/// (reads all-ones) and a warning is logged, rather than corrupting the bus. The refused
/// move is kept and retried after every later change, because a guest rebalancing BARs
/// moves them one register at a time: A onto B's old range first, B away a moment later.
pub struct BusRelocator {
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    mapped: HashMap<(usize, BarIndex), u64>,
    /// The bus each mapped BAR is on.
    kinds: HashMap<(usize, BarIndex), BarKind>,
    /// Refused moves, by function identity and BAR: the function and where it wants to be.
    pending: HashMap<(usize, BarIndex), (Bdf, WeakPciDevice, BarMove)>,
    /// The last BDF each function was seen at.
    functions: HashMap<Bdf, usize>,
    /// The memory slots over mmapped BAR areas, which follow the bus mappings.
    memslots: Option<BarMemslots>,
}

/// A function's identity: the address of its shared allocation.
fn identity(device: &SharedPciDevice) -> usize {
    Arc::as_ptr(device) as *const () as usize
}

impl BusRelocator {
    pub fn new(mmio: Arc<Bus>, pio: Arc<Bus>) -> Self {
        Self {
            mmio,
            pio,
            mapped: HashMap::new(),
            kinds: HashMap::new(),
            pending: HashMap::new(),
            functions: HashMap::new(),
            memslots: None,
        }
    }

    /// Gives the relocator the VMM's memory slots: from then on the mmapped areas of every
    /// function's BARs ([`crate::PciDevice::mmap_areas`]) are guest memory wherever and
    /// whenever the BAR is mapped and decoded (see [`BarMemslots`]).
    pub fn set_memory_slots(&mut self, slots: Box<dyn MemorySlots>) {
        self.memslots = Some(BarMemslots::new(slots));
    }

    /// The memory slots of the functions a change touched follow their BARs.
    fn sync_memslots(&mut self, decode: Option<bool>, touched: &[(Bdf, SharedPciDevice)]) {
        let Some(memslots) = self.memslots.as_mut() else { return };
        let mapped = &self.mapped;
        for (i, (bdf, device)) in touched.iter().enumerate() {
            let id = identity(device);
            let Some(dev) = lock_function(device) else { continue };
            let decode = if i == 0 { decode } else { None };
            memslots.sync(bdf, id, &*dev, decode, &|bar| mapped.get(&(id, bar)).copied());
        }
    }

    fn bus(&self, kind: BarKind) -> &Bus {
        if kind == BarKind::Io {
            &self.pio
        } else {
            &self.mmio
        }
    }

    /// Maps every BAR of `device` where it currently sits (initial attach). This and
    /// [`Self::detach`] are the one place a function's BAR entries go on and off the buses.
    /// On an error the BARs this call mapped are taken off again.
    pub fn attach(&mut self, bdf: Bdf, device: &SharedPciDevice) -> Result<(), RootError> {
        let id = identity(device);
        let regions = lock_function(device).map(|d| d.bars()).unwrap_or_default();
        let mut done: Vec<BarRegion> = Vec::new();
        for r in regions {
            let slot = Arc::new(BarSlot::new(Arc::downgrade(device), r.index));
            if let Err(source) = self.bus(r.kind).insert(slot, r.addr, r.size) {
                for d in done {
                    let _ = self.bus(d.kind).remove(d.addr);
                }
                return Err(RootError::MapBar { bdf, bar: r.index, addr: r.addr, source });
            }
            done.push(r);
        }
        self.functions.insert(bdf, id);
        for r in done {
            self.mapped.insert((id, r.index), r.addr);
            self.kinds.insert((id, r.index), r.kind);
        }
        Ok(())
    }

    /// Takes every BAR of `device` off the buses, removes the memory slots over them and
    /// forgets its refused moves: from now on its BARs' ranges are free and read all-ones,
    /// and the host mappings behind the slots may go.
    pub fn detach(&mut self, device: &SharedPciDevice) {
        let id = identity(device);
        if let Some(m) = self.memslots.as_mut() {
            m.unmap_function(&"PCI function", id);
        }
        let bars: Vec<(BarIndex, u64)> =
            self.mapped.iter().filter(|((f, _), _)| *f == id).map(|((_, bar), addr)| (*bar, *addr)).collect();
        for (bar, addr) in bars {
            self.mapped.remove(&(id, bar));
            if let Some(kind) = self.kinds.remove(&(id, bar)) {
                if let Err(e) = self.bus(kind).remove(addr) {
                    log::warn!("BAR {bar:?} at {addr:#x}: {e} while detaching its function");
                }
            }
        }
        self.kinds.retain(|(f, _), _| *f != id);
        self.pending.retain(|(f, _), _| *f != id);
        self.functions.retain(|_, f| *f != id);
    }

    /// Where BAR `bar` of the function last seen at `bdf` is mapped now, if anywhere.
    pub fn mapped(&self, bdf: Bdf, bar: BarIndex) -> Option<u64> {
        let id = self.functions.get(&bdf)?;
        self.mapped.get(&(*id, bar)).copied()
    }

    /// Maps BAR `m.index` of `device` at `m.new_addr`, moving its current mapping if any.
    /// On a clash the BAR ends up unmapped and the move is remembered for a retry.
    fn map(&mut self, bdf: Bdf, device: &SharedPciDevice, m: BarMove) -> Result<(), BusError> {
        let id = identity(device);
        self.pending.remove(&(id, m.index));
        let bus = if m.kind == BarKind::Io { self.pio.clone() } else { self.mmio.clone() };
        let result = match self.mapped.get(&(id, m.index)) {
            Some(&cur) => bus.relocate(cur, m.new_addr),
            None => bus.insert(Arc::new(BarSlot::new(Arc::downgrade(device), m.index)), m.new_addr, m.size),
        };
        match result {
            Ok(()) => {
                log::debug!("{bdf}: BAR {:?} now at {:#x}", m.index, m.new_addr);
                self.mapped.insert((id, m.index), m.new_addr);
                self.kinds.insert((id, m.index), m.kind);
            }
            Err(_) => {
                if let Some(cur) = self.mapped.remove(&(id, m.index)) {
                    let _ = bus.remove(cur);
                }
                self.kinds.remove(&(id, m.index));
                self.pending.insert((id, m.index), (bdf, Arc::downgrade(device), m));
            }
        }
        result
    }

    /// Retries refused moves until a round maps none; a round that progresses maps at
    /// least one, so this ends within as many rounds as there are pending moves. Returns the
    /// functions whose BARs got mapped.
    fn retry_pending(&mut self) -> Vec<(Bdf, SharedPciDevice)> {
        let mut retried = Vec::new();
        loop {
            let waiting: Vec<_> = self.pending.values().cloned().collect();
            let mut progressed = false;
            for (bdf, device, m) in waiting {
                // A function detached meanwhile has no pending moves left; one merely gone
                // (not detached) is dropped here.
                let Some(device) = device.upgrade() else {
                    self.pending.retain(|_, (_, d, _)| d.strong_count() > 0);
                    continue;
                };
                if self.map(bdf, &device, m).is_ok() {
                    log::info!("{bdf}: BAR {:?} mapped at {:#x} now that the range is free", m.index, m.new_addr);
                    progressed = true;
                    retried.push((bdf, device));
                }
            }
            if !progressed {
                return retried;
            }
        }
    }
}

impl ConfigEffectsHandler for BusRelocator {
    /// BAR moves only: chipset windows (`effects.windows`) belong to the platform, whose
    /// handler moves them before handing the rest here.
    fn apply(&mut self, bdf: Bdf, device: &SharedPciDevice, effects: ConfigEffects) {
        self.functions.insert(bdf, identity(device));
        let moved = !effects.bar_moves.is_empty();
        let mut touched = vec![(bdf, device.clone())];
        for m in effects.bar_moves {
            if let Err(e) = self.map(bdf, device, m) {
                ratelog::warn_limited!(
                    "{bdf}: BAR {:?} move to {:#x} refused ({e}); BAR disabled until the range is free",
                    m.index,
                    m.new_addr
                );
            }
        }
        if moved && !self.pending.is_empty() {
            touched.extend(self.retry_pending());
        }
        self.sync_memslots(effects.mem_decode, &touched);
    }
}

struct RootPort {
    devfn: u8,
    function: Arc<Mutex<EmulatedFunction<NoRegisters>>>,
    pcie_offset: Option<usize>,
    children: [Option<WeakPciDevice>; 8],
}

/// The PCI segment's topology and config-space router.
pub struct PciRoot {
    segment: u16,
    /// Owned here, like the root ports (`ports`); `bus0` refers to both weakly.
    _host_bridge: SharedPciDevice,
    bus0: BTreeMap<u8, WeakPciDevice>,
    ports: Vec<RootPort>,
    handler: Box<dyn ConfigEffectsHandler>,
}

/// Locks a root port; `None` (logged) once a panic poisoned it, which takes the port and
/// what is behind it out of the guest's view.
fn lock_port(port: &Mutex<EmulatedFunction<NoRegisters>>) -> Option<MutexGuard<'_, EmulatedFunction<NoRegisters>>> {
    port.lock().map_err(|_| failed_device("PCIe root port")).ok()
}

impl PciRoot {
    /// A root complex with our generic host bridge at 00:00.0.
    pub fn new(segment: u16, handler: Box<dyn ConfigEffectsHandler>) -> Result<Self, RootError> {
        let host = bridge::host_bridge()
            .map_err(|source| RootError::CreateFunction { what: "the host bridge".into(), source })?;
        Ok(Self::with_host_bridge(segment, handler, Arc::new(Mutex::new(host))))
    }

    /// A root complex with `host` as its host bridge at 00:00.0 (a chipset model firmware
    /// recognises, for instance). The root owns it, like its root ports.
    pub fn with_host_bridge(segment: u16, handler: Box<dyn ConfigEffectsHandler>, host: SharedPciDevice) -> Self {
        let mut bus0: BTreeMap<u8, WeakPciDevice> = BTreeMap::new();
        bus0.insert(0, Arc::downgrade(&host));
        Self { segment, _host_bridge: host, bus0, ports: Vec::new(), handler }
    }

    pub fn segment(&self) -> u16 {
        self.segment
    }

    fn bus0_bdf(&self, device: u8, function: u8) -> Result<Bdf, RootError> {
        if device == 0 || device > 31 || function > 7 {
            return Err(RootError::InvalidSlot { device });
        }
        Ok(Bdf::from_devfn(self.segment, 0, (device << 3) | function))
    }

    /// Puts a function directly on bus 0 (a root complex integrated endpoint). The root
    /// refers to it without keeping it alive.
    pub fn add_device(&mut self, device: u8, function: u8, dev: &SharedPciDevice) -> Result<Bdf, RootError> {
        let bdf = self.bus0_bdf(device, function)?;
        if self.bus0.contains_key(&bdf.devfn()) {
            return Err(RootError::SlotInUse { bdf });
        }
        self.bus0.insert(bdf.devfn(), Arc::downgrade(dev));
        Ok(bdf)
    }

    /// Takes `dev` out of its slot (on bus 0 or behind a root port, whose slot then shows
    /// no device present); config accesses to its address read all-ones from now on.
    /// Returns the address it had, `None` if it was not attached.
    pub fn remove_device(&mut self, dev: &SharedPciDevice) -> Option<Bdf> {
        let is_dev = |w: &WeakPciDevice| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(dev));
        if let Some(devfn) = self.bus0.iter().find(|(_, w)| is_dev(w)).map(|(d, _)| *d) {
            self.bus0.remove(&devfn);
            return Some(Bdf::from_devfn(self.segment, 0, devfn));
        }
        for idx in 0..self.ports.len() {
            let Some(f) = self.ports[idx].children.iter().position(|c| c.as_ref().is_some_and(is_dev)) else {
                continue;
            };
            let bus = self.port_buses(&self.ports[idx]).secondary;
            let port = &mut self.ports[idx];
            port.children[f] = None;
            if let (Some(off), true) = (port.pcie_offset, port.children.iter().all(Option::is_none)) {
                if let Some(mut pf) = lock_port(&port.function) {
                    pcie::set_slot_occupied(pf.config_mut(), off, false);
                }
            }
            return Some(Bdf::from_devfn(self.segment, bus, f as u8));
        }
        None
    }

    /// Adds a root port at 00:`device`.0 whose secondary bus is `secondary_bus`.
    pub fn add_root_port(&mut self, device: u8, secondary_bus: u8) -> Result<Bdf, RootError> {
        let bdf = self.bus0_bdf(device, 0)?;
        if self.bus0.contains_key(&bdf.devfn()) {
            return Err(RootError::SlotInUse { bdf });
        }
        if secondary_bus == 0 || self.ports.iter().any(|p| self.port_buses(p).secondary == secondary_bus) {
            return Err(RootError::BusInUse { bus: secondary_bus });
        }
        let buses = BusNumbers { primary: 0, secondary: secondary_bus, subordinate: secondary_bus };
        let port = bridge::root_port(&bdf.to_string(), device, buses)
            .map_err(|source| RootError::CreateFunction { what: format!("root port {bdf}"), source })?;
        let pcie_offset =
            port.config().capabilities().iter().find(|c| c.id == u16::from(CAP_ID_PCIE)).map(|c| c.offset);
        let function = Arc::new(Mutex::new(port));
        let weak: WeakPciDevice = Arc::downgrade(&function) as WeakPciDevice;
        self.bus0.insert(bdf.devfn(), weak);
        self.ports.push(RootPort { devfn: bdf.devfn(), function, pcie_offset, children: Default::default() });
        Ok(bdf)
    }

    fn port(&self, device: u8) -> Result<&RootPort, RootError> {
        self.ports.iter().find(|p| p.devfn == device << 3).ok_or(RootError::NoSuchPort { device })
    }

    fn port_buses(&self, p: &RootPort) -> BusNumbers {
        lock_port(&p.function)
            .map_or(BusNumbers { primary: 0, secondary: 0, subordinate: 0 }, |f| bridge::read_bus_numbers(f.config()))
    }

    /// Puts `dev` behind the root port at 00:`port_device`.0 as function `function` of
    /// device 0 on its secondary bus. Returns its address.
    pub fn attach_to_port(&mut self, port_device: u8, function: u8, dev: &SharedPciDevice) -> Result<Bdf, RootError> {
        if function > 7 {
            return Err(RootError::InvalidSlot { device: 0 });
        }
        let idx = self
            .ports
            .iter()
            .position(|p| p.devfn == port_device << 3)
            .ok_or(RootError::NoSuchPort { device: port_device })?;
        let bus = self.port_buses(&self.ports[idx]).secondary;
        let bdf = Bdf::from_devfn(self.segment, bus, function);
        let port = &mut self.ports[idx];
        if port.children[usize::from(function)].is_some() {
            return Err(RootError::SlotInUse { bdf });
        }
        port.children[usize::from(function)] = Some(Arc::downgrade(dev));
        if let (Some(off), Some(mut f)) = (port.pcie_offset, lock_port(&port.function)) {
            pcie::set_slot_occupied(f.config_mut(), off, true);
        }
        Ok(bdf)
    }

    /// Programs a root port's forwarding windows (firmware-time).
    pub fn set_port_windows(&mut self, port_device: u8, windows: &BridgeWindows) -> Result<(), RootError> {
        let port = self.port(port_device)?;
        if let Some(mut f) = lock_port(&port.function) {
            bridge::write_bridge_windows(f.config_mut(), windows);
        }
        Ok(())
    }

    /// The windows a root port forwards now (as the guest last programmed them).
    pub fn port_windows(&self, port_device: u8) -> Result<BridgeWindows, RootError> {
        let port = self.port(port_device)?;
        Ok(lock_port(&port.function).map(|f| bridge::read_bridge_windows(f.config())).unwrap_or_default())
    }

    /// The highest free device number on bus 0. Late additions (test devices) take
    /// slots from the top so a VMM handing out slots upwards from 1 never collides.
    pub fn highest_free_slot(&self) -> Option<u8> {
        (1..=31u8).rev().find(|d| !self.bus0.contains_key(&(d << 3)))
    }

    /// The lowest bus number no root port uses as its secondary bus yet.
    pub fn lowest_free_bus(&self) -> Option<u8> {
        (1..=255u8).find(|b| !self.ports.iter().any(|p| self.port_buses(p).secondary == *b))
    }

    /// The highest bus number any root port uses (for the `_CRS` bus range and MCFG).
    pub fn last_bus(&self) -> u8 {
        self.ports.iter().map(|p| self.port_buses(p).subordinate).max().unwrap_or(0)
    }

    /// The function at `bdf`, routed through the root ports' current bus numbers.
    pub fn function(&self, bdf: Bdf) -> Option<SharedPciDevice> {
        if bdf.segment() != self.segment {
            return None;
        }
        if bdf.bus() == 0 {
            return self.bus0.get(&bdf.devfn()).and_then(Weak::upgrade);
        }
        // A PCIe link carries only device 0 (PCIe base spec 7.3.1).
        if bdf.device() != 0 {
            return None;
        }
        let port = self.ports.iter().find(|p| self.port_buses(p).secondary == bdf.bus())?;
        port.children[usize::from(bdf.function())].as_ref().and_then(Weak::upgrade)
    }

    /// Every function except root ports and the host bridge, at its current address.
    pub fn endpoints(&self) -> Vec<(Bdf, SharedPciDevice)> {
        let mut out: Vec<(Bdf, SharedPciDevice)> = self
            .bus0
            .iter()
            .filter(|(devfn, _)| **devfn != 0 && !self.ports.iter().any(|p| p.devfn == **devfn))
            .filter_map(|(devfn, d)| Some((Bdf::from_devfn(self.segment, 0, *devfn), d.upgrade()?)))
            .collect();
        for p in &self.ports {
            let bus = self.port_buses(p).secondary;
            for (f, c) in p.children.iter().enumerate() {
                if let Some(c) = c.as_ref().and_then(Weak::upgrade) {
                    out.push((Bdf::from_devfn(self.segment, bus, f as u8), c));
                }
            }
        }
        out
    }

    /// Guest config read; absent (and failed) functions read all-ones (PCI "master abort").
    pub fn read_config(&self, bdf: Bdf, reg: usize) -> u32 {
        let Some(d) = self.function(bdf) else { return u32::MAX };
        let value = lock_function(&d).map_or(u32::MAX, |mut f| f.read_config(reg));
        value
    }

    /// Guest config write; writes to absent functions are dropped. Returns what the write
    /// still waits for ([`ConfigWait`]): the caller waits with no lock held, then writes
    /// again.
    pub fn write_config(&mut self, bdf: Bdf, reg: usize, offset: u64, data: &[u8]) -> Option<ConfigWait> {
        let d = self.function(bdf)?;
        let mut effects = lock_function(&d)?.write_config(reg, offset, data);
        let wait = effects.wait.take();
        if !effects.is_empty() {
            self.handler.apply(bdf, &d, effects);
        }
        wait
    }

    /// Direct access to the effects handler (e.g. the [`BusRelocator`] for initial attach).
    pub fn handler_mut(&mut self) -> &mut dyn ConfigEffectsHandler {
        self.handler.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_access::{PciConfigIo, PciConfigMmio};
    use crate::function::tests::{test_config, Scratch};
    use crate::{BusAccess, PciDevice};

    struct Recorder(Arc<Mutex<Vec<(Bdf, ConfigEffects)>>>);
    impl ConfigEffectsHandler for Recorder {
        fn apply(&mut self, bdf: Bdf, _d: &SharedPciDevice, e: ConfigEffects) {
            self.0.lock().unwrap().push((bdf, e));
        }
    }

    fn endpoint() -> Arc<Mutex<EmulatedFunction<Scratch>>> {
        Arc::new(Mutex::new(EmulatedFunction::new("ep", &test_config(), Scratch([0; 64])).unwrap()))
    }

    fn shared_endpoint() -> SharedPciDevice {
        endpoint()
    }

    fn ecam_read(ecam: &PciConfigMmio, bdf: Bdf, off: u64) -> u32 {
        let mut b = [0u8; 4];
        ecam.read(bdf.ecam_offset() + off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn free_slots_and_buses_run_out_cleanly() {
        let mut root = PciRoot::new(0, Box::new(Recorder(Default::default()))).unwrap();
        for d in (1..=31u8).rev() {
            assert_eq!(root.highest_free_slot(), Some(d));
            let bus = root.lowest_free_bus().unwrap();
            assert_eq!(bus, 32 - d);
            root.add_root_port(d, bus).unwrap();
        }
        assert_eq!(root.highest_free_slot(), None);
        assert!(matches!(root.add_root_port(0, 40), Err(RootError::InvalidSlot { device: 0 })));
    }

    #[test]
    fn topology_through_ecam_and_cf8() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut root = PciRoot::new(0, Box::new(Recorder(log.clone()))).unwrap();
        let rp = root.add_root_port(1, 1).unwrap();
        let (ep, direct_ep) = (shared_endpoint(), shared_endpoint());
        let ep_bdf = root.attach_to_port(1, 0, &ep).unwrap();
        let direct = root.add_device(3, 0, &direct_ep).unwrap();
        assert_eq!(
            (rp.to_string(), ep_bdf.to_string(), direct.to_string()),
            ("0000:00:01.0".into(), "0000:01:00.0".into(), "0000:00:03.0".into())
        );
        assert_eq!(root.last_bus(), 1);
        assert_eq!(root.endpoints().len(), 2);
        assert_eq!(root.highest_free_slot(), Some(31));
        assert_eq!(root.lowest_free_bus(), Some(2));
        let root = Arc::new(Mutex::new(root));
        let ecam = PciConfigMmio::new(&root);
        let host: Bdf = "00:00.0".parse().unwrap();
        assert_eq!(ecam_read(&ecam, host, 0), 0x0008_1b36);
        assert_eq!(ecam_read(&ecam, rp, 0x08) >> 8, 0x060400);
        assert_eq!(ecam_read(&ecam, rp, 0x18), 0x0001_0100);
        assert_eq!(ecam_read(&ecam, ep_bdf, 0), 0x1041_1af4);
        assert_eq!(ecam_read(&ecam, "01:01.0".parse().unwrap(), 0), u32::MAX, "only device 0 behind a port");
        assert_eq!(ecam_read(&ecam, "02:00.0".parse().unwrap(), 0), u32::MAX);
        assert_eq!(ecam_read(&ecam, "00:1f.7".parse().unwrap(), 0), u32::MAX);
        // The root port's slot shows a device present.
        let mut b = [0u8; 2];
        ecam.read(rp.ecam_offset() + 0x40 + 0x1a, &mut b);
        assert_eq!(u16::from_le_bytes(b) & 0x40, 0x40);
        // Renumbering the port's secondary bus moves the device with it.
        ecam.write(rp.ecam_offset() + 0x19, &[5]);
        ecam.write(rp.ecam_offset() + 0x1a, &[5]);
        assert_eq!(ecam_read(&ecam, ep_bdf, 0), u32::MAX);
        assert_eq!(ecam_read(&ecam, "05:00.0".parse().unwrap(), 0), 0x1041_1af4);
        // Mechanism #1 reaches the same functions.
        let io = PciConfigIo::new(&root);
        io.write(0, &0x8000_1800u32.to_le_bytes());
        let mut w = [0u8; 4];
        io.read(0, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x8000_1800);
        io.read(4, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x1041_1af4);
        let mut h = [0u8; 2];
        io.read(6, &mut h);
        assert_eq!(u16::from_le_bytes(h), 0x1041);
        io.write(0, &0x0000_1800u32.to_le_bytes());
        io.read(4, &mut w);
        assert_eq!(w, [0xff; 4], "enable bit clear");
        // A BAR write with decode on goes to the handler.
        io.write(0, &0x8000_1804u32.to_le_bytes());
        io.write(4, &2u16.to_le_bytes());
        io.write(0, &0x8000_1810u32.to_le_bytes());
        io.write(4, &0xc000_0000u32.to_le_bytes());
        let effects = log.lock().unwrap();
        assert_eq!(effects.len(), 2);
        assert_eq!(effects[1].1.bar_moves[0].new_addr, 0xc000_0000);
        assert_eq!(effects[1].0, "00:03.0".parse().unwrap());
    }

    #[test]
    fn malformed_config_accesses() {
        let root = Arc::new(Mutex::new(PciRoot::new(0, Box::new(Recorder(Default::default()))).unwrap()));
        let ecam = PciConfigMmio::new(&root);
        let mut b = [0u8; 4];
        ecam.read(2, &mut b);
        assert_eq!(b, [0xff; 4], "straddles a dword");
        let mut q = [0u8; 8];
        ecam.read(0, &mut q);
        assert_eq!(q, [0xff; 8]);
        ecam.read(1 << 28, &mut b);
        assert_eq!(b, [0xff; 4]);
        ecam.write(u64::MAX, &[1, 2, 3]);
        let io = PciConfigIo::new(&root);
        io.write(1, &[0x80]);
        io.read(0, &mut b);
        assert_eq!(b, [0; 4], "byte write does not latch");
        io.read(9, &mut b);
    }

    #[test]
    fn custom_host_bridge_and_port_cf9() {
        struct Latch(Arc<Mutex<Vec<u8>>>);
        impl crate::BusDevice for Latch {
            fn read(&mut self, _offset: u64, data: &mut [u8]) {
                data.fill(0x5a);
            }
            fn write(&mut self, _offset: u64, data: &[u8]) {
                self.0.lock().unwrap().extend_from_slice(data);
            }
        }
        let host: SharedPciDevice = endpoint();
        let root = PciRoot::with_host_bridge(0, Box::new(Recorder(Default::default())), host);
        let root = Arc::new(Mutex::new(root));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let latch: Arc<dyn crate::BusAccess> = Arc::new(Mutex::new(Latch(seen.clone())));
        let io = PciConfigIo::with_port_cf9(&root, &latch);
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut w = [0u8; 4];
        io.read(4, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x1041_1af4, "the given host bridge is 00:00.0");
        io.write(1, &[6]);
        let mut b = [0u8; 1];
        io.read(1, &mut b);
        assert_eq!((seen.lock().unwrap().clone(), b[0]), (vec![6], 0x5a));
        // Only byte accesses reach 0xCF9; the latch still needs a dword.
        io.write(1, &[1, 2]);
        assert_eq!(seen.lock().unwrap().len(), 1);
        io.read(0, &mut w);
        assert_eq!(u32::from_le_bytes(w), 0x8000_0000);
    }

    #[test]
    fn slot_errors() {
        let mut root = PciRoot::new(0, Box::new(Recorder(Default::default()))).unwrap();
        let ep = shared_endpoint();
        assert!(matches!(root.add_device(0, 0, &ep), Err(RootError::InvalidSlot { .. })));
        root.add_root_port(2, 1).unwrap();
        assert!(matches!(root.add_root_port(3, 1), Err(RootError::BusInUse { bus: 1 })));
        assert!(matches!(root.add_device(2, 0, &ep), Err(RootError::SlotInUse { .. })));
        assert!(matches!(root.attach_to_port(4, 0, &ep), Err(RootError::NoSuchPort { device: 4 })));
        root.attach_to_port(2, 0, &ep).unwrap();
        assert!(matches!(root.attach_to_port(2, 0, &ep), Err(RootError::SlotInUse { .. })));
    }

    #[test]
    fn relocator_moves_and_refuses_overlap() {
        let mmio = Arc::new(Bus::new());
        let pio = Arc::new(Bus::new());
        let mut rel = BusRelocator::new(mmio.clone(), pio.clone());
        let a = endpoint();
        let b = endpoint();
        a.lock().unwrap().place_bar(BarIndex(0), 0xc000_0000).unwrap();
        a.lock().unwrap().place_bar(BarIndex(2), 0x1_0000_0000).unwrap();
        b.lock().unwrap().place_bar(BarIndex(0), 0xc010_0000).unwrap();
        b.lock().unwrap().place_bar(BarIndex(2), 0x1_0001_0000).unwrap();
        let (abdf, bbdf): (Bdf, Bdf) = ("01:00.0".parse().unwrap(), "02:00.0".parse().unwrap());
        let (ad, bd): (SharedPciDevice, SharedPciDevice) = (a.clone(), b.clone());
        rel.attach(abdf, &ad).unwrap();
        rel.attach(bbdf, &bd).unwrap();
        assert!(matches!(rel.attach(abdf, &ad), Err(RootError::MapBar { .. })));
        // The scratch register behind A's BAR 0 is reachable through the bus.
        assert!(mmio.write(0xc000_0004, &[9]));
        // Guest moves A's BAR 0 onto B's: refused, A's BAR disabled, B untouched.
        let mut f = a.lock().unwrap();
        f.write_config(1, 0, &[2]);
        let e = f.write_config(4, 0, &0xc010_0000u32.to_le_bytes());
        drop(f);
        rel.apply(abdf, &ad, e);
        assert_eq!(rel.mapped(abdf, BarIndex(0)), None);
        let mut byte = [0u8; 1];
        assert!(!mmio.read(0xc000_0004, &mut byte));
        assert!(mmio.read(0xc010_0004, &mut byte));
        assert_eq!(byte[0], 0, "B's register, not A's");
        // Moving it to a free place maps it again.
        let e = a.lock().unwrap().write_config(4, 0, &0xc020_0000u32.to_le_bytes());
        rel.apply(abdf, &ad, e);
        assert_eq!(rel.mapped(abdf, BarIndex(0)), Some(0xc020_0000));
        assert!(mmio.read(0xc020_0004, &mut byte));
        assert_eq!(byte[0], 9);
        // The guest renumbered A's bus: the next move still finds A's mapping.
        let renumbered: Bdf = "05:00.0".parse().unwrap();
        let e = a.lock().unwrap().write_config(4, 0, &0xc030_0000u32.to_le_bytes());
        rel.apply(renumbered, &ad, e);
        assert_eq!(rel.mapped(renumbered, BarIndex(0)), Some(0xc030_0000));
        assert_eq!(rel.mapped(abdf, BarIndex(0)), Some(0xc030_0000));
        assert!(!mmio.read(0xc020_0004, &mut byte), "old range gone");
        assert!(mmio.read(0xc030_0004, &mut byte));
    }

    #[test]
    fn relocator_retries_a_refused_move_once_the_range_is_free() {
        let mmio = Arc::new(Bus::new());
        let mut rel = BusRelocator::new(mmio.clone(), Arc::new(Bus::new()));
        let (a, b) = (endpoint(), endpoint());
        for (f, low, high) in [(&a, 0xc000_0000, 0x1_0000_0000), (&b, 0xc010_0000, 0x1_0001_0000)] {
            let mut f = f.lock().unwrap();
            f.place_bar(BarIndex(0), low).unwrap();
            f.place_bar(BarIndex(2), high).unwrap();
        }
        let (abdf, bbdf): (Bdf, Bdf) = ("01:00.0".parse().unwrap(), "02:00.0".parse().unwrap());
        let (ad, bd): (SharedPciDevice, SharedPciDevice) = (a.clone(), b.clone());
        rel.attach(abdf, &ad).unwrap();
        rel.attach(bbdf, &bd).unwrap();
        a.lock().unwrap().write_config(1, 0, &[2]);
        b.lock().unwrap().write_config(1, 0, &[2]);
        assert!(mmio.write(0xc000_0004, &[0xa]));
        assert!(mmio.write(0xc010_0004, &[0xb]));
        // The guest swaps the two BARs, one register at a time.
        let e = a.lock().unwrap().write_config(4, 0, &0xc010_0000u32.to_le_bytes());
        rel.apply(abdf, &ad, e);
        assert_eq!(rel.mapped(abdf, BarIndex(0)), None, "refused while B is there");
        let e = b.lock().unwrap().write_config(4, 0, &0xc000_0000u32.to_le_bytes());
        rel.apply(bbdf, &bd, e);
        assert_eq!(rel.mapped(bbdf, BarIndex(0)), Some(0xc000_0000));
        assert_eq!(rel.mapped(abdf, BarIndex(0)), Some(0xc010_0000), "retried");
        let mut byte = [0u8; 1];
        assert!(mmio.read(0xc010_0004, &mut byte));
        assert_eq!(byte[0], 0xa, "A's register at A's new address");
        assert!(mmio.read(0xc000_0004, &mut byte));
        assert_eq!(byte[0], 0xb);
        // A later move of A supersedes its pending one; nothing stays pending.
        let e = a.lock().unwrap().write_config(4, 0, &0xc020_0000u32.to_le_bytes());
        rel.apply(abdf, &ad, e);
        assert_eq!(rel.mapped(abdf, BarIndex(0)), Some(0xc020_0000));
        assert!(rel.pending.is_empty());
    }

    /// An emulated function whose BAR 0 (4 KiB) is also host memory the guest may map.
    struct WithArea(EmulatedFunction<Scratch>, Arc<Vec<u8>>);
    impl PciDevice for WithArea {
        fn bars(&self) -> Vec<BarRegion> {
            self.0.bars()
        }
        fn read_config(&mut self, reg: usize) -> u32 {
            self.0.read_config(reg)
        }
        fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigEffects {
            self.0.write_config(reg, offset, data)
        }
        fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]) {
            self.0.read_bar(bar, offset, data)
        }
        fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]) {
            self.0.write_bar(bar, offset, data)
        }
        fn mmap_areas(&self, bar: BarIndex) -> Vec<crate::MmapArea> {
            let host_addr = self.1.as_ptr() as u64;
            let area = crate::MmapArea { offset: 0, size: 0x1000, host_addr, mapping: self.1.clone() };
            if bar == BarIndex(0) {
                vec![area]
            } else {
                Vec::new()
            }
        }
    }

    #[test]
    fn relocator_moves_memory_slots_with_the_bus_entries() {
        let mmio = Arc::new(Bus::new());
        let mut rel = BusRelocator::new(mmio.clone(), Arc::new(Bus::new()));
        let slots = crate::memslots::tests::FakeSlots::default();
        rel.set_memory_slots(Box::new(slots.clone()));
        let live = || slots.live.lock().unwrap().values().map(|(g, s, _)| (*g, *s)).collect::<Vec<_>>();
        let make = |low: u64, high: u64| {
            let mut f = EmulatedFunction::new("ep", &test_config(), Scratch([0; 64])).unwrap();
            f.place_bar(BarIndex(0), low).unwrap();
            f.place_bar(BarIndex(2), high).unwrap();
            Arc::new(Mutex::new(WithArea(f, Arc::new(vec![0; 0x1000]))))
        };
        let (a, b) = (make(0xc000_0000, 0x1_0000_0000), make(0xc010_0000, 0x1_0001_0000));
        let (abdf, bbdf): (Bdf, Bdf) = ("01:00.0".parse().unwrap(), "02:00.0".parse().unwrap());
        let (ad, bd): (SharedPciDevice, SharedPciDevice) = (a.clone(), b.clone());
        rel.attach(abdf, &ad).unwrap();
        rel.attach(bbdf, &bd).unwrap();
        assert!(live().is_empty(), "decode is off at attach");
        let e = a.lock().unwrap().write_config(1, 0, &[2]);
        rel.apply(abdf, &ad, e);
        let e = b.lock().unwrap().write_config(1, 0, &[2]);
        rel.apply(bbdf, &bd, e);
        assert_eq!(live(), vec![(0xc000_0000, 0x1000), (0xc010_0000, 0x1000)]);
        // The guest swaps the BARs one register at a time: A's move is refused (its slot goes
        // with its bus entry), then B moves away and A's retried move brings its slot back.
        let e = a.lock().unwrap().write_config(4, 0, &0xc010_0000u32.to_le_bytes());
        rel.apply(abdf, &ad, e);
        assert_eq!(live(), vec![(0xc010_0000, 0x1000)]);
        let e = b.lock().unwrap().write_config(4, 0, &0xc000_0000u32.to_le_bytes());
        rel.apply(bbdf, &bd, e);
        assert_eq!(live(), vec![(0xc000_0000, 0x1000), (0xc010_0000, 0x1000)]);
        assert_eq!(rel.mapped(abdf, BarIndex(0)), Some(0xc010_0000));
        // Decode off removes A's slot only; detaching B removes its slot and frees the mapping.
        let e = a.lock().unwrap().write_config(1, 0, &[0]);
        rel.apply(abdf, &ad, e);
        assert_eq!(live(), vec![(0xc000_0000, 0x1000)]);
        assert_eq!(Arc::strong_count(&b.lock().unwrap().1), 2);
        rel.detach(&bd);
        assert!(live().is_empty());
        assert_eq!(Arc::strong_count(&b.lock().unwrap().1), 1);
        let e = a.lock().unwrap().write_config(1, 0, &[2]);
        rel.apply(abdf, &ad, e);
        assert_eq!(live(), vec![(0xc010_0000, 0x1000)]);
        rel.detach(&ad);
        assert!(live().is_empty());
    }
}
