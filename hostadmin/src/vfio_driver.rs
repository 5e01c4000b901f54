//! Which drivers hand a device to VFIO: plain `vfio-pci`, or a vendor variant driver built on
//! the kernel's vfio-pci-core library (`mlx5_vfio_pci`, `hisi_acc_vfio_pci`,
//! `nvgrace_gpu_vfio_pci`, `virtio_vfio_pci`, `pds_vfio_pci`...). A variant driver exposes the
//! same VFIO PCI device interface, plus device-specific extras (migration, for one), so a VMM
//! uses it exactly like vfio-pci.
//!
//! The rule. A device is on a VFIO driver when at least one of these holds:
//! 1. its sysfs directory has `vfio-dev/vfioN`: the VFIO core creates it for every device a
//!    VFIO driver registers (Linux 6.1+, Documentation/ABI/testing/sysfs-devices-vfio-dev);
//! 2. its driver's module links vfio-pci-core (it is listed in
//!    `/sys/module/vfio_pci_core/holders/`), which is what "built on vfio-pci-core" means;
//! 3. its driver's name, or its module's, ends in `vfio_pci` / `vfio-pci`: the naming every
//!    in-tree variant follows, the only sign left on an older kernel with vfio-pci-core built in.
//!
//! A driver name that merely *starts* with `vfio` proves nothing, and no list of known
//! variants is kept: new ones appear with each kernel. On top of that, a VMM can only open the
//! device when a VFIO device node exists for it: its IOMMU group's `/dev/vfio/<group>` (the
//! legacy group interface) or its cdev `/dev/vfio/devices/vfioN` (iommufd). Both together make
//! the device [ready](PciHost::vfio_ready).
//!
//! Binding (`viaductctl bind`, `managed=on`) still moves devices to plain vfio-pci: a device
//! already on a variant driver is ready and left alone.

use std::fmt;
use std::path::PathBuf;

use pci::Bdf;

use super::host::read_dir_names;
use super::{PciHost, VFIO_PCI};

/// The VFIO driver a device is bound to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum VfioDriver {
    /// Plain vfio-pci.
    VfioPci,
    /// A variant driver built on vfio-pci-core, by its sysfs name.
    Variant(String),
}

impl VfioDriver {
    /// The driver's sysfs name.
    pub fn driver_name(&self) -> &str {
        match self {
            VfioDriver::VfioPci => VFIO_PCI,
            VfioDriver::Variant(name) => name,
        }
    }
}

/// `vfio-pci` or `variant (mlx5_vfio_pci)`: what `viaductctl list` and `check` show.
impl fmt::Display for VfioDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfioDriver::VfioPci => f.write_str(VFIO_PCI),
            VfioDriver::Variant(name) => write!(f, "variant ({name})"),
        }
    }
}

/// A node under `/dev/vfio` through which a VMM opens the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VfioNode {
    /// The IOMMU group's node, `/dev/vfio/<group>` (legacy container/group interface).
    Group(PathBuf),
    /// The device's own cdev, `/dev/vfio/devices/vfioN` (iommufd).
    Cdev(PathBuf),
}

impl VfioNode {
    pub fn path(&self) -> &std::path::Path {
        match self {
            VfioNode::Group(p) | VfioNode::Cdev(p) => p,
        }
    }
}

/// The kernel's naming for vfio-pci-core drivers (rule 3 above).
fn vfio_pci_named(name: &str) -> bool {
    name.ends_with("vfio_pci") || name.ends_with("vfio-pci")
}

