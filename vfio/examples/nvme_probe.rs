//! Drives a real NVMe controller through the vfio crate without a guest: the host side of
//! passthrough proven on real VFIO (the nested testbed's level 1).
//!
//!     nvme_probe BDF [EXPECTED_SECTOR0_PREFIX]
//!     nvme_probe --bar BDF BAR OFFSET...   # any device: text at OFFSETs of a BAR, by mmap
//!     nvme_probe --info BDF                # any device: ids, capabilities, BARs, vectors
//!     nvme_probe --dma-bench BDF MIB...    # time DMA-mapping MIB of 4 KiB and 2 MiB pages
//!
//! Pre-flight checks, container + group + device, a 2 MiB buffer DMA-mapped as "guest RAM"
//! (IOVA = its pretend guest address), config space through the virtualization layer, BAR0
//! through both the trapped path and the mmap, MSI-X vectors enabled lazily through table
//! writes, then a real NVMe admin Identify and an I/O Read of LBA 0 by DMA, completions
//! signalled on the vectors' eventfds. Prints `@@CHECK NAME pass|fail DETAIL` lines (an
//! outcome that can fail) and `@@VALUE NAME TEXT` lines (what was seen on the way).

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostadmin::preflight::{preflight, IommuInterface};
use hostadmin::PciHost;
use pci::{
    BarIndex, BarMemslots, ConfigEffects, InterruptError, MemorySlots, MsiMessage, MsiVectors, PciDevice, VectorIndex,
};
use vfio::container::{Container, DeviceSource, RamRange};
use vfio::device::{DeviceParts, VfioPciDevice};
use vfio::host::HostDevice;
use vfio::iommufd::{choose_backend, Backend, BackendRequest, IommufdHost};
use vfio::spec::parse_devices;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM_GPA: u64 = 0x1000_0000;
const RAM_SIZE: usize = 2 << 20;
const ASQ: u64 = 0;
const ACQ: u64 = 0x1000;
const IDENT: u64 = 0x2000;
const IOSQ: u64 = 0x3000;
const IOCQ: u64 = 0x4000;
const DATA: u64 = 0x5000;

/// The devices of `--device` specs, as the host-side pre-flight takes them.
fn bdfs(specs: &[vfio::spec::DeviceSpec]) -> Vec<pci::Bdf> {
    specs.iter().map(|s| s.bdf).collect()
}

fn check(name: &str, ok: bool, detail: impl std::fmt::Display) -> bool {
    println!("@@CHECK {name} {} {detail}", if ok { "pass" } else { "fail" });
    ok
}

/// A report with no pass or fail of its own (a step that did not fail would have returned an
/// error instead).
fn value(name: &str, text: impl std::fmt::Display) {
    println!("@@VALUE {name} {text}");
}

/// Each route change: vector and message (`None`: route removed).
type RouteLog = Arc<Mutex<Vec<(u16, Option<MsiMessage>)>>>;

/// Plain eventfds as vectors: no KVM here, the probe waits on them itself.
struct Vectors {
    fds: Vec<EventFd>,
    routes: RouteLog,
}

impl MsiVectors for Vectors {
    fn len(&self) -> usize {
        self.fds.len()
    }
    fn irqfd(&self, v: VectorIndex) -> Option<&EventFd> {
        self.fds.get(v.0 as usize)
    }
    fn set_route(&mut self, v: VectorIndex, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).push((v.0, msg));
        Ok(())
    }
    fn commit(&mut self) -> Result<(), InterruptError> {
        Ok(())
    }
}

/// INTx as two eventfds: VFIO signals `trigger`, the probe plays KVM's EOI on `resample`.
struct Line(EventFd, EventFd);

impl vfio::interrupts::IntxLine for Line {
    fn trigger_fd(&self) -> std::os::unix::io::RawFd {
        self.0.as_raw_fd()
    }
    fn resample_fd(&self) -> std::os::unix::io::RawFd {
        self.1.as_raw_fd()
    }
}

/// Records "memory slots": here the probe reads through the host mapping itself. Slots come
/// and go as in the VMM: `pci::BarMemslots` follows the device's config effects.
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<Vec<(u64, u64, u64)>>>);

