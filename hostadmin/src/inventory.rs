//! What a host has: PCI functions with their ids, class, driver, IOMMU group, SR-IOV links,
//! NUMA node, reset methods and BARs, read from sysfs.

use std::path::Path;

use pci::{BarIndex, BarKind, Bdf};

use super::host::read_dir_names;
use super::PciHost;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("no PCI device {bdf} on this host (see `viaductctl list`)")]
    UnknownDevice { bdf: Bdf },
    #[error("no network interface '{name}' backed by a PCI device on this host")]
    UnknownInterface { name: String },
    #[error("reading {attr} of {bdf}")]
    ReadAttribute {
        bdf: Bdf,
        attr: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{attr} of {bdf} holds '{value}', not a number")]
    ParseAttribute { bdf: Bdf, attr: &'static str, value: String },
}

/// One implemented BAR of a host device, where the host kernel placed it (sysfs `resource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBar {
    pub index: BarIndex,
    /// Host physical (or I/O port) address.
    pub start: u64,
    pub size: u64,
    pub kind: BarKind,
}

/// SR-IOV state of a physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovInfo {
    pub total_vfs: u32,
    pub num_vfs: u32,
    /// Whether new VFs get a driver probed (`sriov_drivers_autoprobe`).
    pub drivers_autoprobe: Option<bool>,
    /// VF addresses, index order.
    pub vfs: Vec<Bdf>,
}

/// A PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: Option<u16>,
    pub subsystem_device: Option<u16>,
    /// 24-bit class code (base, sub, prog-if).
    pub class: u32,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<i32>,
    /// The kernel's reset methods in its order of preference (`reset_method`), empty if the
    /// device cannot be reset by the kernel.
    pub reset_methods: Vec<String>,
    pub bars: Vec<HostBar>,
    pub sriov: Option<SriovInfo>,
    /// For a VF: its PF and its index there.
    pub physfn: Option<(Bdf, u32)>,
    pub net_interfaces: Vec<String>,
    /// A bridge (type 1 header): the kernel lets it stay with its driver in a VFIO group.
    pub is_bridge: bool,
}

impl PciFunction {
    pub fn base_class(&self) -> u8 {
        (self.class >> 16) as u8
    }

    /// Short class key (`net`, `storage`, ...), the one `--class` filters on.
    pub fn class_key(&self) -> &'static str {
        class_names(self.class).0
    }

    /// Human class name.
    pub fn class_name(&self) -> &'static str {
        class_names(self.class).1
    }
}

/// (filter key, human name) for a class code. Hand-rolled: the filter keys are ours, and
/// pci_types' DeviceType only offers Debug names, which are no stable output.
pub fn class_names(class: u32) -> (&'static str, &'static str) {
    let base = (class >> 16) as u8;
    let sub = (class >> 8) as u8;
    match (base, sub) {
        (0x01, 0x08) => ("storage", "NVMe controller"),
        (0x01, 0x06) => ("storage", "SATA controller"),
        (0x01, _) => ("storage", "Mass storage controller"),
        (0x02, 0x00) => ("net", "Ethernet controller"),
        (0x02, _) => ("net", "Network controller"),
        (0x03, _) => ("display", "Display controller"),
        (0x04, _) => ("multimedia", "Multimedia controller"),
        (0x05, _) => ("memory", "Memory controller"),
        (0x06, 0x00) => ("bridge", "Host bridge"),
        (0x06, 0x01) => ("bridge", "ISA bridge"),
        (0x06, 0x04) => ("bridge", "PCI bridge"),
        (0x06, _) => ("bridge", "Bridge"),
        (0x07, _) => ("comm", "Communication controller"),
        (0x08, _) => ("system", "System peripheral"),
        (0x09, _) => ("input", "Input controller"),
        (0x0c, 0x03) => ("serial", "USB controller"),
        (0x0c, 0x05) => ("serial", "SMBus controller"),
        (0x0c, _) => ("serial", "Serial bus controller"),
        (0x0d, _) => ("wireless", "Wireless controller"),
        (0x10, _) => ("crypto", "Encryption controller"),
        (0x11, _) => ("signal", "Signal processing controller"),
        (0x12, _) => ("accel", "Processing accelerator"),
        _ => ("other", "Unclassified device"),
    }
}

/// Every `--class` key `class_names` can return.
pub const CLASS_KEYS: &[&str] = &[
    "storage",
    "net",
    "display",
    "multimedia",
    "memory",
    "bridge",
    "comm",
    "system",
    "input",
    "serial",
    "wireless",
    "crypto",
    "signal",
    "accel",
    "other",
];

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

