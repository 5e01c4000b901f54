//! Devices a VMM binds to vfio-pci for its own lifetime (`--device ...,managed=on`).
//!
//! The VMM attaches each managed device before it opens the VFIO group, and releases them
//! after it has closed every VFIO file descriptor (vfio-pci's unbind waits for open device
//! fds). Bindings are recorded as `viaduct[PID]` in the shared state file, so after a
//! SIGKILL `viaductctl restore` puts the devices back.

use pci::Bdf;

use super::{BindError, BindOutcome, Binder, DeviceRestore, Owner, PciHost, StateFile};

/// The managed devices of one VMM process.
#[derive(Debug)]
pub struct ManagedDevices {
    binder: Binder,
    /// Devices this process moved to vfio-pci, in binding order.
    bound: Vec<Bdf>,
}

impl ManagedDevices {
    /// For this process, with the host's default state file.
    pub fn new(host: PciHost) -> Self {
        let state = StateFile::for_host(&host);
        Self::with_state(host, state)
    }

    pub fn with_state(host: PciHost, state: StateFile) -> Self {
        Self { binder: Binder::new(host, state, Owner::this_vmm()), bound: Vec::new() }
    }

    /// Binds `bdf` and the rest of its IOMMU group to vfio-pci (all or nothing). Devices
    /// already on a VFIO driver (vfio-pci or a variant such as mlx5_vfio_pci) are left as they
    /// are and not released later: someone else owns them. Returns the devices this call
    /// moved.
    pub fn attach(&mut self, bdf: Bdf) -> Result<Vec<Bdf>, BindError> {
        let moved: Vec<Bdf> = self
            .binder
            .bind_group(bdf)?
            .into_iter()
            .filter(|(_, o)| matches!(o, BindOutcome::Bound { .. }))
            .map(|(b, _)| b)
            .collect();
        for b in &moved {
            log::info!("{b}: managed: bound to vfio-pci for this VMM");
        }
        self.bound.extend(&moved);
        Ok(moved)
    }

    /// Devices this process bound and has not released yet.
    pub fn bound(&self) -> &[Bdf] {
        &self.bound
    }

    /// Gives every device this process bound back to its original driver, newest first.
    /// Call after all VFIO fds are closed. A device that fails keeps its record for
    /// `viaductctl restore`.
    pub fn release(&mut self) -> Vec<DeviceRestore> {
        let mut out = Vec::new();
        while let Some(b) = self.bound.pop() {
            let r = self.binder.restore(b);
            match &r {
                Ok(o) => log::info!("{b}: managed: released ({o:?})"),
                Err(e) => {
                    log::error!("{b}: managed: restoring failed, run `viaductctl restore {b}`: {e}")
                }
            }
            out.push((b, r));
        }
        out
    }
}

impl Drop for ManagedDevices {
    /// A VMM that unwinds without calling `release` still gives its devices back.
    fn drop(&mut self) {
        if !self.bound.is_empty() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like};
    use crate::RestoreOutcome;