impl MemorySlots for Slots {
    fn map_slot(&mut self, gpa: u64, size: u64, host_addr: u64) -> std::io::Result<u32> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.push((gpa, size, host_addr));
        Ok(v.len() as u32)
    }
    fn unmap_slot(&mut self, _slot: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the VMM's config-effects handler does after a config write: the memory slots follow
/// the BARs (the probe has no bus: a BAR is where it was placed).
fn follow(memslots: &mut BarMemslots, dev: &VfioPciDevice, fx: &ConfigEffects) {
    let bars = PciDevice::bars(dev);
    memslots.sync(&"probe", 0, dev, fx.mem_decode, &|b| bars.iter().find(|r| r.index == b).map(|r| r.addr));
}

struct Ram {
    ptr: *mut u8,
}

impl Ram {
    fn new() -> Self {
        // SAFETY: anonymous private mapping, checked below; freed at process exit.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert!(ptr != libc::MAP_FAILED, "mmap of the DMA buffer failed");
        Self { ptr: ptr.cast() }
    }
    fn write(&self, off: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: off + i < RAM_SIZE by construction of the probe's layout.
            unsafe { std::ptr::write_volatile(self.ptr.add(off as usize + i), *b) };
        }
    }
    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        // SAFETY: as above; volatile because the device writes by DMA.
        (0..len).map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(off as usize + i)) }).collect()
    }
}

fn rd32(dev: &mut VfioPciDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read_bar(BarIndex(0), off, &mut b);
    u32::from_le_bytes(b)
}

fn wr32(dev: &mut VfioPciDevice, off: u64, v: u32) {
    dev.write_bar(BarIndex(0), off, &v.to_le_bytes());
}

fn wr64(dev: &mut VfioPciDevice, off: u64, v: u64) {
    wr32(dev, off, v as u32);
    wr32(dev, off + 4, (v >> 32) as u32);
}

fn wait_fd(fd: &EventFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n == 1 && fd.read().is_ok()
}

