//! `viaductctl list`: the PCI inventory.

use hostadmin::{PciFunction, PciHost, CLASS_KEYS};
use pci::BarKind;
use serde::Serialize;

use crate::output::emit;
use crate::table::{opt, render};

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only these devices (BDF or network interface name); default: all.
    devices: Vec<String>,
    /// Only devices of this class: storage, net, display, bridge, serial, accel, ...
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(CLASS_KEYS))]
    class: Option<String>,
    /// Only devices that can be handed to a guest: in an IOMMU group, not a bridge.
    #[arg(long)]
    assignable: bool,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
pub struct ListDoc {
    pub devices: Vec<DeviceDoc>,
}

#[derive(Serialize)]
pub struct BarDoc {
    pub index: u8,
    pub start: String,
    pub size: u64,
    pub kind: &'static str,
    pub prefetchable: bool,
}

#[derive(Serialize)]
pub struct SriovDoc {
    pub total_vfs: u32,
    pub num_vfs: u32,
    pub drivers_autoprobe: Option<bool>,
    pub vfs: Vec<String>,
}

#[derive(Serialize)]
pub struct PhysfnDoc {
    pub bdf: String,
    pub vf_index: u32,
}

#[derive(Serialize)]
pub struct DeviceDoc {
    pub bdf: String,
    pub vendor: String,
    pub device: String,
    pub subsystem_vendor: Option<String>,
    pub subsystem_device: Option<String>,
    pub class: String,
    pub class_key: &'static str,
    pub class_name: &'static str,
    pub driver: Option<String>,
    /// Its VFIO driver: `vfio-pci`, `variant (NAME)` for a driver built on vfio-pci-core, or
    /// null when it is not on one.
    pub vfio: Option<String>,
    /// The node a VMM opens it through (`/dev/vfio/GROUP` or `/dev/vfio/devices/vfioN`).
    pub vfio_node: Option<String>,
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    pub iommu_group_members: Vec<String>,
    pub numa_node: Option<i32>,
    pub reset_methods: Vec<String>,
    pub bars: Vec<BarDoc>,
    pub sriov: Option<SriovDoc>,
    pub physfn: Option<PhysfnDoc>,
    pub net_interfaces: Vec<String>,
    pub assignable: bool,
}

/// Assignable: the kernel put it in an IOMMU group and it is not a bridge.
pub fn assignable(f: &PciFunction) -> bool {
    f.iommu_group.is_some() && !f.is_bridge && f.base_class() != 0x06
}

pub fn device_doc(host: &PciHost, f: &PciFunction) -> DeviceDoc {
    DeviceDoc {
        bdf: f.bdf.to_string(),
        vendor: format!("{:04x}", f.vendor),
        device: format!("{:04x}", f.device),
        subsystem_vendor: f.subsystem_vendor.map(|v| format!("{v:04x}")),
        subsystem_device: f.subsystem_device.map(|v| format!("{v:04x}")),
        class: format!("{:06x}", f.class),
        class_key: f.class_key(),
        class_name: f.class_name(),
        driver: f.driver.clone(),
        vfio: host.vfio_driver(f.bdf).map(|v| v.to_string()),
        vfio_node: host.vfio_node(f.bdf).map(|n| host.display_path(n.path())),
        driver_override: f.driver_override.clone(),
        iommu_group: f.iommu_group,
        iommu_group_members: f
            .iommu_group
            .map(|g| host.iommu_group_members(g).iter().map(|b| b.to_string()).collect())
            .unwrap_or_default(),
        numa_node: f.numa_node,
        reset_methods: f.reset_methods.clone(),
        bars: f
            .bars
            .iter()
            .map(|b| {
                let (kind, prefetchable) = match b.kind {
                    BarKind::Io => ("io", false),
                    BarKind::Mem32 { prefetchable } => ("mem32", prefetchable),
                    BarKind::Mem64 { prefetchable } => ("mem64", prefetchable),
                    BarKind::Rom => ("rom", false),
                };
                BarDoc { index: b.index.0, start: format!("{:#x}", b.start), size: b.size, kind, prefetchable }
            })
            .collect(),
        sriov: f.sriov.as_ref().map(|s| SriovDoc {
            total_vfs: s.total_vfs,
            num_vfs: s.num_vfs,
            drivers_autoprobe: s.drivers_autoprobe,
            vfs: s.vfs.iter().map(|b| b.to_string()).collect(),
        }),
        physfn: f.physfn.map(|(pf, i)| PhysfnDoc { bdf: pf.to_string(), vf_index: i }),
        net_interfaces: f.net_interfaces.clone(),
        assignable: assignable(f),
    }
}

fn size_text(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (u, n) in UNITS {
        if b >= n && b % n == 0 {
            return format!("{}{u}", b / n);
        }
    }
    b.to_string()
}

fn text(docs: &[DeviceDoc]) -> String {
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            let group = match d.iommu_group {
                Some(g) if d.iommu_group_members.len() > 1 => {
                    format!("{g} ({} devs)", d.iommu_group_members.len())
                }
                Some(g) => g.to_string(),
                None => "-".into(),
            };
            let sriov = match (&d.sriov, &d.physfn) {
                (Some(s), _) => format!("PF {}/{} VFs", s.num_vfs, s.total_vfs),
                (None, Some(p)) => format!("VF {} of {}", p.vf_index, p.bdf),
                _ => "-".into(),
            };
            let bars =
                d.bars.iter().map(|b| format!("{}:{}", b.index, size_text(b.size))).collect::<Vec<_>>().join(",");
            vec![
                d.bdf.clone(),
                format!("{}:{}", d.vendor, d.device),
                d.class_name.to_string(),
                // A VFIO driver shows its kind: vfio-pci or variant (NAME).
                opt(d.vfio.as_deref().or(d.driver.as_deref())),
                group,
                sriov,
                opt(d.numa_node),
                if d.reset_methods.is_empty() { "-".into() } else { d.reset_methods.join(",") },
                if bars.is_empty() { "-".into() } else { bars },
                if d.net_interfaces.is_empty() { "-".into() } else { d.net_interfaces.join(",") },
            ]
        })
        .collect();
    render(&["BDF", "ID", "CLASS", "DRIVER", "GROUP", "SR-IOV", "NUMA", "RESET", "BARS", "NETDEV"], &rows)
}

pub fn run(host: &PciHost, args: &ListArgs) -> anyhow::Result<()> {
    let functions = if args.devices.is_empty() {
        host.functions()
    } else {
        let mut v = Vec::new();
        for spec in &args.devices {
            v.push(host.function(host.resolve_device(spec)?)?);
        }
        v
    };
    let docs: Vec<DeviceDoc> = functions
        .iter()
        .filter(|f| args.class.as_deref().is_none_or(|c| f.class_key() == c))
        .filter(|f| !args.assignable || assignable(f))
        .map(|f| device_doc(host, f))
        .collect();
    let doc = ListDoc { devices: docs };
    emit(args.json, &doc, || text(&doc.devices))
}
