//! Devices a VMM binds to vfio-pci for its own lifetime (`--device ...,managed=on`).
//!
//! The VMM attaches each managed device before it opens the VFIO group, and releases them
//! after it has closed every VFIO file descriptor (vfio-pci's unbind waits for open device
//! fds). Bindings are recorded as `viaduct[PID]` in the shared state file, so after a
//! SIGKILL `viaductctl restore` puts the devices back.

use super::{Bdf, BindError, BindOutcome, Binder, DeviceRestore, PciHost, StateFile};

/// The managed devices of one VMM process.
#[derive(Debug)]
pub struct ManagedDevices {
    binder: Binder,
    /// Devices this process moved to vfio-pci, in binding order.
    bound: Vec<Bdf>,
}

impl ManagedDevices {
    /// Owner tag of a VMM process in the state file.
    pub fn owner_for_pid(pid: u32) -> String {
        format!("viaduct[{pid}]")
    }

    /// For this process, with the host's default state file.
    pub fn new(host: PciHost) -> Self {
        let state = StateFile::for_host(&host);
        Self::with_state(host, state)
    }

    pub fn with_state(host: PciHost, state: StateFile) -> Self {
        Self {
            binder: Binder::new(host, state, Self::owner_for_pid(std::process::id())),
            bound: Vec::new(),
        }
    }

    /// Binds `bdf` and the rest of its IOMMU group to vfio-pci (all or nothing). Devices
    /// already on vfio-pci are left as they are and not released later: someone else owns
    /// them. Returns the devices this call moved.
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
    use super::super::fake::{temp_root, testbed_like};
    use super::*;
    use crate::sysfs::pci_address;

    #[test]
    fn attach_and_release_round_trip_and_leave_others_alone() {
        let f = testbed_like(temp_root("managed").unwrap()).unwrap();
        let h = f.live_host();
        let vfs = h
            .set_num_vfs(
                pci_address(0, 1, 0, 0),
                2,
                super::super::SriovOptions {
                    autoprobe: Some(false),
                },
            )
            .unwrap();
        // VF1 is already on vfio-pci (bound by someone else): not ours to release.
        f.bind(vfs[1], "vfio-pci").unwrap();
        let state = StateFile::for_host(&h);
        {
            let mut m = ManagedDevices::with_state(h.clone(), state.clone());
            assert_eq!(m.attach(vfs[0]).unwrap(), vec![vfs[0]]);
            assert_eq!(m.attach(vfs[1]).unwrap(), Vec::<Bdf>::new());
            assert_eq!(h.driver(vfs[0]).as_deref(), Some("vfio-pci"));
            let rec = state.record(vfs[0]).unwrap().unwrap();
            assert_eq!(rec.owner, ManagedDevices::owner_for_pid(std::process::id()));
            assert_eq!(rec.driver, None);
            // Dropped without release(): Drop gives the device back.
        }
        assert_eq!(h.driver(vfs[0]), None);
        assert_eq!(h.driver(vfs[1]).as_deref(), Some("vfio-pci"));
        assert!(state.records().unwrap().is_empty());
        std::fs::remove_dir_all(f.root()).unwrap();
    }
}
