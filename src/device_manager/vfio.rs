//! Wiring of assigned devices (`--device`): pre-flight checks, one VFIO container with the
//! KVM-VFIO device, guest RAM DMA-mapped, then per device its vectors, INTx line and BAR
//! addresses (the memory slots over its BAR mmaps are the relocator's). The device logic
//! itself lives in the `vfio` crate; the device manager owns the functions built here.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hostadmin::preflight::{preflight, IommuInterface, PreflightError};
use hostadmin::{BindError, ManagedDevices, PciHost};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use pci::{BarKind, PciDevice as _};
use vfio::container::{Container, ContainerError, DeviceSource, RamRange};
use vfio::device::{DeviceParts, VfioPciDevice};
use vfio::dma::{DmaError, DmaMapping};
use vfio::host::{HostDevice, HostError, IrqIndex, RegionInfo, RegionMapping, SparseArea, VfioHost};
use vfio::iommufd::{check_cdevs, choose_backend, Backend, BackendError, BackendRequest, FdError, IommufdHost};
use vfio::spec::{parse_devices, DeviceSpec, SpecError};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _};

use super::seams::VmSeams;
use super::{DeviceId, NewPciFunction, PciFunction};
use crate::config::DeviceSpec as CliDeviceSpec;
use crate::irq::{GsiRouting, IntxHandle, KvmIntx, KvmMsiVectors};
use crate::resources::Resources;
use crate::stop::{StopNotifier, StopReason};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm::Vm;

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
    Backend(#[from] BackendError),
    #[error("--iommufd")]
    IommufdFd(#[source] FdError),
    #[error("--iommufd fd={0}: give a file descriptor number")]
    IommufdFdNumber(String),
    #[error(transparent)]
    Dma(#[from] DmaError),
    #[error("creating the KVM-VFIO device failed")]
    CreateKvmVfio(#[source] kvm_ioctls::Error),
    #[error("device {id}")]
    RomFile {
        id: String,
        #[source]
        source: vfio::rom::RomFileError,
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
        if let Err(e) = s.check_keys("path,bdf,fd,id,rombar,romfile,managed,iommu") {
            return Err(VfioManagerError::UnknownKey(e));
        }
        texts.push(parts.join(","));
    }
    Ok(parse_devices(&texts)?)
}

/// `--iommufd fd=N`: an `/dev/iommu` fd passed by the parent, checked (not taken over).
pub fn parse_iommufd_cli(spec: Option<&CliDeviceSpec>) -> Result<Option<RawFd>, VfioManagerError> {
    let Some(s) = spec else { return Ok(None) };
    s.check_keys("fd").map_err(VfioManagerError::UnknownKey)?;
    let text = s.require("fd").map_err(VfioManagerError::UnknownKey)?;
    let fd = text.parse::<RawFd>().map_err(|_| VfioManagerError::IommufdFdNumber(text.to_string()))?;
    vfio::iommufd::check_iommufd_fd(&IommufdHost::system(), fd).map_err(VfioManagerError::IommufdFd)?;
    Ok(Some(fd))
}

/// Everything VFIO the assigned devices share: the container (DMA mappings of guest RAM,
/// groups), the thread mapping guest RAM, and the `managed=on` bindings. Dropped after every
/// assigned device (see [`super::DeviceManager`]'s teardown): the mapping thread is waited
/// for, the container closed (DMA unmapped), guest RAM released, and devices bound for
/// `managed=on` go back to their drivers.
pub struct VfioContainer {
    /// The container and guest RAM to map, until [`Self::start_dma_mapping`] hands them to
    /// the mapping thread.
    unmapped: Option<(Container, Vec<RamRange>)>,
    /// The thread DMA-mapping guest RAM; it gives the container back when joined.
    dma: Option<JoinHandle<Container>>,
    mapping: Arc<DmaMapping>,
    managed: Option<Arc<ManagedDevices>>,
    /// Keeps guest RAM mapped until the container's DMA mappings of it are gone.
    memory: Option<GuestMemory>,
}

impl Drop for VfioContainer {
    fn drop(&mut self) {
        // A mapping still running is waited for: its pages must not be unmapped under it.
        if let Some(t) = self.dma.take() {
            match t.join() {
                Ok(container) => drop(container),
                Err(_) => log::error!("the DMA-mapping thread panicked; its container is lost"),
            }
        }
        self.unmapped.take();
        self.memory.take();
        self.managed.take();
    }
}

/// Context the attach step needs from the VMM.
pub struct AttachContext<'a> {
    pub vm: &'a Arc<Vm>,
    pub seams: &'a VmSeams,
    pub memory: &'a GuestMemory,
    pub resources: &'a Mutex<Resources>,
    pub routing: &'a Arc<Mutex<GsiRouting>>,
    /// Where a device's AER error stops the VM.
    pub stop: &'a Arc<StopNotifier>,
    /// `--iommufd fd=N`.
    pub iommufd: Option<RawFd>,
}

impl VfioContainer {
    /// Checks and opens every `--device` in one container with the KVM-VFIO device and
    /// builds their functions (not attached yet); all-or-nothing (a failure drops what was
    /// set up, which releases it). Guest RAM is DMA-mapped later, on a thread of its own
    /// started by [`Self::start_dma_mapping`] as the vCPUs start; each device's Bus Master
    /// enable waits for it (see `vfio::dma`), so the guest boots while the IOMMU is
    /// programmed.
    pub fn open(
        ctx: &AttachContext<'_>,
        specs: &[DeviceSpec],
    ) -> Result<(Self, Vec<(DeviceId, NewPciFunction)>), VfioManagerError> {
        let mut this = VfioContainer {
            unmapped: None,
            dma: None,
            mapping: DmaMapping::pending(),
            managed: None,
            memory: Some(ctx.memory.clone()),
        };
        this.managed = bind_managed(specs)?;
        let ram: u64 = ctx.memory.iter().map(|r| r.len()).sum();
        let requests: Vec<BackendRequest> =
            specs.iter().map(|s| BackendRequest { bdf: s.bdf, mode: s.iommu, passed_fd: s.fd.is_some() }).collect();
        let iommufd_host = IommufdHost::system();
        let backend = choose_backend(&iommufd_host, &requests, ctx.iommufd.is_some())?;
        let interface = match backend {
            Backend::Legacy => IommuInterface::Container,
            Backend::Iommufd => IommuInterface::Iommufd,
        };
        preflight(&PciHost::system(), &specs.iter().map(|s| s.bdf).collect::<Vec<_>>(), ram, interface)?;
        if backend == Backend::Iommufd {
            check_cdevs(&iommufd_host, &requests)?;
        }

        let mut kvm_dev = kvm_create_device { type_: kvm_device_type_KVM_DEV_TYPE_VFIO, fd: 0, flags: 0 };
        let kvm_vfio = ctx.vm.fd.create_device(&mut kvm_dev).map_err(VfioManagerError::CreateKvmVfio)?;
        let handle = Arc::new(vfio_ioctls::VfioDeviceFd::new_from_kvm(kvm_vfio));
        let container = Container::open(backend, ctx.iommufd, Some(handle))?;
        let hosts = specs
            .iter()
            .map(|s| {
                let source = match s.fd {
                    Some(fd) => DeviceSource::PassedCdev(fd),
                    None => DeviceSource::Sysfs(&s.path),
                };
                let host = container.open_device(s.bdf, source)?;
                Ok(match &this.managed {
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
        let mut functions = Vec::new();
        for (spec, host) in specs.iter().zip(hosts) {
            functions.push(build_one(ctx, spec, host, &this.mapping)?);
        }
        this.unmapped = Some((container, ranges));
        Ok((this, functions))
    }

    /// Starts DMA-mapping guest RAM on a thread of its own; call once the VMM's set-up is
    /// done and right before the vCPUs run (the devices' Bus Master enables wait for it).
    pub fn start_dma_mapping(&mut self) -> Result<(), VfioManagerError> {
        if let Some((container, ranges)) = self.unmapped.take() {
            let filter = Box::new(|| crate::threads::install_filter(crate::seccomp::ThreadKind::DmaMap));
            // SAFETY: the ranges are guest RAM, which `self.memory` keeps mapped until after
            // this thread is joined and the container (which unmaps these IOVAs) dropped.
            self.dma = Some(unsafe { self.mapping.spawn(container, ranges, filter) }?);
        }
        Ok(())
    }

    /// The mapping the devices' Bus Master enables wait for (released when the VM stops,
    /// [`DmaMapping::cancel`]).
    pub fn mapping(&self) -> Arc<DmaMapping> {
        self.mapping.clone()
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
/// back after the last `VfioHost` is gone: the last of the assigned devices and the
/// container to drop gives them back. Fields drop in declaration order: `host` (device fd
/// closed, group out of the container and the KVM-VFIO device) first, then this reference;
/// the last reference restores the drivers ([`ManagedDevices`]' Drop).
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
    fn kernel_reset_methods(&self) -> Vec<String> {
        self.host.kernel_reset_methods()
    }
    fn hot_reset_info(&self) -> Result<Vec<vfio::reset::HotResetDep>, HostError> {
        self.host.hot_reset_info()
    }
    fn held_groups(&self) -> Vec<u32> {
        self.host.held_groups()
    }
    fn hot_reset(&self, groups: &[u32]) -> Result<(), HostError> {
        self.host.hot_reset(groups)
    }
    fn map_region(&self, region: u32, area: SparseArea) -> Result<RegionMapping, HostError> {
        self.host.map_region(region, area)
    }
}

/// Builds one assigned function: vectors, INTx line, BARs placed (their ranges and GSIs
/// recorded with it), interrupts started. The device manager puts it in a slot.
fn build_one(
    ctx: &AttachContext<'_>,
    spec: &DeviceSpec,
    host: Arc<dyn HostDevice>,
    dma: &Arc<DmaMapping>,
) -> Result<(DeviceId, NewPciFunction), VfioManagerError> {
    let id = spec.id.clone();
    let romfile = match &spec.romfile {
        Some(p) => {
            Some(vfio::rom::read_romfile(p).map_err(|source| VfioManagerError::RomFile { id: id.clone(), source })?)
        }
        None => None,
    };
    let alloc_err = |what| {
        let id = id.clone();
        move |source| VfioManagerError::Allocate { id, what, source }
    };
    let mut taken = crate::resources::Taken::new(ctx.resources);
    let nvec = host.irq_count(IrqIndex::Msix).max(host.irq_count(IrqIndex::Msi)) as usize;
    let gsis = (0..nvec).map(|_| taken.msi_gsi()).collect::<Result<Vec<_>, _>>().map_err(alloc_err("MSI GSIs"))?;
    let vectors = KvmMsiVectors::new(ctx.routing.clone(), &gsis)
        .map_err(|source| VfioManagerError::Eventfds { id: id.clone(), source })?;
    let intx = if host.irq_count(IrqIndex::Intx) > 0 {
        Some(
            KvmIntx::new(ctx.seams.irq.clone())
                .map_err(|source| VfioManagerError::Eventfds { id: id.clone(), source })?,
        )
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
    })
    .map_err(|source| VfioManagerError::Device { id: id.clone(), source })?;

    let mut failed = None;
    let placed = device.place_bars(&mut |bar| {
        let align = bar.size.max(4096);
        let r = match bar.kind {
            BarKind::Io => taken.io(bar.size, bar.size.max(4)),
            BarKind::Mem64 { .. } if bar.size >= HIGH_BAR_MIN => taken.mmio64(bar.size, align),
            _ => taken.mmio32(bar.size, align),
        };
        match r {
            Ok(start) => Some(start),
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
    device.gate_bus_master(dma.clone());
    device.start().map_err(|source| VfioManagerError::Device { id: id.clone(), source })?;
    match device.enable_error_irq(stop_on_error(ctx.stop, &id, &bdf)) {
        Ok(true) => log::debug!("{id} ({bdf}): error interrupt wired"),
        Ok(false) => {
            log::info!("{id} ({bdf}): no VFIO error interrupt (no AER on the host): device errors go unnoticed")
        }
        Err(e) => log::warn!("{id}: {}: device errors go unnoticed", crate::error_line(&anyhow::Error::from(e))),
    }
    for r in device.bars() {
        log::info!("{id} ({bdf}): BAR{} {:?} at {:#x} ({:#x} bytes)", r.index.0, r.kind, r.addr, r.size);
    }
    let function = PciFunction::Assigned(Arc::new(Mutex::new(device)));
    let mut new = NewPciFunction::on_bus0(function, taken.keep());
    new.intx = intx;
    new.label = format!("{id} (host {bdf})");
    Ok((DeviceId::from(id.as_str()), new))
}

/// An uncorrectable error on an assigned device (the host's AER handling reported it through
/// VFIO's error interrupt) stops the VM: the device may have lost its state, the guest's DMA
/// and interrupts from it cannot be trusted, and telling the guest through a virtual root
/// port's AER is not built. One clear line names the device (see docs/vfio.md).
fn stop_on_error(stop: &Arc<StopNotifier>, id: &str, bdf: &str) -> vfio::faults::ErrorHandler {
    let stop = stop.clone();
    let what = format!("assigned device {id} (host {bdf})");
    Box::new(move |events| {
        ratelog::error_limited!("{what}: the host reported an uncorrectable PCIe error (AER, {events} event(s))");
        stop.request(StopReason::Error(format!(
            "{what}: the host reported an uncorrectable PCIe error (AER); the VM is stopped (the host's log has the details)"
        )));
    })
}

/// The seccomp filter of the DMA-mapping thread: map guest RAM into the device's IOMMU
/// (legacy container or iommufd), pinning it.
pub fn dma_seccomp_rules(r: &mut crate::seccomp::Rules) {
    use crate::seccomp::{iommufd, vfio};
    r.allow_ioctls(&[vfio::IOMMU_MAP_DMA, iommufd::IOAS_MAP, iommufd::IOAS_MAP_FILE]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aer_error_stops_the_vm_with_one_line_naming_the_device() {
        let stop = StopNotifier::new().unwrap();
        let handler = stop_on_error(&stop, "nvme0", "0000:02:00.0");
        assert!(!stop.is_requested());
        handler(1);
        handler(3);
        match stop.reason() {
            Some(StopReason::Error(line)) => {
                assert!(line.contains("nvme0") && line.contains("0000:02:00.0") && line.contains("AER"), "{line}");
                assert!(!line.contains('\n'));
            }
            r => panic!("want an error stop, got {r:?}"),
        }
    }
}
