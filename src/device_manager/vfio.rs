//! Wiring of assigned devices (`--device`): pre-flight checks, one VFIO container with the
//! KVM-VFIO device, guest RAM DMA-mapped, then per device its vectors, INTx line, BAR
//! addresses, memory slots and bus entries. The device logic itself lives in the `vfio` crate.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hostadmin::preflight::{preflight, PreflightError};
use hostadmin::{BindError, ManagedDevices, PciHost};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use pci::{BarIndex, BarKind, BarRegion, BarSlot, ConfigEffects, PciDevice, SharedPciDevice};
use vfio::container::{Container, ContainerError, RamRange};
use vfio::device::{DeviceParts, VfioPciDevice};
use vfio::dma::{DmaError, DmaMapping};
use vfio::host::{HostDevice, HostError, IrqIndex, MmapArea, RegionInfo, RegionMapping, VfioHost};
use vfio::regions::MemorySlots;
use vfio::spec::{parse_devices, DeviceSpec, SpecError};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _};

use crate::config::DeviceSpec as CliDeviceSpec;
use crate::irq::{GsiRouting, IntxHandle, IrqChip, KvmIntx, KvmMsiVectors};
use crate::resources::Resources;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::IoBuses;
use crate::vstate::vm::{MemSlot, Vm};