impl PciHost {
    /// The device's `vfio-dev/vfioN` entry, if the VFIO core registered it.
    fn vfio_dev_name(&self, bdf: Bdf) -> Option<String> {
        let mut names: Vec<String> = read_dir_names(&self.device_dir(bdf).join("vfio-dev"))
            .into_iter()
            .filter(|n| n.strip_prefix("vfio").is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())))
            .collect();
        names.sort();
        names.into_iter().next()
    }

    /// The kernel module behind a PCI driver (`drivers/NAME/module`); None when built in.
    pub fn driver_module(&self, driver: &str) -> Option<String> {
        self.link_name(&self.driver_dir(driver).join("module"))
    }

    /// Whether `module` links vfio-pci-core (rule 2).
    fn links_vfio_pci_core(&self, module: &str) -> bool {
        self.path("sys/module/vfio_pci_core/holders").join(module).exists()
    }

    /// The VFIO driver the device is bound to, by the rule in this module's documentation;
    /// None when it has no driver or a driver that is not VFIO.
    pub fn vfio_driver(&self, bdf: Bdf) -> Option<VfioDriver> {
        let driver = self.driver(bdf)?;
        let module = self.driver_module(&driver);
        let vfio = self.vfio_dev_name(bdf).is_some()
            || module.as_deref().is_some_and(|m| self.links_vfio_pci_core(m) || vfio_pci_named(m))
            || vfio_pci_named(&driver);
        if !vfio {
            return None;
        }
        Some(if driver == VFIO_PCI { VfioDriver::VfioPci } else { VfioDriver::Variant(driver) })
    }

    /// The node a VMM opens the device through: its group's `/dev/vfio/<group>` when present
    /// (what viaduct uses today), else its cdev `/dev/vfio/devices/vfioN`.
    pub fn vfio_node(&self, bdf: Bdf) -> Option<VfioNode> {
        if let Some(group) = self.iommu_group(bdf) {
            let node = self.path("dev/vfio").join(group.to_string());
            if node.exists() {
                return Some(VfioNode::Group(node));
            }
        }
        let cdev = self.path("dev/vfio/devices").join(self.vfio_dev_name(bdf)?);
        cdev.exists().then_some(VfioNode::Cdev(cdev))
    }

    /// Every VFIO node of the device that exists: its group's node and its cdev.
    pub fn vfio_nodes(&self, bdf: Bdf) -> Vec<VfioNode> {
        let mut out = Vec::new();
        if let Some(group) = self.iommu_group(bdf) {
            let node = self.path("dev/vfio").join(group.to_string());
            if node.exists() {
                out.push(VfioNode::Group(node));
            }
        }
        if let Some(name) = self.vfio_dev_name(bdf) {
            let cdev = self.path("dev/vfio/devices").join(name);
            if cdev.exists() {
                out.push(VfioNode::Cdev(cdev));
            }
        }
        out
    }

    /// The device's VFIO driver when a VMM can open it now: on a VFIO driver and with a VFIO
    /// device node.
    pub fn vfio_ready(&self, bdf: Bdf) -> Option<VfioDriver> {
        self.vfio_node(bdf)?;
        self.vfio_driver(bdf)
    }

    /// The variant drivers whose modules are loaded (holders of vfio_pci_core other than
    /// vfio-pci's own module), sorted.
    pub fn loaded_variant_modules(&self) -> Vec<String> {
        let mut v: Vec<String> = read_dir_names(&self.path("sys/module/vfio_pci_core/holders"))
            .into_iter()
            .filter(|m| m != "vfio_pci")
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like, FakeDevice, FakeSysfs, FakeVfioKernel};

    const NVME: Bdf = Bdf::from_devfn(0, 2, 0); // 0000:02:00.0

    /// The testbed's tree plus a Mellanox VF that only a variant driver knows.
    fn with_variant(tag: &str) -> (FakeSysfs, Bdf) {
        let f = testbed_like(temp_root(tag).unwrap()).unwrap();
        f.add_vfio_driver("mlx5_vfio_pci", "mlx5_vfio_pci").unwrap();
        let vf = Bdf::new(0, 5, 0, 1).unwrap();
        let mut d = FakeDevice::new(vf, 0x15b3, 0x101e, 0x020000);
        d.iommu_group = Some(30);
        d.native_driver = Some("mlx5_vfio_pci".into());
        f.add_device(&d).unwrap();
        (f, vf)
    }

    #[test]
    fn plain_vfio_pci_and_a_variant_driver_are_both_vfio() {
        let (f, vf) = with_variant("vfio-variant");
        let h = f.host();
        let variant = VfioDriver::Variant("mlx5_vfio_pci".into());
        assert_eq!(h.vfio_driver(vf), Some(variant.clone()));
        assert_eq!(h.vfio_ready(vf), Some(variant.clone()));
        assert_eq!(variant.to_string(), "variant (mlx5_vfio_pci)");
        assert_eq!(h.vfio_node(vf), Some(VfioNode::Group(f.path("dev/vfio/30"))));
        // The NVMe on its host driver is not VFIO; on vfio-pci it is.
        assert_eq!(h.vfio_driver(NVME), None);
        f.unbind(NVME).unwrap();
        assert_eq!(h.vfio_driver(NVME), None, "no driver");
        f.bind(NVME, "vfio-pci").unwrap();
        assert_eq!(h.vfio_ready(NVME), Some(VfioDriver::VfioPci));
        assert_eq!(VfioDriver::VfioPci.to_string(), "vfio-pci");
        assert_eq!(h.loaded_variant_modules(), vec!["mlx5_vfio_pci".to_string()]);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// Each rule alone is enough: vfio-dev (whatever the name), vfio_pci_core's holders, the
    /// name on a kernel that shows neither. A name starting with "vfio" is not.
    #[test]
    fn each_sign_of_a_vfio_driver_counts_alone() {
        let f = testbed_like(temp_root("vfio-signs").unwrap()).unwrap();
        let h = f.host();
        // vfio-dev only: an oddly named driver the VFIO core registered the device for.
        f.add_vfio_driver("acme_passthru", "acme_passthru").unwrap();
        std::fs::remove_file(f.path("sys/module/vfio_pci_core/holders/acme_passthru")).unwrap();
        f.unbind(NVME).unwrap();
        f.bind(NVME, "acme_passthru").unwrap();
        assert_eq!(h.vfio_ready(NVME), Some(VfioDriver::Variant("acme_passthru".into())));
        f.unbind(NVME).unwrap();
        assert!(!f.path("sys/bus/pci/devices/0000:02:00.0/vfio-dev").exists());
        assert!(!f.path("dev/vfio/8").exists(), "the group node goes with the last VFIO member");

        // An older kernel: no vfio-dev directories.
        f.set_vfio_kernel(FakeVfioKernel { vfio_dev_dirs: false, cdev: false, groups: true }).unwrap();
        // holders only.
        f.add_vfio_driver("acme2", "acme2").unwrap();
        f.bind(NVME, "acme2").unwrap();
        assert_eq!(h.vfio_driver(NVME), Some(VfioDriver::Variant("acme2".into())));
        f.unbind(NVME).unwrap();
        // name only (vfio-pci-core built in: no module link, no holders).
        f.add_vfio_driver("qat_vfio_pci", "qat_vfio_pci").unwrap();
        std::fs::remove_file(f.path("sys/bus/pci/drivers/qat_vfio_pci/module")).unwrap();
        std::fs::remove_file(f.path("sys/module/vfio_pci_core/holders/qat_vfio_pci")).unwrap();
        f.bind(NVME, "qat_vfio_pci").unwrap();
        assert_eq!(h.vfio_ready(NVME), Some(VfioDriver::Variant("qat_vfio_pci".into())));
        f.unbind(NVME).unwrap();
        // None of them: a driver whose name only starts with vfio.
        f.add_driver("vfio_lookalike").unwrap();
        f.bind(NVME, "vfio_lookalike").unwrap();
        assert_eq!(h.vfio_driver(NVME), None);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// A VFIO driver without a node to open is not ready; an iommufd-only kernel's cdev is one.
    #[test]
    fn ready_needs_a_group_node_or_a_cdev() {
        let (f, vf) = with_variant("vfio-nodes");
        let h = f.host();
        std::fs::remove_file(f.path("dev/vfio/30")).unwrap();
        assert!(h.vfio_driver(vf).is_some());
        assert_eq!(h.vfio_ready(vf), None);

        let g = FakeSysfs::new(temp_root("vfio-cdev").unwrap()).unwrap();
        g.set_vfio_kernel(FakeVfioKernel { vfio_dev_dirs: true, cdev: true, groups: false }).unwrap();
        g.add_vfio_driver("vfio-pci", "vfio_pci").unwrap();
        let mut d = FakeDevice::new(NVME, 0x1b36, 0x0010, 0x010802);
        d.iommu_group = Some(8);
        d.native_driver = Some("vfio-pci".into());
        g.add_device(&d).unwrap();
        let node = g.host().vfio_node(NVME).unwrap();
        assert!(matches!(node, VfioNode::Cdev(_)), "{node:?}");
        assert!(node.path().starts_with(g.path("dev/vfio/devices")), "{node:?}");
        assert_eq!(g.host().vfio_ready(NVME), Some(VfioDriver::VfioPci));
        std::fs::remove_dir_all(f.root()).unwrap();
        std::fs::remove_dir_all(g.root()).unwrap();
    }
}
