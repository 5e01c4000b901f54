//! Host administration for VFIO passthrough: the host's PCI inventory as sysfs shows it,
//! pre-flight checks, IOMMU groups, driver binding (with a state file so bindings can be
//! undone after a crash), SR-IOV, and VF settings through rtnetlink.
//!
//! Used by `viaductctl` and by the VMM for `--device ...,managed=on` and its pre-flight; the
//! `vfio` crate (the VMM's device model) does not depend on it.
//!
//! Everything is rooted at a [`PciHost`], whose root defaults to `/`; tests root it at a fake
//! tree built with [`fake::FakeSysfs`].

mod binding;
mod check;
pub mod fake;
mod host;
mod inventory;
mod managed;
mod owner;
pub mod preflight;
mod sriov;
mod state;
mod unprivileged;
mod usage;
mod user;
mod vf;
mod vfio_driver;

pub use binding::{BindError, BindOutcome, Binder, DeviceRestore, RestoreOutcome, VFIO_PCI};
pub use check::{blocked, parse_size, CheckError, CheckOptions, Finding, Severity};
pub use host::PciHost;
pub use inventory::{class_names, HostBar, InventoryError, PciFunction, SriovInfo, CLASS_KEYS};
pub use managed::ManagedDevices;
pub use owner::Owner;
pub use sriov::{SriovError, SriovOptions};
pub use state::{BindingRecord, Grant, NodeOwner, StateError, StateFile, StateLock};
pub use unprivileged::{unprivileged_steps, MEMLOCK_MARGIN};
pub use usage::HostUse;
pub use user::HostUser;
pub use vf::{MacAddr, PfNetdev, Rtnetlink, VfError, VfLinkState, VfSettings, VfStatus};
pub use vfio_driver::{VfioDriver, VfioNode};
