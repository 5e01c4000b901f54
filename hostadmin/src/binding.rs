//! Moving devices to vfio-pci and back.
//!
//! Binding uses `driver_override` + `drivers_probe`, never `new_id`: new_id binds every
//! device with that id (other VFs too) and lingers after we are gone. The original driver is
//! recorded in the [`StateFile`] before anything changes, so a crash at any point leaves a
//! record `restore` can act on.

use pci::Bdf;

use super::state::{BindingRecord, Grant, NodeOwner, StateError, StateFile, StateLock};
use super::{Owner, PciHost, VfioDriver};

/// The VFIO PCI driver's name in sysfs.
pub const VFIO_PCI: &str = "vfio-pci";

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("no PCI device {bdf} on this host (see `viaductctl list`)")]
    UnknownDevice { bdf: Bdf },
    #[error("{bdf}: vfio-pci is not loaded; run `modprobe vfio-pci` (or `viaductctl check --fix`)")]
    VfioPciMissing { bdf: Bdf },
    #[error("{bdf} is a PCI bridge; vfio-pci does not drive bridges (they may stay with pcieport)")]
    Bridge { bdf: Bdf },
    #[error("{bdf} is an SR-IOV PF with {num_vfs} VFs: unbinding its driver would remove them; remove them first (viaductctl sriov {bdf} --num-vfs 0)")]
    PfHasVfs { bdf: Bdf, num_vfs: u32 },
    #[error("{bdf} is in use by the host: {uses}; stop using it first (or force the bind)")]
    InUse { bdf: Bdf, uses: String },
    #[error("{bdf} has no IOMMU group: is the IOMMU on? (see `viaductctl check`)")]
    NoIommuGroup { bdf: Bdf },
    #[error("{bdf}: writing {attr}")]
    WriteAttribute {
        bdf: Bdf,
        attr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: expected driver {expected} after probing, found {}", found.as_deref().unwrap_or("none"))]
    Probe { bdf: Bdf, expected: String, found: Option<String> },
    #[error("{bdf}: handing {node} to uid {uid}")]
    Grant {
        bdf: Bdf,
        node: String,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("{bdf}: no VFIO device node to hand over (is it bound to vfio-pci?)")]
    NoVfioNode { bdf: Bdf },
    #[error("{bdf}: binding state")]
    State {
        bdf: Bdf,
        #[source]
        source: StateError,
    },
}

/// What `bind` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// It was on a VFIO driver already (vfio-pci or a variant, which is ready as it is);
    /// nothing changed and nothing was recorded.
    AlreadyBound { driver: VfioDriver },
    /// Moved from `previous` (None: no driver) to vfio-pci and recorded.
    Bound { previous: Option<String> },
}

/// What `restore` / `unbind` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// Put back on its recorded driver (None: left without a driver, as it was).
    Restored { driver: Option<String> },
    /// No record and not on vfio-pci: nothing to do.
    NothingToDo { driver: Option<String> },
    /// Released from vfio-pci without a record; the kernel's own choice of driver took it.
    Released { driver: Option<String> },
    /// The recorded device no longer exists (e.g. a VF that was removed); record dropped.
    Gone,
    /// Left alone: the viaduct process that bound it (`managed=on`) is still running, so its
    /// guest may be using the device. Record kept.
    OwnerRunning { pid: u32 },
}

/// One device's restore result in a batch.
pub type DeviceRestore = (Bdf, Result<RestoreOutcome, BindError>);

/// Binds and restores devices, recording under `owner` in a state file.
#[derive(Debug, Clone)]
pub struct Binder {
    host: PciHost,
    state: StateFile,
    owner: Owner,
    /// Bind even devices the host uses (an interface up, a filesystem mounted).
    force: bool,
}

impl Binder {
    /// `owner` is who holds the bindings made: viaductctl, or a VMM for its managed devices
    /// (restored by that process at exit, or by `viaductctl restore` after a crash).
    pub fn new(host: PciHost, state: StateFile, owner: Owner) -> Self {
        Self { host, state, owner, force: false }
    }

    /// Whether to take devices the host is using (see [`PciHost::host_uses`]).
    pub fn with_force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    pub fn host(&self) -> &PciHost {
        &self.host
    }

    pub fn state(&self) -> &StateFile {
        &self.state
    }

    fn write(&self, bdf: Bdf, path: std::path::PathBuf, value: &str) -> Result<(), BindError> {
        self.host.write_attr(&path, value).map_err(|source| BindError::WriteAttribute {
            bdf,
            attr: path.strip_prefix(self.host.root()).unwrap_or(&path).display().to_string(),
            source,
        })
    }

