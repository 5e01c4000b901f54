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

/// What a config write asks the VMM to do. Returned as data, never executed inside the
/// device model, which keeps config emulation free of side effects and testable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigEffects {
    pub bar_moves: Vec<BarMove>,
    /// `Some(on)` when the command register's memory-space decode bit changed.
    pub mem_decode: Option<bool>,
    /// `Some(on)` when the command register's I/O-space decode bit changed.
    pub io_decode: Option<bool>,
}

impl ConfigEffects {
    pub fn is_empty(&self) -> bool {
        self.bar_moves.is_empty() && self.mem_decode.is_none() && self.io_decode.is_none()
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
}

/// A PCI function shared between the config-space path and its BAR slots.
pub type SharedPciDevice = std::sync::Arc<std::sync::Mutex<dyn PciDevice>>;

/// The bus entry for one BAR: forwards accesses (offset relative to the BAR) to the
/// function, so the bus resolves the BAR with its range lookup and no per-access search.
pub struct BarSlot {
    device: SharedPciDevice,
    bar: BarIndex,
}

impl BarSlot {
    pub fn new(device: SharedPciDevice, bar: BarIndex) -> Self {
        Self { device, bar }
    }
}

impl crate::BusDevice for BarSlot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.device.lock().unwrap_or_else(|e| e.into_inner()).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.device.lock().unwrap_or_else(|e| e.into_inner()).write_bar(self.bar, offset, data);
    }
}
