//! VFIO passthrough: containers and groups, DMA mapping, the VFIO PCI device, and the host's
//! sysfs view of PCI devices (IOMMU groups, driver binding, SR-IOV).

pub mod config;
pub mod container;
pub mod device;
pub mod dma;
#[doc(hidden)]
pub mod fuzz_support;
pub mod host;
pub mod interrupts;
pub mod regions;
pub mod spec;
pub mod sysfs;
