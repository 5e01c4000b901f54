//! VFIO passthrough: containers and groups, DMA mapping, the VFIO PCI device, and the host's
//! sysfs view of PCI devices (IOMMU groups, driver binding, SR-IOV).

pub mod sysfs;
