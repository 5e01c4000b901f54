//! The binding state file: which devices we moved to vfio-pci and where they came from, so
//! `viaductctl restore` can give them back even after the process that bound them was killed.
//!
//! One line per device, whitespace separated `key=value` fields after the address:
//! `0000:01:10.0 driver=igbvf override=- owner=viaduct[1234]` (`-` = none). The file lives on
//! /run (tmpfs): bindings do not survive a reboot, and neither should their records.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use pci::Bdf;

use super::PciHost;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading binding state file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing binding state file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("locking binding state file {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding state file {} line {line}: {reason}; fix or remove that line", path.display())]
    Parse { path: PathBuf, line: usize, reason: String },
}

/// Where a device was before we bound it to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    pub bdf: Bdf,
    /// The driver it was bound to; None if it had none.
    pub driver: Option<String>,
    /// Its `driver_override` before ours.
    pub driver_override: Option<String>,
    /// Who bound it: `viaductctl` or `viaduct[PID]`.
    pub owner: String,
}

fn field(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

impl BindingRecord {
    fn to_line(&self) -> String {
        format!(
            "{} driver={} override={} owner={}\n",
            self.bdf,
            field(&self.driver),
            field(&self.driver_override),
            self.owner
        )
    }

    fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let bdf: Bdf = words.next().ok_or("empty")?.parse().map_err(|e: pci::BdfError| e.to_string())?;
        let (mut driver, mut driver_override, mut owner) = (None, None, None);
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| format!("'{w}' is not key=value"))?;
            let v = (v != "-" && !v.is_empty()).then(|| v.to_string());
            match k {
                "driver" => driver = v,
                "override" => driver_override = v,
                "owner" => owner = v,
                // Unknown keys come from newer versions: keep going, they only add detail.
                _ => log::debug!("state file: ignoring unknown key '{k}'"),
            }
        }
        Ok(Self { bdf, driver, driver_override, owner: owner.unwrap_or_else(|| "unknown".into()) })
    }
}

/// The state file. All changes happen under an exclusive lock (flock on `PATH.lock`), held
/// by a [`StateLock`] for as long as the caller changes devices.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

/// Holds the state file's lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

impl StateFile {
    pub const DEFAULT_PATH: &'static str = "run/viaduct/bindings";

    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The host's default state file (`/run/viaduct/bindings` under its root).
    pub fn for_host(host: &PciHost) -> Self {
        Self::new(host.path(Self::DEFAULT_PATH))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".lock");
        p.into()
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|source| StateError::Write { path: self.path.clone(), source })?;
        }
        Ok(())
    }

    /// Takes the exclusive lock, waiting for other viaduct/viaductctl processes.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        self.ensure_dir()?;
        let path = self.lock_path();
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StateError::Lock { path: path.clone(), source })?;
        // SAFETY: flock on a descriptor we own; it only touches the kernel's lock table.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(StateError::Lock { path, source: io::Error::last_os_error() });
        }
        Ok(StateLock { _file: file })
    }

    /// All records; a missing file has none.
    pub fn records(&self) -> Result<Vec<BindingRecord>, StateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Read { path: self.path.clone(), source }),
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rec = BindingRecord::parse(line).map_err(|reason| StateError::Parse {
                path: self.path.clone(),
                line: i + 1,
                reason,
            })?;
            out.push(rec);
        }
        Ok(out)
    }

    pub fn record(&self, bdf: Bdf) -> Result<Option<BindingRecord>, StateError> {
        Ok(self.records()?.into_iter().find(|r| r.bdf == bdf))
    }

    /// Replaces the file's content atomically (write a temporary file, rename over).
    fn write_records(&self, records: &[BindingRecord], _lock: &StateLock) -> Result<(), StateError> {
        self.ensure_dir()?;
        let err = |source| StateError::Write { path: self.path.clone(), source };
        if records.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(e)),
                _ => Ok(()),
            };
        }
        let mut text = String::from("# viaduct vfio-pci bindings: BDF driver=ORIGINAL override=ORIGINAL owner=WHO\n");
        for r in records {
            text.push_str(&r.to_line());
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        fs::write(&tmp, text).map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)
    }

    /// Adds a record unless one for the device exists: the first record holds the driver the
    /// device really came from.
    pub fn add(&self, rec: BindingRecord, lock: &StateLock) -> Result<bool, StateError> {
        let mut all = self.records()?;
        if all.iter().any(|r| r.bdf == rec.bdf) {
            return Ok(false);
        }
        all.push(rec);
        self.write_records(&all, lock)?;
        Ok(true)
    }

    pub fn remove(&self, bdf: Bdf, lock: &StateLock) -> Result<(), StateError> {
        let mut all = self.records()?;
        let before = all.len();
        all.retain(|r| r.bdf != bdf);
        if all.len() != before {
            self.write_records(&all, lock)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::temp_root;

    #[test]
    fn records_round_trip_and_first_record_wins() {
        let dir = temp_root("state").unwrap();
        let s = StateFile::new(dir.join("run/viaduct/bindings"));
        assert!(s.records().unwrap().is_empty());
        let lock = s.lock().unwrap();
        let a = BindingRecord {
            bdf: Bdf::new(0, 1, 0, 0).unwrap(),
            driver: Some("igb".into()),
            driver_override: None,
            owner: "viaductctl".into(),
        };
        let b = BindingRecord {
            bdf: Bdf::new(0, 2, 0, 0).unwrap(),
            driver: None,
            driver_override: Some("nvme".into()),
            owner: "viaduct[7]".into(),
        };
        assert!(s.add(a.clone(), &lock).unwrap());
        assert!(s.add(b.clone(), &lock).unwrap());
        let mut a2 = a.clone();
        a2.driver = Some("vfio-pci".into());
        assert!(!s.add(a2, &lock).unwrap());
        assert_eq!(s.records().unwrap(), vec![a.clone(), b.clone()]);
        let text = fs::read_to_string(s.path()).unwrap();
        assert!(text.contains("0000:01:00.0 driver=igb override=- owner=viaductctl\n"), "{text}");
        s.remove(a.bdf, &lock).unwrap();
        assert_eq!(s.records().unwrap(), vec![b.clone()]);
        s.remove(b.bdf, &lock).unwrap();
        assert!(!s.path().exists());
        drop(lock);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_line_is_an_error_with_its_number() {
        let dir = temp_root("state-bad").unwrap();
        let s = StateFile::new(dir.join("bindings"));
        fs::write(s.path(), "# c\n0000:01:00.0 driver=igb\nnot-a-bdf driver=x\n").unwrap();
        match s.records() {
            Err(StateError::Parse { line: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
