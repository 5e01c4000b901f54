//! The device manager without KVM: devices attached and detached through fakes of the KVM
//! seams, a guest driving them through the buses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::pci::{BarIndex, BarRegion, Bdf, ConfigEffects, PciDevice};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::seams::fake::FakeVm;
use super::*;
use crate::devices::virtio::registers::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use crate::devices::virtio::rng::Rng;
use crate::stop::StopReason;

/// A device manager over fake KVM seams, with COM1 writing nowhere.
pub(crate) fn test_dm() -> (DeviceManager, FakeVm) {
    let vm = FakeVm::new();
    let dm = DeviceManager::new(DeviceManagerConfig {
        seams: vm.seams(),
        mmio64: crate::layout::RamLayout::direct(512 << 20).mmio64_window(40),
        stop: StopNotifier::new().unwrap(),
        console: Some(Box::new(std::io::sink())),
        cmos: Arc::new(Mutex::new(Cmos::new())),
        chipset: None,
        max_irq_routes: 4096,
    })
    .unwrap();
    (dm, vm)
}

fn ecam(bdf: Bdf, off: u64) -> u64 {
    crate::layout::PCI_ECAM_START + bdf.ecam_offset() + off
}

fn config_read(dm: &DeviceManager, bdf: Bdf, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(dm.buses.mmio.read(ecam(bdf, off), &mut b));
    u32::from_le_bytes(b)
}

fn config_write(dm: &DeviceManager, bdf: Bdf, off: u64, data: &[u8]) {
    assert!(dm.buses.mmio.write(ecam(bdf, off), data));
}

/// The config-space offset of capability `id`, walking the list as a guest does.
fn capability(dm: &DeviceManager, bdf: Bdf, id: u8) -> u64 {
    let mut at = u64::from(config_read(dm, bdf, 0x34) & 0xfc);
    while at != 0 {
        let head = config_read(dm, bdf, at);
        if head as u8 == id {
            return at;
        }
        at = u64::from((head >> 8) & 0xfc);
    }
    panic!("{bdf}: no capability {id:#x}");
}

