//! The root of the host's sysfs view. Every path the sysfs layer touches is built here, under
//! a configurable root, so the whole layer runs against a fake tree in unit tests.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use pci::Bdf;

/// Test-only stand-in for the kernel: called after every attribute write so a fake sysfs tree
/// can react the way the kernel would (unbind removes the driver link, probe adds one).
#[cfg(test)]
pub(crate) type KernelHook = std::sync::Arc<dyn Fn(&PciHost, &Path, &str) -> io::Result<()> + Send + Sync>;

/// A host's PCI world as seen through sysfs/procfs under `root` (`/` on a real host).
#[derive(Clone)]
pub struct PciHost {
    root: PathBuf,
    #[cfg(test)]
    pub(crate) kernel: Option<KernelHook>,
}

impl std::fmt::Debug for PciHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciHost").field("root", &self.root).finish()
    }
}

impl Default for PciHost {
    fn default() -> Self {
        Self::system()
    }
}

impl PciHost {
    /// A host whose `/sys`, `/proc`, `/dev` and `/run` live under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            #[cfg(test)]
            kernel: None,
        }
    }

    /// The running host.
    pub fn system() -> Self {
        Self::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path under the root as the host itself names it (`/dev/vfio/7` for a fake tree's
    /// `ROOT/dev/vfio/7`).
    pub fn display_path(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) => Path::new("/").join(rel).display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }

    /// `rel` is a path relative to the root, e.g. `sys/bus/pci/devices`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn pci_devices_dir(&self) -> PathBuf {
        self.path("sys/bus/pci/devices")
    }

    pub fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.pci_devices_dir().join(bdf.to_string())
    }

    pub fn driver_dir(&self, driver: &str) -> PathBuf {
        self.path("sys/bus/pci/drivers").join(driver)
    }

    pub fn device_exists(&self, bdf: Bdf) -> bool {
        self.device_dir(bdf).is_dir()
    }

    /// The text of an attribute file, trimmed.
    pub(crate) fn read_attr(&self, path: &Path) -> io::Result<String> {
        Ok(fs::read_to_string(path)?.trim().to_string())
    }

    /// Writes an attribute the way `echo` does. Never creates files: on a real host every
    /// attribute exists, and a missing one means the kernel lacks the feature.
    pub(crate) fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        use std::io::Write;
        log::debug!("sysfs: write '{}' to {}", value.trim_end(), path.display());
        let mut f = fs::OpenOptions::new().write(true).open(path)?;
        // One write call: sysfs store handlers see the whole value at once.
        f.write_all(value.as_bytes())?;
        drop(f);
        #[cfg(test)]
        if let Some(k) = &self.kernel {
            k(self, path, value.trim_end())?;
        }
        Ok(())
    }

    /// The last component of a symlink's target (`driver` -> `igb`, `iommu_group` -> `7`).
    pub(crate) fn link_name(&self, path: &Path) -> Option<String> {
        let target = fs::read_link(path).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The driver bound to a device, if any.
    pub fn driver(&self, bdf: Bdf) -> Option<String> {
        self.link_name(&self.device_dir(bdf).join("driver"))
    }

    /// The device's `driver_override`; the kernel prints "(null)" when none is set.
    pub fn driver_override(&self, bdf: Bdf) -> Option<String> {
        let v = self.read_attr(&self.device_dir(bdf).join("driver_override")).ok()?;
        (!v.is_empty() && v != "(null)").then_some(v)
    }

    /// Whether a PCI driver is registered (its module loaded or built in).
    pub fn driver_loaded(&self, driver: &str) -> bool {
        self.driver_dir(driver).is_dir()
    }

    /// The IOMMU group number of a device, if it has one.
    pub fn iommu_group(&self, bdf: Bdf) -> Option<u32> {
        self.link_name(&self.device_dir(bdf).join("iommu_group"))?.parse().ok()
    }

    /// Members of an IOMMU group, sorted.
    pub fn iommu_group_members(&self, group: u32) -> Vec<Bdf> {
        let dir = self.path("sys/kernel/iommu_groups").join(group.to_string()).join("devices");
        let mut v: Vec<Bdf> = read_dir_names(&dir).iter().filter_map(|n| n.parse().ok()).collect();
        v.sort();
        v
    }

    /// All IOMMU group numbers, sorted.
    pub fn iommu_groups(&self) -> Vec<u32> {
        let mut v: Vec<u32> =
            read_dir_names(&self.path("sys/kernel/iommu_groups")).iter().filter_map(|n| n.parse().ok()).collect();
        v.sort_unstable();
        v
    }

    /// Network interfaces that belong to a PCI function.
    pub fn net_interfaces(&self, bdf: Bdf) -> Vec<String> {
        let mut v = read_dir_names(&self.device_dir(bdf).join("net"));
        v.sort();
        v
    }

    /// The PCI function behind a network interface name.
    pub fn interface_device(&self, ifname: &str) -> Option<Bdf> {
        if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
            return None;
        }
        self.link_name(&self.path("sys/class/net").join(ifname).join("device"))?.parse().ok()
    }

    /// Every PCI function the host has, sorted by address.
    pub fn device_addresses(&self) -> Vec<Bdf> {
        let mut v: Vec<Bdf> = read_dir_names(&self.pci_devices_dir()).iter().filter_map(|n| n.parse().ok()).collect();
        v.sort();
        v
    }
}

/// Entry names of a directory; empty when it does not exist.
pub(crate) fn read_dir_names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}
