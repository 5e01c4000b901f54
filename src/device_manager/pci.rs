//! The PCI segment: the root complex (pci::PciRoot) behind 0xCF8/0xCFC and ECAM, its DSDT
//! description, and attaching functions so their BARs land on the buses (and follow the
//! guest when it moves them).

use std::sync::{Arc, Mutex};

use pci::aml::{HostBridgeResources, PciHostBridgeAml};
use pci::bridge::Window;
use pci::intx::{IntxPin, IntxRouting};
use pci::{
    BarKind, Bdf, BusRelocator, ConfigEffects, ConfigEffectsHandler, PciConfigIo, PciConfigMmio, PciRoot,
    SharedPciDevice,
};

use super::DeviceManagerError;
use crate::layout;
use crate::resources;
use crate::vstate::vcpu::IoBuses;

/// Forwards config-write effects to a relocator we can still reach for initial attaches.
struct SharedRelocator(Arc<Mutex<BusRelocator>>);

impl ConfigEffectsHandler for SharedRelocator {
    fn apply(&mut self, bdf: Bdf, device: &SharedPciDevice, effects: ConfigEffects) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).apply(bdf, device, effects);
    }
}

pub struct PciSegment {
    pub root: Arc<Mutex<PciRoot>>,
    relocator: Arc<Mutex<BusRelocator>>,
    /// The host bridge's description; `last_bus` and the ECAM window are filled in from the
    /// topology when the ACPI tables are built (see [`Self::aml`]).
    res: HostBridgeResources,
    intx: IntxRouting,
    /// Next free device number on bus 0 (00:00.0 is the host bridge).
    next_slot: u8,
}

impl PciSegment {
    pub fn new(buses: &IoBuses, mmio64: Window) -> Result<Self, DeviceManagerError> {
        let relocator = Arc::new(Mutex::new(BusRelocator::new(buses.mmio.clone(), buses.pio.clone())));
        let root = PciRoot::new(0, Box::new(SharedRelocator(relocator.clone())))
            .map_err(|source| DeviceManagerError::Pci { what: "creating the root complex", source })?;
        let root = Arc::new(Mutex::new(root));
        let insert = |bus: &pci::Bus, what: &'static str, dev: Arc<Mutex<dyn pci::BusDevice>>, base: u64, len: u64| {
            bus.insert(dev, base, len).map_err(|source| DeviceManagerError::InsertDevice { what, base, source })
        };
        insert(
            &buses.pio,
            "PCI config ports",
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
            layout::PCI_CONFIG_IO_PORT,
            layout::PCI_CONFIG_IO_LEN,
        )?;
        insert(
            &buses.mmio,
            "PCI ECAM",
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;
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
            mmio64,
            ecam: Window { base: layout::PCI_ECAM_START, size: layout::PCI_ECAM_SIZE },
            intx,
        };
        // The windows are checked now, so a bad layout fails before anything runs.
        PciHostBridgeAml::new(res).map_err(|e| DeviceManagerError::PciAml(e.to_string()))?;
        Ok(Self { root, relocator, res, intx, next_slot: 1 })
    }

    /// The highest bus number in use (0 without root ports): the end of the bus range the
    /// DSDT's `_CRS` and MCFG advertise. Not 255: Linux probes every bus up to MCFG's end
    /// bus that it did not find behind a bridge (`pcibios_fixup_peer_bridges`), 32 config
    /// reads per bus through port 0xCF8, which took 2.2 s of a 3.9 s boot in the nested
    /// testbed (QEMU's q35 advertises 0-255 and pays 3.2 s). Buses never appear later (no
    /// hotplug), and Linux keeps bridges' buses inside the host bridge's range; a guest that
    /// renumbers past it still reaches them through 0xCF8 and the (full-size) ECAM window.
    fn last_bus(&self) -> u8 {
        self.root.lock().unwrap_or_else(|e| e.into_inner()).last_bus()
    }

    /// The GSI the DSDT's `_PRT` gives INTx `pin` of the bus-0 function `bdf`.
    pub fn intx_gsi(&self, bdf: Bdf, pin: IntxPin) -> u32 {
        self.intx.slot_gsi(bdf.device(), pin)
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

    /// Puts `device` in the next free slot on bus 0 and maps its BARs where they are placed.
    /// From here on the segment's relocator owns the BARs' bus entries (it moves them when the
    /// guest reprograms a BAR), so entries a caller inserted at those addresses are replaced.
    pub fn attach_pci_device(&mut self, device: SharedPciDevice, buses: &IoBuses) -> Result<Bdf, DeviceManagerError> {
        for bar in device.lock().unwrap_or_else(|e| e.into_inner()).bars() {
            let bus = if bar.kind == BarKind::Io { &buses.pio } else { &buses.mmio };
            // NotFound is the normal case: nothing was mapped there yet.
            let _ = bus.remove(bar.addr);
        }
        let slot = self.next_slot;
        let bdf = self
            .root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(slot, 0, device.clone())
            .map_err(|source| DeviceManagerError::Pci { what: "adding a device to bus 0", source })?;
        self.relocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attach(bdf, &device)
            .map_err(|source| DeviceManagerError::Pci { what: "mapping BARs", source })?;
        self.next_slot += 1;
        log::info!("{bdf}: attached");
        Ok(bdf)
    }
}
