//! `VfioPciDevice`: an assigned PCI function as the guest's bus sees it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pci::capability::msix::MsixRegion;
use pci::config_space::{COMMAND_BUS_MASTER, CONFIG_SPACE_DWORDS, REG_COMMAND_STATUS};
use pci::{BarIndex, BarRegion, BarSpec, ConfigEffects, ConfigWait, MmapArea, MsiVectors, PciDevice};

use crate::config::{AssignedConfig, ConfigError, RomOptions};
use crate::dma::DmaMapping;
use crate::faults::{ErrorHandler, ErrorInterrupt};
use crate::host::{HostDevice, HostError, IrqIndex, CONFIG_REGION, ROM_REGION};
use crate::interrupts::{Interrupts, InterruptsError, IntxLine};
use crate::regions::{BarMappings, RegionsError};
use crate::reset::{choose, ResetChoice, ResetFacts, ResetMethod};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{bdf}: reading the device's config space failed")]
    ReadConfig {
        bdf: String,
        #[source]
        source: HostError,
    },
    #[error(transparent)]
    ParseConfig(#[from] ConfigError),
    #[error("{bdf}: reading ROM file {path}")]
    ReadRomFile {
        bdf: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: no guest address for BAR{bar} ({size:#x} bytes)")]
    PlaceBar { bdf: String, bar: u8, size: u64 },
    #[error("{bdf}: BAR{bar} cannot go at {addr:#x}")]
    BarAddress {
        bdf: String,
        bar: u8,
        addr: u64,
        #[source]
        source: pci::BarError,
    },
    #[error(transparent)]
    Regions(#[from] RegionsError),
    #[error(transparent)]
    Interrupts(#[from] InterruptsError),
    #[error("{bdf}: wiring the VFIO error interrupt failed")]
    ErrorIrq {
        bdf: String,
        #[source]
        source: HostError,
    },
    #[error("{bdf}: starting the error interrupt's thread failed")]
    ErrorThread {
        bdf: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: device reset failed")]
    Reset {
        bdf: String,
        #[source]
        source: HostError,
    },
}

/// What the VMM hands a new assigned device.
pub struct DeviceParts {
    pub host: Arc<dyn HostDevice>,
    pub rombar: bool,
    /// Contents of `romfile=`, replacing the device's own ROM.
    pub romfile: Option<Vec<u8>>,
    pub vectors: Box<dyn MsiVectors>,
    pub intx: Option<Box<dyn IntxLine>>,
}

/// An assigned PCI function. Its memory BARs' mmapped areas ([`PciDevice::mmap_areas`])
/// become guest memory through whoever applies its [`ConfigEffects`] (`pci::BusRelocator`
/// with memory slots), not here: config writes only return what changed.
pub struct VfioPciDevice {
    bdf: String,
    cfg: AssignedConfig,
    irq: Interrupts,
    maps: BarMappings,
    romfile: Option<Vec<u8>>,
    /// Guest accesses that trapped to the VMM, per BAR (index 6 = ROM).
    traps: [AtomicU64; 7],
    /// Of those, the accesses to the MSI-X table and PBA (expected: the guest programs them).
    msix_traps: AtomicU64,
    /// While guest RAM is still being DMA-mapped: the guest's Bus Master enable waits for it.
    dma_gate: Option<Arc<DmaMapping>>,
    /// The reset this device gets (see [`crate::reset`]).
    reset: ResetChoice,
    /// Set once the VMM reset it at the VM's end ([`Self::reset_at_vm_stop`]).
    released_reset: bool,
    /// The host's error interrupt, when wired ([`Self::enable_error_irq`]).
    error_irq: Option<ErrorInterrupt>,
    /// Last, so it is dropped last: the BAR mmaps (`maps`) keep the device file open in the
    /// kernel, and vfio-ioctls takes the group out of the container when the host device
    /// drops, which fails with EBUSY while the device is still open.
    host: Arc<dyn HostDevice>,
}

impl VfioPciDevice {
    /// Reads and virtualizes the device's freshly reset config space, mmaps its BARs.
    /// BARs get guest addresses with [`Self::place_bars`]; the guest sees them once it turns
    /// decode on.
    pub fn new(parts: DeviceParts) -> Result<Self, DeviceError> {
        let host = parts.host;
        let bdf = host.bdf().to_string();
        let cfg_size = host.region_info(CONFIG_REGION).map_or(256, |i| i.size.min(4096) as usize);
        let mut config = vec![0u8; cfg_size];
        host.region_read(CONFIG_REGION, 0, &mut config)
            .map_err(|source| DeviceError::ReadConfig { bdf: bdf.clone(), source })?;
        let mut sizes = [0u64; 7];
        for (i, s) in sizes.iter_mut().enumerate() {
            *s = host.region_info(i as u32).map_or(0, |r| r.size);
        }
        let rom = RomOptions { hidden: !parts.rombar, file_size: parts.romfile.as_ref().map_or(0, |r| r.len() as u64) };
        let cfg = AssignedConfig::new(&bdf, &config, sizes, rom)?;
        // vfio-pci resets a device as it opens it, and offers VFIO_DEVICE_RESET only when
        // that reset worked (with the same method): resetting again here would only cost
        // time (a function-level reset waits at least 100 ms), which QEMU pays at machine reset.
        let reset = choose_reset(host.as_ref());
        match &reset.method {
            ResetMethod::Function(m) => {
                log::info!("{bdf}: reset method {m} (vfio-pci reset the device with it as it was opened)")
            }
            m => log::info!("{bdf}: reset method {m}: {}; the device starts as the host left it", reset.why),
        }
        let irq = Interrupts::new(&bdf, &cfg, parts.vectors, parts.intx);
        let maps = BarMappings::new(host.as_ref(), cfg.bar_specs().into_iter(), cfg.msix().map(|m| m.config()))?;
        for (bar, off, size) in maps.areas() {
            log::debug!("{bdf}: BAR{} +{off:#x} {size:#x} bytes mmapped", bar.0);
        }
        Ok(Self {
            bdf,
            host,
            cfg,
            irq,
            maps,
            romfile: parts.romfile,
            traps: Default::default(),
            msix_traps: AtomicU64::new(0),
            dma_gate: None,
            reset,
            released_reset: false,
            error_irq: None,
        })
    }

    /// The reset the device gets at guest reboot and release.
    pub fn reset_method(&self) -> &ResetMethod {
        &self.reset.method
    }

    /// Has `on_error` called (on a thread of its own) when the host kernel reports an
    /// uncorrectable error on the device (VFIO_PCI_ERR_IRQ_INDEX, from AER). `Ok(false)` when
    /// the device offers no error interrupt (no AER on the host, or not PCIe).
    pub fn enable_error_irq(&mut self, on_error: ErrorHandler) -> Result<bool, DeviceError> {
        if self.host.irq_count(IrqIndex::Err) == 0 {
            return Ok(false);
        }
        let irq = ErrorInterrupt::new(&self.bdf, on_error)
            .map_err(|source| DeviceError::ErrorThread { bdf: self.bdf.clone(), source })?;
        self.host
            .set_irqs(IrqIndex::Err, 0, &[Some(irq.fd())])
            .map_err(|source| DeviceError::ErrorIrq { bdf: self.bdf.clone(), source })?;
        self.error_irq = Some(irq);
        Ok(true)
    }

    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The BARs to place, with kind and size.
    pub fn bar_specs(&self) -> Vec<BarSpec> {
        self.cfg.bar_specs()
    }

    /// Gives every BAR a guest address from `alloc(bar)` (naturally aligned); `None` fails
    /// the set-up.
    pub fn place_bars(&mut self, alloc: &mut dyn FnMut(&BarSpec) -> Option<u64>) -> Result<(), DeviceError> {
        for bar in self.bar_specs() {
            let addr =
                alloc(&bar).ok_or(DeviceError::PlaceBar { bdf: self.bdf.clone(), bar: bar.index.0, size: bar.size })?;
            self.cfg.place_bar(bar.index, addr).map_err(|source| DeviceError::BarAddress {
                bdf: self.bdf.clone(),
                bar: bar.index.0,
                addr,
                source,
            })?;
        }
        Ok(())
    }

    /// Holds the guest's first Bus Master enable until `mapping` is complete (see
    /// [`crate::dma`]); if the mapping failed, Bus Master stays off on the device.
    pub fn gate_bus_master(&mut self, mapping: Arc<DmaMapping>) {
        self.dma_gate = Some(mapping);
    }

    /// Whether the device may master the bus now. While guest RAM is still being mapped the
    /// answer is a wait for the caller to do outside every lock ([`ConfigWait`]), after
    /// which it writes `data` at (`reg`, `offset`) again.
    fn bus_master_gate(&mut self, reg: usize, offset: u64, data: &[u8]) -> Result<(), Option<ConfigWait>> {
        let Some(gate) = &self.dma_gate else { return Ok(()) };
        match gate.result() {
            Some(Ok(())) => {
                self.dma_gate = None;
                Ok(())
            }
            None => {
                let gate: Arc<dyn pci::AccessGate> = gate.clone();
                Err(Some(ConfigWait { gate, reg, offset, data: data.to_vec() }))
            }
            Some(Err(e)) => {
                ratelog::error_limited!("{}: {e}: Bus Master stays off", self.bdf);
                Err(None)
            }
        }
    }

    /// Last set-up step before vCPUs run: INTx on (the guest may never use MSI).
    pub fn start(&mut self) -> Result<(), DeviceError> {
        self.irq.enable_intx(self.host.as_ref())?;
        Ok(())
    }

    /// Guest reboot: reset the device and our emulation to power-on state. Memory decode is
    /// off afterwards, so the memory slots over the BARs must go: their owner removes them
    /// (`pci::BusRelocator::detach`).
    pub fn reset(&mut self) -> Result<(), DeviceError> {
        self.irq.reset(self.host.as_ref())?;
        self.cfg.reset();
        self.reset_device("guest reboot")
    }

    /// The VM is stopping (vCPUs stopped, every device about to go): interrupts off and the
    /// device reset with its method, a hot reset included (it may reset other functions of
    /// this VM on the same bus, which go too). Without this call the release does a
    /// function reset only: a hot reset there could reset functions the guest still uses (a
    /// hot-removed function's siblings); the kernel resets that bus itself once every
    /// function on it is released.
    pub fn reset_at_vm_stop(&mut self) {
        self.irq.shutdown(self.host.as_ref());
        if let Err(e) = self.reset_device("VM stop") {
            log::warn!("{}", reset_warning(&e));
        }
        self.released_reset = true;
    }

    /// Resets the device with its chosen method, saying which (info level).
    fn reset_device(&self, when: &str) -> Result<(), DeviceError> {
        let bdf = &self.bdf;
        let err = |source| DeviceError::Reset { bdf: bdf.clone(), source };
        match &self.reset.method {
            ResetMethod::Function(m) => {
                if self.host.reset().map_err(err)? {
                    log::info!("{bdf}: reset ({m}) at {when}");
                } else {
                    log::warn!("{bdf}: no reset at {when}: the kernel no longer offers one");
                }
            }
            ResetMethod::HotReset => {
                // Asked again: the functions on the bus may have changed since the choice.
                let deps = self.host.hot_reset_info().map_err(err)?;
                let groups: Vec<u32> = deps.iter().map(|d| d.group).collect();
                self.host.hot_reset(&groups).map_err(err)?;
                let all: Vec<&str> = deps.iter().map(|d| d.bdf.as_str()).collect();
                log::info!("{bdf}: reset (hot-reset of {}) at {when}", all.join(" "));
            }
            ResetMethod::None => log::info!("{bdf}: no reset at {when} ({})", self.reset.why),
        }
        Ok(())
    }

    /// Guest accesses that trapped to the VMM per BAR (index 6 = ROM): the data path should
    /// have none beyond MSI-X table writes.
    pub fn trap_counts(&self) -> [u64; 7] {
        std::array::from_fn(|i| self.traps[i].load(Ordering::Relaxed))
    }

    /// Trapped accesses that went to the MSI-X table or PBA (part of [`Self::trap_counts`]).
    pub fn msix_trap_count(&self) -> u64 {
        self.msix_traps.load(Ordering::Relaxed)
    }

    pub fn interrupt_mode(&self) -> crate::interrupts::Mode {
        self.irq.mode()
    }

    fn count_trap(&self, bar: BarIndex) {
        if let Some(c) = self.traps.get(bar.0 as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Which part of the MSI-X table or PBA an access falls in, if any.
    fn msix_part(&self, bar: BarIndex, offset: u64, len: usize) -> Option<MsixRegion> {
        self.cfg.msix()?.config().locate(bar, offset, len)
    }

    fn read_rom(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(rom) = &self.romfile {
            for (i, b) in data.iter_mut().enumerate() {
                let pos = offset.checked_add(i as u64).and_then(|p| usize::try_from(p).ok());
                *b = pos.and_then(|p| rom.get(p)).copied().unwrap_or(0xff);
            }
            return;
        }
        if let Err(e) = self.host.region_read(ROM_REGION, offset, data) {
            data.fill(0xff);
            ratelog::warn_limited!("{}: ROM read: {e}", self.bdf);
        }
    }
}

impl PciDevice for VfioPciDevice {
    fn bars(&self) -> Vec<BarRegion> {
        self.cfg.bar_regions()
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        if reg >= CONFIG_SPACE_DWORDS {
            return u32::MAX;
        }
        let mut host_value = 0;
        if self.cfg.device_bits(reg) != 0 {
            let mut b = [0u8; 4];
            match self.host.region_read(CONFIG_REGION, reg as u64 * 4, &mut b) {
                Ok(()) => host_value = u32::from_le_bytes(b),
                Err(e) => {
                    ratelog::warn_limited!("{}: config read: {e}", self.bdf);
                    host_value = u32::MAX;
                }
            }
        }
        self.cfg.read(reg, host_value)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigEffects {
        let mut masked = [0u8; 4];
        let mut data = data;
        let mut wait = None;
        if reg == REG_COMMAND_STATUS && offset == 0 && data.first().is_some_and(|b| b & COMMAND_BUS_MASTER as u8 != 0) {
            if let Err(w) = self.bus_master_gate(reg, offset, data) {
                wait = w;
                let n = data.len().min(4);
                masked[..n].copy_from_slice(&data[..n]);
                masked[0] &= !(COMMAND_BUS_MASTER as u8);
                data = &masked[..n];
            }
        }
        let w = self.cfg.write(reg, offset, data);
        for dw in &w.device_writes {
            if let Err(e) = self.host.region_write(CONFIG_REGION, dw.offset, &dw.data) {
                ratelog::warn_limited!("{}: config write: {e}", self.bdf);
            }
        }
        if w.msi_changed {
            if let Err(e) = self.irq.update_msi(self.host.as_ref(), &self.cfg) {
                log::error!("{}: MSI update: {e}", self.bdf);
            }
        }
        if w.msix_changed {
            if let Err(e) = self.irq.update_msix_control(self.host.as_ref(), &self.cfg) {
                log::error!("{}: MSI-X update: {e}", self.bdf);
            }
        }
        ConfigEffects { wait, ..w.effects }
    }

    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]) {
        self.count_trap(bar);
        if !self.cfg.bar_decodes(bar) {
            data.fill(0xff);
            return;
        }
        if bar == BarIndex::ROM {
            return self.read_rom(offset, data);
        }
        match self.msix_part(bar, offset, data.len()) {
            Some(MsixRegion::Table(off)) => {
                self.msix_traps.fetch_add(1, Ordering::Relaxed);
                self.irq.read_table(off, data)
            }
            Some(MsixRegion::Pba(off)) => {
                self.msix_traps.fetch_add(1, Ordering::Relaxed);
                self.irq.read_pba(off, data)
            }
            Some(MsixRegion::Straddle) => {
                self.msix_traps.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
            None => {
                if let Err(e) = self.host.region_read(u32::from(bar.0), offset, data) {
                    data.fill(0xff);
                    ratelog::warn_limited!("{}: BAR read: {e}", self.bdf);
                }
            }
        }
    }

    fn mmap_areas(&self, bar: BarIndex) -> Vec<MmapArea> {
        self.maps.mmap_areas(bar)
    }

    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]) {
        self.count_trap(bar);
        if !self.cfg.bar_decodes(bar) || bar == BarIndex::ROM {
            return;
        }
        match self.msix_part(bar, offset, data.len()) {
            Some(MsixRegion::Table(off)) => {
                self.msix_traps.fetch_add(1, Ordering::Relaxed);
                self.irq.write_table(self.host.as_ref(), off, data)
            }
            // The PBA is read-only; straddling accesses never reach the host's table.
            Some(MsixRegion::Pba(_) | MsixRegion::Straddle) => {
                self.msix_traps.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if let Err(e) = self.host.region_write(u32::from(bar.0), offset, data) {
                    ratelog::warn_limited!("{}: BAR write: {e}", self.bdf);
                }
            }
        }
    }
}

impl Drop for VfioPciDevice {
    /// Leaves the device as we found it: no interrupts, reset, so the next VMM can take it at
    /// once (the fds close after this; the kernel does the rest). The memory slots over its
    /// BARs must be gone by now (their owner removes them first).
    fn drop(&mut self) {
        // The data path should not trap: these counts show whether it did (the benchmark
        // reads this line).
        let t = self.trap_counts();
        log::info!(
            "{}: trapped guest accesses: BAR0={} BAR1={} BAR2={} BAR3={} BAR4={} BAR5={} ROM={} total={} msix={}",
            self.bdf,
            t[0],
            t[1],
            t[2],
            t[3],
            t[4],
            t[5],
            t[6],
            t.iter().sum::<u64>(),
            self.msix_trap_count()
        );
        let held = self.maps.held_elsewhere();
        if held > 0 {
            // Memory safe (the slots hold the mappings), but the device stays open in the
            // kernel until they go: VFIO cannot release its group before.
            log::warn!("{}: {held} BAR area(s) still under memory slots at release", self.bdf);
        }
        if let Some(irq) = self.error_irq.take() {
            if let Err(e) = self.host.disable_irqs(IrqIndex::Err) {
                log::warn!("{}: disabling the error interrupt at release: {e}", self.bdf);
            }
            drop(irq);
        }
        if self.released_reset {
            return;
        }
        self.irq.shutdown(self.host.as_ref());
        match self.reset.method {
            ResetMethod::Function(_) => {
                if let Err(e) = self.reset_device("release") {
                    log::warn!("{}", reset_warning(&e));
                }
            }
            _ => log::info!(
                "{}: no reset at release (the kernel resets its bus once every function on it is released, if it can)",
                self.bdf
            ),
        }
    }
}

/// What the host offers, turned into the device's reset (see [`crate::reset`]).
fn choose_reset(host: &dyn HostDevice) -> ResetChoice {
    let function_reset = host.resettable();
    let kernel_methods = host.kernel_reset_methods();
    let hot_reset = if function_reset { Ok(Vec::new()) } else { host.hot_reset_info().map_err(|e| error_chain(&e)) };
    let held_groups = if function_reset { Vec::new() } else { host.held_groups() };
    choose(&ResetFacts { function_reset, kernel_methods: &kernel_methods, hot_reset, held_groups: &held_groups })
}

/// A failed reset for the log: the host's error names the device and the ioctl already.
fn reset_warning(e: &DeviceError) -> String {
    match e {
        DeviceError::Reset { source, .. } => error_chain(source),
        e => error_chain(e),
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{sample_config, sample_sizes};
    use crate::host::{FakeHost, IrqCall, IrqIndex};
    use crate::interrupts::tests::{FakeVectors, Recorder};
    use pci::{BarMemslots, MemorySlots};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Memory slots the test can look at: the last id, and id -> (guest address, size).
    type SlotTable = (u32, BTreeMap<u32, (u64, u64)>);

    #[derive(Clone, Default)]
    struct SharedSlots(Arc<Mutex<SlotTable>>);
    impl MemorySlots for SharedSlots {
        fn map_slot(&mut self, gpa: u64, size: u64, _host_addr: u64) -> std::io::Result<u32> {
            let mut s = self.0.lock().unwrap();
            s.0 += 1;
            let id = s.0;
            s.1.insert(id, (gpa, size));
            Ok(id)
        }
        fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()> {
            self.0.lock().unwrap().1.remove(&slot).map(|_| ()).ok_or_else(|| std::io::Error::other("no slot"))
        }
    }

    /// What the VMM's config-effects handler does with the slots: they follow the BARs.
    fn follow(ms: &mut BarMemslots, dev: &VfioPciDevice, fx: &ConfigEffects) {
        let bars = dev.bars();
        ms.sync(&"t", 1, dev, fx.mem_decode, &|b| bars.iter().find(|r| r.index == b).map(|r| r.addr));
    }

    fn device() -> (Arc<FakeHost>, VfioPciDevice, SharedSlots, Recorder) {
        let host = Arc::new(FakeHost::new(&sample_config(), sample_sizes(), [1, 8, 4]));
        let slots = SharedSlots::default();
        let rec = Recorder::default();
        let mut dev = VfioPciDevice::new(DeviceParts {
            host: host.clone(),
            rombar: true,
            romfile: None,
            vectors: Box::new(FakeVectors::new(8, rec.clone())),
            intx: None,
        })
        .unwrap();
        crate::fuzz_support::place_bars(&mut dev).unwrap();
        dev.start().unwrap();
        (host, dev, slots, rec)
    }

    fn live(slots: &SharedSlots) -> BTreeMap<u32, (u64, u64)> {
        slots.0.lock().unwrap().1.clone()
    }

    #[test]
    fn decode_controls_slots_and_traps() {
        let (host, mut dev, slots, _) = device();
        let mut ms = BarMemslots::new(Box::new(slots.clone()));
        assert_eq!(*host.resets.lock().unwrap(), 0, "vfio-pci reset it at open: no second reset");
        let mut b = [0u8; 4];
        dev.read_bar(BarIndex(0), 0, &mut b);
        assert_eq!(b, [0xff; 4], "decode off reads all-ones");
        let fx = dev.write_config(1, 0, &[0x06]);
        assert_eq!(fx.mem_decode, Some(true));
        assert!(live(&slots).is_empty(), "the device maps nothing itself");
        follow(&mut ms, &dev, &fx);
        assert_eq!(live(&slots).values().copied().collect::<Vec<_>>(), vec![(0xe000_0000, 0x2000)]);
        // Move BAR0 while decoding: slots follow.
        let fx = dev.write_config(4, 0, &0xd000_0004u32.to_le_bytes());
        assert_eq!(fx.bar_moves.len(), 1);
        follow(&mut ms, &dev, &fx);
        assert_eq!(live(&slots).values().copied().collect::<Vec<_>>(), vec![(0xd000_0000, 0x2000)]);
        // Trapped register write reaches the device.
        dev.write_bar(BarIndex(0), 0x10, &[1, 2, 3, 4]);
        assert_eq!(&host.region_bytes(0)[0x10..0x14], &[1, 2, 3, 4]);
        let fx = dev.write_config(1, 0, &[0x04]);
        follow(&mut ms, &dev, &fx);
        assert!(live(&slots).is_empty());
        assert_eq!(dev.trap_counts()[0], 2);
        // Config the guest wrote never moved the device's own BAR register.
        assert_eq!(&host.region_bytes(CONFIG_REGION)[0x10..0x14], &sample_config()[0x10..0x14]);
    }

    #[test]
    fn bus_master_waits_for_the_dma_mapping() {
        let (host, mut dev, _, _) = device();
        let m = DmaMapping::pending();
        dev.gate_bus_master(m.clone());
        assert_eq!(dev.write_config(1, 0, &[0x02]).wait, None, "no Bus Master asked: no wait");
        // Asked while mapping: the device does the rest of the write and returns the wait
        // instead of blocking (the caller holds locks).
        let fx = dev.write_config(1, 0, &[0x06, 0x00]);
        let wait = fx.wait.expect("Bus Master waits for the mapping");
        assert_eq!(dev.read_config(1) & 0x6, 0x2, "the rest of the write applied, Bus Master not yet");
        assert_eq!(host.region_bytes(CONFIG_REGION)[4] & 0x04, 0, "not on the device yet");
        assert_eq!((wait.reg, wait.offset, wait.data.as_slice()), (1, 0, &[0x06, 0x00][..]));
        let t = std::thread::spawn(move || wait.gate.wait());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!t.is_finished(), "the gate holds while mapping");
        m.finish(Ok(()));
        assert!(t.join().unwrap());
        assert_eq!(dev.write_config(1, 0, &[0x06, 0x00]).wait, None, "the second write completes");
        assert_eq!(host.region_bytes(CONFIG_REGION)[4] & 0x04, 0x04, "then reached the device");

        let (host, mut dev, _, _) = device();
        let failed = DmaMapping::pending();
        failed.finish(Err(crate::container::ContainerError::NoInterruptRemapping { module: "vfio_iommu_type1" }));
        dev.gate_bus_master(failed);
        dev.write_config(1, 0, &[0x06, 0x00, 0x00, 0x00]);
        assert_eq!(host.region_bytes(CONFIG_REGION)[4] & 0x04, 0, "failed mapping: Bus Master stays off");
        assert_eq!(dev.read_config(1) & 0x2, 0x2, "the rest of the write still applies");
    }

    #[test]
    fn msix_through_the_bar() {
        let (host, mut dev, _, rec) = device();
        dev.write_config(1, 0, &[0x06]);
        dev.write_config(0x70 / 4, 2, &[0x00, 0x80]);
        let e: Vec<u8> = [0xfee0_0000u32, 0, 0x45, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
        dev.write_bar(BarIndex(0), 0x2000, &e);
        assert!(host.irq_calls.lock().unwrap().iter().any(|c| matches!(c, IrqCall::Set { index: IrqIndex::Msix, .. })));
        assert!(rec.routes.lock().unwrap().iter().any(|(v, m)| *v == 0 && m.is_some_and(|m| m.data == 0x45)));
        let mut b = [0u8; 4];
        dev.read_bar(BarIndex(0), 0x2008, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x45);
        dev.read_bar(BarIndex(0), 0x3000, &mut b);
        assert_eq!(b, [0; 4]);
        dev.write_bar(BarIndex(0), 0x10, &[1, 2, 3, 4]);
        assert_eq!(dev.trap_counts()[0], 4, "table write, table read, PBA read, register write");
        assert_eq!(dev.msix_trap_count(), 3, "only the register write is a data-path trap");
        drop(dev);
        assert!(host.irq_calls.lock().unwrap().contains(&IrqCall::Disable(IrqIndex::Msix)));
        assert_eq!(*host.resets.lock().unwrap(), 1, "reset on release");
    }

    /// Regression (config_writes fuzz finding): accesses that only partly cover the MSI-X
    /// table (BAR0 0x2000..0x2040) or PBA (0x3000..0x3008) never reach the host's bytes there.
    #[test]
    fn msix_straddling_accesses_stay_off_the_host() {
        let (host, mut dev, _, _) = device();
        dev.write_config(1, 0, &[0x06]);
        let mut bar0 = host.region_bytes(0);
        bar0[0x1ffc..0x2004].copy_from_slice(&[0x11; 8]);
        bar0[0x203c..0x2044].copy_from_slice(&[0x22; 8]);
        bar0[0x3004..0x300c].copy_from_slice(&[0x33; 8]);
        host.region_write(0, 0, &bar0).unwrap();
        for (offset, len) in [(0x1ffc, 8), (0x1fff, 2), (0x203c, 8), (0x203f, 2), (0x3007, 2), (0x3004, 8), (0x2ffc, 8)]
        {
            dev.write_bar(BarIndex(0), offset, &vec![0xaa; len]);
            let mut b = vec![0u8; len];
            dev.read_bar(BarIndex(0), offset, &mut b);
            assert_eq!(b, vec![0xff; len], "read at {offset:#x}+{len} does not show host table bytes");
        }
        assert_eq!(host.region_bytes(0), bar0, "no byte of BAR0 changed on the device");
        // Just outside the table and PBA the registers are the device's as before.
        dev.write_bar(BarIndex(0), 0x1ffc, &[1, 2, 3, 4]);
        dev.write_bar(BarIndex(0), 0x3008, &[5, 6]);
        assert_eq!(&host.region_bytes(0)[0x1ffc..0x2000], &[1, 2, 3, 4]);
        assert_eq!(&host.region_bytes(0)[0x3008..0x300a], &[5, 6]);
        assert_eq!(dev.msix_trap_count(), 14, "each straddling access counted as an MSI-X trap");
    }

    fn device_on(host: FakeHost) -> (Arc<FakeHost>, VfioPciDevice) {
        let host = Arc::new(host);
        let dev = VfioPciDevice::new(DeviceParts {
            host: host.clone(),
            rombar: true,
            romfile: None,
            vectors: Box::new(FakeVectors::new(8, Recorder::default())),
            intx: None,
        })
        .unwrap();
        (host, dev)
    }

    fn fake() -> FakeHost {
        FakeHost::new(&sample_config(), sample_sizes(), [1, 8, 4])
    }

    #[test]
    fn error_interrupt_wired_when_offered_signalled_to_the_handler_and_disarmed_at_release() {
        let (host, mut dev) = device_on(fake());
        assert!(!dev.enable_error_irq(Box::new(|_| {})).unwrap(), "the fake offers none by default");
        drop(dev);
        assert!(!host.irq_calls.lock().unwrap().iter().any(|c| matches!(c, IrqCall::Disable(IrqIndex::Err))));

        let mut h = fake();
        h.error_irq = true;
        let (host, mut dev) = device_on(h);
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(dev.enable_error_irq(Box::new(move |n| tx.send(n).unwrap())).unwrap());
        let fd = match host.irq_calls.lock().unwrap().last() {
            Some(IrqCall::Set { index: IrqIndex::Err, start: 0, fds }) if fds.len() == 1 => fds[0].unwrap(),
            c => panic!("no error interrupt set: {c:?}"),
        };
        // The host kernel signals the eventfd VFIO was given.
        // SAFETY: fd is the device's live error eventfd; ManuallyDrop keeps it open.
        let evt = std::mem::ManuallyDrop::new(unsafe {
            <vmm_sys_util::eventfd::EventFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
        evt.write(1).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), 1);
        drop(dev);
        assert!(host.irq_calls.lock().unwrap().contains(&IrqCall::Disable(IrqIndex::Err)));
    }

    #[test]
    fn the_reset_method_follows_what_the_host_offers() {
        use crate::reset::HotResetDep;
        let (host, dev) = device_on(fake());
        assert_eq!(dev.reset_method().name(), "flr");
        drop(dev);
        assert_eq!(*host.resets.lock().unwrap(), 1, "a function reset at release");

        // No function reset; the bus holds this device and another function of this VM.
        let deps = vec![
            HotResetDep { group: 7, bdf: "0000:05:00.0".into() },
            HotResetDep { group: 8, bdf: "0000:05:00.1".into() },
        ];
        let mut h = fake();
        h.reset_facts.function_reset = false;
        h.reset_facts.kernel_methods = Vec::new();
        h.reset_facts.hot_reset = Some(deps.clone());
        h.reset_facts.held_groups = vec![7, 8];
        let (host, mut dev) = device_on(h);
        assert_eq!(*dev.reset_method(), ResetMethod::HotReset);
        dev.reset().unwrap();
        assert_eq!(*host.hot_resets.lock().unwrap(), vec![vec![7, 8]], "guest reboot: a hot reset with both groups");
        dev.reset_at_vm_stop();
        drop(dev);
        assert_eq!(host.hot_resets.lock().unwrap().len(), 2, "VM stop: one more, release none");
        assert_eq!(*host.resets.lock().unwrap(), 0, "never a function reset");

        // Dropped without the VM stopping (a hot removal): no hot reset, siblings may be in use.
        let mut h = fake();
        h.reset_facts.function_reset = false;
        h.reset_facts.hot_reset = Some(deps.clone());
        h.reset_facts.held_groups = vec![7, 8];
        let (host, dev) = device_on(h);
        drop(dev);
        assert!(host.hot_resets.lock().unwrap().is_empty());

        // The sibling is someone else's: no reset at all.
        let mut h = fake();
        h.reset_facts.function_reset = false;
        h.reset_facts.hot_reset = Some(deps);
        h.reset_facts.held_groups = vec![7];
        let (host, mut dev) = device_on(h);
        assert_eq!(*dev.reset_method(), ResetMethod::None);
        dev.reset().unwrap();
        dev.reset_at_vm_stop();
        drop(dev);
        assert!(host.hot_resets.lock().unwrap().is_empty());
        assert_eq!(*host.resets.lock().unwrap(), 0);
    }

    /// Surprise removal: the host device is gone (every VFIO access fails with ENODEV) while
    /// the guest still uses it. Reads see all-ones (what a removed PCIe device answers), writes
    /// are dropped, MSI-X changes fail without effect, and the teardown completes.
    #[test]
    fn a_device_that_went_away_reads_all_ones_and_releases_cleanly() {
        let mut h = fake();
        h.error_irq = true;
        let (host, mut dev) = device_on(h);
        dev.enable_error_irq(Box::new(|_| {})).unwrap();
        dev.start().unwrap();
        dev.write_config(1, 0, &[0x06]);
        host.gone.store(true, Ordering::Relaxed);
        let mut b = [0u8; 4];
        dev.read_bar(BarIndex(0), 0x10, &mut b);
        assert_eq!(b, [0xff; 4]);
        dev.write_bar(BarIndex(0), 0x10, &[1, 2, 3, 4]);
        // Vendor/device come from the host: all-ones, as the guest's driver expects of a
        // removed device.
        assert_eq!(dev.read_config(0), u32::MAX);
        dev.write_config(0x70 / 4, 2, &[0x00, 0x80]);
        dev.write_bar(BarIndex(0), 0x2000, &[0u8; 16]);
        assert!(dev.reset().is_err(), "a reset of a gone device is an error, not a panic");
        dev.reset_at_vm_stop();
        drop(dev);
    }
}
