//! Cost of one config-space access (direct and through ECAM) and one MMIO dispatch through
//! the `Bus`. Target: under 100 ns each.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion};
use pci::synthetic::{synthetic_function, SyntheticSpec};
use pci::{
    BarIndex, BarKind, BarSlot, BarSpec, Bdf, Bus, BusAccess, BusDevice, ConfigEffects, ConfigEffectsHandler,
    DeviceIds, EmulatedFunction, FunctionConfig, HeaderType, NoRegisters, PciConfigMmio, PciDevice, PciRoot,
    SharedPciDevice,
};

struct Ignore;
impl ConfigEffectsHandler for Ignore {
    fn apply(&mut self, _: Bdf, _: &SharedPciDevice, _: ConfigEffects) {}
}

fn function() -> EmulatedFunction<NoRegisters> {
    let cfg = FunctionConfig {
        ids: DeviceIds {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            class_code: 0x020000,
            revision: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        },
        header: HeaderType::Endpoint,
        pcie: None,
        power_management: true,
        bars: vec![BarSpec { index: BarIndex(0), kind: BarKind::Mem32 { prefetchable: false }, size: 0x1000 }],
        msi: None,
        msix: None,
        interrupt_pin: 1,
    };
    EmulatedFunction::new("bench", &cfg, NoRegisters).expect("valid config")
}

struct Register(u32);
impl BusDevice for Register {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.copy_from_slice(&self.0.to_le_bytes()[..data.len()]);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0 = u32::from(data[0]);
    }
}

fn benches(c: &mut Criterion) {
    let mut f = function();
    c.bench_function("config read (function)", |b| b.iter(|| black_box(f.read_config(black_box(1)))));
    c.bench_function("config write (function, command)", |b| {
        b.iter(|| black_box(f.write_config(black_box(1), 0, &[0x06, 0x00])))
    });

    let mut root = PciRoot::new(0, Box::new(Ignore)).expect("root");
    let functions: Vec<SharedPciDevice> = (1..8).map(|_| Arc::new(Mutex::new(function())) as SharedPciDevice).collect();
    for (dev, f) in (1..8).zip(&functions) {
        root.add_device(dev, 0, f).expect("slot");
    }
    let root = Arc::new(Mutex::new(root));
    let ecam = PciConfigMmio::new(&root);
    let target = Bdf::new(0, 0, 5, 0).expect("bdf").ecam_offset();
    let mut buf = [0u8; 4];
    c.bench_function("config read (ECAM, 4 bytes)", |b| {
        b.iter(|| {
            ecam.read(black_box(target), &mut buf);
            black_box(buf)
        })
    });

    // 64 devices on the bus, as many as a busy VM has ranges.
    let bus = Bus::new();
    for i in 0..64u64 {
        bus.insert(Arc::new(Mutex::new(Register(i as u32))), 0xc000_0000 + i * 0x1000, 0x1000).expect("insert");
    }
    c.bench_function("MMIO dispatch (Bus::read, 4 bytes, 64 ranges)", |b| {
        b.iter(|| black_box(bus.read(black_box(0xc002_a010), &mut buf)))
    });
    c.bench_function("MMIO dispatch (Bus::write, 4 bytes, 64 ranges)", |b| {
        b.iter(|| black_box(bus.write(black_box(0xc002_a010), &[1, 0, 0, 0])))
    });

    // The whole emulated-BAR path: Bus lookup -> BarSlot -> function lock -> BAR register.
    let spec: SyntheticSpec = "bar0=mem32:16K".parse().expect("spec");
    let mut synth = synthetic_function("bench", &spec).expect("synthetic function");
    synth.place_bar(BarIndex(0), 0xd000_0000).expect("place");
    let shared: SharedPciDevice = Arc::new(Mutex::new(synth));
    bus.insert(Arc::new(BarSlot::new(Arc::downgrade(&shared), BarIndex(0))), 0xd000_0000, 0x4000).expect("insert BAR");
    c.bench_function("BAR write (Bus -> BarSlot -> function, 4 bytes)", |b| {
        b.iter(|| black_box(bus.write(black_box(0xd000_0010), &[1, 2, 3, 4])))
    });
}

criterion_group!(pci_access, benches);
criterion_main!(pci_access);