/// 64-bit BARs this large go above RAM (the 32-bit hole is too small for them).
const HIGH_BAR_MIN: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VfioManagerError {
    /// The spec error already names `--device` and the value.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// An unknown key: the option parser's message names it and the known ones.
    #[error(transparent)]
    UnknownKey(crate::config::ConfigError),
    #[error("{id}: binding {bdf} and its IOMMU group to vfio-pci (managed=on)")]
    Managed {
        id: String,
        bdf: pci::Bdf,
        #[source]
        source: BindError,
    },
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Dma(#[from] DmaError),
    #[error("creating the KVM-VFIO device failed")]
    CreateKvmVfio(#[source] kvm_ioctls::Error),
    #[error("{id}: reading romfile {path}")]
    ReadRomFile {
        id: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{id}: allocating {what}")]
    Allocate {
        id: String,
        what: &'static str,
        #[source]
        source: crate::resources::ResourceError,
    },
    #[error("{id}: creating interrupt eventfds")]
    Eventfds {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{id}: {source}")]
    Device {
        id: String,
        #[source]
        source: vfio::device::DeviceError,
    },
    #[error("{id}: wiring INTx to GSI {gsi}")]
    ConnectIntx {
        id: String,
        gsi: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("{id}: BAR at {base:#x} on the bus")]
    Bus {
        id: String,
        base: u64,
        #[source]
        source: pci::BusError,
    },
}

/// Turns the generic `--device` option lists into vfio specs (the vfio crate owns the syntax).
pub fn parse_cli(specs: &[CliDeviceSpec]) -> Result<Vec<DeviceSpec>, VfioManagerError> {
    let mut texts = Vec::new();
    for s in specs {
        let mut parts = Vec::new();
        for key in vfio::spec::DEVICE_KEYS {
            if let Some(v) = s.get(key) {
                parts.push(format!("{key}={v}"));
            }
        }
        if let Err(e) = s.check_keys("path,id,rombar,romfile,managed") {
            return Err(VfioManagerError::UnknownKey(e));
        }
        texts.push(parts.join(","));
    }
    Ok(parse_devices(&texts)?)
}

/// KVM memory slots for one device's BAR mmaps.
struct VmSlots {
    vm: Arc<Vm>,
    live: BTreeMap<u32, MemSlot>,
}

impl MemorySlots for VmSlots {
    fn map_slot(&mut self, gpa: u64, size: u64, host_addr: u64) -> std::io::Result<u32> {
        let slot = self.vm.map_memslot(gpa, size, host_addr, false).map_err(std::io::Error::other)?;
        self.live.insert(slot.slot, slot);
        Ok(slot.slot)
    }

    fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()> {
        let s = self.live.remove(&slot).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        self.vm.unmap_memslot(s).map_err(std::io::Error::other)
    }
}

/// An assigned device as the PCI root and its BAR slots hold it.
///
/// The root, the relocator and the buses reference each other, so they can outlive the VM;
/// [`VfioManager`] therefore takes the device out on teardown. With it go the device fd, the
/// BAR mmaps, the vectors, the memory slots and their references to the VM, so the VM is
/// destroyed, KVM drops its hold on the VFIO group and the device can be opened again at once
/// (a guest reboot with `--on-reboot restart` builds a new VM in the same process). After
/// that the guest (there is none left) would read all-ones.
pub struct AssignedFunction(Option<VfioPciDevice>);

impl AssignedFunction {
    /// Resets and releases the device (VfioPciDevice's drop), now.
    fn release(&mut self) {
        self.0.take();
    }
}

impl PciDevice for AssignedFunction {
    fn bars(&self) -> Vec<BarRegion> {
        self.0.as_ref().map_or_else(Vec::new, |d| d.bars())
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        self.0.as_mut().map_or(u32::MAX, |d| d.read_config(reg))
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigEffects {
        self.0.as_mut().map_or_else(ConfigEffects::default, |d| d.write_config(reg, offset, data))
    }

    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]) {
        match self.0.as_mut() {
            Some(d) => d.read_bar(bar, offset, data),
            None => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]) {
        if let Some(d) = self.0.as_mut() {
            d.write_bar(bar, offset, data);
        }
    }
}

/// One assigned device, ready for the PCI root to expose at a BDF.
pub struct AssignedDevice {
    pub id: String,
    pub bdf: String,
    pub device: Arc<Mutex<AssignedFunction>>,
    /// The device's INTx line (None: the device has no INTx); wire it with
    /// [`Self::connect_intx`] once the device's slot, and so its `_PRT` GSI, is known.
    intx: Option<Arc<KvmIntx>>,
}

impl AssignedDevice {
    /// The handle the PCI root uses for config accesses.
    pub fn shared(&self) -> SharedPciDevice {
        self.device.clone()
    }

    /// Routes the device's INTx to `gsi` (the `_PRT` entry of its slot and pin); a no-op for
    /// devices without INTx. Until then an INTx-only guest driver gets no interrupts.
    pub fn connect_intx(&self, gsi: u32) -> Result<(), VfioManagerError> {
        match &self.intx {
            Some(line) => {
                line.connect(gsi).map_err(|source| VfioManagerError::ConnectIntx { id: self.id.clone(), gsi, source })
            }
            None => Ok(()),
        }
    }

    /// The interrupt pin the guest sees (1 = INTA .. 4 = INTD, 0 = none).
    pub fn interrupt_pin(&self) -> u8 {
        if self.intx.is_none() {
            return 0;
        }
        let pin = self.device.lock().unwrap_or_else(|e| e.into_inner()).read_config(0x3c / 4) >> 8;
        pin as u8
    }
}

/// Everything VFIO for the VM. Drop order matters: devices (reset, vectors off, slots out)
/// before the container (DMA unmapped, groups released), and `managed` last: the devices it
/// bound go back to their drivers only once no VFIO fd of them is open (see [`ManagedHost`]).
pub struct VfioManager {
    pub devices: Vec<AssignedDevice>,
    /// The container and guest RAM to map, until [`Self::start_dma_mapping`] hands them to
    /// the mapping thread.
    unmapped: Option<(Container, Vec<RamRange>, Arc<DmaMapping>)>,
    /// The thread DMA-mapping guest RAM; it gives the container back when joined.
    dma: Option<JoinHandle<Container>>,
    managed: Option<Arc<ManagedDevices>>,
}

impl Drop for VfioManager {
    fn drop(&mut self) {
        // Release each device even though the bus may still hold its slot (see
        // AssignedFunction); then its INTx irqfd (AssignedDevice.intx), then the container.
        for d in &self.devices {
            d.device.lock().unwrap_or_else(|e| e.into_inner()).release();
        }
        self.devices.clear();
        // A mapping still running is waited for: its pages must not be unmapped under it.
        if let Some(t) = self.dma.take() {
            match t.join() {
                Ok(container) => drop(container),
                Err(_) => log::error!("the DMA-mapping thread panicked"),
            }
        }
    }
}

/// Context the attach step needs from the VMM.
pub struct AttachContext<'a> {
    pub vm: &'a Arc<Vm>,
    pub memory: &'a GuestMemory,
    pub resources: &'a Mutex<Resources>,
    pub buses: &'a IoBuses,
    pub routing: &'a Arc<Mutex<GsiRouting>>,
}

impl VfioManager {
    /// Checks, opens and wires every `--device`; all-or-nothing (a failure drops what was set
    /// up, which releases it). Must run before the first vCPU starts. Guest RAM is DMA-mapped
    /// later, on a thread of its own started by [`Self::start_dma_mapping`] as the vCPUs
    /// start; each device's Bus Master enable waits for it (see `vfio::dma`), so the guest
    /// boots while the IOMMU is programmed.
    pub fn attach(ctx: &AttachContext<'_>, specs: &[DeviceSpec]) -> Result<Self, VfioManagerError> {
        let mut mgr = VfioManager { devices: Vec::new(), unmapped: None, dma: None, managed: None };
        if specs.is_empty() {
            return Ok(mgr);
        }
        mgr.managed = bind_managed(specs)?;
        let ram: u64 = ctx.memory.iter().map(|r| r.len()).sum();
        preflight(&PciHost::system(), &specs.iter().map(|s| s.bdf).collect::<Vec<_>>(), ram)?;

        let mut kvm_dev = kvm_create_device { type_: kvm_device_type_KVM_DEV_TYPE_VFIO, fd: 0, flags: 0 };
        let kvm_vfio = ctx.vm.fd.create_device(&mut kvm_dev).map_err(VfioManagerError::CreateKvmVfio)?;
        let handle = Arc::new(vfio_ioctls::VfioDeviceFd::new_from_kvm(kvm_vfio));
        let container = Container::open(Some(handle))?;
        let hosts = specs
            .iter()
            .map(|s| {
                let host = container.open_device(s.bdf, &s.path)?;
                Ok(match &mgr.managed {
                    Some(m) => Arc::new(ManagedHost { host, _managed: m.clone() }) as Arc<dyn HostDevice>,
                    None => Arc::new(host) as Arc<dyn HostDevice>,
                })
            })
            .collect::<Result<Vec<_>, ContainerError>>()?;
        let ranges: Vec<RamRange> = ctx
            .memory
            .iter()
            .map(|r| RamRange {
                gpa: r.start_addr().0,
                size: r.len(),
                host_addr: ctx.memory.get_host_address(r.start_addr()).map_or(0, |p| p as u64),
            })
            .collect();
        let mapping = DmaMapping::pending();
        for (spec, host) in specs.iter().zip(hosts) {
            let dev = attach_one(ctx, spec, host, &mapping)?;
            mgr.devices.push(dev);
        }
        mgr.unmapped = Some((container, ranges, mapping));
        Ok(mgr)
    }

    /// Starts DMA-mapping guest RAM on a thread of its own; call once the VMM's set-up is
    /// done and right before the vCPUs run (the devices' Bus Master enables wait for it).
    pub fn start_dma_mapping(&mut self) -> Result<(), VfioManagerError> {
        if let Some((container, ranges, mapping)) = self.unmapped.take() {
            // SAFETY: guest RAM is mapped for the VM's whole life; VfioManager joins the
            // thread and drops the container (which unmaps these IOVAs) before the memory goes.
            self.dma = Some(unsafe { mapping.spawn(container, ranges) }?);
        }
        Ok(())
    }
}

/// `managed=on`: binds those devices (and the rest of their groups) to vfio-pci before the
/// pre-flight looks at them. On an error the devices bound so far go back at once.
fn bind_managed(specs: &[DeviceSpec]) -> Result<Option<Arc<ManagedDevices>>, VfioManagerError> {
    if !specs.iter().any(|s| s.managed) {
        return Ok(None);
    }
    let mut managed = ManagedDevices::new(PciHost::system());
    for s in specs.iter().filter(|s| s.managed) {
        managed.attach(s.bdf).map_err(|source| VfioManagerError::Managed { id: s.id.clone(), bdf: s.bdf, source })?;
    }
    Ok(Some(Arc::new(managed)))
}

/// A managed device's VFIO device, holding the VMM's managed bindings alive. vfio-pci's
/// unbind waits until every fd of the device is closed, so the bindings may only be given
/// back after the last `VfioHost` is gone; the device Arcs are shared with the PCI root and
/// the buses, so that moment is not VfioManager's drop. Fields drop in declaration order:
/// `host` (device fd closed, group out of the container and the KVM-VFIO device) first,
/// then this reference; the last reference restores the drivers ([`ManagedDevices`]' Drop).
struct ManagedHost {
    host: VfioHost,
    _managed: Arc<ManagedDevices>,
}

impl HostDevice for ManagedHost {
    fn bdf(&self) -> &str {
        self.host.bdf()
    }
    fn region_info(&self, region: u32) -> Option<RegionInfo> {
        self.host.region_info(region)
    }
    fn irq_count(&self, index: IrqIndex) -> u32 {
        self.host.irq_count(index)
    }
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), HostError> {
        self.host.region_read(region, offset, data)
    }
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), HostError> {
        self.host.region_write(region, offset, data)
    }
    fn set_irqs(&self, index: IrqIndex, start: u32, fds: &[Option<std::os::unix::io::RawFd>]) -> Result<(), HostError> {
        self.host.set_irqs(index, start, fds)
    }
    fn disable_irqs(&self, index: IrqIndex) -> Result<(), HostError> {
        self.host.disable_irqs(index)
    }
    fn set_intx_unmask_fd(&self, fd: std::os::unix::io::RawFd) -> Result<(), HostError> {
        self.host.set_intx_unmask_fd(fd)
    }
    fn reset(&self) -> Result<bool, HostError> {
        self.host.reset()
    }
    fn resettable(&self) -> bool {
        self.host.resettable()
    }
    fn map_region(&self, region: u32, area: MmapArea) -> Result<RegionMapping, HostError> {
        self.host.map_region(region, area)
    }
}

