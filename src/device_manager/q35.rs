//! Wiring of the q35 platform that `--firmware` boots on (`platform` crate models): the MCH host
//! bridge and ICH9 LPC bridge in the PCI root complex, the chipset windows they place (ECAM,
//! the ACPI PM block), the reset control port, fw_cfg and the firmware debug console, and the
//! firmware image at the top of 4 GiB (code as a read-only memory slot, the variable store as
//! a CFI flash whose array is a memory slot while the guest reads it as memory).
//!
//! Ownership follows the device manager's rule: [`Q35Chipset`] (held by the device manager)
//! owns the PM block and the reset register, the root complex owns the host bridge, the LPC
//! bridge is a PCI function of the device manager, fw_cfg and the debug console are its
//! platform devices, [`FirmwareMemory`] owns the image, the flash and their memory slots. Bus
//! entries refer to all of them weakly.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use pci::{
    Bdf, BusAccess, BusRelocator, ConfigEffects, ConfigEffectsHandler, SharedPciDevice, WindowMove, WindowSpace,
};
use platform::debugcon::{DebugCon, DEBUGCON_PORT};
use platform::flash::{CfiFlash, FlashWrite};
use platform::fw_cfg::FwCfg;
use platform::q35::{AcpiPmBlock, Ich9Lpc, Q35HostBridge, ResetControl, LPC_SLOT, LPC_WINDOW_PM, MCH_WINDOW_ECAM};
use platform::MonotonicClock;

use super::legacy::PlatformDevice;
use super::seams::MemslotMap;
use super::{DeviceId, DeviceManagerError};
use crate::boot::firmware::{self, FirmwareFiles, RomImage, VarsStore};
use crate::layout;
use crate::stop::StopNotifier;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm::MemSlot;

/// The chipset functions and the registers behind their windows. The host bridge and the LPC
/// bridge are handed over once (to the root complex and the device manager, which own them);
/// the chipset itself, cloned into whoever needs to know where the firmware put its windows,
/// refers to them weakly.
#[derive(Clone)]
pub struct Q35Chipset {
    mch: Weak<Mutex<Q35HostBridge>>,
    lpc: Weak<Mutex<Ich9Lpc>>,
    unplaced: Arc<Mutex<Unplaced>>,
    pm: Arc<Mutex<AcpiPmBlock>>,
    reset: Arc<Mutex<ResetControl>>,
}

/// The functions not yet handed over.
#[derive(Default)]
struct Unplaced {
    mch: Option<Arc<Mutex<Q35HostBridge>>>,
    lpc: Option<Arc<Mutex<Ich9Lpc>>>,
}

impl Q35Chipset {
    pub fn new(stop: &Arc<StopNotifier>) -> Self {
        let power: Arc<dyn platform::PowerControl> = stop.clone();
        let mch = Arc::new(Mutex::new(Q35HostBridge::new(power.clone())));
        let lpc = Arc::new(Mutex::new(Ich9Lpc::new()));
        Self {
            mch: Arc::downgrade(&mch),
            lpc: Arc::downgrade(&lpc),
            unplaced: Arc::new(Mutex::new(Unplaced { mch: Some(mch), lpc: Some(lpc) })),
            pm: Arc::new(Mutex::new(AcpiPmBlock::new(Box::new(MonotonicClock::new()), power.clone()))),
            reset: Arc::new(Mutex::new(ResetControl::new(power))),
        }
    }

    fn unplaced(&self) -> std::sync::MutexGuard<'_, Unplaced> {
        self.unplaced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host bridge, for the root complex to own (once).
    pub fn take_mch_device(&self) -> Result<SharedPciDevice, DeviceManagerError> {
        let mch = self.unplaced().mch.take();
        mch.map(|m| m as SharedPciDevice).ok_or_else(|| already_placed("host bridge"))
    }

    /// The LPC bridge, for the device manager to own (once).
    pub fn take_lpc_device(&self) -> Result<SharedPciDevice, DeviceManagerError> {
        let lpc = self.unplaced().lpc.take();
        lpc.map(|l| l as SharedPciDevice).ok_or_else(|| already_placed("LPC bridge"))
    }

    /// The PM block as a bus entry refers to it (weakly, through this allocation).
    pub fn pm_access(&self) -> Arc<dyn BusAccess> {
        self.pm.clone()
    }

    pub fn reset_access(&self) -> Arc<dyn BusAccess> {
        self.reset.clone()
    }

