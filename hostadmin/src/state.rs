//! The binding state file: which devices we moved to vfio-pci and where they came from, so
//! `viaductctl restore` can give them back even after the process that bound them was killed.
//!
//! One line per device, whitespace separated `key=value` fields after the address:
//! `0000:01:10.0 driver=igbvf override=- owner=viaduct[1234]` (`-` = none). The file lives on
//! /run (tmpfs): bindings do not survive a reboot, and neither should their records.
//!
//! Its records are acted upon as root (driver names are written into sysfs), so the file is
//! treated as input, not trusted: it is opened without following a link at its last
//! component (a symlink is refused, not read or replaced through), only a regular file is
//! read, and every record is validated; a record that does not validate is skipped with a
//! warning naming it and never acted upon (it is kept in the file as it was, for the admin to
//! look at). Writes go to a new temporary file created `O_EXCL|O_NOFOLLOW` in the same
//! directory, renamed over the file.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use pci::Bdf;

use super::{Owner, PciHost};

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
    #[error("binding state file {} is a symbolic link: refusing to follow it (something may be redirecting viaduct's writes); look at it and remove it", path.display())]
    Symlink { path: PathBuf },
    #[error("binding state file {} is not a regular file ({kind}); remove it", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
}

/// Where a device was before we bound it to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    pub bdf: Bdf,
    /// The driver it was bound to; None if it had none.
    pub driver: Option<String>,
    /// Its `driver_override` before ours.
    pub driver_override: Option<String>,
    /// Who bound it.
    pub owner: Owner,
    /// Its VFIO nodes handed to a user (`viaductctl bind --user`), undone by restore.
    pub grant: Option<Grant>,
}

/// VFIO device nodes handed to a user, with what they were before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub uid: u32,
    pub nodes: Vec<NodeOwner>,
}

/// A device node's owner and mode before a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOwner {
    /// As the host names it: `/dev/vfio/<group>` or `/dev/vfio/devices/vfio<N>`.
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Only VFIO nodes are ever recorded, so a record (acted upon as root) cannot name any
/// other file to chown.
pub fn valid_vfio_node_path(path: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    match path.strip_prefix("/dev/vfio/") {
        Some(rest) => digits(rest) || rest.strip_prefix("devices/vfio").is_some_and(digits),
        None => false,
    }
}

impl NodeOwner {
    fn to_field(&self) -> String {
        format!("{}@{}.{}.{:o}", self.path, self.uid, self.gid, self.mode)
    }

    fn parse(field: &str) -> Result<Self, String> {
        let bad = || format!("'{field}' is not NODE@UID.GID.MODE");
        let (path, ids) = field.split_once('@').ok_or_else(bad)?;
        if !valid_vfio_node_path(path) {
            return Err(format!("{path} is not a VFIO device node"));
        }
        let mut parts = ids.split('.');
        let uid = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let gid = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let mode =
            parts.next().and_then(|v| u32::from_str_radix(v, 8).ok()).filter(|m| *m <= 0o7777).ok_or_else(bad)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self { path: path.to_string(), uid, gid, mode })
    }
}

fn field(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// A PCI driver name as sysfs shows it (a directory under /sys/bus/pci/drivers). Restore
/// writes it into `driver_override` and builds `drivers/NAME/bind` from it, so nothing that
/// could leave that directory or split a record passes.
fn valid_driver_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'+'))
}

/// Text from the file as it may be printed in a log line: control characters escaped, long
/// lines cut.
fn shown(line: &str) -> String {
    let mut s: String = line.chars().take(120).collect::<String>().escape_debug().to_string();
    if line.chars().count() > 120 {
        s.push_str("...");
    }
    s
}