fn attach_one(
    ctx: &AttachContext<'_>,
    spec: &DeviceSpec,
    host: Arc<dyn HostDevice>,
    dma: &Arc<DmaMapping>,
) -> Result<AssignedDevice, VfioManagerError> {
    let id = spec.id.clone();
    let romfile = match &spec.romfile {
        Some(p) => Some(std::fs::read(p).map_err(|source| VfioManagerError::ReadRomFile {
            id: id.clone(),
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };
    let alloc_err = |what| {
        let id = id.clone();
        move |source| VfioManagerError::Allocate { id, what, source }
    };
    let nvec = host.irq_count(IrqIndex::Msix).max(host.irq_count(IrqIndex::Msi)) as usize;
    let gsis = {
        let mut r = ctx.resources.lock().unwrap_or_else(|e| e.into_inner());
        (0..nvec).map(|_| r.allocate_msi_gsi()).collect::<Result<Vec<_>, _>>().map_err(alloc_err("MSI GSIs"))?
    };
    let vectors = KvmMsiVectors::new(ctx.routing.clone(), &gsis)
        .map_err(|source| VfioManagerError::Eventfds { id: id.clone(), source })?;
    let chip: Arc<dyn IrqChip> = ctx.vm.clone();
    let intx = if host.irq_count(IrqIndex::Intx) > 0 {
        Some(KvmIntx::new(chip).map_err(|source| VfioManagerError::Eventfds { id: id.clone(), source })?)
    } else {
        None
    };
    let bdf = host.bdf().to_string();
    let mut device = VfioPciDevice::new(DeviceParts {
        host,
        rombar: spec.rombar,
        romfile,
        vectors: Box::new(vectors),
        intx: intx.clone().map(|l| Box::new(IntxHandle(l)) as Box<dyn vfio::interrupts::IntxLine>),
        slots: Box::new(VmSlots { vm: ctx.vm.clone(), live: BTreeMap::new() }),
    })
    .map_err(|source| VfioManagerError::Device { id: id.clone(), source })?;

    let mut failed = None;
    {
        let mut res = ctx.resources.lock().unwrap_or_else(|e| e.into_inner());
        let placed = device.place_bars(&mut |bar| {
            let align = bar.size.max(4096);
            let r = match bar.kind {
                BarKind::Io => res.allocate_io(bar.size, bar.size.max(4)),
                BarKind::Mem64 { .. } if bar.size >= HIGH_BAR_MIN => res.allocate_mmio64(bar.size, align),
                _ => res.allocate_mmio32(bar.size, align),
            };
            match r {
                Ok(range) => Some(range.start()),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        });
        if let Err(source) = placed {
            if let Some(e) = failed.take() {
                log::error!("{id}: {e}");
            }
            return Err(VfioManagerError::Device { id, source });
        }
    }
    device.gate_bus_master(dma.clone());
    device.start().map_err(|source| VfioManagerError::Device { id: id.clone(), source })?;
    let regions = device.bars();
    let device = Arc::new(Mutex::new(AssignedFunction(Some(device))));
    let shared: SharedPciDevice = device.clone();
    for r in regions {
        let bus = if r.kind == BarKind::Io { &ctx.buses.pio } else { &ctx.buses.mmio };
        let slot = Arc::new(Mutex::new(BarSlot::new(shared.clone(), r.index)));
        bus.insert(slot, r.addr, r.size).map_err(|source| VfioManagerError::Bus {
            id: id.clone(),
            base: r.addr,
            source,
        })?;
        log::info!("{id} ({bdf}): BAR{} {:?} at {:#x} ({:#x} bytes)", r.index.0, r.kind, r.addr, r.size);
    }
    Ok(AssignedDevice { id, bdf, device, intx })
}
