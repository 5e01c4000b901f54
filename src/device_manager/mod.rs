//! Wiring only: which device sits where on the buses, and which interrupt it raises.
//! Sub-managers (legacy, pci, vfio, ...) each have one file.

pub mod legacy;
pub mod pci;
pub mod testdev;
pub mod vfio;
pub mod virtio;

use std::sync::{Arc, Mutex};

use crate::devices::cmos::Cmos;
use crate::devices::serial::{ConsoleOut, SerialDevice};
use crate::irq::{GsiRouting, IrqChip};
use crate::resources::Resources;
use crate::stop::StopNotifier;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::IoBuses;
use crate::vstate::vm::Vm;

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
    #[error("KVM_IRQFD for {what} on GSI {gsi} failed")]
    RegisterIrqfd {
        what: &'static str,
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("PCI: {what} failed")]
    Pci {
        what: &'static str,
        #[source]
        source: ::pci::RootError,
    },
    #[error("PCI host bridge ACPI description: {0}")]
    PciAml(String),
    #[error(transparent)]
    Vfio(#[from] vfio::VfioManagerError),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioManagerError),
    #[error(transparent)]
    Resources(#[from] crate::resources::ResourceError),
    #[error(transparent)]
    TestDev(#[from] Box<testdev::TestDevError>),
}

/// Field order is drop order: assigned devices go (DMA unmapped, vectors off) before the
/// routing table and the buses they hang off.
pub struct DeviceManager {
    pub vfio: Option<vfio::VfioManager>,
    pub pci: pci::PciSegment,
    pub routing: Arc<Mutex<GsiRouting>>,
    pub buses: Arc<IoBuses>,
    pub resources: Mutex<Resources>,
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
}

impl DeviceManager {
    pub fn new(
        vm: &Arc<Vm>,
        mmio64: ::pci::bridge::Window,
        stop: &Arc<StopNotifier>,
        console: Option<ConsoleOut>,
        cmos: Arc<Mutex<Cmos>>,
    ) -> Result<Self, DeviceManagerError> {
        let buses = Arc::new(IoBuses { pio: Arc::new(::pci::Bus::new()), mmio: Arc::new(::pci::Bus::new()) });
        let legacy = legacy::attach(vm, &buses.pio, stop, console, cmos)?;
        let pci = pci::PciSegment::new(&buses, mmio64)?;
        let chip: Arc<dyn IrqChip> = vm.clone();
        Ok(Self {
            vfio: None,
            pci,
            routing: Arc::new(Mutex::new(GsiRouting::new(chip))),
            buses,
            resources: Mutex::new(Resources::new(mmio64)?),
            serial: legacy.serial,
        })
    }
}

impl DeviceManager {
    /// Attaches the devices named by `--device`, `--disk` and `--net`; each kind's
    /// sub-manager (vfio.rs, ...) parses its own keys from the [`crate::config::DeviceSpec`]s.
    /// Must run before the vCPUs start (DMA mappings, BAR placement).
    pub fn attach_cli_devices(
        &mut self,
        vm: &Arc<Vm>,
        memory: &GuestMemory,
        cfg: &crate::config::VmConfig,
    ) -> Result<(), DeviceManagerError> {
        let disks = virtio::parse_disks(&cfg.disks)?;
        let nets = virtio::parse_nets(&cfg.nets)?;
        let specs = vfio::parse_cli(&cfg.devices)?;
        let vctx = virtio::AttachContext { vm, memory, resources: &self.resources, routing: &self.routing };
        for dev in virtio::create_devices(&vctx, &disks, &nets, cfg.rng)? {
            let name = dev.lock().unwrap_or_else(|e| e.into_inner()).name().to_string();
            let bdf = self.pci.attach_pci_device(dev, &self.buses)?;
            log::info!("{name} is guest {bdf}");
        }
        let tctx = testdev::AttachContext { buses: &self.buses, resources: &self.resources };
        for (i, spec) in cfg.pci_synthetic.iter().enumerate() {
            testdev::attach(&tctx, &mut self.pci, i, spec)?;
        }
        if specs.is_empty() {
            return Ok(());
        }
        let ctx =
            vfio::AttachContext { vm, memory, resources: &self.resources, buses: &self.buses, routing: &self.routing };
        let mgr = vfio::VfioManager::attach(&ctx, &specs)?;
        for dev in &mgr.devices {
            let bdf = self.pci.attach_pci_device(dev.shared(), &self.buses)?;
            if let Some(pin) = ::pci::intx::IntxPin::from_register(dev.interrupt_pin()) {
                dev.connect_intx(self.pci.intx_gsi(bdf, pin))?;
            }
            log::info!("{} (host {}) is guest {bdf}", dev.id, dev.bdf);
        }
        self.vfio = Some(mgr);
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
}
