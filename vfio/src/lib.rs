//! VFIO passthrough as a VMM needs it: containers and groups, DMA mapping, the VFIO PCI device
//! (config virtualization, BAR mmaps, interrupts, reset) and the seam to `/dev/vfio`. The host's
//! side (sysfs inventory, binding, SR-IOV) is the `hostadmin` crate's.

pub mod config;
#[cfg(test)]
mod config_golden;
pub mod container;
pub mod device;
pub mod dma;
pub mod faults;
#[doc(hidden)]
pub mod fuzz_support;
pub mod host;
pub mod interrupts;
pub mod iommufd;
pub mod regions;
pub mod reset;
pub mod rom;
pub mod spec;
