//! The device manager: owns every device of the VM, by id, with everything it was given
//! (its slot, bus range, GSIs, interrupt lines). Devices come in through
//! [`DeviceManager::attach_pci`] / [`DeviceManager::attach_platform`] and go out through
//! [`DeviceManager::detach`], on a running VM as well (hot-plug), at a guest reset and at the
//! VM's end. Buses, the root complex and the relocator only refer to devices (weakly).
//!
//! Detaching runs in one order: the device leaves the guest's view (bus entries, the memory
//! slots over its BARs, slot) -> its I/O threads are stopped and joined -> its ioeventfds,
//! INTx irqfd, MSI irqfds and GSI routes are removed -> an assigned device is reset and
//! closed -> its resources are given back. When the VM ends, every device goes that way, then the VFIO
//! container (DMA unmapped); guest RAM is unmapped last, by whoever holds it last.
//!
//! Sub-managers (legacy, pci, vfio, virtio, testdev) build devices, one file each.

pub mod inventory;
pub mod legacy;
pub mod pci;
pub mod q35;
pub mod seams;
pub mod testdev;
#[cfg(test)]
mod tests;
pub mod vfio;
pub mod virtio;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ::pci::{BusAccess, SharedPciDevice};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::cmos::Cmos;
use crate::devices::ged::Ged;
use crate::devices::serial::{ConsoleOut, SerialDevice};
use crate::devices::virtio::pci::VirtioPciDevice;
use crate::irq::{GsiRouting, KvmIntx};
use crate::resources::{Allocation, Resources};
use crate::stop::StopNotifier;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::IoBuses;
use crate::vstate::vm::Vm;
use seams::VmSeams;

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("placing {what} at {base:#x} on the bus failed")]
    InsertDevice {
        what: &'static str,
        base: u64,
        #[source]
        source: ::pci::BusError,
    },
    #[error("creating an eventfd failed")]
    CreateEventFd(#[source] std::io::Error),
    #[error("KVM_IRQFD for {id} on GSI {gsi} failed")]
    RegisterIrqfd {
        id: DeviceId,
        gsi: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("{id}: wiring INTx to GSI {gsi}")]
    ConnectIntx {
        id: DeviceId,
        gsi: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("device id {0} is used twice")]
    DuplicateId(DeviceId),
    #[error("no device with id {0}")]
    UnknownDevice(DeviceId),
    #[error("no free slot on PCI bus 0")]
    NoFreeSlot,
    #[error("PCI: {what} failed")]
    Pci {
        what: &'static str,
        #[source]
        source: ::pci::RootError,
    },
    #[error("PCI host bridge ACPI description: {0}")]
    PciAml(String),
    #[error("firmware: {0}")]
    Firmware(String),
    #[error(transparent)]
    Vfio(#[from] vfio::VfioManagerError),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioManagerError),
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    #[error(transparent)]
    TestDev(#[from] Box<testdev::TestDevError>),
}

/// A device's name in the VM: the `id=` of its option (or the default, e.g. `disk0`), or the
/// platform device's (`com1`, `i8042`, `cmos`, `acpi-pm`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl From<&str> for DeviceId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PCI function as its owner holds it: typed, for what only the owner does with it.
pub enum PciFunction {
    Virtio(Arc<Mutex<VirtioPciDevice>>),
    Assigned(Arc<Mutex<::vfio::device::VfioPciDevice>>),
    Emulated(SharedPciDevice),
}

impl PciFunction {
    fn shared(&self) -> SharedPciDevice {
        match self {
            Self::Virtio(d) => d.clone(),
            Self::Assigned(d) => d.clone(),
            Self::Emulated(d) => d.clone(),
        }
    }

    fn strong_count(&self) -> usize {
        match self {
            Self::Virtio(d) => Arc::strong_count(d),
            Self::Assigned(d) => Arc::strong_count(d),
            Self::Emulated(d) => Arc::strong_count(d),
        }
    }

    /// Stops the function's I/O threads and waits for them.
    fn stop_workers(&self) {
        if let Self::Virtio(d) = self {
            lock_for_teardown(d, "a virtio device").stop();
        }
    }
}

/// A lock taken to tear a device down. Poisoned means a panic in the device, which is
/// stopping the VM already (the panic hook); its threads and KVM resources must still go,
/// so teardown goes on, and says so.
fn lock_for_teardown<'a, T: ?Sized>(m: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    m.lock().unwrap_or_else(|e| {
        log::warn!("{what} failed (a panic poisoned it); tearing it down anyway");
        e.into_inner()
    })
}

