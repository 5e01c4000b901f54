//! Creating and removing SR-IOV virtual functions through `sriov_numvfs`.

use pci::Bdf;

use super::{PciHost, VfioDriver};

#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    #[error("no PCI device {bdf} on this host (see `viaductctl list`)")]
    UnknownDevice { bdf: Bdf },
    #[error("{bdf} is not an SR-IOV physical function (it has no sriov_totalvfs)")]
    NotSriov { bdf: Bdf },
    #[error("{bdf} supports at most {total} VFs, {requested} requested")]
    TooManyVfs { bdf: Bdf, requested: u32, total: u32 },
    #[error("{bdf} has no driver bound; the kernel enables VFs only through the PF's driver")]
    NoPfDriver { bdf: Bdf },
    #[error("{bdf}: VF {vf} is bound to {driver} (in use by a VM?); release it first with `viaductctl restore {vf}`")]
    VfInUse { bdf: Bdf, vf: Bdf, driver: VfioDriver },
    #[error("{bdf}: writing {attr} = {value}")]
    WriteAttribute {
        bdf: Bdf,
        attr: &'static str,
        value: String,
        #[source]
        source: std::io::Error,
    },
}

/// How to create VFs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SriovOptions {
    /// Some(false): leave the new VFs without a driver (e.g. to hand them to vfio-pci next),
    /// Some(true): let their driver probe them, None: keep the PF's current setting. The PF's
    /// `sriov_drivers_autoprobe` is put back afterwards.
    pub autoprobe: Option<bool>,
}

impl PciHost {
    fn write_sriov(&self, bdf: Bdf, attr: &'static str, value: String) -> Result<(), SriovError> {
        self.write_attr(&self.device_dir(bdf).join(attr), &value).map_err(|source| SriovError::WriteAttribute {
            bdf,
            attr,
            value,
            source,
        })
    }

    /// Sets the number of VFs of `pf` to `num_vfs` (0 removes them). Validates everything
    /// first, so a refused request changes nothing. Returns the VFs now present.
    pub fn set_num_vfs(&self, pf: Bdf, num_vfs: u32, opts: SriovOptions) -> Result<Vec<Bdf>, SriovError> {
        if !self.device_exists(pf) {
            return Err(SriovError::UnknownDevice { bdf: pf });
        }
        let info = self.sriov_info(pf).ok_or(SriovError::NotSriov { bdf: pf })?;
        if num_vfs > info.total_vfs {
            return Err(SriovError::TooManyVfs { bdf: pf, requested: num_vfs, total: info.total_vfs });
        }
        if info.num_vfs == num_vfs && opts.autoprobe.is_none() {
            log::info!("{pf}: already has {num_vfs} VFs");
            return Ok(info.vfs);
        }
        if self.driver(pf).is_none() {
            return Err(SriovError::NoPfDriver { bdf: pf });
        }
        // Removing VFs out from under a VM would yank its device; refuse instead.
        if let Some((vf, driver)) = info.vfs.iter().find_map(|vf| Some((*vf, self.vfio_driver(*vf)?))) {
            return Err(SriovError::VfInUse { bdf: pf, vf, driver });
        }
        if info.num_vfs == num_vfs {
            // Same count, but the caller asked for a probe policy: recreate so it applies.
            log::info!("{pf}: recreating {num_vfs} VFs to apply the probe setting");
        }
        let old_autoprobe = info.drivers_autoprobe;
        if let (Some(want), Some(old)) = (opts.autoprobe, old_autoprobe) {
            if want != old {
                self.write_sriov(pf, "sriov_drivers_autoprobe", u8::from(want).to_string())?;
            }
        }
        let result = (|| {
            // The kernel refuses to change a non-zero count to another non-zero count.
            if info.num_vfs != 0 {
                self.write_sriov(pf, "sriov_numvfs", "0".into())?;
            }
            if num_vfs != 0 {
                self.write_sriov(pf, "sriov_numvfs", num_vfs.to_string())?;
            }
            Ok(())
        })();
        if let (Some(want), Some(old)) = (opts.autoprobe, old_autoprobe) {
            if want != old {
                if let Err(e) = self.write_sriov(pf, "sriov_drivers_autoprobe", u8::from(old).to_string()) {
                    log::warn!("{e}");
                }
            }
        }
        result?;
        let now = self.sriov_info(pf).map(|i| i.vfs).unwrap_or_default();
        log::info!("{pf}: {} VFs", now.len());
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like};

    const PF: Bdf = Bdf::from_devfn(0, 1, 0); // 0000:01:00.0

    #[test]
    fn creates_lists_and_removes_vfs() {
        let f = testbed_like(temp_root("sriov").unwrap()).unwrap();
        let h = f.live_host();
        let vfs = h.set_num_vfs(PF, 2, SriovOptions::default()).unwrap();
        assert_eq!(vfs, vec![Bdf::new(0, 1, 0x10, 0).unwrap(), Bdf::new(0, 1, 0x10, 2).unwrap()]);
        let vf = h.function(vfs[1]).unwrap();
        assert_eq!(vf.physfn, Some((PF, 1)));
        assert_eq!(vf.device, 0x10ca);
        assert_eq!(vf.driver.as_deref(), Some("igbvf"));
        assert_eq!(h.sriov_info(PF).unwrap().num_vfs, 2);
        // A different count goes through 0.
        assert_eq!(h.set_num_vfs(PF, 3, SriovOptions::default()).unwrap().len(), 3);
        assert!(h.set_num_vfs(PF, 0, SriovOptions::default()).unwrap().is_empty());
        assert!(!h.device_exists(vfs[0]));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn unprobed_vfs_have_no_driver_and_autoprobe_is_put_back() {
        let f = testbed_like(temp_root("sriov-np").unwrap()).unwrap();
        let h = f.live_host();
        let vfs = h.set_num_vfs(PF, 2, SriovOptions { autoprobe: Some(false) }).unwrap();
        assert!(vfs.iter().all(|v| h.driver(*v).is_none()));
        assert_eq!(h.sriov_info(PF).unwrap().drivers_autoprobe, Some(true));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn refusals_change_nothing() {
        let f = testbed_like(temp_root("sriov-bad").unwrap()).unwrap();
        let h = f.live_host();
        assert!(matches!(h.set_num_vfs(PF, 8, SriovOptions::default()), Err(SriovError::TooManyVfs { total: 7, .. })));
        assert!(matches!(
            h.set_num_vfs(Bdf::new(0, 2, 0, 0).unwrap(), 1, SriovOptions::default()),
            Err(SriovError::NotSriov { .. })
        ));
        assert!(matches!(
            h.set_num_vfs(Bdf::new(0, 5, 0, 0).unwrap(), 1, SriovOptions::default()),
            Err(SriovError::UnknownDevice { .. })
        ));
        assert_eq!(h.sriov_info(PF).unwrap().num_vfs, 0);
        let vfs = h.set_num_vfs(PF, 1, SriovOptions::default()).unwrap();
        f.unbind(vfs[0]).unwrap();
        f.bind(vfs[0], "vfio-pci").unwrap();
        assert!(matches!(h.set_num_vfs(PF, 0, SriovOptions::default()), Err(SriovError::VfInUse { .. })));
        assert!(h.device_exists(vfs[0]));
        std::fs::remove_dir_all(f.root()).unwrap();
    }
}
