//! The PCI segment: the root complex (pci::PciRoot) behind 0xCF8/0xCFC and ECAM, its DSDT
//! description, and putting functions in and out of slots so their BARs land on the buses
//! (and follow the guest when it moves them).
//!
//! The segment owns the root complex and the relocator; the config-access devices on the
//! buses refer to the root weakly, and the root and the BAR slots refer to functions weakly:
//! the device manager owns the functions.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use pci::aml::{HostBridgeResources, PciHostBridgeAml};
use pci::bridge::Window;
use pci::intx::{IntxPin, IntxRouting};
use pci::{
    Bdf, BusRelocator, ConfigEffects, ConfigEffectsHandler, MemorySlots, PciConfigIo, PciConfigMmio, PciRoot,
    SharedPciDevice,
};

use super::q35::{ChipsetWindows, Q35Chipset};
use super::DeviceManagerError;
use crate::layout;
use crate::resources;
use crate::vstate::vcpu::IoBuses;

/// The root's effects handler: the relocator, shared with the segment for attach/detach.
struct SharedRelocator(Arc<Mutex<BusRelocator>>);

impl ConfigEffectsHandler for SharedRelocator {
    fn apply(&mut self, bdf: Bdf, device: &SharedPciDevice, effects: ConfigEffects) {
        match self.0.lock() {
            Ok(mut r) => r.apply(bdf, device, effects),
            Err(_) => pci::bus::failed_device("PCI BAR relocator"),
        }
    }
}

/// Attach and detach run in the control loop. A lock poisoned by a panic in the pci model
/// (on a vCPU) means the VM is stopping with that panic as its error: tearing down still has
/// to take every function out, so it goes on, and says so.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| {
        ratelog::warn_limited!("PCI segment: a panic poisoned its state; going on to take the devices out");
        e.into_inner()
    })
}

pub struct PciSegment {
    pub root: Arc<Mutex<PciRoot>>,
    relocator: Arc<Mutex<BusRelocator>>,
    /// The host bridge's description; `last_bus` and the ECAM window are filled in from the
    /// topology when the ACPI tables are built (see [`Self::aml`]).
    res: HostBridgeResources,
    intx: IntxRouting,
}

