//! The PCI bus model: config space, BARs, capabilities, root complex and the address-range
//! dispatch bus that every emulated or assigned device hangs off.
//!
//! Pure model: no KVM, no VFIO, no ioctls. The VMM reaches it through the seams below
//! ([`BusDevice`], [`BusAccess`], [`PciDevice`], [`MsiVectors`]) so every behaviour is unit-testable.

pub mod allocator;
pub mod aml;
pub mod bar;
pub mod bdf;
pub mod bridge;
pub mod bus;
pub mod capability;
pub mod config_access;
pub mod config_space;
pub mod device;
pub mod function;
pub mod interrupt;
pub mod intx;
pub mod memslots;
pub mod passthrough;
pub mod root;
pub mod synthetic;
pub mod topology;

pub use bar::{BarError, Bars};
pub use bdf::{Bdf, BdfError};
pub use bus::{Bus, BusAccess, BusDevice, BusError, BusRange};
pub use config_access::{PciConfigIo, PciConfigMmio};
pub use config_space::{ConfigSpace, DeviceIds, HeaderType};
pub use device::{
    lock_function, AccessGate, BarIndex, BarKind, BarMove, BarRegion, BarSlot, ConfigEffects, ConfigWait, MmapArea,
    PciDevice, SharedPciDevice, WeakPciDevice, WindowMove, WindowSpace,
};
pub use function::{BarSpec, EmulatedFunction, FunctionBackend, FunctionConfig, FunctionError, NoRegisters};
pub use interrupt::{InterruptError, MsiMessage, MsiVectors, VectorIndex};
pub use memslots::{BarMemslots, MemorySlots};
pub use passthrough::{CapabilityView, DeviceWrite, PassthroughConfig};
pub use root::{BusRelocator, ConfigEffectsHandler, PciRoot, RootError};
pub use topology::{PciTopology, TopologyConfig, TopologyError};