impl BindingRecord {
    fn to_line(&self) -> String {
        let grant = match &self.grant {
            None => String::new(),
            Some(g) if g.nodes.is_empty() => format!(" granted={} nodes=-", g.uid),
            Some(g) => {
                let nodes: Vec<String> = g.nodes.iter().map(NodeOwner::to_field).collect();
                format!(" granted={} nodes={}", g.uid, nodes.join(","))
            }
        };
        format!(
            "{} driver={} override={} owner={}{grant}\n",
            self.bdf,
            field(&self.driver),
            field(&self.driver_override),
            self.owner
        )
    }

    /// Parses and validates one record; the error says what is wrong with it.
    fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let bdf: Bdf = words.next().ok_or("empty")?.parse().map_err(|e: pci::BdfError| e.to_string())?;
        let (mut driver, mut driver_override, mut owner, mut granted, mut nodes) = (None, None, None, None, None);
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| format!("'{w}' is not key=value"))?;
            let slot = match k {
                "driver" => &mut driver,
                "override" => &mut driver_override,
                "owner" => &mut owner,
                "granted" => &mut granted,
                "nodes" => &mut nodes,
                // Unknown keys come from newer versions: keep going, they only add detail.
                _ => {
                    log::debug!("state file: ignoring unknown key '{k}'");
                    continue;
                }
            };
            if slot.replace(v).is_some() {
                return Err(format!("{k}= is given twice"));
            }
        }
        let name = |key: &str, v: Option<&str>| -> Result<Option<String>, String> {
            match v {
                None => Err(format!("no {key}=")),
                Some("-") => Ok(None),
                Some(n) if valid_driver_name(n) => Ok(Some(n.to_string())),
                Some(n) => Err(format!("{key}={n} is not a driver name")),
            }
        };
        let grant = match (granted, nodes) {
            (None, None) => None,
            (Some(uid), Some(nodes)) => Some(Grant {
                uid: uid.parse().map_err(|_| format!("granted={uid} is not a uid"))?,
                nodes: match nodes {
                    "-" => Vec::new(),
                    list => list.split(',').map(NodeOwner::parse).collect::<Result<_, _>>()?,
                },
            }),
            _ => return Err("granted= and nodes= go together".into()),
        };
        Ok(Self {
            bdf,
            driver: name("driver", driver)?,
            driver_override: name("override", driver_override)?,
            owner: owner.ok_or("no owner=")?.parse()?,
            grant,
        })
    }
}

/// The file's content: the valid records, and the lines that were not (kept as they were).
#[derive(Debug, Default)]
struct Content {
    records: Vec<BindingRecord>,
    invalid: Vec<String>,
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

fn file_kind(t: fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device node"
    } else {
        "not a regular file"
    }
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

    fn dir(&self) -> &Path {
        self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(self.dir())
            .map_err(|source| StateError::Write { path: self.path.clone(), source })
    }