    fn state_err(bdf: Bdf) -> impl Fn(StateError) -> BindError {
        move |source| BindError::State { bdf, source }
    }

    /// Checks that `bind` can work, without changing anything.
    fn check_bindable(&self, bdf: Bdf) -> Result<(), BindError> {
        let f = self.host.function(bdf).map_err(|_| BindError::UnknownDevice { bdf })?;
        if f.is_bridge {
            return Err(BindError::Bridge { bdf });
        }
        if f.iommu_group.is_none() {
            return Err(BindError::NoIommuGroup { bdf });
        }
        if self.host.vfio_driver(bdf).is_some() {
            // Nothing to move: bind leaves it where it is.
            return Ok(());
        }
        if let Some(s) = f.sriov.as_ref().filter(|s| s.num_vfs > 0) {
            return Err(BindError::PfHasVfs { bdf, num_vfs: s.num_vfs });
        }
        if !self.host.driver_loaded(VFIO_PCI) {
            return Err(BindError::VfioPciMissing { bdf });
        }
        self.check_unused(bdf)
    }

    fn check_unused(&self, bdf: Bdf) -> Result<(), BindError> {
        let uses = self.host.host_uses(bdf);
        if uses.is_empty() || self.force {
            return Ok(());
        }
        let uses = uses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        Err(BindError::InUse { bdf, uses })
    }

    /// Moves one device to vfio-pci. Idempotent.
    pub fn bind(&self, bdf: Bdf) -> Result<BindOutcome, BindError> {
        self.check_bindable(bdf)?;
        if let Some(driver) = self.host.vfio_driver(bdf) {
            // Ready as it is: not even the state file is touched.
            log::info!("{bdf}: already on {driver}");
            return Ok(BindOutcome::AlreadyBound { driver });
        }
        let lock = self.state.lock().map_err(Self::state_err(bdf))?;
        self.bind_locked(bdf, &lock)
    }