// Resource flags (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// BARs 0..5 from a `resource` file (start end flags per line).
fn parse_resources(text: &str) -> Vec<HostBar> {
    let mut bars = Vec::new();
    for (index, line) in text.lines().take(6).enumerate() {
        let f: Vec<u64> = line.split_whitespace().filter_map(parse_hex).collect();
        let [start, end, flags] = f[..] else { continue };
        if flags & (IORESOURCE_IO | IORESOURCE_MEM) == 0 || end < start {
            continue;
        }
        let prefetchable = flags & IORESOURCE_PREFETCH != 0;
        let kind = if flags & IORESOURCE_IO != 0 {
            BarKind::Io
        } else if flags & IORESOURCE_MEM_64 != 0 {
            BarKind::Mem64 { prefetchable }
        } else {
            BarKind::Mem32 { prefetchable }
        };
        // `take(6)` above bounds the index.
        bars.push(HostBar { index: BarIndex(index as u8), start, size: end - start + 1, kind });
    }
    bars
}

impl PciHost {
    fn id_attr(&self, dir: &Path, bdf: Bdf, attr: &'static str) -> Result<u16, InventoryError> {
        let value =
            self.read_attr(&dir.join(attr)).map_err(|source| InventoryError::ReadAttribute { bdf, attr, source })?;
        parse_hex(&value).and_then(|v| u16::try_from(v).ok()).ok_or(InventoryError::ParseAttribute { bdf, attr, value })
    }

    /// SR-IOV data of a PF; None when the function has no SR-IOV capability.
    pub fn sriov_info(&self, bdf: Bdf) -> Option<SriovInfo> {
        let dir = self.device_dir(bdf);
        let total_vfs = self.read_attr(&dir.join("sriov_totalvfs")).ok()?.parse().ok()?;
        let num_vfs = self.read_attr(&dir.join("sriov_numvfs")).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        let drivers_autoprobe = self.read_attr(&dir.join("sriov_drivers_autoprobe")).ok().map(|v| v == "1");
        let mut vfs: Vec<(u32, Bdf)> = read_dir_names(&dir)
            .iter()
            .filter_map(|n| {
                let idx: u32 = n.strip_prefix("virtfn")?.parse().ok()?;
                Some((idx, self.link_name(&dir.join(n))?.parse().ok()?))
            })
            .collect();
        vfs.sort();
        Some(SriovInfo { total_vfs, num_vfs, drivers_autoprobe, vfs: vfs.into_iter().map(|(_, b)| b).collect() })
    }

    /// For a VF: its PF and VF index.
    pub fn physfn(&self, bdf: Bdf) -> Option<(Bdf, u32)> {
        let pf: Bdf = self.link_name(&self.device_dir(bdf).join("physfn"))?.parse().ok()?;
        let index = self.sriov_info(pf)?.vfs.iter().position(|v| *v == bdf)?;
        Some((pf, index as u32))
    }

    /// Whether the function has a type 1 (bridge) header. Read from config space; falls back
    /// to the class code when config space is unreadable.
    fn is_bridge(&self, dir: &Path, class: u32) -> bool {
        match std::fs::read(dir.join("config")) {
            Ok(cfg) if cfg.len() > 0x0e => cfg[0x0e] & 0x7f != 0,
            _ => class >> 8 == 0x0604,
        }
    }

    /// Everything sysfs says about one function.
    pub fn function(&self, bdf: Bdf) -> Result<PciFunction, InventoryError> {
        let dir = self.device_dir(bdf);
        if !dir.is_dir() {
            return Err(InventoryError::UnknownDevice { bdf });
        }
        let class_text = self.read_attr(&dir.join("class")).map_err(|source| InventoryError::ReadAttribute {
            bdf,
            attr: "class",
            source,
        })?;
        let class = parse_hex(&class_text)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(InventoryError::ParseAttribute { bdf, attr: "class", value: class_text })?;
        let numa_node =
            self.read_attr(&dir.join("numa_node")).ok().and_then(|v| v.parse().ok()).filter(|n: &i32| *n >= 0);
        let reset_methods = match self.read_attr(&dir.join("reset_method")) {
            Ok(v) => v.split_whitespace().map(str::to_string).collect(),
            // Kernels before 5.15 have no reset_method; `reset` exists when any method does.
            Err(_) if dir.join("reset").exists() => vec!["unknown".to_string()],
            Err(_) => Vec::new(),
        };
        Ok(PciFunction {
            bdf,
            vendor: self.id_attr(&dir, bdf, "vendor")?,
            device: self.id_attr(&dir, bdf, "device")?,
            subsystem_vendor: self.id_attr(&dir, bdf, "subsystem_vendor").ok(),
            subsystem_device: self.id_attr(&dir, bdf, "subsystem_device").ok(),
            class,
            driver: self.driver(bdf),
            driver_override: self.driver_override(bdf),
            iommu_group: self.iommu_group(bdf),
            numa_node,
            reset_methods,
            bars: self.read_attr(&dir.join("resource")).map(|t| parse_resources(&t)).unwrap_or_default(),
            sriov: self.sriov_info(bdf),
            physfn: self.physfn(bdf),
            net_interfaces: self.net_interfaces(bdf),
            is_bridge: self.is_bridge(&dir, class),
        })
    }

