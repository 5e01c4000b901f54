//! One VFIO container per VM: pre-flight checks (each a one-line error that says what to do),
//! opening the devices, and DMA-mapping guest RAM with IOVA = guest physical address.
//!
//! The host's kernel decides the backend: legacy type1 (`/dev/vfio/vfio` + groups) is used;
//! iommufd with VFIO device cdevs needs Linux 6.6+ (`/dev/iommu` and `vfio-dev/` in the
//! device's sysfs directory). The testbed's 6.1 kernel has neither, so that path is reported
//! as unavailable rather than compiled in untested.
//!
//! The KVM-VFIO pseudo device gets every group through vfio-ioctls' own hook: the VMM creates
//! it with kvm-ioctls and passes the handle to [`Container::open`], so this crate never links
//! KVM itself. (vfio-ioctls keeps group fds private, so a trait of ours could not reach them.)

use std::path::Path;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};

use crate::host::VfioHost;
use crate::spec::DeviceSpec;
use crate::sysfs::{Bdf, PciHost};

/// Drivers a group member may have while another member is assigned (the kernel's own
/// viability rule: vfio-pci, pci-stub, or no driver; bridges with pcieport are ignored).
const VIABLE_DRIVERS: &[&str] = &["vfio-pci", "pci-stub", "pcieport"];

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{bdf}: no such PCI device ({path} is missing); list devices with `lspci -D`")]
    DeviceMissing { bdf: Bdf, path: String },
    #[error("{bdf}: no IOMMU group: the host has no IOMMU enabled; boot it with intel_iommu=on (Intel) or amd_iommu=on (AMD) and enable VT-d/AMD-Vi in the firmware")]
    NoIommu { bdf: Bdf },
    #[error("{bdf}: bound to {driver}, not vfio-pci; bind it: echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe")]
    NotBound { bdf: Bdf, driver: String },
    #[error(
        "{bdf}: IOMMU group {group} is not viable: {members} must also be assigned (--device) or bound to vfio-pci"
    )]
    GroupNotViable { bdf: Bdf, group: u32, members: String },
    #[error("the vfio-pci driver is not loaded and /dev/vfio/vfio is missing: run `modprobe vfio-pci`")]
    NoVfio,
    #[error("no interrupt remapping on this host: a device could forge MSIs to any interrupt of the host (a DMA attack on the host kernel), so VFIO refuses; enable it (intel_iommu=on with intremap, or AMD-Vi) or, accepting that risk, load vfio_iommu_type1 with allow_unsafe_interrupts=1")]
    NoInterruptRemapping,
    #[error("memlock limit {limit} bytes is below the {needed} bytes of guest RAM VFIO must pin: raise it (`ulimit -l {needed_kib}` or prlimit --memlock) or run with CAP_IPC_LOCK")]
    MemlockTooLow { limit: u64, needed: u64, needed_kib: u64 },
    #[error("opening the VFIO container failed")]
    OpenContainer(#[source] VfioError),
    #[error("{bdf}: opening the VFIO device failed (is another VMM using it?)")]
    OpenDevice {
        bdf: Bdf,
        #[source]
        source: VfioError,
    },
    #[error("DMA-mapping guest RAM {iova:#x}+{size:#x} failed")]
    DmaMap {
        iova: u64,
        size: u64,
        #[source]
        source: VfioError,
    },
}

/// Checks one requested device against sysfs. `assigned` are all devices of this VM.
pub fn check_device(sysfs: &PciHost, bdf: Bdf, assigned: &[Bdf]) -> Result<u32, ContainerError> {
    if !sysfs.device_exists(bdf) {
        let path = sysfs.device_dir(bdf).display().to_string();
        return Err(ContainerError::DeviceMissing { bdf, path });
    }
    let group = sysfs.iommu_group(bdf).ok_or(ContainerError::NoIommu { bdf })?;
    match sysfs.driver(bdf) {
        Some(d) if d == "vfio-pci" => {}
        other => {
            let driver = other.unwrap_or_else(|| "no driver".into());
            return Err(ContainerError::NotBound { bdf, driver });
        }
    }
    let blockers: Vec<String> = sysfs
        .iommu_group_members(group)
        .into_iter()
        .filter(|m| !assigned.contains(m))
        .filter_map(|m| match sysfs.driver(m) {
            Some(d) if !VIABLE_DRIVERS.contains(&d.as_str()) => Some(format!("{m} ({d})")),
            _ => None,
        })
        .collect();
    if !blockers.is_empty() {
        return Err(ContainerError::GroupNotViable { bdf, group, members: blockers.join(", ") });
    }
    Ok(group)
}