    /// Opens `path` for reading without following a link at its last component, and only
    /// if it is a regular file. `Ok(None)`: there is no file.
    fn open_regular(path: &Path) -> Result<Option<fs::File>, StateError> {
        // O_NONBLOCK: opening a FIFO planted there must not hang; it is refused below.
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StateError::Symlink { path: path.to_path_buf() })
            }
            Err(source) => return Err(StateError::Read { path: path.to_path_buf(), source }),
        };
        let meta = file.metadata().map_err(|source| StateError::Read { path: path.to_path_buf(), source })?;
        if !meta.file_type().is_file() {
            return Err(StateError::NotRegular { path: path.to_path_buf(), kind: file_kind(meta.file_type()) });
        }
        Ok(Some(file))
    }

    /// Takes the exclusive lock, waiting for other viaduct/viaductctl processes.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        self.ensure_dir()?;
        let path = self.lock_path();
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ELOOP) => StateError::Symlink { path: path.clone() },
                _ => StateError::Lock { path: path.clone(), source },
            })?;
        let meta = file.metadata().map_err(|source| StateError::Lock { path: path.clone(), source })?;
        if !meta.file_type().is_file() {
            return Err(StateError::NotRegular { path, kind: file_kind(meta.file_type()) });
        }
        // SAFETY: flock on a descriptor we own; it only touches the kernel's lock table.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(StateError::Lock { path, source: io::Error::last_os_error() });
        }
        Ok(StateLock { _file: file })
    }

    /// Reads the file; records that do not validate are logged and set aside.
    fn read(&self) -> Result<Content, StateError> {
        let Some(mut file) = Self::open_regular(&self.path)? else {
            return Ok(Content::default());
        };
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|source| StateError::Read { path: self.path.clone(), source })?;
        let mut out = Content::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match BindingRecord::parse(line) {
                Ok(rec) => out.records.push(rec),
                Err(reason) => {
                    log::warn!(
                        "{}:{}: ignoring the record \"{}\": {reason}; it is not acted upon (fix or remove that line)",
                        self.path.display(),
                        i + 1,
                        shown(line)
                    );
                    out.invalid.push(raw.to_string());
                }
            }
        }
        Ok(out)
    }

    /// All valid records; a missing file has none.
    pub fn records(&self) -> Result<Vec<BindingRecord>, StateError> {
        Ok(self.read()?.records)
    }

    pub fn record(&self, bdf: Bdf) -> Result<Option<BindingRecord>, StateError> {
        Ok(self.records()?.into_iter().find(|r| r.bdf == bdf))
    }

    /// A new temporary file next to the state file, created O_EXCL|O_NOFOLLOW: nothing that
    /// was already there (a planted link or file) is opened.
    fn create_temp(&self) -> io::Result<(PathBuf, fs::File)> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let tmp = self.dir().join(format!(
                ".{name}.{}.{}.{nanos:08x}.tmp",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(f) => return Ok((tmp, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Replaces the file's content atomically (a new temporary file, renamed over). Lines
    /// that did not validate are kept as they were.
    fn write_content(&self, content: &Content, _lock: &StateLock) -> Result<(), StateError> {
        self.ensure_dir()?;
        let err = |source| StateError::Write { path: self.path.clone(), source };
        if content.records.is_empty() && content.invalid.is_empty() {
            // unlink removes a link itself, never its target.
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(e)),
                _ => Ok(()),
            };
        }
        let mut text = String::from("# viaduct vfio-pci bindings: BDF driver=ORIGINAL override=ORIGINAL owner=WHO\n");
        for r in &content.records {
            text.push_str(&r.to_line());
        }
        for line in &content.invalid {
            text.push_str(line);
            text.push('\n');
        }
        let (tmp, mut file) = self.create_temp().map_err(err)?;
        let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
        drop(file);
        // rename replaces whatever is at the path (a link included) without following it.
        match written.and_then(|()| fs::rename(&tmp, &self.path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(err(e))
            }
        }
    }

    /// Adds a record unless one for the device exists: the first record holds the driver the
    /// device really came from.
    pub fn add(&self, rec: BindingRecord, lock: &StateLock) -> Result<bool, StateError> {
        let mut all = self.read()?;
        if all.records.iter().any(|r| r.bdf == rec.bdf) {
            return Ok(false);
        }
        all.records.push(rec);
        self.write_content(&all, lock)?;
        Ok(true)
    }

    /// Replaces the grant of `bdf`'s record; false when it has no record.
    pub fn set_grant(&self, bdf: Bdf, grant: Option<Grant>, lock: &StateLock) -> Result<bool, StateError> {
        let mut all = self.read()?;
        let Some(rec) = all.records.iter_mut().find(|r| r.bdf == bdf) else { return Ok(false) };
        rec.grant = grant;
        self.write_content(&all, lock)?;
        Ok(true)
    }

    pub fn remove(&self, bdf: Bdf, lock: &StateLock) -> Result<(), StateError> {
        let mut all = self.read()?;
        let before = all.records.len();
        all.records.retain(|r| r.bdf != bdf);
        if all.records.len() != before {
            self.write_content(&all, lock)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::temp_root;

    fn rec(bdf: &str, driver: Option<&str>, owner: Owner) -> BindingRecord {
        BindingRecord {
            bdf: bdf.parse().unwrap(),
            driver: driver.map(String::from),
            driver_override: None,
            owner,
            grant: None,
        }
    }

    #[test]
    fn records_round_trip_and_first_record_wins() {
        let dir = temp_root("state").unwrap();
        let s = StateFile::new(dir.join("run/viaduct/bindings"));
        assert!(s.records().unwrap().is_empty());
        let lock = s.lock().unwrap();
        let a = rec("0000:01:00.0", Some("igb"), Owner::Viaductctl);
        let mut b = rec("0000:02:00.0", None, Owner::Vmm { pid: 7 });
        b.driver_override = Some("nvme".into());
        assert!(s.add(a.clone(), &lock).unwrap());
        assert!(s.add(b.clone(), &lock).unwrap());
        let mut a2 = a.clone();
        a2.driver = Some("vfio-pci".into());
        assert!(!s.add(a2, &lock).unwrap());
        assert_eq!(s.records().unwrap(), vec![a.clone(), b.clone()]);
        let text = fs::read_to_string(s.path()).unwrap();
        assert!(text.contains("0000:01:00.0 driver=igb override=- owner=viaductctl\n"), "{text}");
        assert!(text.contains("0000:02:00.0 driver=- override=nvme owner=viaduct[7]\n"), "{text}");
        s.remove(a.bdf, &lock).unwrap();
        assert_eq!(s.records().unwrap(), vec![b.clone()]);
        s.remove(b.bdf, &lock).unwrap();
        assert!(!s.path().exists());
        // No temporary file is left behind.
        assert_eq!(crate::host::read_dir_names(&dir.join("run/viaduct")), vec!["bindings.lock".to_string()]);
        drop(lock);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Tampered or malformed records are skipped (never returned, so never acted upon), the
    /// good ones still count, and a rewrite keeps the bad lines as they were.
    #[test]
    fn tampered_records_are_skipped_and_kept() {
        let dir = temp_root("state-bad").unwrap();
        let s = StateFile::new(dir.join("bindings"));
        let bad = [
            "not-a-bdf driver=x override=- owner=viaductctl",
            "0000:03:00.0 driver=../../../../tmp/x override=- owner=viaductctl",
            "0000:03:00.1 driver=igb override=a/b owner=viaductctl",
            "0000:03:00.2 driver=.. override=- owner=viaductctl",
            "0000:03:00.3 driver=igb override=- owner=viaduct[12ab]",
            "0000:03:00.4 driver=igb override=- owner=viaduct[-5]",
            "0000:03:00.5 driver=igb override=- owner=root",
            "0000:03:00.6 driver=igb override=-",
            "0000:03:00.7 driver=igb driver=nvme override=- owner=viaductctl",
            "0000:04:00.0 driver=igb\u{1b}[2J override=- owner=viaductctl",
            "0000:04:00.1 override=- owner=viaductctl",
        ];
        let good = "0000:01:00.0 driver=igb override=- owner=viaduct[4242]";
        fs::write(s.path(), format!("# c\n{good}\n{}\n", bad.join("\n"))).unwrap();
        assert_eq!(s.records().unwrap(), vec![rec("0000:01:00.0", Some("igb"), Owner::Vmm { pid: 4242 })]);
        for b in bad {
            let err = BindingRecord::parse(b).unwrap_err();
            assert!(!err.is_empty(), "{b}");
        }
        let lock = s.lock().unwrap();
        s.add(rec("0000:02:00.0", Some("nvme"), Owner::Viaductctl), &lock).unwrap();
        s.remove("0000:01:00.0".parse().unwrap(), &lock).unwrap();
        let text = fs::read_to_string(s.path()).unwrap();
        for b in bad {
            assert!(text.contains(b), "lost '{b}': {text}");
        }
        assert_eq!(s.records().unwrap().len(), 1);
        drop(lock);
        fs::remove_dir_all(dir).unwrap();
    }

    /// A symlink at the state file (or its lock) is refused with a clear error; its target
    /// is neither read nor written.
    #[test]
    fn a_symlinked_state_file_is_refused() {
        let dir = temp_root("state-link").unwrap();
        let target = dir.join("elsewhere");
        fs::write(&target, "0000:01:00.0 driver=igb override=- owner=viaductctl\n").unwrap();
        let s = StateFile::new(dir.join("bindings"));
        std::os::unix::fs::symlink(&target, s.path()).unwrap();
        let e = s.records().unwrap_err();
        assert!(matches!(e, StateError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let lock = s.lock().unwrap();
        assert!(matches!(s.add(rec("0000:02:00.0", None, Owner::Viaductctl), &lock), Err(StateError::Symlink { .. })));
        assert_eq!(fs::read_to_string(&target).unwrap(), "0000:01:00.0 driver=igb override=- owner=viaductctl\n");
        drop(lock);

        // A link planted at the lock file.
        let t = StateFile::new(dir.join("other"));
        std::os::unix::fs::symlink(&target, dir.join("other.lock")).unwrap();
        assert!(matches!(t.lock(), Err(StateError::Symlink { .. })));

        // A FIFO is refused without blocking.
        let u = StateFile::new(dir.join("fifo"));
        let c = std::ffi::CString::new(u.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(u.records(), Err(StateError::NotRegular { .. })));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn grants_round_trip_and_only_name_vfio_nodes() {
        let root = temp_root("state-grant").unwrap();
        let f = StateFile::new(root.join("bindings"));
        let lock = f.lock().unwrap();
        let mut r = rec("0000:02:00.0", Some("nvme"), Owner::Viaductctl);
        r.grant = Some(Grant {
            uid: 1000,
            nodes: vec![
                NodeOwner { path: "/dev/vfio/12".into(), uid: 0, gid: 0, mode: 0o600 },
                NodeOwner { path: "/dev/vfio/devices/vfio0".into(), uid: 0, gid: 44, mode: 0o660 },
            ],
        });
        f.add(rec("0000:02:00.0", Some("nvme"), Owner::Viaductctl), &lock).unwrap();
        assert!(f.set_grant(r.bdf, r.grant.clone(), &lock).unwrap());
        assert_eq!(f.record(r.bdf).unwrap(), Some(r.clone()));
        assert!(!f.set_grant("0000:03:00.0".parse().unwrap(), None, &lock).unwrap());
        for path in ["/dev/vfio/12", "/dev/vfio/devices/vfio3"] {
            assert!(valid_vfio_node_path(path), "{path}");
        }
        for path in [
            "/etc/shadow",
            "/dev/vfio/vfio",
            "/dev/vfio/../../etc/shadow",
            "/dev/vfio/",
            "/dev/vfio/devices/vfio",
            "/dev/vfio/1/2",
        ] {
            assert!(!valid_vfio_node_path(path), "{path}");
        }
        // A record naming another file, or a half grant, is not acted upon.
        for line in [
            "0000:02:00.0 driver=nvme override=- owner=viaductctl granted=1000 nodes=/etc/shadow@0.0.600",
            "0000:02:00.0 driver=nvme override=- owner=viaductctl granted=1000",
            "0000:02:00.0 driver=nvme override=- owner=viaductctl granted=x nodes=-",
            "0000:02:00.0 driver=nvme override=- owner=viaductctl granted=1 nodes=/dev/vfio/1@0.0.99999",
        ] {
            assert!(BindingRecord::parse(line).is_err(), "{line}");
        }
        let ok =
            BindingRecord::parse("0000:02:00.0 driver=nvme override=- owner=viaductctl granted=7 nodes=-").unwrap();
        assert_eq!(ok.grant, Some(Grant { uid: 7, nodes: vec![] }));
    }
}
