//! Host-side sysfs: device inventory, IOMMU groups, driver binding (with a state file so
//! bindings can be undone after a crash), SR-IOV, and VF settings through rtnetlink.
//!
//! Everything is rooted at a [`PciHost`], whose root defaults to `/`; tests root it at a fake
//! tree built with [`fake::FakeSysfs`].

mod bdf;
mod binding;
mod check;
pub mod fake;
mod host;
mod inventory;
mod managed;
mod sriov;
mod state;
mod usage;
mod vf;

pub use bdf::{pci_address, Bdf, BdfError};
pub use binding::{BindError, BindOutcome, Binder, DeviceRestore, RestoreOutcome, VFIO_PCI};
pub use check::{blocked, parse_size, CheckError, CheckOptions, Finding, Severity};
pub use host::PciHost;
pub use inventory::{class_names, BarInfo, BarKind, InventoryError, PciFunction, SriovInfo, CLASS_KEYS};
pub use managed::ManagedDevices;
pub use sriov::{SriovError, SriovOptions};
pub use state::{BindingRecord, StateError, StateFile, StateLock};
pub use usage::HostUse;
pub use vf::{MacAddr, PfNetdev, Rtnetlink, VfError, VfLinkState, VfSettings, VfStatus};