/// Names of this process's threads now.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// Waits (bounded) for `cond`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A virtio-rng attached and brought up by a "guest" through the buses: MSI-X enabled with
/// both vectors unmasked, queue 0 on a mock ring, DRIVER_OK. Returns its address, BAR 0 and
/// its MSI GSIs.
fn attach_active_rng(dm: &mut DeviceManager, id: &str, mem: &GuestMemory) -> (Bdf, u64, Vec<u32>) {
    let ctx = virtio::AttachContext { seams: &dm.seams, memory: mem, resources: &dm.resources, routing: &dm.routing };
    let (id, new) = virtio::create_one(&ctx, id, Box::new(Rng::open().unwrap())).unwrap();
    let gsis: Vec<u32> = new
        .allocations
        .iter()
        .filter_map(|a| match a {
            Allocation::MsiGsi(g) => Some(*g),
            _ => None,
        })
        .collect();
    let bdf = dm.attach_pci(id, new).unwrap();
    let bar = |i: u64| u64::from(config_read(dm, bdf, 0x10 + 4 * i) & !0xf);
    let (bar0, bar1) = (bar(0), bar(1));
    config_write(dm, bdf, 0x04, &[0x06]);
    let msix = capability(dm, bdf, 0x11);
    config_write(dm, bdf, msix + 3, &[0x80]);
    for v in 0..2u64 {
        let entry: Vec<u8> = [0xfee0_0000u32, 0, 0x40 + v as u32, 0].iter().flat_map(|d| d.to_le_bytes()).collect();
        for (i, dword) in entry.chunks(4).enumerate() {
            assert!(dm.buses.mmio.write(bar1 + 16 * v + 4 * i as u64, dword));
        }
    }
    let w = |off: u64, data: &[u8]| assert!(dm.buses.mmio.write(bar0 + off, data));
    let vq = MockSplitQueue::new(mem, 16);
    w(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
    w(0x08, &1u32.to_le_bytes());
    w(0x0c, &1u32.to_le_bytes());
    w(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
    w(0x16, &0u16.to_le_bytes());
    w(0x18, &16u16.to_le_bytes());
    w(0x1a, &1u16.to_le_bytes());
    for (off, addr) in [(0x20, vq.desc_table_addr()), (0x28, vq.avail_addr()), (0x30, vq.used_addr())] {
        w(off, &(addr.0 as u32).to_le_bytes());
        w(off + 4, &((addr.0 >> 32) as u32).to_le_bytes());
    }
    w(0x1c, &1u16.to_le_bytes());
    w(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK]);
    (bdf, bar0, gsis)
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

#[test]
fn detach_takes_a_running_virtio_device_out_completely() {
    let (mut dm, vm) = test_dm();
    let mem = memory();
    let (bdf, bar0, gsis) = attach_active_rng(&mut dm, "lcrng1", &mem);
    eventually("the I/O thread", || thread_names().iter().any(|n| n == "virtio-lcrng1"));
    assert_eq!(vm.ioevents.live.lock().unwrap().len(), 1, "queue 0's ioeventfd");
    assert!(gsis.iter().all(|g| vm.live_irqfds().contains(g)), "both vectors' irqfds");
    assert!(gsis.iter().all(|g| vm.msi_routes().contains(g)), "both vectors' routes");
    let weak = match &dm.devices[&DeviceId::from("lcrng1")] {
        Entry::Pci { function: PciFunction::Virtio(d), .. } => Arc::downgrade(d),
        _ => panic!("not a virtio function"),
    };

    dm.detach(&DeviceId::from("lcrng1")).unwrap();
    assert!(!thread_names().iter().any(|n| n == "virtio-lcrng1"), "the I/O thread has ended");
    assert!(vm.ioevents.live.lock().unwrap().is_empty(), "ioeventfds gone");
    assert!(!gsis.iter().any(|g| vm.live_irqfds().contains(g)), "irqfds gone");
    assert!(!gsis.iter().any(|g| vm.msi_routes().contains(g)), "routes gone");
    assert!(weak.upgrade().is_none(), "the device itself is gone");
    let mut b = [0u8; 4];
    assert!(!dm.buses.mmio.read(bar0, &mut b), "the bus no longer dispatches to its BAR");
    assert_eq!(config_read(&dm, bdf, 0), u32::MAX, "its config space reads all-ones");
    assert!(matches!(dm.detach(&DeviceId::from("lcrng1")), Err(DeviceManagerError::UnknownDevice(_))));

    // What it had is free again: the next device gets the same slot, BARs and GSIs.
    let (bdf2, bar0_2, gsis2) = attach_active_rng(&mut dm, "lcrng2", &mem);
    assert_eq!((bdf2, bar0_2, gsis2), (bdf, bar0, gsis));
}

/// An assigned function over an in-memory host device, gated on `dma`; the relocator puts
/// its BAR mmaps in the fake VM's memory slots.
fn attach_assigned(dm: &mut DeviceManager, dma: &Arc<::vfio::dma::DmaMapping>) -> (Bdf, Arc<::vfio::host::FakeHost>) {
    use ::vfio::fuzz_support::{sample_config, SAMPLE_SIZES};
    let host = Arc::new(::vfio::host::FakeHost::new(&sample_config(), SAMPLE_SIZES, [1, 8, 4]));
    let mut taken = crate::resources::Taken::new(&dm.resources);
    let gsis: Vec<u32> = (0..8).map(|_| taken.msi_gsi().unwrap()).collect();
    let vectors = crate::irq::KvmMsiVectors::new(dm.routing.clone(), &gsis).unwrap();
    let mut dev = ::vfio::device::VfioPciDevice::new(::vfio::device::DeviceParts {
        host: host.clone(),
        rombar: true,
        romfile: None,
        vectors: Box::new(vectors),
        intx: None,
    })
    .unwrap();
    dev.place_bars(&mut |b| match b.kind {
        ::pci::BarKind::Io => taken.io(b.size, b.size).ok(),
        _ => taken.mmio32(b.size, b.size.max(4096)).ok(),
    })
    .unwrap();
    dev.gate_bus_master(dma.clone());
    dev.start().unwrap();
    let new = NewPciFunction::on_bus0(PciFunction::Assigned(Arc::new(Mutex::new(dev))), taken.keep());
    (dm.attach_pci(DeviceId::from("nvme0"), new).unwrap(), host)
}

#[test]
fn detach_resets_an_assigned_device_and_removes_its_memory_slots() {
    let (mut dm, vm) = test_dm();
    let (bdf, host) = attach_assigned(&mut dm, &::vfio::dma::DmaMapping::mapped());
    config_write(&dm, bdf, 0x04, &[0x06]);
    assert!(!vm.memslots.live.lock().unwrap().is_empty(), "decode on: BAR mmaps are memory slots");
    assert_eq!(config_read(&dm, bdf, 4) & 0x4, 0x4, "Bus Master on (the mapping was complete)");
    let resets = *host.resets.lock().unwrap();
    dm.detach(&DeviceId::from("nvme0")).unwrap();
    assert!(vm.memslots.live.lock().unwrap().is_empty(), "memory slots gone");
    assert_eq!(*host.resets.lock().unwrap(), resets + 1, "reset as it was released");
    assert_eq!(Arc::strong_count(&host), 1, "the device fd (our fake's handle) is closed");
    assert_eq!(config_read(&dm, bdf, 0), u32::MAX);
}

#[test]
fn a_stop_releases_a_bus_master_enable_waiting_for_a_dma_map_that_never_ends() {
    let (mut dm, _vm) = test_dm();
    let never = ::vfio::dma::DmaMapping::pending();
    let (bdf, host) = attach_assigned(&mut dm, &never);
    dm.waits.push(never.clone());
    let stop = StopNotifier::new().unwrap();
    let dm = Arc::new(Mutex::new(dm));
    let buses = dm.lock().unwrap().buses.clone();
    // A vCPU enables Bus Master: it waits for the mapping, holding no lock.
    let vcpu = {
        let addr = ecam(bdf, 4);
        let buses = buses.clone();
        crate::threads::spawn(crate::seccomp::ThreadKind::Vcpu, "vcpu-test", move || {
            buses.mmio.write(addr, &[0x06, 0x00])
        })
        .unwrap()
    };
    std::thread::sleep(Duration::from_millis(30));
    assert!(!vcpu.is_finished(), "waiting for the DMA mapping");
    // Meanwhile other vCPUs' config accesses go on.
    assert_eq!(config_read(&dm.lock().unwrap(), bdf, 0) & 0xffff, 0x1b36);
    // SIGTERM: the control loop records the stop and releases the waits before it stops
    // the vCPUs.
    let started = Instant::now();
    stop.request(StopReason::Signal(libc::SIGTERM));
    dm.lock().unwrap().cancel_waits();
    assert!(vcpu.join().unwrap());
    assert!(started.elapsed() < Duration::from_secs(2), "bounded");
    assert_eq!(host.region_bytes(::vfio::host::CONFIG_REGION)[4] & 0x4, 0, "Bus Master never reached the device");
    drop(dm);
}

/// A function that records that it was dropped.
struct Witness(Arc<AtomicBool>);

impl Drop for Witness {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl PciDevice for Witness {
    fn bars(&self) -> Vec<BarRegion> {
        Vec::new()
    }
    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == 0 {
            0x0001_1234
        } else {
            0
        }
    }
    fn write_config(&mut self, _reg: usize, _offset: u64, _data: &[u8]) -> ConfigEffects {
        ConfigEffects::default()
    }
    fn read_bar(&mut self, _bar: BarIndex, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: BarIndex, _offset: u64, _data: &[u8]) {}
}

#[test]
fn dropping_the_device_manager_leaves_no_thread_and_drops_every_device() {
    let (mut dm, vm) = test_dm();
    let mem = memory();
    let dropped = Arc::new(AtomicBool::new(false));
    let witness =
        NewPciFunction::on_bus0(PciFunction::Emulated(Arc::new(Mutex::new(Witness(dropped.clone())))), Vec::new());
    let bdf = dm.attach_pci(DeviceId::from("witness"), witness).unwrap();
    assert_eq!(config_read(&dm, bdf, 0), 0x0001_1234);
    attach_active_rng(&mut dm, "lcrng3", &mem);
    eventually("the I/O thread", || thread_names().iter().any(|n| n == "virtio-lcrng3"));
    let buses = Arc::downgrade(&dm.buses);
    let root = Arc::downgrade(&dm.pci.root);
    drop(dm);
    assert!(!thread_names().iter().any(|n| n == "virtio-lcrng3"), "no I/O thread left");
    assert!(dropped.load(Ordering::SeqCst), "the device's Drop ran");
    assert!(buses.upgrade().is_none() && root.upgrade().is_none(), "buses and root gone too (no cycle)");
    assert!(vm.live_irqfds().is_empty(), "COM1's irqfd and every vector's are gone");
    assert!(vm.ioevents.live.lock().unwrap().is_empty());
}

#[test]
fn a_virtio_reset_completes_only_once_the_io_thread_has_ended() {
    let (mut dm, _vm) = test_dm();
    let mem = memory();
    let (_, bar0, _) = attach_active_rng(&mut dm, "lcrng4", &mem);
    eventually("the I/O thread", || thread_names().iter().any(|n| n == "virtio-lcrng4"));
    let status = |dm: &DeviceManager| {
        let mut b = [0u8; 1];
        assert!(dm.buses.mmio.read(bar0 + 0x14, &mut b));
        b[0]
    };
    assert!(dm.buses.mmio.write(bar0 + 0x14, &[0]));
    // The write returned without joining the thread; the driver polls for 0.
    eventually("device_status 0", || status(&dm) == 0);
    assert!(!thread_names().iter().any(|n| n == "virtio-lcrng4"), "0 only once the thread has ended");
}

/// A device manager on the q35 platform (firmware boot), over fake KVM seams.
fn q35_dm() -> (DeviceManager, FakeVm, Arc<StopNotifier>) {
    let vm = FakeVm::new();
    let stop = StopNotifier::new().unwrap();
    let dm = DeviceManager::new(DeviceManagerConfig {
        seams: vm.seams(),
        mmio64: crate::layout::RamLayout::firmware(512 << 20).mmio64_window(40),
        stop: stop.clone(),
        console: Some(Box::new(std::io::sink())),
        cmos: Arc::new(Mutex::new(Cmos::new())),
        chipset: Some(super::q35::Q35Chipset::new(&stop)),
        max_irq_routes: 4096,
    })
    .unwrap();
    (dm, vm, stop)
}

/// Config access through 0xCF8/0xCFC, as firmware does before ECAM exists.
fn cf8_write(dm: &DeviceManager, bdf: Bdf, off: u32, data: &[u8]) {
    let addr = 0x8000_0000 | u32::from(bdf.bus()) << 16 | u32::from(bdf.devfn()) << 8 | (off & 0xfc);
    assert!(dm.buses.pio.write(0xcf8, &addr.to_le_bytes()));
    assert!(dm.buses.pio.write(0xcfc + u64::from(off & 3), data));
}

fn cf8_read(dm: &DeviceManager, bdf: Bdf, off: u32) -> u32 {
    let addr = 0x8000_0000 | u32::from(bdf.bus()) << 16 | u32::from(bdf.devfn()) << 8 | (off & 0xfc);
    assert!(dm.buses.pio.write(0xcf8, &addr.to_le_bytes()));
    let mut b = [0u8; 4];
    assert!(dm.buses.pio.read(0xcfc, &mut b));
    u32::from_le_bytes(b)
}

#[test]
fn q35_chipset_windows_follow_the_firmware() {
    let (dm, _vm, stop) = q35_dm();
    let (mch, lpc): (Bdf, Bdf) = ("00:00.0".parse().unwrap(), "00:1f.0".parse().unwrap());
    assert_eq!(cf8_read(&dm, mch, 0), 0x29c0_8086);
    assert_eq!(cf8_read(&dm, lpc, 0), 0x2918_8086);
    // No ECAM and no direct-boot sleep port until the firmware places them.
    let mut b = [0u8; 4];
    assert!(!dm.buses.mmio.read(0xb000_0000, &mut b));
    assert!(!dm.buses.mmio.read(crate::layout::PCI_ECAM_START, &mut b));
    assert!(!dm.buses.pio.read(0x600, &mut b[..1]));
    // SeaBIOS's sequence: PCIEXBAR, then PMBASE and ACPI_EN.
    cf8_write(&dm, mch, 0x60, &0u32.to_le_bytes());
    cf8_write(&dm, mch, 0x64, &0u32.to_le_bytes());
    cf8_write(&dm, mch, 0x60, &0xb000_0001u32.to_le_bytes());
    assert!(dm.buses.mmio.read(0xb000_0000 + lpc.ecam_offset(), &mut b));
    assert_eq!(u32::from_le_bytes(b), 0x2918_8086, "ECAM at 0xb0000000 reaches 00:1f.0");
    cf8_write(&dm, lpc, 0x40, &0x601u32.to_le_bytes());
    cf8_write(&dm, lpc, 0x44, &[0x80]);
    let t0 = {
        assert!(dm.buses.pio.read(0x608, &mut b));
        u32::from_le_bytes(b)
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(dm.buses.pio.read(0x608, &mut b));
    assert!(u32::from_le_bytes(b) > t0, "the PM timer at PMBASE + 8 runs");
    // The chipset reports where it put them (the ACPI tables describe that).
    let c = dm.chipset().unwrap();
    assert_eq!((c.ecam().map(|w| w.base), c.pm_base()), (Some(0xb000_0000), Some(0x600)));
    // Moving ECAM removes the old window.
    cf8_write(&dm, mch, 0x60, &0xc000_0001u32.to_le_bytes());
    assert!(!dm.buses.mmio.read(0xb000_0000, &mut b));
    assert!(dm.buses.mmio.read(0xc000_0000, &mut b));
    // Reset through 0xCF9, poweroff through PM1_CNT.
    assert_eq!(stop.reason(), None);
    assert!(dm.buses.pio.write(0xcf9, &[0x06]));
    assert_eq!(stop.reason(), Some(StopReason::Reset));
    // The device manager owns the LPC bridge: detaching it releases it at once (the chipset
    // only refers to it), and its PM block leaves the bus.
    let c = c.clone();
    let mut dm = dm;
    let started = std::time::Instant::now();
    dm.detach(&DeviceId::from("lpc")).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "not held past detach");
    assert_eq!(c.pm_base(), None);
}

#[test]
fn firmware_image_and_flash_are_memory_slots() {
    use crate::boot::firmware::{FirmwareFiles, FirmwareKind};
    let (mut dm, vm, _stop) = q35_dm();
    let dir = std::env::temp_dir().join(format!("viaduct-dm-fw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vars_path = dir.join("vars.fd");
    std::fs::write(&vars_path, vec![0xffu8; 0x20000]).unwrap();
    let vars = std::fs::OpenOptions::new().read(true).write(true).open(&vars_path).unwrap();
    let files = FirmwareFiles {
        code: vec![0x90; 0x1e0000],
        code_path: "OVMF_CODE.fd".into(),
        kind: FirmwareKind::Uefi,
        vars: Some((vars_path.clone(), vars, 0x20000)),
    };
    let mem = memory();
    let fw_cfg = platform::fw_cfg::FwCfgBuilder::new().build(Arc::new(crate::boot::fw_cfg::GuestDma(mem.clone())));
    dm.attach_firmware(&files, &mem, fw_cfg).unwrap();
    let slots: Vec<(u64, u64, bool)> =
        vm.memslots.live.lock().unwrap().values().map(|s| (s.guest_addr, s.size, s.read_only)).collect();
    assert!(slots.contains(&(0xffe2_0000, 0x1e0000, true)), "code: {slots:x?}");
    assert!(slots.contains(&(0xffe0_0000, 0x20000, true)), "vars array: {slots:x?}");
    // The flash probe: read status unmaps the array (reads then come to the device).
    assert!(dm.buses.mmio.write(0xffe0_0010, &[0x70]));
    assert_eq!(vm.memslots.live.lock().unwrap().len(), 1);
    let mut b = [0u8; 1];
    assert!(dm.buses.mmio.read(0xffe0_0010, &mut b));
    assert_eq!(b[0], 0x80, "status: ready");
    // A programmed byte lands in the vars file.
    assert!(dm.buses.mmio.write(0xffe0_0100, &[0x10]));
    assert!(dm.buses.mmio.write(0xffe0_0100, &[0x42]));
    assert!(dm.buses.mmio.write(0xffe0_0100, &[0xff]));
    assert_eq!(vm.memslots.live.lock().unwrap().len(), 2, "array mapped again");
    // fw_cfg is on its ports: the signature item reads "QEMU".
    assert!(dm.buses.pio.write(0x510, &0u16.to_le_bytes()));
    let mut sig = [0u8; 4];
    for c in &mut sig {
        assert!(dm.buses.pio.read(0x511, std::slice::from_mut(c)));
    }
    assert_eq!(&sig, b"QEMU");
    // The debug console only when its lines are logged (tests run without a logger).
    assert_eq!(dm.buses.pio.read(0x402, &mut b), log::log_enabled!(log::Level::Debug));
    dm.shutdown();
    drop(dm);
    assert!(vm.memslots.live.lock().unwrap().is_empty(), "the VM's end removes the firmware's slots");
    assert_eq!(std::fs::read(&vars_path).unwrap()[0x100], 0x42);
    std::fs::remove_dir_all(&dir).unwrap();
}