    /// Where the firmware put ECAM (as the ACPI tables must say).
    pub fn ecam(&self) -> Option<pci::bridge::Window> {
        let mch = self.mch.upgrade()?;
        let ecam = mch.lock().map(|m| m.ecam()).unwrap_or(None);
        ecam
    }

    /// Where the firmware put the PM block.
    pub fn pm_base(&self) -> Option<u16> {
        let lpc = self.lpc.upgrade()?;
        let w = lpc.lock().map(|l| l.pm_block()).unwrap_or(None)?;
        u16::try_from(w.base).ok()
    }
}

fn already_placed(what: &str) -> DeviceManagerError {
    DeviceManagerError::Firmware(format!("internal error: the q35 {what} was placed twice"))
}

/// Config-write effects of a q35 root complex: chipset windows move the ECAM and PM block
/// bus entries; BAR moves go to the relocator.
pub struct ChipsetWindows {
    pub relocator: Arc<Mutex<BusRelocator>>,
    pub mmio: Arc<pci::Bus>,
    pub pio: Arc<pci::Bus>,
    /// The ECAM access device, set once the root complex exists (it refers to the root).
    pub ecam: Arc<OnceLock<Arc<dyn BusAccess>>>,
    pub pm: Weak<dyn BusAccess>,
}

const MCH: Bdf = Bdf::from_devfn(0, 0, 0);
const LPC: Bdf = Bdf::from_devfn(0, 0, LPC_SLOT << 3);

impl ChipsetWindows {
    fn move_window(&self, bdf: Bdf, w: WindowMove) {
        let (what, entry): (&str, Option<Arc<dyn BusAccess>>) = match (bdf, w.window) {
            (b, MCH_WINDOW_ECAM) if b == MCH => ("ECAM", self.ecam.get().cloned()),
            (b, LPC_WINDOW_PM) if b == LPC => ("ACPI PM block", Some(Arc::new(self.pm.clone()))),
            _ => ("?", None),
        };
        let Some(entry) = entry else {
            ratelog::warn_limited!("{bdf}: window {} moved, but nothing is behind it", w.window);
            return;
        };
        let bus = if w.space == WindowSpace::Io { &self.pio } else { &self.mmio };
        if let Some(old) = w.old {
            let _ = bus.remove(old.base);
        }
        if let Some(new) = w.new {
            match bus.insert(entry, new.base, new.size) {
                Ok(()) => log::info!("{what} now at {:#x} (+{:#x})", new.base, new.size),
                Err(e) => ratelog::warn_limited!("{bdf}: {what} at {:#x} refused ({e}); not decoded", new.base),
            }
        }
    }
}

impl ConfigEffectsHandler for ChipsetWindows {
    fn apply(&mut self, bdf: Bdf, device: &SharedPciDevice, mut effects: ConfigEffects) {
        for w in std::mem::take(&mut effects.windows) {
            self.move_window(bdf, w);
        }
        if effects.is_empty() {
            return;
        }
        match self.relocator.lock() {
            Ok(mut r) => r.apply(bdf, device, effects),
            Err(_) => pci::bus::failed_device("PCI BAR relocator"),
        }
    }
}

/// The variable store as the guest reaches it: writes always come here (the slot is
/// read-only), reads only while the array is not mapped.
pub struct FlashDevice {
    flash: CfiFlash<VarsStore>,
    memslots: Arc<dyn MemslotMap>,
    base: u64,
    host: u64,
    slot: Option<MemSlot>,
}

impl FlashDevice {
    fn map(&mut self, on: bool) {
        let size = self.flash.size() as u64;
        match (on, self.slot.take()) {
            (true, None) => match self.memslots.map_memslot(self.base, size, self.host, true) {
                Ok(s) => self.slot = Some(s),
                Err(e) => log::error!("flash at {:#x}: mapping the array failed: {e}", self.base),
            },
            (false, Some(s)) => {
                if let Err(e) = self.memslots.unmap_memslot(s) {
                    log::error!("flash at {:#x}: unmapping the array failed: {e}", self.base);
                }
            }
            (_, keep) => self.slot = keep,
        }
    }
}

impl pci::BusDevice for FlashDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.flash.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let FlashWrite { array_mode, .. } = self.flash.write(offset, data);
        if let Some(on) = array_mode {
            self.map(on);
        }
    }
}

impl Drop for FlashDevice {
    fn drop(&mut self) {
        self.map(false);
    }
}

/// The code image: reads are a read-only memory slot; writes (firmware probing for flash)
/// exit to here and are dropped, so the image reads back unchanged: a ROM.
struct RomDevice;