/// A PCI function built and ready for a slot, with what it was given.
pub struct NewPciFunction {
    pub function: PciFunction,
    /// Given back to [`Resources`] when it detaches.
    pub allocations: Vec<Allocation>,
    /// Its INTx line, wired to its slot's `_PRT` GSI once it has a slot.
    pub intx: Option<Arc<KvmIntx>>,
    /// Already in a slot, BARs mapped (a function behind a root port of its own, see
    /// `testdev`); else it goes in the lowest free slot on bus 0.
    pub placed: Option<::pci::Bdf>,
    /// How it is named in the log when attached (the id if empty).
    pub label: String,
}

impl NewPciFunction {
    pub fn on_bus0(function: PciFunction, allocations: Vec<Allocation>) -> Self {
        Self { function, allocations, intx: None, placed: None, label: String::new() }
    }
}

enum Entry {
    Platform { device: Arc<dyn BusAccess>, port: u64, irq: Option<(EventFd, u32)> },
    Pci { function: PciFunction, bdf: ::pci::Bdf, allocations: Vec<Allocation>, intx: Option<Arc<KvmIntx>> },
}

/// What the device manager is built from.
pub struct DeviceManagerConfig {
    pub seams: VmSeams,
    /// The 64-bit MMIO window ([`crate::layout::RamLayout::mmio64_window`]).
    pub mmio64: ::pci::bridge::Window,
    pub stop: Arc<StopNotifier>,
    /// Where COM1 writes; no COM1 without it.
    pub console: Option<ConsoleOut>,
    pub cmos: Arc<Mutex<Cmos>>,
    /// The q35 chipset firmware boots on; `None`: direct kernel boot's platform.
    pub chipset: Option<q35::Q35Chipset>,
    /// Interrupt routes KVM accepts ([`crate::vstate::vm::Vm::max_irq_routes`]).
    pub max_irq_routes: usize,
}

/// Field order is drop order, after [`Drop`] detached every device: the VFIO container
/// (DMA unmapped, managed devices given back) goes before the routing table and the buses.
pub struct DeviceManager {
    devices: BTreeMap<DeviceId, Entry>,
    /// Attach order; the VM's end detaches in reverse.
    order: Vec<DeviceId>,
    vfio: Option<vfio::VfioContainer>,
    /// What a vCPU access may wait for (the DMA mapping before a Bus Master enable), to be
    /// released when the VM stops.
    waits: Vec<Arc<::vfio::dma::DmaMapping>>,
    pci: pci::PciSegment,
    seams: VmSeams,
    routing: Arc<Mutex<GsiRouting>>,
    buses: Arc<IoBuses>,
    resources: Mutex<Resources>,
    serial: Option<Weak<Mutex<SerialDevice>>>,
    /// The ACPI power button (owned as the platform device `ged`).
    ged: Weak<Mutex<Ged>>,
    /// Where a device's fatal fault stops the VM (an assigned device's AER error).
    stop: Arc<StopNotifier>,
    /// Firmware boot: the chipset registers behind its windows, and the firmware's memory.
    chipset: Option<q35::Q35Chipset>,
    firmware: Option<q35::FirmwareMemory>,
}

/// How long detach waits for a guest access in flight to let go of the device.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);

