// The config_msix harness, shared by the cargo-fuzz target (pci/fuzz/fuzz_targets) and the
// replay test that runs in `cargo test -p pci` (pci/tests/fuzz_replay.rs). Included with
// `include!`, so plain comments only.
//
// Sequences of guest config-space, BAR (MSI-X table / PBA) and ECAM accesses against an
// emulated topology. Invariants checked after every access:
// - read-only bits never change; write-1-to-clear bits only ever clear;
// - BAR registers keep their flag bits and never show address bits below their size;
// - MSI-X entries keep reserved bits zero, and the routes pushed through `MsiVectors`
//   always equal what the table says (the change stream is complete);
// - MSI routes pushed equal what the MSI capability says;
// - every BAR the relocator believes mapped is reachable on the bus, and nothing panics.

use std::sync::{Arc, Mutex};

use pci::capability::msi::MsiConfig;
use pci::capability::msix::MsixConfig;
use pci::capability::pcie::{PcieCapabilityConfig, PciePortType};
use pci::ConfigEffectsHandler;
use pci::{
    BarIndex, BarKind, BarSpec, Bdf, Bus, BusAccess, BusRelocator, DeviceIds, EmulatedFunction, FunctionConfig,
    HeaderType, InterruptError, MsiMessage, MsiVectors, NoRegisters, PciConfigIo, PciConfigMmio, PciDevice, PciRoot,
    SharedPciDevice, VectorIndex,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Routes = Arc<Mutex<Vec<Option<MsiMessage>>>>;

struct Model {
    fds: Vec<EventFd>,
    staged: Vec<Option<MsiMessage>>,
    committed: Routes,
}

impl MsiVectors for Model {
    fn len(&self) -> usize {
        self.fds.len()
    }
    fn irqfd(&self, v: VectorIndex) -> Option<&EventFd> {
        self.fds.get(usize::from(v.0))
    }
    fn set_route(&mut self, v: VectorIndex, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        *self.staged.get_mut(usize::from(v.0)).ok_or(InterruptError::NoSuchVector(v))? = msg;
        Ok(())
    }
    fn commit(&mut self) -> Result<(), InterruptError> {
        *self.committed.lock().unwrap() = self.staged.clone();
        Ok(())
    }
}

fn model(n: usize) -> (Box<dyn MsiVectors>, Routes) {
    let committed: Routes = Arc::new(Mutex::new(vec![None; n]));
    let fds = (0..n).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
    (Box::new(Model { fds, staged: vec![None; n], committed: committed.clone() }), committed)
}

fn ids(device_id: u16) -> DeviceIds {
    DeviceIds {
        vendor_id: 0x1af4,
        device_id,
        class_code: 0x020000,
        revision: 0,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
    }
}

const MSIX_VECTORS: u16 = 70;

struct Rig {
    /// The config-access devices refer to the root weakly: the rig owns it.
    _root: Arc<Mutex<PciRoot>>,
    ecam: PciConfigMmio,
    cf8: PciConfigIo,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    relocator: Arc<Mutex<BusRelocator>>,
    functions: Vec<(Bdf, Arc<Mutex<EmulatedFunction<NoRegisters>>>)>,
    msix_routes: Routes,
    msi_routes: Routes,
}

/// Lets the root own a handler that the harness also inspects.
struct Relay(Arc<Mutex<BusRelocator>>);
impl ConfigEffectsHandler for Relay {
    fn apply(&mut self, bdf: Bdf, device: &SharedPciDevice, effects: pci::ConfigEffects) {
        self.0.lock().unwrap().apply(bdf, device, effects);
    }
}

fn rig() -> Rig {
    let msix_cfg = FunctionConfig {
        ids: ids(1),
        header: HeaderType::Endpoint,
        pcie: Some(PcieCapabilityConfig { port_type: PciePortType::Endpoint, port_number: 0, slot_occupied: false }),
        power_management: true,
        bars: vec![
            BarSpec { index: BarIndex(0), kind: BarKind::Mem32 { prefetchable: false }, size: 0x1000 },
            BarSpec { index: BarIndex(1), kind: BarKind::Io, size: 0x20 },
            BarSpec { index: BarIndex(2), kind: BarKind::Mem64 { prefetchable: true }, size: 0x4000 },
            BarSpec { index: BarIndex::ROM, kind: BarKind::Rom, size: 0x800 },
        ],
        msi: None,
        msix: Some(MsixConfig {
            vectors: MSIX_VECTORS,
            table_bar: BarIndex(2),
            table_offset: 0,
            pba_bar: BarIndex(2),
            pba_offset: 0x3000,
        }),
        interrupt_pin: 1,
    };
    let msi_cfg = FunctionConfig {
        ids: ids(2),
        header: HeaderType::Endpoint,
        pcie: None,
        power_management: false,
        bars: vec![BarSpec { index: BarIndex(0), kind: BarKind::Mem64 { prefetchable: false }, size: 0x1000 }],
        msi: Some(MsiConfig { vectors: 8, address_64bit: true, per_vector_mask: true }),
        msix: None,
        interrupt_pin: 2,
    };
    let mut a = EmulatedFunction::new("a", &msix_cfg, NoRegisters).unwrap();
    let (va, ra) = model(usize::from(MSIX_VECTORS));
    a.set_vectors(va);
    a.place_bar(BarIndex(0), 0xc000_0000).unwrap();
    a.place_bar(BarIndex(1), 0x1000).unwrap();
    a.place_bar(BarIndex(2), 0x1_0000_0000).unwrap();
    a.place_bar(BarIndex::ROM, 0xc000_2000).unwrap();
    let mut b = EmulatedFunction::new("b", &msi_cfg, NoRegisters).unwrap();
    let (vb, rb) = model(8);
    b.set_vectors(vb);
    b.place_bar(BarIndex(0), 0xc000_1000).unwrap();
    let (a, b) = (Arc::new(Mutex::new(a)), Arc::new(Mutex::new(b)));
    let mmio = Arc::new(Bus::new());
    let pio = Arc::new(Bus::new());
    let relocator = Arc::new(Mutex::new(BusRelocator::new(mmio.clone(), pio.clone())));
    let (ad, bd): (SharedPciDevice, SharedPciDevice) = (a.clone(), b.clone());
    let mut root = PciRoot::new(0, Box::new(Relay(relocator.clone()))).unwrap();
    root.add_root_port(1, 1).unwrap();
    let abdf = root.attach_to_port(1, 0, &ad).unwrap();
    let bbdf = root.add_device(2, 0, &bd).unwrap();
    relocator.lock().unwrap().attach(abdf, &ad).unwrap();
    relocator.lock().unwrap().attach(bbdf, &bd).unwrap();
    let root = Arc::new(Mutex::new(root));
    Rig {
        ecam: PciConfigMmio::new(&root),
        cf8: PciConfigIo::new(&root),
        _root: root,
        mmio,
        pio,
        relocator,
        functions: vec![(abdf, a), (bbdf, b)],
        msix_routes: ra,
        msi_routes: rb,
    }
}

struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn check_config_write(f: &mut dyn PciDevice, cs: Option<&pci::ConfigSpace>, reg: usize, before: u32) {
    let after = f.read_config(reg);
    if let Some(cs) = cs {
        let (wm, c) = (cs.write_mask(reg), cs.w1c_mask(reg));
        assert_eq!((after ^ before) & !(wm | c), 0, "RO bits changed in reg {reg:#x}: {before:#x} -> {after:#x}");
        assert_eq!(after & !before & c, 0, "RW1C bit set by a write in reg {reg:#x}");
    }
}

fn check_bars(f: &mut EmulatedFunction<NoRegisters>) {
    for r in f.bars() {
        let (reg, flags_mask, flags): (usize, u32, u32) = match (r.index, r.kind) {
            (BarIndex::ROM, _) => (12, 0x7fe, 0),
            (i, BarKind::Io) => (4 + usize::from(i.0), 0x3, 1),
            (i, BarKind::Mem32 { prefetchable }) => (4 + usize::from(i.0), 0xf, u32::from(prefetchable) << 3),
            (i, BarKind::Mem64 { prefetchable }) => (4 + usize::from(i.0), 0xf, 4 | u32::from(prefetchable) << 3),
            (_, BarKind::Rom) => unreachable!("ROM kind only at ROM index"),
        };
        let v = f.read_config(reg);
        assert_eq!(v & flags_mask, flags, "BAR {:?} flags", r.index);
        let below_size =
            (r.size.min(1 << 32) - 1) as u32 & !flags_mask & !(if r.index == BarIndex::ROM { 1 } else { 0 });
        assert_eq!(v & below_size, 0, "BAR {:?} shows address bits below its size: {v:#x}", r.index);
    }
}

fn check_routes(r: &Rig) {
    let a = r.functions[0].1.lock().unwrap();
    let table = a.msix_table().unwrap();
    let routes = r.msix_routes.lock().unwrap();
    for v in 0..MSIX_VECTORS {
        let v = VectorIndex(v);
        assert_eq!(routes[usize::from(v.0)], table.route(v), "MSI-X vector {v:?} route out of sync");
        let e = table.entry(v).unwrap();
        assert_eq!(e.control & !1, 0);
        assert_eq!(e.address_lo & 3, 0);
    }
}

/// Runs one input: a sequence of guest accesses, invariants checked after each.
pub fn run(data: &[u8]) {
    let rig = rig();
    let mut input = Input(data);
    let mut ops = 0;
    while let Some(op) = input.byte() {
        ops += 1;
        if ops > 512 {
            break;
        }
        let Some(sel) = input.byte() else { break };
        let (bdf, target) = rig.functions[usize::from(sel & 1)].clone();
        match op % 9 {
            // Config write of 1, 2 or 4 bytes, mostly in the first 256 bytes.
            0 | 1 => {
                let Some(r) = input.u16() else { break };
                let reg = if op & 0x80 != 0 { usize::from(r) % 1100 } else { usize::from(r) % 64 };
                let offset = u64::from(sel >> 1) % 5;
                let len = [1, 2, 4, 3][usize::from(sel >> 4) % 4];
                let Some(bytes) = input.bytes(len) else { break };
                let mut f = target.lock().unwrap();
                let before = f.read_config(reg);
                let is_bar = (4..=9).contains(&reg) || reg == 12;
                let cs = (!is_bar).then(|| f.config().clone());
                let effects = f.write_config(reg, offset, &bytes);
                check_config_write(&mut *f, cs.as_ref(), reg, before);
                check_bars(&mut f);
                drop(f);
                let dev: SharedPciDevice = target.clone();
                rig.relocator.lock().unwrap().apply(bdf, &dev, effects);
            }
            // BAR access (MSI-X table, PBA, plain registers), any size up to 8 bytes.
            2 | 3 => {
                let bar = BarIndex(sel >> 1 & 7);
                let Some(off) = input.u16() else { break };
                let len = usize::from(sel >> 4) % 9;
                let mut f = target.lock().unwrap();
                if op & 1 == 0 {
                    let Some(bytes) = input.bytes(len) else { break };
                    f.write_bar(bar, u64::from(off), &bytes);
                } else {
                    let mut buf = vec![0u8; len];
                    f.read_bar(bar, u64::from(off), &mut buf);
                }
            }
            // The device raises a vector.
            4 => {
                let _ = target.lock().unwrap().raise(VectorIndex(u16::from(sel) % 80));
            }
            // A guest config access through ECAM (any function, any size).
            5 | 6 => {
                let Some(off) = input.u16() else { break };
                let Some(hi) = input.byte() else { break };
                let addr = (u64::from(hi % 4) << 20) | (u64::from(sel) << 12) | u64::from(off & 0xfff);
                let len = [1usize, 2, 4, 8][usize::from(off >> 12) % 4];
                if op == 5 {
                    let Some(bytes) = input.bytes(len) else { break };
                    rig.ecam.write(addr, &bytes);
                } else {
                    let mut buf = vec![0u8; len];
                    rig.ecam.read(addr, &mut buf);
                }
            }
            // Configuration mechanism #1: latch an address, then a data access.
            8 => {
                let Some(addr) = input.bytes(4) else { break };
                let offset = u64::from(sel >> 1) % 9;
                let len = [1usize, 2, 4, 3][usize::from(sel >> 5) % 4];
                if sel & 1 == 0 {
                    rig.cf8.write(0, &addr);
                    let Some(bytes) = input.bytes(len) else { break };
                    rig.cf8.write(offset, &bytes);
                } else {
                    let mut buf = vec![0u8; len];
                    rig.cf8.read(offset, &mut buf);
                }
            }
            // MMIO and port I/O through the buses.
            _ => {
                let Some(off) = input.u16() else { break };
                let mut buf = [0u8; 4];
                let buf = &mut buf[..usize::from(sel >> 5) % 5];
                let _ = match sel >> 1 & 3 {
                    0 => rig.mmio.read(0xc000_0000 + u64::from(off), buf),
                    1 => rig.mmio.write(0x1_0000_0000 + u64::from(off), buf),
                    2 => rig.pio.write(u64::from(off), buf),
                    _ => rig.mmio.read(0xd000_0000 | u64::from(off) << 12, buf),
                };
            }
        }
        check_routes(&rig);
        check_mappings(&rig);
        let b = rig.functions[1].1.lock().unwrap();
        let expect = b.msi().map(|m| m.routes(b.config())).unwrap();
        assert_eq!(*rig.msi_routes.lock().unwrap(), expect, "MSI routes out of sync");
    }
}

/// The relocator maps a BAR exactly where the function says it is, or nowhere (a move
/// refused for overlap), and every mapping is reachable on its bus.
fn check_mappings(rig: &Rig) {
    let rel = rig.relocator.lock().unwrap();
    for (bdf, f) in &rig.functions {
        for r in f.lock().unwrap().bars() {
            if let Some(at) = rel.mapped(*bdf, r.index) {
                assert_eq!(at, r.addr, "{bdf} BAR {:?} mapped away from its address", r.index);
                let bus = if r.kind == BarKind::Io { &rig.pio } else { &rig.mmio };
                assert!(bus.resolve(at, 1).is_some(), "{bdf} BAR {:?} mapping lost", r.index);
            }
        }
    }
}