/// Whether the host remaps interrupts (or the admin allowed unsafe interrupts).
pub fn check_interrupt_remapping(sysfs: &PciHost) -> Result<(), ContainerError> {
    let allow = std::fs::read_to_string(sysfs.path("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"))
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
        Err(ContainerError::NoInterruptRemapping)
    }
}

/// Bytes VFIO will pin against RLIMIT_MEMLOCK (type1 accounts every mapped page once per
/// container): all guest RAM. `cap_ipc_lock` exempts the process.
pub fn check_memlock(limit: u64, needed: u64, cap_ipc_lock: bool) -> Result<(), ContainerError> {
    if cap_ipc_lock || limit == u64::MAX || limit >= needed {
        return Ok(());
    }
    Err(ContainerError::MemlockTooLow { limit, needed, needed_kib: needed.div_ceil(1024) })
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

/// Runs every check for the VM's devices before anything is opened, so a bad input leaves
/// nothing half set up. `ram_bytes` is the guest RAM to pin.
pub fn preflight(sysfs: &PciHost, specs: &[DeviceSpec], ram_bytes: u64) -> Result<(), ContainerError> {
    if specs.is_empty() {
        return Ok(());
    }
    let assigned: Vec<Bdf> = specs.iter().map(|s| s.bdf).collect();
    for s in specs {
        check_device(sysfs, s.bdf, &assigned)?;
    }
    if !sysfs.path("dev/vfio/vfio").exists() {
        return Err(ContainerError::NoVfio);
    }
    check_interrupt_remapping(sysfs)?;
    let (limit, cap) = memlock_of_self();
    check_memlock(limit, ram_bytes, cap)
}

/// A guest RAM range to DMA-map.
#[derive(Clone, Copy, Debug)]
pub struct RamRange {
    pub gpa: u64,
    pub size: u64,
    pub host_addr: u64,
}

/// The VM's VFIO container with its DMA mappings; unmaps on drop.
pub struct Container {
    vfio: Arc<VfioContainer>,
    mapped: Vec<(u64, u64)>,
}

impl Container {
    /// Opens `/dev/vfio/vfio`. `kvm_vfio` is the KVM-VFIO device (KVM_DEV_TYPE_VFIO) that
    /// each group is added to as it is attached.
    pub fn open(kvm_vfio: Option<Arc<VfioDeviceFd>>) -> Result<Self, ContainerError> {
        let vfio = VfioContainer::new(kvm_vfio).map_err(ContainerError::OpenContainer)?;
        Ok(Self { vfio: Arc::new(vfio), mapped: Vec::new() })
    }

    /// Opens a device (attaching its group to the container on first use).
    pub fn open_device(&self, bdf: Bdf, sysfs_dir: &Path) -> Result<VfioHost, ContainerError> {
        let dev = VfioDevice::new(sysfs_dir, self.vfio.clone(), false).map_err(|source| match source {
            // The kernel's type1 attach fails with EPERM without interrupt remapping.
            VfioError::ContainerSetIOMMU(ref e) if e.errno() == libc::EPERM => ContainerError::NoInterruptRemapping,
            source => ContainerError::OpenDevice { bdf, source },
        })?;
        Ok(VfioHost::new(bdf.to_string(), dev))
    }

    /// Maps guest RAM for device DMA (IOVA = GPA). Call before the first vCPU runs.
    ///
    /// # Safety
    /// Every range must be a live mapping of guest RAM that stays mapped until this container
    /// is dropped (which unmaps the IOVAs first); devices may DMA into it at any time.
    pub unsafe fn map_ram(&mut self, ranges: &[RamRange]) -> Result<(), ContainerError> {
        let all = std::time::Instant::now();
        for r in ranges {
            let size = usize::try_from(r.size).map_err(|_| ContainerError::DmaMap {
                iova: r.gpa,
                size: r.size,
                source: VfioError::InvalidDmaUnmapSize,
            })?;
            let started = std::time::Instant::now();
            // SAFETY: the caller guarantees the range is live guest RAM for our lifetime.
            unsafe { self.vfio.vfio_dma_map(r.gpa, size, r.host_addr as *mut u8) }
                .map_err(|source| ContainerError::DmaMap { iova: r.gpa, size: r.size, source })?;
            log::debug!("DMA map {:#x}+{:#x} in {:?}", r.gpa, r.size, started.elapsed());
            self.mapped.push((r.gpa, r.size));
        }
        // One line with the total: the benchmark (scenario vfio-bench) parses it.
        let bytes: u64 = ranges.iter().map(|r| r.size).sum();
        log::info!("DMA-mapped guest RAM: {} MiB in {} us", bytes >> 20, all.elapsed().as_micros());
        Ok(())
    }

    pub fn mapped(&self) -> &[(u64, u64)] {
        &self.mapped
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for (iova, size) in self.mapped.drain(..) {
            // When the devices were released first (VfioManager does that), their last group
            // left the container and the kernel already removed every mapping
            // (vfio_iommu_type1_detach_group): the unmap then fails, which is fine.
            if let Err(e) = self.vfio.vfio_dma_unmap(iova, size as usize) {
                log::debug!("DMA unmap {iova:#x}+{size:#x}: {e} (already gone with the last group?)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::fake::{temp_root, testbed_like};

    #[test]
    fn device_checks() {
        let f = testbed_like(temp_root("vfio-container").unwrap()).unwrap();
        let h = f.host();
        let nvme = Bdf::new(0, 2, 0, 0);
        let e = check_device(&h, nvme, &[nvme]).unwrap_err();
        assert!(matches!(e, ContainerError::NotBound { ref driver, .. } if driver == "nvme"), "{e}");
        assert!(e.to_string().contains("drivers_probe"));
        f.unbind(nvme).unwrap();
        f.bind(nvme, "vfio-pci").unwrap();
        assert_eq!(check_device(&h, nvme, &[nvme]).unwrap(), 8);
        let e = check_device(&h, Bdf::new(0, 9, 0, 0), &[]).unwrap_err();
        assert!(matches!(e, ContainerError::DeviceMissing { .. }), "{e}");
    }

    #[test]
    fn group_viability_names_the_members() {
        use crate::sysfs::fake::FakeDevice;
        let f = testbed_like(temp_root("vfio-group").unwrap()).unwrap();
        let h = f.host();
        // Two functions of one card in one group: 0a:00.0 assigned, 0a:00.1 kept by e1000e.
        let (a, b) = (Bdf::new(0, 0x0a, 0, 0), Bdf::new(0, 0x0a, 0, 1));
        f.add_driver("e1000e").unwrap();
        for (bdf, drv) in [(a, "vfio-pci"), (b, "e1000e")] {
            let mut d = FakeDevice::new(bdf, 0x8086, 0x10d3, 0x020000);
            d.iommu_group = Some(20);
            d.native_driver = Some(drv.into());
            f.add_device(&d).unwrap();
        }
        let e = check_device(&h, a, &[a]).unwrap_err();
        assert!(matches!(e, ContainerError::GroupNotViable { group: 20, .. }), "{e}");
        assert!(e.to_string().contains("0000:0a:00.1 (e1000e)"), "{e}");
        // Assigning both, or unbinding the other, makes it viable.
        assert_eq!(check_device(&h, a, &[a, b]).unwrap(), 20);
        f.unbind(b).unwrap();
        assert_eq!(check_device(&h, a, &[a]).unwrap(), 20);
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
        assert!(matches!(check_interrupt_remapping(&h), Err(ContainerError::NoInterruptRemapping)));
        std::fs::write(f.path("proc/interrupts"), " 24: 0 IR-PCI-MSI 1-edge nvme0q0\n").unwrap();
        assert!(check_interrupt_remapping(&h).is_ok());
    }
}
