//! The VMM's pre-flight: what must hold on the host before a VM opens its assigned devices,
//! each failure one error that says what to do. Run before anything is opened, so a bad
//! `--device` leaves nothing half set up. (`viaductctl check` reports the same conditions
//! as findings, see [`crate::Finding`].)

use pci::Bdf;

use super::{PciHost, VfioDriver};

/// Drivers other than VFIO's a group member may have while another member is assigned: the
/// kernel lets VFIO own a group's DMA only when every member has no driver or one that leaves
/// DMA to it (`driver_managed_dma`: every VFIO driver, pci-stub, pcieport on bridges).
const VIABLE_DRIVERS: &[&str] = &["pci-stub", "pcieport"];

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{bdf}: no such PCI device ({path} is missing); list devices with `lspci -D`")]
    DeviceMissing { bdf: Bdf, path: String },
    #[error("{bdf}: no IOMMU group: the host has no IOMMU enabled; boot it with intel_iommu=on (Intel) or amd_iommu=on (AMD) and enable VT-d/AMD-Vi in the firmware")]
    NoIommu { bdf: Bdf },
    #[error("{bdf}: bound to {driver}, not vfio-pci (nor a vfio-pci variant driver); bind it: echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe")]
    NotBound { bdf: Bdf, driver: String },
    #[error(
        "{bdf}: on {driver} but there is no /dev/vfio/{group} (nor a VFIO cdev): is /dev populated (devtmpfs, udev)?"
    )]
    NoDeviceNode { bdf: Bdf, driver: VfioDriver, group: u32 },
    #[error(
        "{bdf}: IOMMU group {group} is not viable: {members} must also be assigned (--device) or bound to vfio-pci"
    )]
    GroupNotViable { bdf: Bdf, group: u32, members: String },
    #[error("the vfio-pci driver is not loaded and /dev/vfio/vfio is missing: run `modprobe vfio-pci`")]
    NoVfio,
    #[error("no interrupt remapping on this host: a device could forge MSIs to any interrupt of the host (a DMA attack on the host kernel), so VFIO refuses; enable it (intel_iommu=on with intremap, or AMD-Vi) or, accepting that risk, load {module} with allow_unsafe_interrupts=1")]
    NoInterruptRemapping { module: &'static str },
    #[error("memlock limit {limit} bytes is below the {needed} bytes of guest RAM VFIO must pin: raise it (`ulimit -l {needed_kib}` or prlimit --memlock) or run with CAP_IPC_LOCK")]
    MemlockTooLow { limit: u64, needed: u64, needed_kib: u64 },
}

/// Checks one requested device against sysfs. `assigned` are all devices of this VM.
pub fn check_device(sysfs: &PciHost, bdf: Bdf, assigned: &[Bdf]) -> Result<u32, PreflightError> {
    if !sysfs.device_exists(bdf) {
        let path = sysfs.device_dir(bdf).display().to_string();
        return Err(PreflightError::DeviceMissing { bdf, path });
    }
    let group = sysfs.iommu_group(bdf).ok_or(PreflightError::NoIommu { bdf })?;
    // vfio-pci or a variant driver built on vfio-pci-core (see crate::VfioDriver).
    let Some(driver) = sysfs.vfio_driver(bdf) else {
        let driver = sysfs.driver(bdf).unwrap_or_else(|| "no driver".into());
        return Err(PreflightError::NotBound { bdf, driver });
    };
    if sysfs.vfio_node(bdf).is_none() {
        return Err(PreflightError::NoDeviceNode { bdf, driver, group });
    }
    if let VfioDriver::Variant(_) = driver {
        log::info!("{bdf}: on the vfio-pci {driver}");
    }
    let blockers: Vec<String> = sysfs
        .iommu_group_members(group)
        .into_iter()
        .filter(|m| !assigned.contains(m))
        .filter_map(|m| match sysfs.driver(m) {
            Some(d) if !VIABLE_DRIVERS.contains(&d.as_str()) && sysfs.vfio_driver(m).is_none() => {
                Some(format!("{m} ({d})"))
            }
            _ => None,
        })
        .collect();
    if !blockers.is_empty() {
        return Err(PreflightError::GroupNotViable { bdf, group, members: blockers.join(", ") });
    }
    Ok(group)
}

/// How the VMM will reach the IOMMU (the `vfio` crate chooses, see its `iommufd` module):
/// the checks that depend on it differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuInterface {
    /// The legacy VFIO container `/dev/vfio/vfio` with vfio_iommu_type1.
    Container,
    /// iommufd (`/dev/iommu`, device cdevs).
    Iommufd,
}

impl IommuInterface {
    /// The module whose `allow_unsafe_interrupts` parameter lets it work without interrupt
    /// remapping.
    pub fn module(self) -> &'static str {
        match self {
            Self::Container => "vfio_iommu_type1",
            Self::Iommufd => "iommufd",
        }
    }
}

