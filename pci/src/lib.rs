//! The PCI bus model: config space, BARs, capabilities, root complex and the address-range
//! dispatch bus that every emulated or assigned device hangs off.
//!
//! Pure model: no KVM, no VFIO, no ioctls. The VMM reaches it through the seams below
//! ([`BusDevice`], [`PciDevice`], [`MsiVectors`]) so every behaviour is unit-testable.

pub mod bus;
pub mod device;
pub mod interrupt;

pub use bus::{Bus, BusDevice, BusError, BusRange};
pub use device::{BarIndex, BarKind, BarMove, BarRegion, ConfigEffects, PciDevice};
pub use interrupt::{InterruptError, MsiMessage, MsiVectors, VectorIndex};