impl PciSegment {
    /// The segment with our generic host bridge and ECAM at its fixed place, or with the q35
    /// chipset's host bridge (`chipset`), whose ECAM appears where firmware programs it.
    pub fn new(buses: &IoBuses, mmio64: Window, chipset: Option<&Q35Chipset>) -> Result<Self, DeviceManagerError> {
        let relocator = Arc::new(Mutex::new(BusRelocator::new(buses.mmio.clone(), buses.pio.clone())));
        let insert = |bus: &pci::Bus, what: &'static str, dev: Arc<dyn pci::BusAccess>, base: u64, len: u64| {
            bus.insert(dev, base, len).map_err(|source| DeviceManagerError::InsertDevice { what, base, source })
        };
        let root = match chipset {
            None => {
                let root = PciRoot::new(0, Box::new(SharedRelocator(relocator.clone())))
                    .map_err(|source| DeviceManagerError::Pci { what: "creating the root complex", source })?;
                let root = Arc::new(Mutex::new(root));
                insert(
                    &buses.pio,
                    "PCI config ports",
                    Arc::new(PciConfigIo::new(&root)),
                    layout::PCI_CONFIG_IO_PORT,
                    layout::PCI_CONFIG_IO_LEN,
                )?;
                insert(
                    &buses.mmio,
                    "PCI ECAM",
                    Arc::new(PciConfigMmio::new(&root)),
                    layout::PCI_ECAM_START,
                    layout::PCI_ECAM_SIZE,
                )?;
                root
            }
            Some(c) => {
                let ecam = Arc::new(OnceLock::new());
                let windows = ChipsetWindows {
                    relocator: relocator.clone(),
                    mmio: buses.mmio.clone(),
                    pio: buses.pio.clone(),
                    ecam: ecam.clone(),
                    pm: Arc::downgrade(&c.pm_access()),
                };
                let root = PciRoot::with_host_bridge(0, Box::new(windows), c.take_mch_device()?);
                let root = Arc::new(Mutex::new(root));
                let _ = ecam.set(Arc::new(PciConfigMmio::new(&root)) as Arc<dyn pci::BusAccess>);
                insert(
                    &buses.pio,
                    "PCI config ports and reset control",
                    Arc::new(PciConfigIo::with_port_cf9(&root, &c.reset_access())),
                    layout::PCI_CONFIG_IO_PORT,
                    layout::PCI_CONFIG_IO_LEN,
                )?;
                root
            }
        };
        let intx =
            IntxRouting::new(resources::INTX_GSI_FIRST, resources::INTX_GSI_LAST - resources::INTX_GSI_FIRST + 1)
                .map_err(|e| DeviceManagerError::PciAml(e.to_string()))?;
        let res = HostBridgeResources {
            segment: 0,
            last_bus: layout::PCI_ECAM_LAST_BUS,
            io: Window {
                base: u64::from(layout::PCI_IO_START),
                size: u64::from(layout::PCI_IO_END - layout::PCI_IO_START) + 1,
            },
            mmio32: Window { base: layout::PCI_MMIO32_START, size: layout::PCI_MMIO32_SIZE },
            mmio32_above: None,
            io_isa: false,
            mmio64,
            ecam: Window { base: layout::PCI_ECAM_START, size: layout::PCI_ECAM_SIZE },
            intx,
        };
        // The windows are checked now, so a bad layout fails before anything runs.
        PciHostBridgeAml::new(res).map_err(|e| DeviceManagerError::PciAml(e.to_string()))?;
        Ok(Self { root, relocator, res, intx })
    }

    /// The VM's memory slots for mmapped BAR areas: from now on they follow the BARs (and
    /// leave with [`Self::detach_function`]).
    pub fn set_memory_slots(&self, slots: Box<dyn MemorySlots>) {
        lock(&self.relocator).set_memory_slots(slots);
    }

    /// The highest bus number in use (0 without root ports): the end of the bus range the
    /// DSDT's `_CRS` and MCFG advertise. Not 255: Linux probes every bus up to MCFG's end
    /// bus that it did not find behind a bridge (`pcibios_fixup_peer_bridges`), 32 config
    /// reads per bus through port 0xCF8, which took 2.2 s of a 3.9 s boot in the nested
    /// testbed (QEMU's q35 advertises 0-255 and pays 3.2 s). Buses never appear later (no
    /// hotplug), and Linux keeps bridges' buses inside the host bridge's range; a guest that
    /// renumbers past it still reaches them through 0xCF8 and the (full-size) ECAM window.
    pub fn last_bus(&self) -> u8 {
        lock(&self.root).last_bus()
    }

    /// The GSI the DSDT's `_PRT` gives INTx `pin` of the bus-0 function `bdf`.
    pub fn intx_gsi(&self, bdf: Bdf, pin: IntxPin) -> u32 {
        self.intx.slot_gsi(bdf.device(), pin)
    }

    /// What describes the host bridge later (firmware boot: when the firmware reads the
    /// tables).
    pub fn aml_source(&self) -> AmlSource {
        AmlSource { root: Arc::downgrade(&self.root), res: self.res }
    }

    /// `Device (PCI0)` (with `_CRS`, `_PRT`) and the ECAM reservation, for `\_SB`, for
    /// buses 0..=[`Self::last_bus`].
    pub fn aml(&self) -> Result<PciHostBridgeAml, DeviceManagerError> {
        let last_bus = self.last_bus();
        let res = HostBridgeResources {
            last_bus,
            ecam: Window { base: self.res.ecam.base, size: (u64::from(last_bus) + 1) << 20 },
            ..self.res
        };
        PciHostBridgeAml::new(res).map_err(|e| DeviceManagerError::PciAml(e.to_string()))
    }

    /// Puts a function without BARs (a chipset function) at 00:`slot`.0.
    pub fn add_function(&mut self, slot: u8, device: &SharedPciDevice) -> Result<Bdf, pci::RootError> {
        lock(&self.root).add_device(slot, 0, device)
    }

    /// Every function but the host bridge and root ports, at its current address.
    pub fn endpoints(&self) -> Vec<(Bdf, SharedPciDevice)> {
        lock(&self.root).endpoints()
    }

    /// Puts `device` in the lowest free slot on bus 0 and maps its BARs where they are
    /// placed. From here on the relocator keeps the BARs' bus entries where the guest puts
    /// them, until [`Self::detach_function`].
    pub fn attach_function(&mut self, device: &SharedPciDevice) -> Result<Bdf, DeviceManagerError> {
        let bdf = {
            let mut root = lock(&self.root);
            let slot = (1..=31u8)
                .find(|d| root.function(Bdf::from_devfn(self.res.segment, 0, d << 3)).is_none())
                .ok_or(DeviceManagerError::NoFreeSlot)?;
            root.add_device(slot, 0, device)
                .map_err(|source| DeviceManagerError::Pci { what: "adding a device to bus 0", source })?
        };
        if let Err(source) = lock(&self.relocator).attach(bdf, device) {
            lock(&self.root).remove_device(device);
            return Err(DeviceManagerError::Pci { what: "mapping BARs", source });
        }
        log::info!("{bdf}: attached");
        Ok(bdf)
    }

    /// Takes `device` out of the guest's view: its BARs off the buses, its slot empty (config
    /// space reads all-ones). Returns the address it had.
    pub fn detach_function(&mut self, device: &SharedPciDevice) -> Option<Bdf> {
        lock(&self.relocator).detach(device);
        lock(&self.root).remove_device(device)
    }
}

/// The host bridge's description, made when the firmware reads the ACPI tables.
pub struct AmlSource {
    root: std::sync::Weak<Mutex<PciRoot>>,
    res: HostBridgeResources,
}

impl AmlSource {
    /// ECAM where the firmware put it (if it has), and the 32-bit windows it may allocate
    /// from (one or two, around the ECAM).
    pub fn firmware_aml(
        &self,
        ecam: Option<Window>,
        mmio32: &[Window],
    ) -> Result<PciHostBridgeAml, DeviceManagerError> {
        let last_bus = self.root.upgrade().map_or(0, |r| lock(&r).last_bus());
        let ecam_base = ecam.map_or(layout::FIRMWARE_LOW_RAM_MAX, |e| e.base);
        let fallback = Window { base: layout::FIRMWARE_MMIO32_END - (1 << 20), size: 1 << 20 };
        let res = HostBridgeResources {
            last_bus,
            ecam: Window { base: ecam_base, size: (u64::from(last_bus) + 1) << 20 },
            mmio32: mmio32.first().copied().unwrap_or(fallback),
            mmio32_above: mmio32.get(1).copied(),
            // The LPC bridge's PM block (Linux's ICH quirk claims PMBASE as a window of
            // 00:1f.0 and wants it inside the host bridge's).
            io_isa: true,
            ..self.res
        };
        PciHostBridgeAml::new(res).map_err(|e| DeviceManagerError::PciAml(e.to_string()))
    }
}