impl DeviceManager {
    /// The buses with the PCI segment and the legacy platform devices on them.
    pub fn new(cfg: DeviceManagerConfig) -> Result<Self, DeviceManagerError> {
        let buses = Arc::new(IoBuses { pio: Arc::new(::pci::Bus::new()), mmio: Arc::new(::pci::Bus::new()) });
        let pci = pci::PciSegment::new(&buses, cfg.mmio64, cfg.chipset.as_ref())?;
        pci.set_memory_slots(Box::new(seams::DeviceSlots::new(cfg.seams.memslots.clone())));
        let mut dm = Self {
            devices: BTreeMap::new(),
            order: Vec::new(),
            vfio: None,
            waits: Vec::new(),
            pci,
            routing: Arc::new(Mutex::new(GsiRouting::new(cfg.seams.irq.clone(), cfg.max_irq_routes))),
            seams: cfg.seams,
            buses,
            resources: Mutex::new(Resources::new(cfg.mmio64, cfg.max_irq_routes)?),
            serial: None,
            ged: Weak::new(),
            stop: cfg.stop.clone(),
            chipset: None,
            firmware: None,
        };
        if let Some(c) = cfg.chipset {
            // The LPC bridge sits where firmware looks for it: 00:1f.0.
            let lpc = c.take_lpc_device()?;
            let bdf = dm
                .pci
                .add_function(::platform::q35::LPC_SLOT, &lpc)
                .map_err(|source| DeviceManagerError::Pci { what: "adding the LPC bridge", source })?;
            let mut new = NewPciFunction::on_bus0(PciFunction::Emulated(lpc), Vec::new());
            new.placed = Some(bdf);
            dm.attach_pci(DeviceId::from("lpc"), new)?;
            dm.chipset = Some(c);
        }
        let legacy = legacy::build(&cfg.stop, cfg.console, cfg.cmos, dm.chipset.is_none())?;
        dm.serial = legacy.serial.as_ref().map(Arc::downgrade);
        drop(legacy.serial);
        dm.ged = Arc::downgrade(&legacy.ged);
        drop(legacy.ged);
        for dev in legacy.devices {
            dm.attach_platform(dev)?;
        }
        Ok(dm)
    }

    pub fn buses(&self) -> &Arc<IoBuses> {
        &self.buses
    }

    /// COM1, for console input (gone once the VM is).
    pub fn serial(&self) -> Option<Weak<Mutex<SerialDevice>>> {
        self.serial.clone()
    }

    /// Presses the guest's ACPI power button.
    pub fn press_power_button(&self) -> std::io::Result<()> {
        let ged = self.ged.upgrade().ok_or_else(|| std::io::Error::other("the power button device is gone"))?;
        let mut ged = ged.lock().map_err(|_| std::io::Error::other("the power button device failed"))?;
        ged.press_power_button()
    }

    /// `Device (PCI0)` and the ECAM reservation for the DSDT.
    pub fn pci_aml(&self) -> Result<::pci::aml::PciHostBridgeAml, DeviceManagerError> {
        self.pci.aml()
    }

    /// What describes the host bridge when firmware reads the ACPI tables.
    pub fn pci_aml_source(&self) -> pci::AmlSource {
        self.pci.aml_source()
    }

    /// The q35 chipset, on a VM booting through firmware.
    pub fn chipset(&self) -> Option<&q35::Q35Chipset> {
        self.chipset.as_ref()
    }

    /// Firmware boot: maps the firmware image and its variable flash, and puts fw_cfg and the
    /// firmware's debug console on their ports.
    pub fn attach_firmware(
        &mut self,
        files: &crate::boot::firmware::FirmwareFiles,
        memory: &GuestMemory,
        fw_cfg: ::platform::fw_cfg::FwCfg,
    ) -> Result<(), DeviceManagerError> {
        self.firmware = Some(q35::map_firmware(&self.seams.memslots, memory, &self.buses.mmio, files)?);
        self.attach_platform(q35::fw_cfg_device(fw_cfg))?;
        // Only when its lines go somewhere: a firmware that finds a debug console writes its
        // whole log to it a byte at a time, one exit each (SeaBIOS: about 5000 of them, a
        // measurable part of its time in a nested guest); without one it stays silent.
        if log::log_enabled!(log::Level::Debug) {
            self.attach_platform(q35::debugcon_device())?;
        }
        Ok(())
    }

