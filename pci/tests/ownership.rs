//! Who owns what in the PCI segment, as the VMM builds it: the buses, the relocator, the
//! root complex and the config-access devices never keep a function (or each other) alive,
//! a detached function leaves every bus and slot, and a config write that must wait (Bus
//! Master before the DMA mapping) waits holding no lock.

use std::sync::{Arc, Mutex};

use pci::synthetic::{synthetic_function, ScratchRegisters};
use pci::{
    BarIndex, Bdf, Bus, BusRelocator, ConfigEffects, ConfigEffectsHandler, ConfigWait, EmulatedFunction, PciConfigIo,
    PciConfigMmio, PciRoot, SharedPciDevice,
};

/// A 1b36:0005 test function with a 16 KiB BAR 0 and a 64 KiB 64-bit BAR 2.
fn endpoint() -> Arc<Mutex<EmulatedFunction<ScratchRegisters>>> {
    let spec = "bar0=mem32:16K,bar2=mem64:64K".parse().unwrap();
    Arc::new(Mutex::new(synthetic_function("ep", &spec).unwrap()))
}

/// The set-up the VMM builds: buses, relocator, root, config-access devices on the
/// buses. The test owns the functions, as the device manager does.
struct Segment {
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    relocator: Arc<Mutex<BusRelocator>>,
    root: Arc<Mutex<PciRoot>>,
}

struct Shared(Arc<Mutex<BusRelocator>>);
impl ConfigEffectsHandler for Shared {
    fn apply(&mut self, bdf: Bdf, d: &SharedPciDevice, e: ConfigEffects) {
        self.0.lock().unwrap().apply(bdf, d, e);
    }
}

fn segment() -> Segment {
    let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
    let relocator = Arc::new(Mutex::new(BusRelocator::new(mmio.clone(), pio.clone())));
    let root = Arc::new(Mutex::new(PciRoot::new(0, Box::new(Shared(relocator.clone()))).unwrap()));
    pio.insert(Arc::new(PciConfigIo::new(&root)), 0xcf8, 8).unwrap();
    mmio.insert(Arc::new(PciConfigMmio::new(&root)), 0xb000_0000, 1 << 28).unwrap();
    Segment { mmio, pio, relocator, root }
}

fn attach(seg: &Segment, slot: u8, dev: &SharedPciDevice) -> Bdf {
    let bdf = seg.root.lock().unwrap().add_device(slot, 0, dev).unwrap();
    seg.relocator.lock().unwrap().attach(bdf, dev).unwrap();
    bdf
}

fn ecam_dword(seg: &Segment, bdf: Bdf, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(seg.mmio.read(0xb000_0000 + bdf.ecam_offset() + off, &mut b));
    u32::from_le_bytes(b)
}

#[test]
fn nothing_on_a_bus_keeps_the_root_or_a_function_alive() {
    let seg = segment();
    let ep = endpoint();
    ep.lock().unwrap().place_bar(BarIndex(0), 0xc000_0000).unwrap();
    let dev: SharedPciDevice = ep.clone();
    let bdf = attach(&seg, 1, &dev);
    assert_eq!(ecam_dword(&seg, bdf, 0), 0x0005_1b36);
    let (weak_dev, weak_root, weak_mmio) = (Arc::downgrade(&ep), Arc::downgrade(&seg.root), Arc::downgrade(&seg.mmio));
    drop((ep, dev));
    assert!(weak_dev.upgrade().is_none(), "the root, relocator and BAR slot do not own the function");
    let mut b = [0u8; 4];
    assert!(seg.mmio.read(0xc000_0000, &mut b), "the slot is still on the bus...");
    assert_eq!(b, [0xff; 4], "...but reads all-ones without its function");
    assert_eq!(ecam_dword(&seg, bdf, 0), u32::MAX);
    drop(seg);
    assert!(weak_root.upgrade().is_none(), "no cycle: buses -> config access -> root -> relocator -> buses");
    assert!(weak_mmio.upgrade().is_none());
}

#[test]
fn detached_functions_leave_the_buses_and_the_root() {
    let seg = segment();
    let a = endpoint();
    a.lock().unwrap().place_bar(BarIndex(0), 0xc000_0000).unwrap();
    a.lock().unwrap().place_bar(BarIndex(2), 0x1_0000_0000).unwrap();
    let ad: SharedPciDevice = a.clone();
    let bdf = attach(&seg, 2, &ad);
    let behind_port: SharedPciDevice = endpoint();
    let port = seg.root.lock().unwrap().add_root_port(5, 1).unwrap();
    let child = seg.root.lock().unwrap().attach_to_port(5, 0, &behind_port).unwrap();
    let slot_status = |seg: &Segment| ecam_dword(seg, port, 0x40 + 0x18) >> 16;
    assert_eq!(slot_status(&seg) & 0x40, 0x40, "presence detect set");
    let ranges_before = seg.mmio.ranges().len();
    assert!(seg.mmio.write(0xc000_0004, &[7]));

    seg.relocator.lock().unwrap().detach(&ad);
    assert_eq!(seg.root.lock().unwrap().remove_device(&ad), Some(bdf));
    assert_eq!(seg.mmio.ranges().len(), ranges_before - 2, "both BARs off the bus");
    let mut b = [0u8; 1];
    assert!(!seg.mmio.read(0xc000_0004, &mut b), "nothing dispatches there any more");
    assert_eq!(ecam_dword(&seg, bdf, 0), u32::MAX);
    assert_eq!(seg.relocator.lock().unwrap().mapped(bdf, BarIndex(0)), None);
    assert_eq!(seg.root.lock().unwrap().remove_device(&ad), None, "only once");
    // The range is free for the next function.
    let next = endpoint();
    next.lock().unwrap().place_bar(BarIndex(0), 0xc000_0000).unwrap();
    next.lock().unwrap().place_bar(BarIndex(2), 0x1_0000_0000).unwrap();
    let next: SharedPciDevice = next;
    assert_eq!(attach(&seg, 2, &next), bdf);

    assert_eq!(seg.root.lock().unwrap().remove_device(&behind_port), Some(child));
    assert_eq!(slot_status(&seg) & 0x40, 0, "the port's slot is empty again");
    assert_eq!(ecam_dword(&seg, child, 0), u32::MAX);
}

