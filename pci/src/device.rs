//! The seam between the bus and a PCI function (emulated or assigned).

/// Index of a BAR: 0..=5, or [`BarIndex::ROM`] for the expansion ROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BarIndex(pub u8);

impl BarIndex {
    pub const ROM: BarIndex = BarIndex(6);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
    Rom,
}

/// Where a BAR currently sits in the guest's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    pub index: BarIndex,
    pub kind: BarKind,
    pub addr: u64,
    pub size: u64,
}

/// The guest moved a BAR: the owner moves the bus range (and any memslot backing it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    pub index: BarIndex,
    pub kind: BarKind,
    pub old_addr: u64,
    pub new_addr: u64,
    pub size: u64,
}

/// The address space a decode window lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSpace {
    Io,
    Memory,
}

/// A chipset decode window that a function's own registers place, not a BAR: a host
/// bridge's ECAM base (PCIEXBAR), an LPC bridge's ACPI PM I/O base (PMBASE). The function
/// names its windows with small numbers of its own; the VMM moves the bus entry behind the
/// window. `None` means "not decoded".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowMove {
    pub window: u8,
    pub space: WindowSpace,
    pub old: Option<crate::bridge::Window>,
    pub new: Option<crate::bridge::Window>,
}

/// What a config write asks the VMM to do. Returned as data, never executed inside the
/// device model, which keeps config emulation free of side effects and testable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigEffects {
    pub bar_moves: Vec<BarMove>,
    /// `Some(on)` when the command register's memory-space decode bit changed.
    pub mem_decode: Option<bool>,
    /// `Some(on)` when the command register's I/O-space decode bit changed.
    pub io_decode: Option<bool>,
    /// Part of the write could not be done yet (see [`ConfigWait`]).
    pub wait: Option<ConfigWait>,
    /// Chipset decode windows that moved, appeared or went away.
    pub windows: Vec<WindowMove>,
}

impl ConfigEffects {
    pub fn is_empty(&self) -> bool {
        self.bar_moves.is_empty()
            && self.mem_decode.is_none()
            && self.io_decode.is_none()
            && self.wait.is_none()
            && self.windows.is_empty()
    }
}

/// Something a config write has to wait for, e.g. guest RAM being DMA-mapped before the
/// device may master the bus.
pub trait AccessGate: Send + Sync {
    /// Blocks until the gate opens (true), or until it never will or the VM stops (false).
    /// Implementations must return promptly once the VM is stopping.
    fn wait(&self) -> bool;
}

/// A config write the device did only in part: the writing vCPU waits for `gate` with no
/// lock held (other vCPUs' config accesses go on), then writes `data` at (`reg`, `offset`)
/// again, which the device then completes. If the gate never opens the write stays partial
/// (e.g. Bus Master stays off).
#[derive(Clone)]
pub struct ConfigWait {
    pub gate: std::sync::Arc<dyn AccessGate>,
    pub reg: usize,
    pub offset: u64,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for ConfigWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWait")
            .field("reg", &self.reg)
            .field("offset", &self.offset)
            .field("data", &self.data)
            .finish()
    }
}

impl PartialEq for ConfigWait {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.gate, &other.gate)
            && (self.reg, self.offset, &self.data) == (other.reg, other.offset, &other.data)
    }
}

impl Eq for ConfigWait {}

/// A host mapping of part of a BAR that may back guest memory directly (a memory slot over
/// it while the BAR is decoded), so guest accesses there never reach the VMM.
#[derive(Clone)]
pub struct MmapArea {
    /// Offset of the area in its BAR.
    pub offset: u64,
    pub size: u64,
    /// Where the area is mapped in the VMM.
    pub host_addr: u64,
    /// Holds the host mapping alive: whoever puts a memory slot over the area keeps a clone
    /// until the slot is gone, so the slot never outlives the memory behind it.
    pub mapping: std::sync::Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for MmapArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapArea")
            .field("offset", &format_args!("{:#x}", self.offset))
            .field("size", &format_args!("{:#x}", self.size))
            .field("host_addr", &format_args!("{:#x}", self.host_addr))
            .finish_non_exhaustive()
    }
}

/// A PCI function as the bus sees it. All methods are infallible for the same reason as
/// [`crate::BusDevice`]: the guest drives them.
pub trait PciDevice: Send {
    /// The BARs the function implements, at their current guest addresses.
    fn bars(&self) -> Vec<BarRegion>;
    /// Reads the 32-bit config register `reg` (dword index, 0..1024).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..4) inside dword `reg`.
    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigEffects;
    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]);
    /// The parts of memory BAR `bar` the VMM may map into the guest as memory while the BAR
    /// is decoded (an assigned device's mmapped registers); accesses elsewhere in the BAR
    /// still come through [`Self::read_bar`] and [`Self::write_bar`]. Emulated functions
    /// have none.
    fn mmap_areas(&self, _bar: BarIndex) -> Vec<MmapArea> {
        Vec::new()
    }
}

/// A PCI function: the one strong reference is the device manager's; the root complex and
/// the BAR slots hold [`WeakPciDevice`]s.
pub type SharedPciDevice = std::sync::Arc<std::sync::Mutex<dyn PciDevice>>;
pub type WeakPciDevice = std::sync::Weak<std::sync::Mutex<dyn PciDevice>>;

/// Locks a function for one access; `None` (logged, rate-limited) when a panic poisoned it:
/// its state is unknown, so it is treated as failed (config and BARs read all-ones).
pub fn lock_function<'a>(
    device: &'a std::sync::Mutex<dyn PciDevice + 'static>,
) -> Option<std::sync::MutexGuard<'a, dyn PciDevice + 'static>> {
    match device.lock() {
        Ok(d) => Some(d),
        Err(_) => {
            crate::bus::failed_device("PCI function");
            None
        }
    }
}

/// The bus entry for one BAR: forwards accesses (offset relative to the BAR) to the
/// function, so the bus resolves the BAR with its range lookup and no per-access search.
/// It does not keep the function alive: once it is gone the BAR reads all-ones.
pub struct BarSlot {
    device: WeakPciDevice,
    bar: BarIndex,
}

impl BarSlot {
    pub fn new(device: WeakPciDevice, bar: BarIndex) -> Self {
        Self { device, bar }
    }
}

impl crate::BusAccess for BarSlot {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Some(device) = self.device.upgrade() else {
            data.fill(0xff);
            return;
        };
        match lock_function(&device) {
            Some(mut d) => d.read_bar(self.bar, offset, data),
            None => data.fill(0xff),
        };
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some(device) = self.device.upgrade() {
            if let Some(mut d) = lock_function(&device) {
                d.write_bar(self.bar, offset, data);
            }
        }
    }
}