    /// Firmware boot order: the storage functions on bus 0 by slot (virtio disks before
    /// assigned controllers), as QEMU-style OpenFirmware paths that SeaBIOS and OVMF both
    /// match.
    pub fn boot_order(&self) -> Vec<String> {
        use ::platform::fw_cfg::items::{ofw_pci_path, OfwPciNode};
        let mut virtio = Vec::new();
        let mut assigned = Vec::new();
        for (bdf, dev) in self.pci.endpoints() {
            if bdf.bus() != 0 {
                continue;
            }
            let Some((ids, class)) = ::pci::lock_function(&dev).map(|mut d| (d.read_config(0), d.read_config(2) >> 8))
            else {
                continue;
            };
            if class >> 16 != 0x01 {
                continue;
            }
            let node = |name| OfwPciNode { name, slot: bdf.device(), function: bdf.function() };
            match (ids, class >> 8) {
                // virtio-blk: "scsi" is QEMU's name for it, and what OVMF translates.
                (0x1042_1af4, _) => virtio.push(ofw_pci_path(&[node("scsi")], "disk@0,0")),
                (_, 0x0108) => assigned.push(ofw_pci_path(&[node("nvme")], "namespace@1,0")),
                _ => assigned.push(ofw_pci_path(&[OfwPciNode::for_class(class, bdf.device(), bdf.function())], "")),
            }
        }
        virtio.extend(assigned);
        virtio
    }

    fn claim(&mut self, id: &DeviceId) -> Result<(), DeviceManagerError> {
        if self.devices.contains_key(id) {
            return Err(DeviceManagerError::DuplicateId(id.clone()));
        }
        Ok(())
    }

    /// Puts a platform device on the port I/O bus and wires its interrupt.
    pub fn attach_platform(&mut self, dev: legacy::PlatformDevice) -> Result<(), DeviceManagerError> {
        self.claim(&dev.id)?;
        let entry: Arc<dyn BusAccess> = Arc::new(Arc::downgrade(&dev.device));
        self.buses.pio.insert(entry, dev.port, dev.len).map_err(|source| DeviceManagerError::InsertDevice {
            what: "a platform device",
            base: dev.port,
            source,
        })?;
        if let Some((fd, gsi)) = &dev.irq {
            if let Err(source) = self.seams.irq.register_irqfd(fd, *gsi) {
                let _ = self.buses.pio.remove(dev.port);
                return Err(DeviceManagerError::RegisterIrqfd { id: dev.id, gsi: *gsi, source });
            }
        }
        self.order.push(dev.id.clone());
        self.devices.insert(dev.id, Entry::Platform { device: dev.device, port: dev.port, irq: dev.irq });
        Ok(())
    }

    /// Puts a PCI function in a slot (unless it is placed already), maps its BARs and wires
    /// its INTx line; from then on the guest can find it. Returns its address.
    pub fn attach_pci(&mut self, id: DeviceId, new: NewPciFunction) -> Result<::pci::Bdf, DeviceManagerError> {
        self.claim(&id)?;
        let NewPciFunction { function, allocations, intx, placed, label } = new;
        let shared = function.shared();
        let bdf = match placed {
            Some(bdf) => bdf,
            None => self.pci.attach_function(&shared)?,
        };
        let pin = intx.as_ref().and_then(|_| {
            let reg = ::pci::lock_function(&shared).map_or(0, |mut f| f.read_config(0x3c / 4));
            ::pci::intx::IntxPin::from_register((reg >> 8) as u8)
        });
        drop(shared);
        self.order.push(id.clone());
        self.devices.insert(id.clone(), Entry::Pci { function, bdf, allocations, intx: intx.clone() });
        if let (Some(line), Some(pin)) = (intx, pin) {
            let gsi = self.pci.intx_gsi(bdf, pin);
            if let Err(source) = line.connect(gsi) {
                let _ = self.detach(&id);
                return Err(DeviceManagerError::ConnectIntx { id, gsi, source });
            }
        }
        log::info!("{} is guest {bdf}", if label.is_empty() { id.to_string() } else { label });
        Ok(bdf)
    }