    #[test]
    fn attach_and_release_round_trip_and_leave_others_alone() {
        let f = testbed_like(temp_root("managed").unwrap()).unwrap();
        let h = f.live_host();
        let vfs =
            h.set_num_vfs(Bdf::new(0, 1, 0, 0).unwrap(), 2, crate::SriovOptions { autoprobe: Some(false) }).unwrap();
        // VF1 is already on vfio-pci (bound by someone else): not ours to release.
        f.bind(vfs[1], "vfio-pci").unwrap();
        let state = StateFile::for_host(&h);
        {
            let mut m = ManagedDevices::with_state(h.clone(), state.clone());
            assert_eq!(m.attach(vfs[0]).unwrap(), vec![vfs[0]]);
            assert_eq!(m.attach(vfs[1]).unwrap(), Vec::<Bdf>::new());
            assert_eq!(h.driver(vfs[0]).as_deref(), Some("vfio-pci"));
            let rec = state.record(vfs[0]).unwrap().unwrap();
            assert_eq!(rec.owner, Owner::this_vmm());
            assert_eq!(rec.driver, None);
            // Dropped without release(): Drop gives the device back.
        }
        assert_eq!(h.driver(vfs[0]), None);
        assert_eq!(h.driver(vfs[1]).as_deref(), Some("vfio-pci"));
        assert!(state.records().unwrap().is_empty());
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// The VMM attaches its managed devices one by one; when one fails (here: no IOMMU
    /// group), dropping the ManagedDevices gives back those already bound, so a failed start
    /// leaves every device where it was.
    #[test]
    fn a_failed_attach_then_drop_puts_the_earlier_devices_back() {
        use crate::fake::FakeDevice;
        let f = testbed_like(temp_root("managed-fail").unwrap()).unwrap();
        let h = f.live_host();
        let nvme = Bdf::new(0, 2, 0, 0).unwrap();
        let lonely = Bdf::new(0, 0x0b, 0, 0).unwrap();
        let mut d = FakeDevice::new(lonely, 0x1234, 0x11e8, 0x00ff00);
        d.iommu_group = None;
        f.add_device(&d).unwrap();
        let state = StateFile::for_host(&h);
        {
            let mut m = ManagedDevices::with_state(h.clone(), state.clone());
            assert_eq!(m.attach(nvme).unwrap(), vec![nvme]);
            assert_eq!(h.driver(nvme).as_deref(), Some("vfio-pci"));
            let e = m.attach(lonely).unwrap_err();
            assert!(matches!(e, BindError::NoIommuGroup { .. }), "{e}");
            assert_eq!(h.driver(lonely), None);
            assert_eq!(m.bound(), &[nvme]);
        }
        assert_eq!(h.driver(nvme).as_deref(), Some("nvme"));
        assert_eq!(h.driver_override(nvme), None);
        assert!(state.records().unwrap().is_empty());
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// `release` is what the VMM's exit path runs; afterwards Drop has nothing left to do.
    #[test]
    fn release_restores_newest_first_and_only_once() {
        let f = testbed_like(temp_root("managed-release").unwrap()).unwrap();
        let h = f.live_host();
        let nvme = Bdf::new(0, 2, 0, 0).unwrap();
        let state = StateFile::for_host(&h);
        let mut m = ManagedDevices::with_state(h.clone(), state.clone());
        m.attach(nvme).unwrap();
        let rec = state.record(nvme).unwrap().unwrap();
        assert_eq!(rec.driver.as_deref(), Some("nvme"));
        let out = m.release();
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], (b, Ok(RestoreOutcome::Restored { .. })) if b == nvme), "{out:?}");
        assert!(m.bound().is_empty());
        assert!(m.release().is_empty());
        drop(m);
        assert_eq!(h.driver(nvme).as_deref(), Some("nvme"));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// A device on a vfio-pci variant driver is ready as it is: managed=on neither rebinds
    /// nor records nor releases it.
    #[test]
    fn a_device_on_a_variant_driver_is_left_alone() {
        use crate::fake::FakeDevice;
        let f = testbed_like(temp_root("managed-variant").unwrap()).unwrap();
        f.add_vfio_driver("mlx5_vfio_pci", "mlx5_vfio_pci").unwrap();
        let vf = Bdf::new(0, 5, 0, 1).unwrap();
        let mut d = FakeDevice::new(vf, 0x15b3, 0x101e, 0x020000);
        d.iommu_group = Some(30);
        d.native_driver = Some("mlx5_vfio_pci".into());
        f.add_device(&d).unwrap();
        let h = f.live_host();
        let state = StateFile::for_host(&h);
        let mut m = ManagedDevices::with_state(h.clone(), state.clone());
        assert_eq!(m.attach(vf).unwrap(), Vec::<Bdf>::new());
        assert!(state.records().unwrap().is_empty());
        assert!(m.release().is_empty());
        drop(m);
        assert_eq!(h.driver(vf).as_deref(), Some("mlx5_vfio_pci"));
        std::fs::remove_dir_all(f.root()).unwrap();
    }
}