/// Whether the host remaps interrupts (or the admin allowed unsafe interrupts, a parameter of
/// the module behind `interface`).
pub fn check_interrupt_remapping(sysfs: &PciHost, interface: IommuInterface) -> Result<(), PreflightError> {
    let module = interface.module();
    let allow = std::fs::read_to_string(sysfs.path(&format!("sys/module/{module}/parameters/allow_unsafe_interrupts")))
        .map(|s| s.trim() == "Y" || s.trim() == "1")
        .unwrap_or(false);
    if allow {
        log::warn!("allow_unsafe_interrupts is set: assigned devices can forge interrupts");
        return Ok(());
    }
    // Remapped interrupt chips are named IR-*: IR-PCI-MSI, IR-IO-APIC.
    let remapped = std::fs::read_to_string(sysfs.path("proc/interrupts")).is_ok_and(|s| s.contains("IR-"));
    if remapped {
        Ok(())
    } else {
        Err(PreflightError::NoInterruptRemapping { module })
    }
}

/// Bytes VFIO will pin against RLIMIT_MEMLOCK (type1 accounts every mapped page once per
/// container, iommufd once per IOAS, to the user): all guest RAM. `cap_ipc_lock` exempts the process.
pub fn check_memlock(limit: u64, needed: u64, cap_ipc_lock: bool) -> Result<(), PreflightError> {
    if cap_ipc_lock || limit == u64::MAX || limit >= needed {
        return Ok(());
    }
    Err(PreflightError::MemlockTooLow { limit, needed, needed_kib: needed.div_ceil(1024) })
}

/// This process's RLIMIT_MEMLOCK and whether it has CAP_IPC_LOCK.
pub fn memlock_of_self() -> (u64, bool) {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the valid struct we pass.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } == 0 { rl.rlim_cur } else { 0 };
    let cap = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
        u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
    });
    const CAP_IPC_LOCK: u32 = 14;
    (limit, cap.is_some_and(|c| c & (1 << CAP_IPC_LOCK) != 0))
}

