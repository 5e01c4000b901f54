//! One VFIO container per VM: opening the devices, and DMA-mapping guest RAM with IOVA =
//! guest physical address. (The host checks that come first are the `hostadmin` crate's
//! pre-flight, wired in by the VMM.)
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

use pci::Bdf;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};

use crate::host::VfioHost;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no interrupt remapping on this host: a device could forge MSIs to any interrupt of the host (a DMA attack on the host kernel), so VFIO refuses; enable it (intel_iommu=on with intremap, or AMD-Vi) or, accepting that risk, load vfio_iommu_type1 with allow_unsafe_interrupts=1")]
    NoInterruptRemapping,
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