impl pci::BusDevice for RomDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// The firmware's memory for the VM's lifetime: the image and its slot, the flash.
pub struct FirmwareMemory {
    memslots: Arc<dyn MemslotMap>,
    rom_slot: Option<MemSlot>,
    _rom_device: Arc<Mutex<RomDevice>>,
    _rom: RomImage,
    _flash: Option<Arc<Mutex<FlashDevice>>>,
}

impl Drop for FirmwareMemory {
    fn drop(&mut self) {
        if let Some(s) = self.rom_slot.take() {
            let _ = self.memslots.unmap_memslot(s);
        }
    }
}

fn insert(
    bus: &pci::Bus,
    what: &'static str,
    dev: Arc<dyn BusAccess>,
    base: u64,
    len: u64,
) -> Result<(), DeviceManagerError> {
    bus.insert(dev, base, len).map_err(|source| DeviceManagerError::InsertDevice { what, base, source })
}

fn weak_entry<T: pci::BusDevice + 'static>(dev: &Arc<Mutex<T>>) -> Arc<dyn BusAccess> {
    let strong: Arc<dyn BusAccess> = dev.clone();
    Arc::new(Arc::downgrade(&strong))
}

/// Maps the firmware at the top of 4 GiB and copies its last 128 KiB to the BIOS segment.
pub fn map_firmware(
    memslots: &Arc<dyn MemslotMap>,
    mem: &GuestMemory,
    mmio: &pci::Bus,
    files: &FirmwareFiles,
) -> Result<FirmwareMemory, DeviceManagerError> {
    use vm_memory::{Bytes, GuestAddress};
    let fw_err = |e: firmware::FirmwareError| DeviceManagerError::Firmware(e.to_string());
    let rom = RomImage::new(&files.code).map_err(fw_err)?;
    let code_base = files.code_base();
    let rom_slot = memslots
        .map_memslot(code_base, rom.len() as u64, rom.host_addr(), true)
        .map_err(|e| DeviceManagerError::Firmware(format!("mapping the firmware image: {e}")))?;
    let mut memory = FirmwareMemory {
        memslots: memslots.clone(),
        rom_slot: Some(rom_slot),
        _rom_device: Arc::new(Mutex::new(RomDevice)),
        _rom: rom,
        _flash: None,
    };
    insert(mmio, "firmware image", weak_entry(&memory._rom_device), code_base, files.code.len() as u64)?;
    mem.write_slice(files.bios_alias(), GuestAddress(layout::BIOS_ALIAS_START))
        .map_err(|e| DeviceManagerError::Firmware(format!("copying the BIOS entry to 0xe0000: {e}")))?;
    if let Some((path, file, size)) = &files.vars {
        let file = file.try_clone().map_err(|e| DeviceManagerError::Firmware(format!("{}: {e}", path.display())))?;
        let store = VarsStore::new(path, file, *size).map_err(fw_err)?;
        let host = store.host_addr();
        let flash = CfiFlash::new(store, firmware::FLASH_BLOCK_SIZE)
            .map_err(|e| DeviceManagerError::Firmware(format!("{}: {e}", path.display())))?;
        let base = files.base();
        let mut dev = FlashDevice { flash, memslots: memslots.clone(), base, host, slot: None };
        dev.map(true);
        let dev = Arc::new(Mutex::new(dev));
        insert(mmio, "UEFI variable flash", weak_entry(&dev), base, *size)?;
        memory._flash = Some(dev);
    }
    Ok(memory)
}

/// fw_cfg on its ports.
pub fn fw_cfg_device(fw_cfg: FwCfg) -> PlatformDevice {
    PlatformDevice {
        id: DeviceId::from("fw-cfg"),
        device: Arc::new(Mutex::new(fw_cfg)),
        port: platform::fw_cfg::PORT_BASE,
        len: platform::fw_cfg::PORT_LEN,
        irq: None,
    }
}

/// The firmware's debug console (port 0x402): its lines go to the log at debug level
/// (`--log-level debug`).
pub fn debugcon_device() -> PlatformDevice {
    // A firmware log is a few hundred lines; a guest writing without end is cut down to
    // every 1024th line after the first 4096.
    let mut lines = 0u32;
    let con = DebugCon::new(Box::new(move |line| {
        lines = lines.saturating_add(1);
        if lines <= 4096 || lines % 1024 == 0 {
            log::debug!("firmware: {line}");
        }
    }));
    PlatformDevice {
        id: DeviceId::from("debugcon"),
        device: Arc::new(Mutex::new(con)),
        port: DEBUGCON_PORT,
        len: 1,
        irq: None,
    }
}