fn wait_ready(dev: &mut VfioPciDevice, ready: bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if (rd32(dev, 0x1c) & 1 == 1) == ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Submits one 64-byte command in queue `sq` slot `slot` and waits for its completion.
struct Queue {
    sq: u64,
    cq: u64,
    qid: u64,
    tail: u32,
    vector: usize,
}

fn submit(dev: &mut VfioPciDevice, ram: &Ram, vec: &EventFd, q: &mut Queue, cmd: [u32; 16]) -> Result<u32, String> {
    let bytes: Vec<u8> = cmd.iter().flat_map(|w| w.to_le_bytes()).collect();
    ram.write(q.sq + u64::from(q.tail) * 64, &bytes);
    let slot = q.tail;
    q.tail += 1;
    wr32(dev, 0x1000 + q.qid * 8, q.tail);
    // Both must be seen: the interrupt on the eventfd and the completion entry. A level-
    // triggered INTx may re-fire once for an older completion, so wait on for the entry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut irq, mut dw3) = (false, 0);
    while Instant::now() < deadline && !(irq && dw3 & (1 << 16) != 0) {
        irq |= wait_fd(vec, Duration::from_millis(50));
        let cqe = ram.read(q.cq + u64::from(slot) * 16, 16);
        dw3 = u32::from_le_bytes([cqe[12], cqe[13], cqe[14], cqe[15]]);
    }
    wr32(dev, 0x1000 + q.qid * 8 + 4, slot + 1);
    if !irq {
        return Err(format!("no interrupt on vector {} within 10 s", q.vector));
    }
    if dw3 & (1 << 16) == 0 {
        return Err("interrupt but no completion entry within 10 s".into());
    }
    Ok(dw3 >> 17)
}

/// The backend the VMM would pick for these devices (iommufd when the host has it).
fn interface_of(backend: Backend) -> IommuInterface {
    match backend {
        Backend::Legacy => IommuInterface::Container,
        Backend::Iommufd => IommuInterface::Iommufd,
    }
}

fn backend_of(specs: &[vfio::spec::DeviceSpec]) -> Result<Backend, String> {
    let reqs: Vec<BackendRequest> =
        specs.iter().map(|s| BackendRequest { bdf: s.bdf, mode: s.iommu, passed_fd: false }).collect();
    choose_backend(&IommufdHost::system(), &reqs, false).map_err(|e| e.to_string())
}

fn run(bdf_arg: &str, expect: Option<&str>) -> Result<bool, String> {
    let specs = parse_devices(&[bdf_arg]).map_err(|e| e.to_string())?;
    let sysfs = PciHost::system();
    let t = Instant::now();
    let backend = backend_of(&specs)?;
    preflight(&sysfs, &bdfs(&specs), RAM_SIZE as u64, interface_of(backend)).map_err(|e| e.to_string())?;
    let spec = &specs[0];
    let mut container =
        Container::open(backend, None, None).map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let host = container
        .open_device(spec.bdf, DeviceSource::Sysfs(&spec.path))
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    value("open-device", format!("{} in {:?} ({backend})", spec.bdf, t.elapsed()));
    let ram = Ram::new();
    let t = Instant::now();
    // SAFETY: ram stays mapped for the whole process; the container unmaps on drop.
    unsafe { container.map_ram(&[RamRange { gpa: RAM_GPA, size: RAM_SIZE as u64, host_addr: ram.ptr as u64 }]) }
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    value("dma-map", format!("{RAM_SIZE} bytes at iova {RAM_GPA:#x} in {:?}", t.elapsed()));

    let host: Arc<dyn HostDevice> = Arc::new(host);
    let n_msix = host.irq_count(vfio::host::IrqIndex::Msix);
    let routes = Arc::new(Mutex::new(Vec::new()));
    let fds: Vec<EventFd> = (0..n_msix.max(1)).map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd")).collect();
    let slots = Slots::default();
    let intx_trigger = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let intx_resample = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let line = Line(intx_trigger.try_clone().expect("dup"), intx_resample.try_clone().expect("dup"));
    let mut dev = VfioPciDevice::new(DeviceParts {
        host: host.clone(),
        rombar: true,
        romfile: None,
        vectors: Box::new(Vectors {
            fds: fds.iter().map(|f| f.try_clone().expect("dup")).collect(),
            routes: routes.clone(),
        }),
        intx: Some(Box::new(line)),
    })
    .map_err(|e| e.to_string())?;
    let mut ok = true;

    // Config space through the virtualization layer.
    let id = dev.read_config(0);
    ok &= check("config-ids", id & 0xffff != 0xffff && id != 0, format!("{:04x}:{:04x}", id & 0xffff, id >> 16));
    let mut caps = Vec::new();
    let mut ptr = dev.read_config(0x34 / 4) & 0xfc;
    while ptr >= 0x40 && caps.len() < 48 {
        let d = dev.read_config(ptr as usize / 4);
        caps.push(format!("{:02x}@{ptr:02x}", d & 0xff));
        ptr = (d >> 8) & 0xfc;
    }
    ok &= check("config-caps", caps.iter().any(|c| c.starts_with("11@")), caps.join(","));
    let mut ext = Vec::new();
    let mut eptr = 0x100usize;
    while eptr >= 0x100 && ext.len() < 64 {
        let h = dev.read_config(eptr / 4);
        if h == 0 {
            break;
        }
        ext.push(format!("{:04x}@{eptr:03x}", h & 0xffff));
        eptr = (h >> 20) as usize & 0xffc;
    }
    value("config-ext-caps", if ext.is_empty() { "none".into() } else { ext.join(",") });
    let bar0_before = dev.read_config(4);
    dev.write_config(4, 0, &u32::MAX.to_le_bytes());
    let sized = dev.read_config(4);
    let size = (!(sized & !0xf)).wrapping_add(1);
    let bar0_size = dev.bar_specs().first().map_or(0, |b| b.size);
    ok &= check(
        "bar0-sizing",
        u64::from(size) == bar0_size.min(1 << 31) || bar0_size > u64::from(u32::MAX),
        format!("size {size:#x} region {bar0_size:#x}"),
    );
    dev.write_config(4, 0, &bar0_before.to_le_bytes());

    let mut next = 0xe000_0000u64;
    dev.place_bars(&mut |b| {
        let a = next;
        next += b.size.max(0x1000);
        Some(a)
    })
    .map_err(|e| e.to_string())?;
    dev.start().map_err(|e| e.to_string())?;
    // Memory decode + bus master on: slots appear.
    let mut memslots = BarMemslots::new(Box::new(slots.clone()));
    let fx = dev.write_config(1, 0, &[0x06, 0x00]);
    follow(&mut memslots, &dev, &fx);
    let mapped = slots.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ok &= check("decode-maps-slots", fx.mem_decode == Some(true) && !mapped.is_empty(), format!("{mapped:x?}"));

    // BAR0 both ways: trapped (pread) and mmapped.
    let cap_lo = rd32(&mut dev, 0);
    let vs = rd32(&mut dev, 8);
    let mmap_vs = mapped.iter().find(|(gpa, size, _)| *gpa == 0xe000_0000 && *size > 8).map(|(_, _, host)| {
        // SAFETY: host is a live mmap of BAR0 (at least 4 KiB) owned by the device.
        unsafe { std::ptr::read_volatile((*host as *const u8).add(8).cast::<u32>()) }
    });
    ok &= check(
        "bar0-trapped-vs-mmap",
        Some(vs) == mmap_vs && vs >= 0x10000,
        format!("VS {vs:#x} via mmap {mmap_vs:x?} CAP {cap_lo:#x}"),
    );

    // MSI-X: enable, program vectors 0 and 1 unmasked through the emulated table.
    let msix = dev.read_config(0x34 / 4); // re-read cap list to find MSI-X
    let _ = msix;
    let mut cap = dev.read_config(0x34 / 4) & 0xfc;
    let mut msix_cap = None;
    while cap >= 0x40 {
        let d = dev.read_config(cap as usize / 4);
        if d & 0xff == 0x11 {
            msix_cap = Some(cap as usize);
            break;
        }
        cap = (d >> 8) & 0xfc;
    }
    let msix_cap = msix_cap.ok_or("no MSI-X capability")?;
    let table = dev.read_config(msix_cap / 4 + 1);
    let (tbar, toff) = (BarIndex((table & 7) as u8), u64::from(table & !7));
    dev.write_config(msix_cap / 4, 2, &[0x00, 0x80]);
    for v in 0..2u32 {
        let e: Vec<u8> = [0xfee0_0000u32, 0, 0x40 + v, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
        dev.write_bar(tbar, toff + u64::from(v) * 16, &e);
    }
    let r = routes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // An SR-IOV VF may have a single vector (the NVMe VF here): then I/O shares vector 0.
    let io_vector = usize::from(n_msix >= 2);
    let want_routes = if n_msix >= 2 { 2 } else { 1 };
    ok &= check(
        "msix-routes",
        r.iter().filter(|(_, m)| m.is_some()).count() == want_routes,
        format!("{n_msix} host vectors: {r:x?}"),
    );

    // NVMe bring-up by DMA.
    wr32(&mut dev, 0x14, 0);
    ok &= check("nvme-disable", wait_ready(&mut dev, false), "CSTS.RDY=0");
    wr32(&mut dev, 0x0c, u32::MAX); // mask legacy INTx-style interrupts at the controller
    wr32(&mut dev, 0x24, (15 << 16) | 15);
    wr64(&mut dev, 0x28, RAM_GPA + ASQ);
    wr64(&mut dev, 0x30, RAM_GPA + ACQ);
    wr32(&mut dev, 0x14, 1 | (6 << 16) | (4 << 20));
    ok &= check("nvme-enable", wait_ready(&mut dev, true), "CSTS.RDY=1");
    let mut admin = Queue { sq: ASQ, cq: ACQ, qid: 0, tail: 0, vector: 0 };
    let mut ident = [0u32; 16];
    ident[0] = 0x06 | (1 << 16);
    ident[6] = (RAM_GPA + IDENT) as u32;
    ident[7] = ((RAM_GPA + IDENT) >> 32) as u32;
    ident[10] = 1;
    let st = submit(&mut dev, &ram, &fds[0], &mut admin, ident)?;
    let id = ram.read(IDENT, 64);
    let serial = String::from_utf8_lossy(&id[4..24]).trim().to_string();
    let model = String::from_utf8_lossy(&id[24..64]).trim().to_string();
    ok &= check(
        "nvme-identify-dma-msix",
        st == 0 && !model.is_empty(),
        format!("status {st} serial '{serial}' model '{model}'"),
    );

    // I/O queue pair on vector 1, then read LBA 0.
    let mut cq = [0u32; 16];
    cq[0] = 0x05 | (2 << 16);
    cq[6] = (RAM_GPA + IOCQ) as u32;
    cq[10] = (15 << 16) | 1;
    cq[11] = ((io_vector as u32) << 16) | 0b11; // IV, interrupts enabled, physically contiguous
    let st_cq = submit(&mut dev, &ram, &fds[0], &mut admin, cq)?;
    let mut sq = [0u32; 16];
    sq[0] = 0x01 | (3 << 16);
    sq[6] = (RAM_GPA + IOSQ) as u32;
    sq[10] = (15 << 16) | 1;
    sq[11] = (1 << 16) | 1; // CQID 1, contiguous
    let st_sq = submit(&mut dev, &ram, &fds[0], &mut admin, sq)?;
    ok &= check("nvme-io-queues", st_cq == 0 && st_sq == 0, format!("create cq {st_cq} sq {st_sq}"));
    let mut io = Queue { sq: IOSQ, cq: IOCQ, qid: 1, tail: 0, vector: io_vector };
    let mut read = [0u32; 16];
    read[0] = 0x02 | (4 << 16);
    read[1] = 1;
    read[6] = (RAM_GPA + DATA) as u32;
    read[12] = 0; // one block
    let st = submit(&mut dev, &ram, &fds[io_vector], &mut io, read)?;
    let sector = ram.read(DATA, 512);
    let line = String::from_utf8_lossy(&sector).split('\n').next().unwrap_or("").to_string();
    let matched = expect.is_none_or(|e| line.starts_with(e));
    ok &= check("nvme-read-lba0-dma", st == 0 && matched, format!("status {st} '{line}'"));
    if host.irq_count(vfio::host::IrqIndex::Intx) == 0 {
        // SR-IOV VFs have no INTx (PCIe SR-IOV 1.1, 3.4.1.14), so the INTx read is not
        // attempted rather than skipped. VFIO reporting none is only right for a VF (sysfs
        // links a VF to its PF as `physfn`); a whole function without INTx fails here.
        let is_vf = std::path::Path::new(&format!("/sys/bus/pci/devices/{}/physfn", spec.bdf)).exists();
        let why = if is_vf { "an SR-IOV VF, which has no INTx" } else { "but it is not an SR-IOV VF" };
        ok &= check("nvme-no-intx", is_vf, format!("VFIO reports 0 INTx IRQs for {}: {why}", spec.bdf));
        value("trap-counts", format!("{:?}", dev.trap_counts()));
        wr32(&mut dev, 0x14, 0);
        memslots.unmap_all();
        drop(dev);
        drop(container);
        value("release", "device reset, DMA unmapped, fds closed");
        return Ok(ok);
    }
    // INTx: MSI-X off (INTx comes back on the host), controller interrupts unmasked, a read
    // completes on the level-triggered line; "EOI" through the resample eventfd re-arms it.
    dev.write_config(msix_cap / 4, 2, &[0x00, 0x00]);
    let mode = format!("{:?}", dev.interrupt_mode());
    dev.write_config(1, 1, &[0x00]); // INTx disable bit (bit 10) clear
    wr32(&mut dev, 0x10, u32::MAX); // INTMC: unmask
    let mut intx_ok = true;
    let mut details = Vec::new();
    for lba in [0u32, 0] {
        read[0] = 0x02 | (5 << 16);
        read[10] = lba;
        match submit(&mut dev, &ram, &intx_trigger, &mut io, read) {
            Ok(st) => details.push(format!("status {st}")),
            Err(e) => {
                intx_ok = false;
                details.push(e);
            }
        }
        let _ = intx_resample.write(1);
    }
    ok &= check("nvme-read-intx", intx_ok && mode == "Intx", format!("mode {mode}: {}", details.join("; ")));
    value("trap-counts", format!("{:?}", dev.trap_counts()));
    wr32(&mut dev, 0x14, 0);
    memslots.unmap_all();
    drop(dev);
    drop(container);
    value("release", "device reset, DMA unmapped, fds closed");
    Ok(ok)
}

/// A device opened by [`open_plain`]; fields drop in order: slots, device, container.
struct Plain {
    /// Holds the memory slots (and so the BAR mappings) until dropped, first.
    _memslots: BarMemslots,
    slots: Slots,
    dev: VfioPciDevice,
    _container: Container,
}

/// Opens any device without driving it: what `--bar` and `--info` share.
fn open_plain(bdf_arg: &str) -> Result<Plain, String> {
    let specs = parse_devices(&[bdf_arg]).map_err(|e| e.to_string())?;
    let backend = backend_of(&specs)?;
    preflight(&PciHost::system(), &bdfs(&specs), RAM_SIZE as u64, interface_of(backend)).map_err(|e| e.to_string())?;
    let container =
        Container::open(backend, None, None).map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let host = container
        .open_device(specs[0].bdf, DeviceSource::Sysfs(&specs[0].path))
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let host: Arc<dyn HostDevice> = Arc::new(host);
    let n = host.irq_count(vfio::host::IrqIndex::Msix).max(host.irq_count(vfio::host::IrqIndex::Msi)).max(1);
    let fds = (0..n).map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd")).collect();
    let slots = Slots::default();
    let mut dev = VfioPciDevice::new(DeviceParts {
        host,
        rombar: true,
        romfile: None,
        vectors: Box::new(Vectors { fds, routes: Arc::default() }),
        intx: None,
    })
    .map_err(|e| e.to_string())?;
    // 64-bit BARs of 256 MiB and more above 4 GiB, like the VMM does; I/O BARs in port space.
    let (mut low, mut high, mut io) = (0xc000_0000u64, 0x80_0000_0000u64, 0xc000u64);
    dev.place_bars(&mut |b| {
        let next = match b.kind {
            pci::BarKind::Io => &mut io,
            _ if b.size >= 256 << 20 => &mut high,
            _ => &mut low,
        };
        let a = next.next_multiple_of(b.size.max(0x1000));
        *next = a + b.size.max(0x1000);
        Some(a)
    })
    .map_err(|e| e.to_string())?;
    let mut memslots = BarMemslots::new(Box::new(slots.clone()));
    let fx = dev.write_config(1, 0, &[0x06]);
    follow(&mut memslots, &dev, &fx);
    Ok(Plain { _memslots: memslots, slots, dev, _container: container })
}

fn bar_mode(args: &[String]) -> Result<bool, String> {
    let [bdf, bar, offsets @ ..] = args else { return Err("usage: --bar BDF BAR OFFSET...".into()) };
    let bar: u8 = bar.parse().map_err(|_| "BAR must be 0-5")?;
    let p = open_plain(bdf)?;
    let Some(info) = p.dev.bar_specs().into_iter().find(|b| b.index == BarIndex(bar)) else {
        return Err(format!("BAR{bar} does not exist"));
    };
    let regions = pci::PciDevice::bars(&p.dev);
    let region = regions.iter().find(|r| r.index == BarIndex(bar)).ok_or("BAR not placed")?;
    value("bar-placed", format!("BAR{bar} {:?} size {:#x} at {:#x}", info.kind, info.size, region.addr));
    let mapped = p.slots.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut ok = true;
    for off in offsets {
        let off = off
            .strip_prefix("0x")
            .map_or_else(|| off.parse::<u64>().ok(), |h| u64::from_str_radix(h, 16).ok())
            .ok_or("bad offset")?;
        let gpa = region.addr + off;
        let Some((slot_gpa, _, host)) = mapped.iter().find(|(g, size, _)| gpa >= *g && gpa + 64 <= g + size) else {
            ok &= check(&format!("bar-read-{off:#x}"), false, "offset not in a mapped area");
            continue;
        };
        let text: Vec<u8> = (0..64)
            // SAFETY: inside a live mmap of the BAR (checked against the slot's size above).
            .map(|i| unsafe { std::ptr::read_volatile((*host as *const u8).add((gpa - slot_gpa) as usize + i)) })
            .take_while(|b| *b != b'\n' && *b != 0)
            .collect();
        check(&format!("bar-read-{off:#x}"), true, String::from_utf8_lossy(&text));
    }
    Ok(ok)
}

fn info_mode(args: &[String]) -> Result<bool, String> {
    let [bdf] = args else { return Err("usage: --info BDF".into()) };
    let mut p = open_plain(bdf)?;
    let id = p.dev.read_config(0);
    check("info-ids", id != u32::MAX && id != 0, format!("{:04x}:{:04x}", id & 0xffff, id >> 16));
    let mut caps = Vec::new();
    let mut ptr = p.dev.read_config(0x34 / 4) & 0xfc;
    while ptr >= 0x40 && caps.len() < 48 {
        let d = p.dev.read_config(ptr as usize / 4);
        caps.push(format!("{:02x}@{ptr:02x}", d & 0xff));
        ptr = (d >> 8) & 0xfc;
    }
    // 0x11: MSI-X, which every device this is run on has (it is what viaduct virtualizes).
    check("info-caps", caps.iter().any(|c| c.starts_with("11@")), caps.join(","));
    let bars: Vec<String> = pci::PciDevice::bars(&p.dev)
        .iter()
        .map(|b| format!("BAR{} {:?} {:#x}@{:#x}", b.index.0, b.kind, b.size, b.addr))
        .collect();
    check("info-bars", !bars.is_empty(), bars.join("; "));
    let mapped = p.slots.0.lock().unwrap_or_else(|e| e.into_inner()).len();
    value("info-mmapped-areas", mapped);
    Ok(true)
}

fn dma_bench(args: &[String]) -> Result<bool, String> {
    let [bdf, sizes @ ..] = args else { return Err("usage: --dma-bench BDF MIB...".into()) };
    let specs = parse_devices(&[bdf.as_str()]).map_err(|e| e.to_string())?;
    let sysfs = PciHost::system();
    let mut ok = true;
    for mib in sizes {
        let mib: u64 = mib.parse().map_err(|_| "sizes are MiB numbers")?;
        let size = mib << 20;
        for (pages, flags) in [("4k", 0), ("2m", libc::MAP_HUGETLB)] {
            let backend = backend_of(&specs)?;
            preflight(&sysfs, &bdfs(&specs), size, interface_of(backend)).map_err(|e| e.to_string())?;
            // SAFETY: a fresh anonymous mapping, checked, unmapped below after the container.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                check(
                    &format!("dma-map-{mib}m-{pages}"),
                    pages == "2m",
                    "no memory of this page size (hugepages not reserved?)",
                );
                ok &= pages == "2m";
                continue;
            }
            let mut container = Container::open(backend, None, None).map_err(|e| e.to_string())?;
            let _host =
                container.open_device(specs[0].bdf, DeviceSource::Sysfs(&specs[0].path)).map_err(|e| e.to_string())?;
            let t = Instant::now();
            // SAFETY: ptr..ptr+size stays mapped until after the container is dropped.
            let r = unsafe { container.map_ram(&[RamRange { gpa: 0, size, host_addr: ptr as u64 }]) };
            let map = t.elapsed();
            let t = Instant::now();
            drop(_host);
            drop(container);
            let unmap = t.elapsed();
            // SAFETY: the mapping made above, no longer used by the IOMMU.
            unsafe { libc::munmap(ptr, size as usize) };
            ok &= check(
                &format!("dma-map-{mib}m-{pages}"),
                r.is_ok(),
                format!(
                    "map_ms {} unmap_ms {} {}",
                    map.as_millis(),
                    unmap.as_millis(),
                    r.err().map(|e| e.to_string()).unwrap_or_default()
                ),
            );
        }
    }
    Ok(ok)
}

fn main() {
    env_logger_init();
    let args: Vec<String> = std::env::args().collect();
    let mode = match args.get(1).map(String::as_str) {
        Some("--bar") => Some(bar_mode(&args[2..])),
        Some("--info") => Some(info_mode(&args[2..])),
        Some("--dma-bench") => Some(dma_bench(&args[2..])),
        _ => None,
    };
    if let Some(r) = mode {
        match r {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(e) => {
                println!("@@ERROR {e}");
                std::process::exit(1);
            }
        }
    }
    let Some(bdf) = args.get(1) else {
        eprintln!("usage: nvme_probe BDF [EXPECTED_SECTOR0_PREFIX]");
        std::process::exit(2);
    };
    match run(bdf, args.get(2).map(String::as_str)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            println!("@@ERROR {e}");
            eprintln!("nvme_probe: {e}");
            std::process::exit(1);
        }
    }
}

/// The example has no logger crate; warnings from the library go to stderr via this minimal one.
fn env_logger_init() {
    struct L;
    impl log::Log for L {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("[{}] {}", r.level(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let _ = log::set_logger(&L).map(|()| log::set_max_level(log::LevelFilter::Info));
}