/// Runs every check for the VM's devices before anything is opened. `ram_bytes` is the
/// guest RAM to pin. (iommufd's own nodes are the `vfio` crate's to check as it chooses it.)
pub fn preflight(
    sysfs: &PciHost,
    devices: &[Bdf],
    ram_bytes: u64,
    interface: IommuInterface,
) -> Result<(), PreflightError> {
    if devices.is_empty() {
        return Ok(());
    }
    for bdf in devices {
        check_device(sysfs, *bdf, devices)?;
    }
    if interface == IommuInterface::Container && !sysfs.path("dev/vfio/vfio").exists() {
        return Err(PreflightError::NoVfio);
    }
    check_interrupt_remapping(sysfs, interface)?;
    let (limit, cap) = memlock_of_self();
    check_memlock(limit, ram_bytes, cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like};

    #[test]
    fn device_checks() {
        let f = testbed_like(temp_root("vfio-container").unwrap()).unwrap();
        let h = f.host();
        let nvme = Bdf::new(0, 2, 0, 0).unwrap();
        let e = check_device(&h, nvme, &[nvme]).unwrap_err();
        assert!(matches!(e, PreflightError::NotBound { ref driver, .. } if driver == "nvme"), "{e}");
        assert!(e.to_string().contains("drivers_probe"));
        f.unbind(nvme).unwrap();
        f.bind(nvme, "vfio-pci").unwrap();
        assert_eq!(check_device(&h, nvme, &[nvme]).unwrap(), 8);
        let e = check_device(&h, Bdf::new(0, 9, 0, 0).unwrap(), &[]).unwrap_err();
        assert!(matches!(e, PreflightError::DeviceMissing { .. }), "{e}");
    }

    #[test]
    fn group_viability_names_the_members() {
        use crate::fake::FakeDevice;
        let f = testbed_like(temp_root("vfio-group").unwrap()).unwrap();
        let h = f.host();
        // Two functions of one card in one group: 0a:00.0 assigned, 0a:00.1 kept by e1000e.
        let (a, b) = (Bdf::new(0, 0x0a, 0, 0).unwrap(), Bdf::new(0, 0x0a, 0, 1).unwrap());
        f.add_driver("e1000e").unwrap();
        for (bdf, drv) in [(a, "vfio-pci"), (b, "e1000e")] {
            let mut d = FakeDevice::new(bdf, 0x8086, 0x10d3, 0x020000);
            d.iommu_group = Some(20);
            d.native_driver = Some(drv.into());
            f.add_device(&d).unwrap();
        }
        let e = check_device(&h, a, &[a]).unwrap_err();
        assert!(matches!(e, PreflightError::GroupNotViable { group: 20, .. }), "{e}");
        assert!(e.to_string().contains("0000:0a:00.1 (e1000e)"), "{e}");
        // Assigning both, or unbinding the other, makes it viable.
        assert_eq!(check_device(&h, a, &[a, b]).unwrap(), 20);
        f.unbind(b).unwrap();
        assert_eq!(check_device(&h, a, &[a]).unwrap(), 20);
    }

    #[test]
    fn a_variant_driver_passes_and_counts_as_viable_for_the_group() {
        use crate::fake::FakeDevice;
        let f = testbed_like(temp_root("preflight-variant").unwrap()).unwrap();
        let h = f.host();
        f.add_vfio_driver("mlx5_vfio_pci", "mlx5_vfio_pci").unwrap();
        // Two VFs in one group: one assigned, the other on the variant driver too.
        let (a, b) = (Bdf::new(0, 5, 0, 1).unwrap(), Bdf::new(0, 5, 0, 2).unwrap());
        for bdf in [a, b] {
            let mut d = FakeDevice::new(bdf, 0x15b3, 0x101e, 0x020000);
            d.iommu_group = Some(31);
            d.native_driver = Some("mlx5_vfio_pci".into());
            f.add_device(&d).unwrap();
        }
        assert_eq!(check_device(&h, a, &[a]).unwrap(), 31);
        // Without a node to open, a clear error rather than a failed open later.
        std::fs::remove_file(f.path("dev/vfio/31")).unwrap();
        let e = check_device(&h, a, &[a]).unwrap_err();
        assert!(matches!(e, PreflightError::NoDeviceNode { group: 31, .. }), "{e}");
        assert!(e.to_string().contains("on variant (mlx5_vfio_pci) but there is no /dev/vfio/31"), "{e}");
        // A driver whose name merely starts with vfio is not VFIO's.
        f.add_driver("vfio_lookalike").unwrap();
        f.unbind(a).unwrap();
        f.bind(a, "vfio_lookalike").unwrap();
        let e = check_device(&h, a, &[a]).unwrap_err();
        assert!(matches!(e, PreflightError::NotBound { ref driver, .. } if driver == "vfio_lookalike"), "{e}");
    }

    #[test]
    fn memlock() {
        assert!(check_memlock(64 << 10, 256 << 20, true).is_ok());
        assert!(check_memlock(u64::MAX, 256 << 20, false).is_ok());
        let e = check_memlock(64 << 10, 256 << 20, false).unwrap_err();
        assert!(e.to_string().contains("ulimit -l 262144"), "{e}");
    }

    #[test]
    fn interrupt_remapping() {
        let f = testbed_like(temp_root("vfio-ir").unwrap()).unwrap();
        let h = f.host();
        std::fs::create_dir_all(f.path("proc")).unwrap();
        std::fs::write(f.path("proc/interrupts"), " 24: 0 PCI-MSI 1-edge nvme0q0\n").unwrap();
        for interface in [IommuInterface::Container, IommuInterface::Iommufd] {
            let module = interface.module();
            let e = check_interrupt_remapping(&h, interface).unwrap_err();
            assert!(matches!(e, PreflightError::NoInterruptRemapping { .. }), "{e}");
            assert!(e.to_string().contains(&format!("load {module} with allow_unsafe_interrupts=1")), "{e}");
            // Each interface's own opt-out.
            let p = f.path(&format!("sys/module/{module}/parameters"));
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("allow_unsafe_interrupts"), "Y\n").unwrap();
            assert!(check_interrupt_remapping(&h, interface).is_ok());
            std::fs::write(p.join("allow_unsafe_interrupts"), "N\n").unwrap();
        }
        std::fs::write(f.path("proc/interrupts"), " 24: 0 IR-PCI-MSI 1-edge nvme0q0\n").unwrap();
        assert!(check_interrupt_remapping(&h, IommuInterface::Container).is_ok());
        assert!(check_interrupt_remapping(&h, IommuInterface::Iommufd).is_ok());
    }

    /// The legacy container's node is needed only by the legacy interface.
    #[test]
    fn dev_vfio_vfio_only_for_the_container() {
        let f = testbed_like(temp_root("vfio-preflight-iface").unwrap()).unwrap();
        let h = f.host();
        let nvme = Bdf::new(0, 2, 0, 0).unwrap();
        f.unbind(nvme).unwrap();
        f.bind(nvme, "vfio-pci").unwrap();
        std::fs::create_dir_all(f.path("proc")).unwrap();
        std::fs::write(f.path("proc/interrupts"), " 24: 0 IR-PCI-MSI 1-edge nvme0q0\n").unwrap();
        let _ = std::fs::remove_file(f.path("dev/vfio/vfio"));
        let e = preflight(&h, &[nvme], 0, IommuInterface::Container).unwrap_err();
        assert!(matches!(e, PreflightError::NoVfio), "{e}");
        preflight(&h, &[nvme], 0, IommuInterface::Iommufd).unwrap();
    }
}