/// A function whose Bus Master enable must wait for `gate` (like an assigned device's
/// for the DMA mapping): it returns the wait instead of blocking.
struct Gated {
    gate: Arc<Gate>,
    command: u16,
    writes: Vec<u16>,
}

#[derive(Default)]
struct Gate {
    state: Mutex<Option<bool>>,
    changed: std::sync::Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        *self.state.lock().unwrap() = Some(open);
        self.changed.notify_all();
    }
}

impl pci::AccessGate for Gate {
    fn wait(&self) -> bool {
        let s = self.state.lock().unwrap();
        let s = self.changed.wait_while(s, |s| s.is_none()).unwrap();
        s.unwrap_or(false)
    }
}

impl pci::PciDevice for Gated {
    fn bars(&self) -> Vec<pci::BarRegion> {
        Vec::new()
    }
    fn read_config(&mut self, reg: usize) -> u32 {
        match reg {
            0 => 0x1234_5678,
            1 => u32::from(self.command),
            _ => 0,
        }
    }
    fn write_config(&mut self, reg: usize, _offset: u64, data: &[u8]) -> ConfigEffects {
        let mut effects = ConfigEffects::default();
        if reg != 1 {
            return effects;
        }
        let mut value = u16::from(data[0]);
        self.writes.push(value);
        if value & 4 != 0 && self.gate.state.lock().unwrap().is_none() {
            value &= !4;
            let gate: Arc<dyn pci::AccessGate> = self.gate.clone();
            effects.wait = Some(ConfigWait { gate, reg, offset: 0, data: data.to_vec() });
        }
        if *self.gate.state.lock().unwrap() == Some(false) {
            value &= !4;
        }
        self.command = value;
        effects
    }
    fn read_bar(&mut self, _bar: BarIndex, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: BarIndex, _offset: u64, _data: &[u8]) {}
}

#[test]
fn a_bus_master_wait_holds_no_lock_and_completes_after() {
    for open in [true, false] {
        let seg = Arc::new(segment());
        let gate = Arc::new(Gate::default());
        let gated = Arc::new(Mutex::new(Gated { gate: gate.clone(), command: 0, writes: Vec::new() }));
        let other = endpoint();
        other.lock().unwrap().place_bar(BarIndex(0), 0xc000_0000).unwrap();
        other.lock().unwrap().place_bar(BarIndex(2), 0x1_0000_0000).unwrap();
        let (gd, od): (SharedPciDevice, SharedPciDevice) = (gated.clone(), other.clone());
        let (gbdf, obdf) = (attach(&seg, 1, &gd), attach(&seg, 2, &od));
        let writer = {
            let seg = seg.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 2];
                // Through CF8/CFC: the latch device is shared by every vCPU.
                assert!(seg.pio.write(0xcf8, &(0x8000_0000u32 | (u32::from(gbdf.devfn()) << 8) | 4).to_le_bytes()));
                assert!(seg.pio.write(0xcfc, &[0x06, 0x00]));
                assert!(seg.pio.read(0xcfc, &mut b));
                u16::from_le_bytes(b)
            })
        };
        while gated.lock().unwrap().writes.is_empty() {
            std::thread::yield_now();
        }
        // The writer waits: the root, both config-access devices and other functions
        // (the other vCPUs' accesses) are free meanwhile.
        assert!(!writer.is_finished());
        assert_eq!(ecam_dword(&seg, obdf, 0), 0x0005_1b36);
        assert_eq!(ecam_dword(&seg, gbdf, 4) & 4, 0, "Bus Master not on before the gate opens");
        gate.set(open);
        let command = writer.join().unwrap();
        let writes = gated.lock().unwrap().writes.clone();
        if open {
            assert_eq!(command & 4, 4, "completed after the wait");
            assert_eq!(writes, vec![6, 6], "written again once the gate opened");
        } else {
            assert_eq!(command, 2, "a gate that never opens leaves Bus Master off");
            assert_eq!(writes, vec![6], "and no second write");
        }
    }
}