    /// Every function on the host, sorted by address. Functions whose attributes cannot be
    /// read (e.g. removed while listing) are skipped with a warning.
    pub fn functions(&self) -> Vec<PciFunction> {
        self.device_addresses()
            .into_iter()
            .filter_map(|bdf| match self.function(bdf) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::warn!("{bdf}: skipped: {e}");
                    None
                }
            })
            .collect()
    }

    /// A device named by BDF or by the name of one of its network interfaces.
    pub fn resolve_device(&self, spec: &str) -> Result<Bdf, InventoryError> {
        if let Ok(bdf) = spec.parse::<Bdf>() {
            return if self.device_exists(bdf) { Ok(bdf) } else { Err(InventoryError::UnknownDevice { bdf }) };
        }
        self.interface_device(spec).ok_or_else(|| InventoryError::UnknownInterface { name: spec.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like};

    #[test]
    fn reads_the_testbed_pf() {
        let f = testbed_like(temp_root("inv").unwrap()).unwrap();
        let h = f.host();
        let pf = h.function(Bdf::new(0, 1, 0, 0).unwrap()).unwrap();
        assert_eq!((pf.vendor, pf.device), (0x8086, 0x10c9));
        assert_eq!(pf.class_key(), "net");
        assert_eq!(pf.driver.as_deref(), Some("igb"));
        assert_eq!(pf.iommu_group, Some(7));
        assert_eq!(pf.net_interfaces, vec!["eth0".to_string()]);
        let s = pf.sriov.unwrap();
        assert_eq!((s.total_vfs, s.num_vfs, s.vfs.len()), (7, 0, 0));
        assert_eq!(pf.bars.len(), 3);
        assert_eq!(
            pf.bars[0],
            HostBar {
                index: BarIndex(0),
                start: 0xfe80_0000,
                size: 0x2_0000,
                kind: BarKind::Mem32 { prefetchable: false }
            }
        );
        assert_eq!(pf.bars[1].kind, BarKind::Io);
        assert_eq!(pf.bars[1].index, BarIndex(2));
        assert_eq!(pf.reset_methods, vec!["flr", "bus"]);
        assert!(!pf.is_bridge);
        assert!(h.function(Bdf::new(0, 0, 1, 0).unwrap()).unwrap().is_bridge);
        assert_eq!(h.functions().len(), 3);
        assert_eq!(h.iommu_group_members(7), vec![Bdf::new(0, 1, 0, 0).unwrap()]);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn resolves_bdf_and_interface_names() {
        let f = testbed_like(temp_root("resolve").unwrap()).unwrap();
        let h = f.host();
        assert_eq!(h.resolve_device("eth0").unwrap(), Bdf::new(0, 1, 0, 0).unwrap());
        assert_eq!(h.resolve_device("01:00.0").unwrap(), Bdf::new(0, 1, 0, 0).unwrap());
        assert!(matches!(h.resolve_device("0000:09:00.0"), Err(InventoryError::UnknownDevice { .. })));
        assert!(matches!(h.resolve_device("eth9"), Err(InventoryError::UnknownInterface { .. })));
        assert!(matches!(h.resolve_device("../x"), Err(InventoryError::UnknownInterface { .. })));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn resource_lines_with_garbage_are_skipped() {
        let bars = parse_resources("junk\n0x10 0x0f 0x200\n0x1000 0x1fff 0x140204\n");
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].index, BarIndex(2));
        assert_eq!(bars[0].kind, BarKind::Mem64 { prefetchable: false });
    }
}