    /// Takes device `id` out of the VM, in the order of the module docs. Works on a running
    /// VM: a vCPU access in flight finishes first (or, after a grace period, the device is
    /// released when that access lets go of it).
    pub fn detach(&mut self, id: &DeviceId) -> Result<(), DeviceManagerError> {
        let entry = self.devices.remove(id).ok_or_else(|| DeviceManagerError::UnknownDevice(id.clone()))?;
        self.order.retain(|d| d != id);
        match entry {
            Entry::Platform { device, port, irq } => {
                let _ = self.buses.pio.remove(port);
                if let Some((fd, gsi)) = irq {
                    if let Err(e) = self.seams.irq.unregister_irqfd(&fd, gsi) {
                        log::warn!("{id}: removing the irqfd on GSI {gsi}: {e}");
                    }
                }
                drop(device);
            }
            Entry::Pci { function, bdf, allocations, intx } => {
                self.pci.detach_function(&function.shared());
                function.stop_workers();
                if let Some(line) = &intx {
                    line.disconnect();
                }
                let started = Instant::now();
                while function.strong_count() > 1 && started.elapsed() < IN_FLIGHT_GRACE {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if function.strong_count() > 1 {
                    log::warn!("{id}: still in use {IN_FLIGHT_GRACE:?} after detach; released when let go");
                }
                // Its MSI irqfds and routes, and for an assigned device the reset, the BAR
                // mmaps (their memory slots went with detach_function) and the device fd go
                // with it.
                drop(function);
                drop(intx);
                let mut resources = self.resources.lock().unwrap_or_else(|e| e.into_inner());
                for a in &allocations {
                    if let Err(e) = resources.free(a) {
                        log::warn!("{id}: {e}");
                    }
                }
                log::info!("{id} ({bdf}): detached");
            }
        }
        Ok(())
    }

    /// Attaches the devices named by `--device`, `--disk`, `--net`, `--rng` and
    /// `--pci-synthetic`; each kind's sub-manager parses its own keys. Must run before the
    /// vCPUs start (DMA mappings, BAR placement).
    pub fn attach_cli_devices(
        &mut self,
        vm: &Arc<Vm>,
        memory: &GuestMemory,
        cfg: &crate::config::VmConfig,
    ) -> Result<(), DeviceManagerError> {
        let disks = virtio::parse_disks(&cfg.disks)?;
        let nets = virtio::parse_nets(&cfg.nets)?;
        let specs = vfio::parse_cli(&cfg.devices)?;
        let iommufd = vfio::parse_iommufd_cli(cfg.iommufd.as_ref())?;
        let vctx =
            virtio::AttachContext { seams: &self.seams, memory, resources: &self.resources, routing: &self.routing };
        for (id, new) in virtio::create_devices(&vctx, &disks, &nets, cfg.rng)? {
            self.attach_pci(id, new)?;
        }
        for (i, spec) in cfg.pci_synthetic.iter().enumerate() {
            let tctx = testdev::AttachContext { resources: &self.resources };
            let (id, new) = testdev::build(&tctx, &mut self.pci, i, spec)?;
            self.attach_pci(id, new)?;
        }
        if specs.is_empty() {
            return Ok(());
        }
        let ctx = vfio::AttachContext {
            vm,
            seams: &self.seams,
            memory,
            resources: &self.resources,
            routing: &self.routing,
            stop: &self.stop,
            iommufd,
        };
        let (container, functions) = vfio::VfioContainer::open(&ctx, &specs)?;
        self.waits.push(container.mapping());
        self.vfio = Some(container);
        for (id, new) in functions {
            self.attach_pci(id, new)?;
        }
        Ok(())
    }

    /// Starts what runs beside the guest from its first instruction on: the DMA mapping of
    /// guest RAM for assigned devices. Call right before the vCPUs start.
    pub fn start_background_work(&mut self) -> Result<(), DeviceManagerError> {
        if let Some(v) = self.vfio.as_mut() {
            v.start_dma_mapping()?;
        }
        Ok(())
    }

    /// The VM is stopping: every wait a vCPU may be in (a Bus Master enable waiting for the
    /// DMA mapping) returns, so the vCPUs can be stopped.
    pub fn cancel_waits(&self) {
        for w in &self.waits {
            w.cancel();
        }
    }

    /// Every device detached (last attached first), then the VFIO container. Runs once the
    /// vCPUs are stopped; [`Drop`] does it otherwise.
    pub fn shutdown(&mut self) {
        self.cancel_waits();
        // The whole VM goes: assigned devices get their full reset now, a bus reset included
        // (see `vfio::reset`), before any of them is released.
        for id in &self.order {
            if let Some(Entry::Pci { function: PciFunction::Assigned(d), .. }) = self.devices.get(id) {
                lock_for_teardown(d, "an assigned device").reset_at_vm_stop();
            }
        }
        for id in self.order.clone().into_iter().rev() {
            if let Err(e) = self.detach(&id) {
                log::warn!("{e}");
            }
        }
        self.vfio.take();
        self.firmware.take();
    }
}

impl Drop for DeviceManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}