    fn bind_locked(&self, bdf: Bdf, lock: &StateLock) -> Result<BindOutcome, BindError> {
        if let Some(driver) = self.host.vfio_driver(bdf) {
            log::info!("{bdf}: already on {driver}");
            return Ok(BindOutcome::AlreadyBound { driver });
        }
        let previous = self.host.driver(bdf);
        let rec = BindingRecord {
            bdf,
            driver: previous.clone(),
            driver_override: self.host.driver_override(bdf),
            owner: self.owner,
            grant: None,
        };
        self.state.add(rec, lock).map_err(Self::state_err(bdf))?;
        let dir = self.host.device_dir(bdf);
        let result = (|| {
            self.write(bdf, dir.join("driver_override"), VFIO_PCI)?;
            if let Some(drv) = &previous {
                self.write(bdf, self.host.driver_dir(drv).join("unbind"), &bdf.to_string())?;
            }
            // The probe's own result is in the driver link; its errno (e.g. a probe that
            // failed inside vfio-pci) is reported through the check below.
            if let Err(e) = self.write(bdf, self.host.path("sys/bus/pci/drivers_probe"), &bdf.to_string()) {
                log::warn!("{e}");
            }
            let now = self.host.driver(bdf);
            if now.as_deref() != Some(VFIO_PCI) {
                return Err(BindError::Probe { bdf, expected: VFIO_PCI.into(), found: now });
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                log::info!("{bdf}: bound to vfio-pci (was {})", previous.as_deref().unwrap_or("no driver"));
                Ok(BindOutcome::Bound { previous })
            }
            Err(e) => {
                // Put the device back the way it was, so a failed bind changes nothing.
                if let Err(re) = self.restore_locked(bdf, lock) {
                    log::error!("{bdf}: restoring after a failed bind: {re}");
                }
                Err(e)
            }
        }
    }

    /// Moves a device and every other non-bridge member of its IOMMU group to vfio-pci: VFIO
    /// only opens a group whose every device is on vfio-pci, has no driver, or is a bridge.
    /// All-or-nothing: on failure, the members bound by this call are restored.
    pub fn bind_group(&self, bdf: Bdf) -> Result<Vec<(Bdf, BindOutcome)>, BindError> {
        self.check_bindable(bdf)?;
        let group = self.host.iommu_group(bdf).ok_or(BindError::NoIommuGroup { bdf })?;
        let members: Vec<Bdf> = self
            .host
            .iommu_group_members(group)
            .into_iter()
            .filter(|m| self.host.function(*m).map(|f| !f.is_bridge).unwrap_or(false))
            .collect();
        for m in &members {
            self.check_unused(*m)?;
        }
        let lock = self.state.lock().map_err(Self::state_err(bdf))?;
        let mut done = Vec::new();
        for m in members {
            match self.bind_locked(m, &lock) {
                Ok(o) => done.push((m, o)),
                Err(e) => {
                    for (b, o) in done.iter().rev() {
                        if matches!(o, BindOutcome::Bound { .. }) {
                            if let Err(re) = self.restore_locked(*b, &lock) {
                                log::error!("{b}: rolling back group bind: {re}");
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    /// Hands the device's VFIO nodes (its group's `/dev/vfio/N`, its cdev
    /// `/dev/vfio/devices/vfioN`) to user `uid`/`gid`, read-write for that user only, and
    /// records what they were, so `restore` puts them back. A device bound without a record
    /// (already on a VFIO driver) gets one that keeps it on that driver.
    pub fn grant(&self, bdf: Bdf, uid: u32, gid: u32) -> Result<Grant, BindError> {
        let lock = self.state.lock().map_err(Self::state_err(bdf))?;
        let nodes = self.host.vfio_nodes(bdf);
        if nodes.is_empty() {
            return Err(BindError::NoVfioNode { bdf });
        }
        let rec = self.state.record(bdf).map_err(Self::state_err(bdf))?;
        let mut grant = rec.as_ref().and_then(|r| r.grant.clone()).unwrap_or(Grant { uid, nodes: Vec::new() });
        grant.uid = uid;
        for node in &nodes {
            let shown = self.host.display_path(node.path());
            let fail = |source| BindError::Grant { bdf, node: shown.clone(), uid, source };
            let before = node_owner(node.path(), self.host.root() != std::path::Path::new("/")).map_err(fail)?;
            // A node handed over before (a group shared with another device, a second
            // grant) keeps its first record.
            let first = grant.nodes.iter().any(|n| n.path == shown);
            if !first && before.0 != uid {
                grant.nodes.push(NodeOwner { path: shown.clone(), uid: before.0, gid: before.1, mode: before.2 });
            }
            chown_node(node.path(), uid, gid, 0o600).map_err(fail)?;
            log::info!("{bdf}: {shown} now belongs to uid {uid}");
        }
        if rec.is_none() {
            let now = BindingRecord {
                bdf,
                driver: self.host.driver(bdf),
                driver_override: self.host.driver_override(bdf),
                owner: self.owner,
                grant: None,
            };
            self.state.add(now, &lock).map_err(Self::state_err(bdf))?;
        }
        self.state.set_grant(bdf, Some(grant.clone()), &lock).map_err(Self::state_err(bdf))?;
        Ok(grant)
    }

    /// Puts back the owner and mode of the nodes a grant changed, where they still exist and
    /// still belong to the user they were handed to.
    fn ungrant(&self, bdf: Bdf, grant: &Grant) {
        let fake = self.host.root() != std::path::Path::new("/");
        for n in &grant.nodes {
            let path = self.host.path(n.path.trim_start_matches('/'));
            match node_owner(&path, fake) {
                Ok((uid, ..)) if uid == grant.uid => match chown_node(&path, n.uid, n.gid, n.mode) {
                    Ok(()) => log::info!("{bdf}: {} belongs to uid {} again", n.path, n.uid),
                    Err(e) => log::warn!("{bdf}: giving {} back to uid {}: {e}", n.path, n.uid),
                },
                // Gone with the binding, or changed by someone since: left alone.
                _ => {}
            }
        }
    }

    /// Gives a recorded device back to its original driver and drops the record. Without a
    /// record nothing is changed. Idempotent.
    pub fn restore(&self, bdf: Bdf) -> Result<RestoreOutcome, BindError> {
        let lock = self.state.lock().map_err(Self::state_err(bdf))?;
        self.restore_locked(bdf, &lock)
    }

    fn restore_locked(&self, bdf: Bdf, lock: &StateLock) -> Result<RestoreOutcome, BindError> {
        let Some(rec) = self.state.record(bdf).map_err(Self::state_err(bdf))? else {
            return Ok(RestoreOutcome::NothingToDo { driver: self.host.driver(bdf) });
        };
        if !self.host.device_exists(bdf) {
            log::info!("{bdf}: gone; dropping its binding record");
            self.state.remove(bdf, lock).map_err(Self::state_err(bdf))?;
            return Ok(RestoreOutcome::Gone);
        }
        if let Some(grant) = &rec.grant {
            self.ungrant(bdf, grant);
        }
        let dir = self.host.device_dir(bdf);
        let recorded_override = rec.driver_override.as_deref().unwrap_or("\n");
        // While the original driver is probed, the override names it: the kernel then tries
        // only that driver (not another one that matches too), and it probes a VF of a PF
        // with sriov_drivers_autoprobe=0 at all (pci_device_can_probe() skips such VFs
        // unless they have an override). Without an original driver the recorded override
        // goes in at once; otherwise vfio-pci's override must go before the unbind below, or
        // the probe would pick vfio-pci again.
        let probe_override = match &rec.driver {
            Some(orig) => orig.as_str(),
            None => recorded_override,
        };
        self.write(bdf, dir.join("driver_override"), probe_override)?;
        let result = self.give_back(bdf, rec.driver.as_deref());
        // An override never unbinds: the recorded one can go back now, whatever happened.
        let put_back = match rec.driver {
            Some(_) => self.write(bdf, dir.join("driver_override"), recorded_override),
            None => Ok(()),
        };
        let now = result?;
        put_back?;
        if let Some(now) = now {
            log::warn!("{bdf}: now on {now}, not vfio-pci; leaving it there");
            self.state.remove(bdf, lock).map_err(Self::state_err(bdf))?;
            return Ok(RestoreOutcome::Restored { driver: Some(now) });
        }
        self.state.remove(bdf, lock).map_err(Self::state_err(bdf))?;
        log::info!("{bdf}: restored to {}", rec.driver.as_deref().unwrap_or("no driver"));
        Ok(RestoreOutcome::Restored { driver: rec.driver })
    }

    /// Takes `bdf` off vfio-pci and has `orig` (None: no driver) take it. `Ok(Some(d))`:
    /// another driver `d` holds it now (someone rebound it by hand); it is left there.
    fn give_back(&self, bdf: Bdf, orig: Option<&str>) -> Result<Option<String>, BindError> {
        let current = self.host.driver(bdf);
        if current.is_some() && current.as_deref() != orig {
            if current.as_deref() != Some(VFIO_PCI) {
                return Ok(current);
            }
            self.write(bdf, self.host.driver_dir(VFIO_PCI).join("unbind"), &bdf.to_string())?;
        }
        let Some(orig) = orig else {
            return Ok(None);
        };
        if self.host.driver(bdf).is_none() {
            if let Err(e) = self.write(bdf, self.host.path("sys/bus/pci/drivers_probe"), &bdf.to_string()) {
                log::warn!("{e}");
            }
        }
        // The kernel's choice may differ from the recorded driver (it was bound by hand):
        // bind it explicitly then.
        if self.host.driver(bdf).is_none() && self.host.driver_loaded(orig) {
            self.write(bdf, self.host.driver_dir(orig).join("bind"), &bdf.to_string())?;
        }
        let now = self.host.driver(bdf);
        if now.as_deref() != Some(orig) {
            return Err(BindError::Probe { bdf, expected: orig.to_string(), found: now });
        }
        Ok(None)
    }

    /// The running viaduct process that holds a record, if any (see [`PciHost::vmm_running`]).
    fn running_owner(&self, rec: &BindingRecord) -> Option<u32> {
        match rec.owner {
            Owner::Vmm { pid } if self.host.vmm_running(pid) => Some(pid),
            _ => None,
        }
    }

    fn restore_abandoned_locked(&self, bdf: Bdf, force: bool, lock: &StateLock) -> Result<RestoreOutcome, BindError> {
        let rec = self.state.record(bdf).map_err(Self::state_err(bdf))?;
        if let Some(pid) = rec.as_ref().and_then(|r| self.running_owner(r)) {
            if !force {
                log::warn!(
                    "{bdf}: not restored: viaduct[{pid}] bound it and is still running (force to take it anyway)"
                );
                return Ok(RestoreOutcome::OwnerRunning { pid });
            }
            // vfio-pci's unbind waits until that VMM lets go of the device.
            log::warn!("{bdf}: restoring although viaduct[{pid}] is still running (forced)");
        }
        self.restore_locked(bdf, lock)
    }

    /// Like [`Self::restore`], for a device some other process may have bound: a device whose
    /// owning viaduct process still runs is left alone ([`RestoreOutcome::OwnerRunning`])
    /// unless `force`.
    pub fn restore_abandoned(&self, bdf: Bdf, force: bool) -> Result<RestoreOutcome, BindError> {
        let lock = self.state.lock().map_err(Self::state_err(bdf))?;
        self.restore_abandoned_locked(bdf, force, &lock)
    }

    /// Restores every recorded device (of any owner) as [`Self::restore_abandoned`] does.
    /// Each device's result is reported; one failure does not stop the others.
    pub fn restore_all(&self, force: bool) -> Result<Vec<DeviceRestore>, StateError> {
        let lock = self.state.lock()?;
        Ok(self
            .state
            .records()?
            .into_iter()
            .map(|r| (r.bdf, self.restore_abandoned_locked(r.bdf, force, &lock)))
            .collect())
    }

    /// Restores the devices this binder's owner recorded (a VMM's exit path).
    pub fn restore_owned(&self) -> Result<Vec<DeviceRestore>, StateError> {
        let lock = self.state.lock()?;
        Ok(self
            .state
            .records()?
            .into_iter()
            .filter(|r| r.owner == self.owner)
            .map(|r| (r.bdf, self.restore_locked(r.bdf, &lock)))
            .collect())
    }

    /// Takes a device off vfio-pci: back to its recorded driver if there is a record, else
    /// to whatever driver the kernel picks for it. Idempotent.
    pub fn unbind(&self, bdf: Bdf) -> Result<RestoreOutcome, BindError> {
        if !self.host.device_exists(bdf) {
            return Err(BindError::UnknownDevice { bdf });
        }
        let lock = self.state.lock().map_err(Self::state_err(bdf))?;
        if self.state.record(bdf).map_err(Self::state_err(bdf))?.is_some() {
            return self.restore_locked(bdf, &lock);
        }
        let current = self.host.driver(bdf);
        if current.as_deref() != Some(VFIO_PCI) {
            return Ok(RestoreOutcome::NothingToDo { driver: current });
        }
        let dir = self.host.device_dir(bdf);
        if self.host.driver_override(bdf).as_deref() == Some(VFIO_PCI) {
            self.write(bdf, dir.join("driver_override"), "\n")?;
        }
        self.write(bdf, self.host.driver_dir(VFIO_PCI).join("unbind"), &bdf.to_string())?;
        if let Err(e) = self.write(bdf, self.host.path("sys/bus/pci/drivers_probe"), &bdf.to_string()) {
            log::warn!("{e}");
        }
        Ok(RestoreOutcome::Released { driver: self.host.driver(bdf) })
    }
}

/// A VFIO node's owner, group and permission bits, read without following a link. Only a
/// character device is accepted (a fake tree's nodes are plain files: `fake_tree`).
fn node_owner(path: &std::path::Path, fake_tree: bool) -> std::io::Result<(u32, u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path)?;
    let ok = meta.file_type().is_char_device() || (fake_tree && meta.file_type().is_file());
    if !ok {
        return Err(std::io::Error::other("not a device node"));
    }
    Ok((meta.uid(), meta.gid(), meta.mode() & 0o7777))
}

/// chown + chmod of a node, never through a link.
fn chown_node(path: &std::path::Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path; AT_SYMLINK_NOFOLLOW changes a link itself, never its target.
    if unsafe { libc::fchownat(libc::AT_FDCWD, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The node was just checked not to be a link (and fchmodat cannot refuse one on Linux).
    // SAFETY: as above.
    if unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), mode as libc::mode_t, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like, FakeDevice, FakeSysfs};

    const PF: Bdf = Bdf::from_devfn(0, 1, 0); // 0000:01:00.0
    const NVME: Bdf = Bdf::from_devfn(0, 2, 0); // 0000:02:00.0

    fn setup(tag: &str) -> (FakeSysfs, Binder) {
        let f = testbed_like(temp_root(tag).unwrap()).unwrap();
        let h = f.live_host();
        let b = Binder::new(h.clone(), StateFile::for_host(&h), Owner::Viaductctl);
        (f, b)
    }

    #[test]
    fn bind_then_restore_round_trips_the_driver() {
        let (f, b) = setup("bind");
        assert_eq!(b.bind(PF).unwrap(), BindOutcome::Bound { previous: Some("igb".into()) });
        assert_eq!(b.host().driver(PF).as_deref(), Some("vfio-pci"));
        assert_eq!(b.host().driver_override(PF).as_deref(), Some("vfio-pci"));
        let rec = b.state().record(PF).unwrap().unwrap();
        assert_eq!(rec.driver.as_deref(), Some("igb"));
        // Repeating is harmless and keeps the original record.
        assert_eq!(b.bind(PF).unwrap(), BindOutcome::AlreadyBound { driver: VfioDriver::VfioPci });
        assert_eq!(b.state().records().unwrap().len(), 1);
        assert_eq!(b.restore(PF).unwrap(), RestoreOutcome::Restored { driver: Some("igb".into()) });
        assert_eq!(b.host().driver(PF).as_deref(), Some("igb"));
        assert_eq!(b.host().driver_override(PF), None);
        assert!(b.state().records().unwrap().is_empty());
        assert_eq!(b.restore(PF).unwrap(), RestoreOutcome::NothingToDo { driver: Some("igb".into()) });
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// Seen in the testbed: a VF of a PF with sriov_drivers_autoprobe=0, bound to igbvf by
    /// hand, did not go back to igbvf (the kernel does not probe such a VF without an
    /// override: drivers_probe did nothing, igbvf/bind failed with ENODEV).
    #[test]
    fn a_vf_of_a_pf_without_autoprobe_goes_back_to_its_driver() {
        let (f, b) = setup("vf-noautoprobe");
        let h = b.host().clone();
        let vfs = h.set_num_vfs(PF, 2, crate::SriovOptions { autoprobe: Some(false) }).unwrap();
        std::fs::write(f.path("sys/bus/pci/devices/0000:01:00.0/sriov_drivers_autoprobe"), "0\n").unwrap();
        let (vf, bare) = (vfs[0], vfs[1]);
        f.bind(vf, "igbvf").unwrap();
        for (dev, driver) in [(vf, Some("igbvf")), (bare, None)] {
            assert_eq!(b.bind(dev).unwrap(), BindOutcome::Bound { previous: driver.map(String::from) });
            assert_eq!(h.driver(dev).as_deref(), Some("vfio-pci"));
            assert_eq!(b.restore(dev).unwrap(), RestoreOutcome::Restored { driver: driver.map(String::from) });
            assert_eq!(h.driver(dev).as_deref(), driver, "{dev}");
            assert_eq!(h.driver_override(dev), None, "{dev}");
        }
        assert!(b.state().records().unwrap().is_empty());
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn a_driverless_device_goes_back_to_no_driver() {
        let (f, b) = setup("nodrv");
        f.unbind(NVME).unwrap();
        assert_eq!(b.bind(NVME).unwrap(), BindOutcome::Bound { previous: None });
        assert_eq!(b.host().driver(NVME).as_deref(), Some("vfio-pci"));
        assert_eq!(b.unbind(NVME).unwrap(), RestoreOutcome::Restored { driver: None });
        assert_eq!(b.host().driver(NVME), None);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn unbind_without_record_hands_the_device_to_its_native_driver() {
        let (f, b) = setup("unbind");
        f.unbind(NVME).unwrap();
        f.bind(NVME, "vfio-pci").unwrap();
        assert_eq!(b.unbind(NVME).unwrap(), RestoreOutcome::Released { driver: Some("nvme".into()) });
        assert_eq!(b.unbind(NVME).unwrap(), RestoreOutcome::NothingToDo { driver: Some("nvme".into()) });
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn restore_all_after_a_killed_owner() {
        let (f, b) = setup("killed");
        let vmm = Binder::new(b.host().clone(), b.state().clone(), Owner::Vmm { pid: 42 });
        vmm.bind(PF).unwrap();
        b.bind(NVME).unwrap();
        // The VMM restores only its own devices.
        let r = vmm.restore_owned().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(b.host().driver(PF).as_deref(), Some("igb"));
        assert_eq!(b.host().driver(NVME).as_deref(), Some("vfio-pci"));
        let r = b.restore_all(false).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].1.is_ok());
        assert_eq!(b.host().driver(NVME).as_deref(), Some("nvme"));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn bad_input_changes_nothing() {
        let (f, b) = setup("bad");
        assert!(matches!(b.bind(Bdf::new(0, 9, 0, 0).unwrap()), Err(BindError::UnknownDevice { .. })));
        assert!(matches!(b.bind(Bdf::new(0, 0, 1, 0).unwrap()), Err(BindError::Bridge { .. })));
        std::fs::write(f.path("sys/class/net/eth0/flags"), "0x1003\n").unwrap();
        match b.bind(PF) {
            Err(BindError::InUse { uses, .. }) => assert_eq!(uses, "interface eth0 is up"),
            other => panic!("{other:?}"),
        }
        assert!(b.clone().with_force(true).bind(PF).is_ok());
        assert!(b.restore(PF).is_ok());
        std::fs::write(f.path("sys/class/net/eth0/flags"), "0x1002\n").unwrap();
        let h = f.live_host();
        h.set_num_vfs(PF, 1, crate::SriovOptions::default()).unwrap();
        assert!(matches!(b.bind(PF), Err(BindError::PfHasVfs { num_vfs: 1, .. })));
        h.set_num_vfs(PF, 0, crate::SriovOptions::default()).unwrap();
        std::fs::remove_dir_all(f.path("sys/bus/pci/drivers/vfio-pci")).unwrap();
        assert!(matches!(b.bind(PF), Err(BindError::VfioPciMissing { .. })));
        assert_eq!(b.host().driver(PF).as_deref(), Some("igb"));
        assert!(b.state().records().unwrap().is_empty());
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn a_failed_probe_rolls_back() {
        let (f, b) = setup("rollback");
        // A device vfio-pci will not take: the fake kernel binds the override only if that
        // driver exists, so point the override at a name and remove vfio-pci after the check.
        let h = f.host();
        let me = f.clone();
        let mut live = h.clone();
        live.kernel = Some(std::sync::Arc::new(move |_h: &PciHost, p: &std::path::Path, v: &str| {
            if p.ends_with("drivers_probe")
                && me.path("sys/bus/pci/devices/0000:01:00.0/driver_override").exists()
                && std::fs::read_to_string(me.path("sys/bus/pci/devices/0000:01:00.0/driver_override"))
                    .unwrap_or_default()
                    .trim()
                    == "vfio-pci"
            {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            me.kernel_write(p, v)
        }));
        let b = Binder::new(live, b.state().clone(), Owner::Viaductctl);
        match b.bind(PF) {
            Err(BindError::Probe { found: None, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(b.host().driver(PF).as_deref(), Some("igb"));
        assert_eq!(b.host().driver_override(PF), None);
        assert!(b.state().records().unwrap().is_empty());
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn group_bind_takes_every_non_bridge_member() {
        let f = FakeSysfs::new(temp_root("group").unwrap()).unwrap();
        for d in ["vfio-pci", "e1000e", "pcieport"] {
            f.add_driver(d).unwrap();
        }
        let mut a = FakeDevice::new(Bdf::new(0, 3, 0, 0).unwrap(), 0x8086, 0x10d3, 0x020000);
        a.iommu_group = Some(3);
        a.native_driver = Some("e1000e".into());
        let mut c = a.clone();
        c.bdf = Bdf::new(0, 3, 0, 1).unwrap();
        let mut br = FakeDevice::new(Bdf::new(0, 0, 2, 0).unwrap(), 0x1b36, 0xc, 0x060400);
        br.iommu_group = Some(3);
        br.native_driver = Some("pcieport".into());
        for d in [&a, &c, &br] {
            f.add_device(d).unwrap();
        }
        let h = f.live_host();
        let b = Binder::new(h.clone(), StateFile::for_host(&h), Owner::Viaductctl);
        let done = b.bind_group(a.bdf).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(h.driver(c.bdf).as_deref(), Some("vfio-pci"));
        assert_eq!(h.driver(br.bdf).as_deref(), Some("pcieport"));
        assert_eq!(b.restore_all(false).unwrap().len(), 2);
        assert_eq!(h.driver(a.bdf).as_deref(), Some("e1000e"));
        assert_eq!(h.driver(c.bdf).as_deref(), Some("e1000e"));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// bind leaves a device on a variant driver where it is, even with vfio-pci unloaded;
    /// unbind and restore do not take it off either (it was not ours).
    #[test]
    fn a_device_on_a_variant_driver_is_already_bound() {
        let (f, b) = setup("bind-variant");
        f.add_vfio_driver("mlx5_vfio_pci", "mlx5_vfio_pci").unwrap();
        f.unbind(NVME).unwrap();
        f.bind(NVME, "mlx5_vfio_pci").unwrap();
        std::fs::remove_dir_all(f.path("sys/bus/pci/drivers/vfio-pci")).unwrap();
        let variant = VfioDriver::Variant("mlx5_vfio_pci".into());
        assert_eq!(b.bind(NVME).unwrap(), BindOutcome::AlreadyBound { driver: variant.clone() });
        assert_eq!(b.bind_group(NVME).unwrap(), vec![(NVME, BindOutcome::AlreadyBound { driver: variant })]);
        assert!(b.state().records().unwrap().is_empty());
        assert_eq!(b.unbind(NVME).unwrap(), RestoreOutcome::NothingToDo { driver: Some("mlx5_vfio_pci".into()) });
        assert_eq!(b.restore(NVME).unwrap(), RestoreOutcome::NothingToDo { driver: Some("mlx5_vfio_pci".into()) });
        assert_eq!(b.host().driver(NVME).as_deref(), Some("mlx5_vfio_pci"));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// restore leaves a device alone while the viaduct process that bound it runs (its guest
    /// may be using it), restores it once that pid is gone or belongs to another program, and
    /// takes it anyway when forced.
    #[test]
    fn restore_skips_a_live_owner_unless_forced() {
        let (f, b) = setup("live-owner");
        let vmm = Binder::new(b.host().clone(), b.state().clone(), Owner::Vmm { pid: 4242 });
        vmm.bind(PF).unwrap();
        vmm.bind(NVME).unwrap();
        f.add_process(4242, "viaduct", Some("/usr/bin/viaduct"), 'S').unwrap();
        let r = b.restore_all(false).unwrap();
        assert!(r.iter().all(|(_, o)| matches!(o, Ok(RestoreOutcome::OwnerRunning { pid: 4242 }))), "{r:?}");
        assert_eq!(b.restore_abandoned(PF, false).unwrap(), RestoreOutcome::OwnerRunning { pid: 4242 });
        assert_eq!(b.host().driver(PF).as_deref(), Some("vfio-pci"));
        assert_eq!(b.state().records().unwrap().len(), 2);
        // Forced: given back.
        assert_eq!(b.restore_abandoned(PF, true).unwrap(), RestoreOutcome::Restored { driver: Some("igb".into()) });
        assert_eq!(b.host().driver(PF).as_deref(), Some("igb"));
        // The pid now belongs to another program: the VMM is gone, its device goes back.
        f.add_process(4242, "viaduct", Some("/usr/bin/sleep"), 'S').unwrap();
        let r = b.restore_all(false).unwrap();
        assert_eq!(r.len(), 1);
        assert!(
            matches!(&r[0], (b, Ok(RestoreOutcome::Restored { driver: Some(d) })) if *b == NVME && d == "nvme"),
            "{r:?}"
        );
        assert!(b.state().records().unwrap().is_empty());
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// A tampered record (a driver name that would leave sysfs' drivers directory) is never
    /// acted upon: the device stays where it is.
    #[test]
    fn a_tampered_record_is_not_acted_upon() {
        let (f, b) = setup("tampered");
        f.unbind(NVME).unwrap();
        f.bind(NVME, "vfio-pci").unwrap();
        let state = b.state().path().to_path_buf();
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(&state, "0000:02:00.0 driver=../../../../../tmp/evil override=- owner=viaductctl\n").unwrap();
        assert!(b.restore_all(false).unwrap().is_empty());
        assert_eq!(b.restore(NVME).unwrap(), RestoreOutcome::NothingToDo { driver: Some("vfio-pci".into()) });
        assert_eq!(b.host().driver(NVME).as_deref(), Some("vfio-pci"));
        assert!(std::fs::read_to_string(&state).unwrap().contains("tmp/evil"), "the line is kept for the admin");
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    fn owner_of(p: &std::path::Path) -> (u32, u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    }

    /// `bind --user`: the group node and the cdev go to the user, and come back on restore,
    /// also for a device that was on vfio-pci before (it stays there).
    #[test]
    fn grant_hands_the_nodes_over_and_restore_takes_them_back() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown to another user needs root");
            return;
        }
        let (f, b) = setup("grant");
        f.set_vfio_kernel(crate::fake::FakeVfioKernel { vfio_dev_dirs: true, cdev: true, groups: true }).unwrap();
        assert!(matches!(b.grant(NVME, 4242, 4343), Err(BindError::NoVfioNode { .. })));
        b.bind(NVME).unwrap();
        let nodes: Vec<std::path::PathBuf> = b.host().vfio_nodes(NVME).iter().map(|n| n.path().to_path_buf()).collect();
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        for n in &nodes {
            std::fs::set_permissions(n, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        }
        let g = b.grant(NVME, 4242, 4343).unwrap();
        assert_eq!(g.nodes.len(), 2);
        for n in &nodes {
            assert_eq!(owner_of(n), (4242, 4343, 0o600));
        }
        // Granting again keeps the first record of what the nodes were.
        assert_eq!(b.grant(NVME, 4242, 4343).unwrap(), g);
        assert_eq!(b.state().record(NVME).unwrap().unwrap().grant, Some(g.clone()));
        // Restore: the grant is undone first, then the device goes back to nvme (its
        // nodes go with it).
        b.restore(NVME).unwrap();
        assert_eq!(b.host().driver(NVME).as_deref(), Some("nvme"));
        assert!(b.state().record(NVME).unwrap().is_none());

        // Already on vfio-pci (bound by hand): a record is made so restore can undo the
        // grant, and restore leaves it on vfio-pci.
        b.bind(NVME).unwrap();
        b.state().remove(NVME, &b.state().lock().unwrap()).unwrap();
        let nodes: Vec<std::path::PathBuf> = b.host().vfio_nodes(NVME).iter().map(|n| n.path().to_path_buf()).collect();
        let before: Vec<_> = nodes.iter().map(|n| owner_of(n)).collect();
        b.grant(NVME, 4242, 4343).unwrap();
        assert_eq!(b.restore(NVME).unwrap(), RestoreOutcome::Restored { driver: Some("vfio-pci".into()) });
        assert_eq!(b.host().driver(NVME).as_deref(), Some("vfio-pci"));
        let after: Vec<_> = nodes.iter().map(|n| owner_of(n)).collect();
        assert_eq!(after, before, "ownership put back");
    }
}
