//! Host-side sysfs: device inventory, IOMMU groups, driver binding, SR-IOV.
