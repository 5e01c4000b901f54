//! One VFIO container per VM: opening the devices, and DMA-mapping guest RAM with IOVA =
//! guest physical address. (The host checks that come first are the `hostadmin` crate's
//! pre-flight, wired in by the VMM.)
//!
//! Two backends (see [`crate::iommufd`] for which one a VM gets): the legacy type1 container
//! (`/dev/vfio/vfio` + a group fd per IOMMU group) and iommufd (`/dev/iommu` with one IOAS per
//! VM, each device opened through its own cdev `/dev/vfio/devices/vfioN`, or passed in as an
//! fd, and bound to the iommufd). Both come from vfio-ioctls (`VfioContainer`,
//! `VfioIommufd`) behind its `VfioOps` trait: device fd ioctls, regions and interrupts are the
//! same either way.
//!
//! The KVM-VFIO pseudo device gets every group (legacy) or device cdev (iommufd,
//! KVM_DEV_VFIO_FILE_ADD) through vfio-ioctls' own hook: the VMM creates it with kvm-ioctls
//! and passes the handle to [`Container::open`], so this crate never links KVM itself.
//! (vfio-ioctls keeps group fds private, so a trait of ours could not reach them.)

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use pci::Bdf;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioIommufd, VfioOps};

use crate::host::VfioHost;
use crate::iommufd::{self, Backend};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no interrupt remapping on this host: a device could forge MSIs to any interrupt of the host (a DMA attack on the host kernel), so VFIO refuses; enable it (intel_iommu=on with intremap, or AMD-Vi) or, accepting that risk, load {module} with allow_unsafe_interrupts=1")]
    NoInterruptRemapping { module: &'static str },
    #[error("opening the VFIO container failed")]
    OpenContainer(#[source] VfioError),
    #[error("opening the iommufd ({what}) failed")]
    OpenIommufd {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the VM's IOMMU address space (IOAS) in the iommufd failed")]
    CreateIoas(#[source] VfioError),
    #[error("{bdf}: passed fd {fd}: duplicating it failed")]
    DupFd {
        bdf: Bdf,
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
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

/// A guest RAM range to DMA-map.
#[derive(Clone, Copy, Debug)]
pub struct RamRange {
    pub gpa: u64,
    pub size: u64,
    pub host_addr: u64,
}

/// Where an assigned device's VFIO fd comes from.
#[derive(Clone, Copy, Debug)]
pub enum DeviceSource<'a> {
    /// Opened here from its sysfs directory (its group, or its cdev with iommufd).
    Sysfs(&'a Path),
    /// A VFIO device cdev fd passed by the parent (`--device fd=N`); it stays open (the
    /// device is opened from a duplicate), so a rebuilt VM can open it again.
    PassedCdev(RawFd),
}

/// The VM's IOMMU context (legacy container or iommufd IOAS) with its DMA mappings; unmaps on
/// drop.
pub struct Container {
    context: Context,
    mapped: Vec<(u64, u64)>,
}

enum Context {
    Legacy(Arc<VfioContainer>),
    Iommufd(Arc<VfioIommufd>),
}

impl Context {
    fn ops(&self) -> Arc<dyn VfioOps> {
        match self {
            Self::Legacy(c) => c.clone(),
            Self::Iommufd(i) => i.clone(),
        }
    }
}

impl Container {
    /// Opens the VM's IOMMU context: `/dev/vfio/vfio` (legacy), or a new IOAS in the process's
    /// iommufd (`iommufd_fd`: the one passed with `--iommufd fd=N`, else `/dev/iommu`).
    /// `kvm_vfio` is the KVM-VFIO device (KVM_DEV_TYPE_VFIO) that each group or device cdev
    /// is added to as it is opened.
    pub fn open(
        backend: Backend,
        iommufd_fd: Option<RawFd>,
        kvm_vfio: Option<Arc<VfioDeviceFd>>,
    ) -> Result<Self, ContainerError> {
        let context = match backend {
            Backend::Legacy => {
                Context::Legacy(Arc::new(VfioContainer::new(kvm_vfio).map_err(ContainerError::OpenContainer)?))
            }
            Backend::Iommufd => {
                let iommufd = iommufd::process_iommufd(iommufd_fd).map_err(|source| ContainerError::OpenIommufd {
                    what: iommufd_fd.map_or_else(|| "/dev/iommu".into(), |fd| format!("passed fd {fd}")),
                    source,
                })?;
                Context::Iommufd(Arc::new(
                    VfioIommufd::new(iommufd, None, kvm_vfio).map_err(ContainerError::CreateIoas)?,
                ))
            }
        };
        log::info!("IOMMU backend: {backend}");
        Ok(Self { context, mapped: Vec::new() })
    }

    pub fn backend(&self) -> Backend {
        match self.context {
            Context::Legacy(_) => Backend::Legacy,
            Context::Iommufd(_) => Backend::Iommufd,
        }
    }

    /// Opens a device: with the legacy container its group is attached on first use; with
    /// iommufd its cdev is bound to the iommufd (a passed one once per process) and attached
    /// to the VM's IOAS.
    pub fn open_device(&self, bdf: Bdf, source: DeviceSource<'_>) -> Result<VfioHost, ContainerError> {
        let module = match self.backend() {
            Backend::Legacy => "vfio_iommu_type1",
            Backend::Iommufd => "iommufd",
        };
        let open_err = |source: VfioError| match source {
            // type1 fails the attach, iommufd the bind, with EPERM without interrupt remapping.
            VfioError::ContainerSetIOMMU(ref e) | VfioError::VfioDeviceBindIommufd(ref e)
                if e.errno() == libc::EPERM =>
            {
                ContainerError::NoInterruptRemapping { module }
            }
            source => ContainerError::OpenDevice { bdf, source },
        };
        let dev = match (source, &self.context) {
            (DeviceSource::Sysfs(dir), _) => VfioDevice::new(dir, self.context.ops(), true).map_err(open_err)?,
            (DeviceSource::PassedCdev(fd), Context::Iommufd(ctx)) => {
                let file = iommufd::dup_fd(fd).map_err(|source| ContainerError::DupFd { bdf, fd, source })?;
                open_passed_cdev(file, fd, ctx).map_err(open_err)?
            }
            // choose_backend never pairs a passed cdev with the legacy container.
            (DeviceSource::PassedCdev(_), Context::Legacy(_)) => {
                return Err(ContainerError::OpenDevice { bdf, source: VfioError::DowncastVfioOps })
            }
        };
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
            unsafe { self.context.ops().vfio_dma_map(r.gpa, size, r.host_addr as *mut u8) }
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

/// A passed cdev (`file`, a duplicate of passed fd `fd`) as a device of the VM's IOAS. The
/// open file stays bound to the process's iommufd after the first VM (the passed fd keeps it
/// open), so later VMs attach it without binding again.
fn open_passed_cdev(file: std::fs::File, fd: RawFd, ctx: &Arc<VfioIommufd>) -> Result<VfioDevice, VfioError> {
    if iommufd::passed_fd_bound(fd) {
        return VfioDevice::new_from_bound_fd(file, ctx.clone(), true);
    }
    let r = VfioDevice::new_from_fd(file, ctx.clone(), true);
    // vfio-ioctls adds the file to KVM, then binds, then attaches: an error after the bind
    // leaves the open file bound all the same.
    if !matches!(r, Err(VfioError::SetDeviceAttr(_)) | Err(VfioError::VfioDeviceBindIommufd(_))) {
        iommufd::mark_passed_fd_bound(fd);
    }
    r
}

impl Drop for Container {
    fn drop(&mut self) {
        for (iova, size) in self.mapped.drain(..) {
            // Legacy: when the devices were released first (VfioManager does that), their last
            // group left the container and the kernel already removed every mapping
            // (vfio_iommu_type1_detach_group): the unmap then fails, which is fine. iommufd:
            // the IOAS outlives its devices; destroying it (last) would drop the mappings too.
            if let Err(e) = self.context.ops().vfio_dma_unmap(iova, size as usize) {
                log::debug!("DMA unmap {iova:#x}+{size:#x}: {e} (already gone with the last group?)");
            }
        }
    }
}
