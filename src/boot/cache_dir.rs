//! A directory viaduct keeps files in and trusts what it finds there: the kernel cache.
//!
//! Trusted means nobody but the user running viaduct (and root) could have put a file in
//! it: the directory is owned by that user, is not writable by group or others, is not a
//! symbolic link, and every directory above it is owned by root or that user and not
//! writable by others (unless sticky, like /tmp). Files are then opened through the
//! directory's fd without following links, checked (a regular file owned by the user, not
//! writable by others), and written as new files (`O_EXCL|O_NOFOLLOW`) renamed into place,
//! so a reader never sees half a file and a planted link is never written through.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum CacheDirError {
    #[error("cache directory {path}: {why}")]
    Untrusted { path: PathBuf, why: String },
    #[error("cache directory {path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// An open, checked cache directory.
pub struct CacheDir {
    fd: OwnedFd,
    path: PathBuf,
    /// The user whose files are trusted (the effective uid).
    uid: u32,
}

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// Whether a directory with this owner and mode may sit above a trusted one.
fn ancestor_ok(meta: &std::fs::Metadata, uid: u32) -> bool {
    let sticky = meta.mode() & libc::S_ISVTX != 0;
    (meta.uid() == 0 || meta.uid() == uid) && (meta.mode() & 0o022 == 0 || sticky)
}

impl CacheDir {
    /// Opens `path` (created 0700 when missing) for user `uid` and checks it is trusted.
    pub fn open(path: &Path, uid: u32) -> Result<Self, CacheDirError> {
        let io = |op| move |source| CacheDirError::Io { path: path.into(), op, source };
        let untrusted = |why: String| CacheDirError::Untrusted { path: path.into(), why };
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io("creating it"))?;
        }
        let c = cstr(&path.to_string_lossy()).map_err(io("opening it"))?;
        // SAFETY: a NUL-terminated path; the returned fd is checked and then owned.
        let raw =
            unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                return Err(untrusted("is a symbolic link or not a directory".into()));
            }
            return Err(io("opening it")(e));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let meta = File::from(fd.try_clone().map_err(io("opening it"))?).metadata().map_err(io("stat"))?;
        if meta.uid() != uid {
            return Err(untrusted(format!("owned by uid {}, not by the user running viaduct (uid {uid})", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(untrusted(format!("writable by others (mode {:o})", meta.mode() & 0o7777)));
        }
        let canonical = std::fs::canonicalize(path).map_err(io("resolving it"))?;
        for dir in canonical.ancestors().skip(1) {
            let m = std::fs::metadata(dir).map_err(io("checking the directories above it"))?;
            if !ancestor_ok(&m, uid) {
                return Err(untrusted(format!(
                    "{} above it is owned by uid {} with mode {:o}: others could replace the cache",
                    dir.display(),
                    m.uid(),
                    m.mode() & 0o7777
                )));
            }
        }
        Ok(Self { fd, path: path.into(), uid })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens file `name` for reading if it is one viaduct may trust: a regular file (not a
    /// link), owned by the user, not writable by others. `None` when there is no such file;
    /// an error names what is wrong with a file that is there.
    pub fn open_trusted(&self, name: &str) -> Result<Option<File>, String> {
        let c = cstr(name).map_err(|e| e.to_string())?;
        // SAFETY: a relative NUL-terminated name under our directory fd; the fd is checked.
        let raw = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP) => Err(format!("{name} is a symbolic link")),
                _ => Err(format!("{name}: {e}")),
            };
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{name} is not a regular file"));
        }
        if meta.uid() != self.uid || meta.mode() & 0o022 != 0 {
            return Err(format!("{name} is owned by uid {} with mode {:o}", meta.uid(), meta.mode() & 0o7777));
        }
        Ok(Some(file))
    }

    /// Creates a new file (never an existing one, never through a link) to be renamed into
    /// place with [`Self::publish`].
    pub fn create_temp(&self, stem: &str) -> Result<(File, String), CacheDirError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(".tmp-{stem}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let file = self.create_exclusive(&name).map_err(|source| CacheDirError::Io {
            path: self.path.join(&name),
            op: "creating a file",
            source,
        })?;
        Ok((file, name))
    }

    fn create_exclusive(&self, name: &str) -> std::io::Result<File> {
        let c = cstr(name)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a relative NUL-terminated name under our directory fd; the fd is checked.
        let raw = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o644 as libc::c_uint) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Renames temporary file `temp` to `name`, replacing what was there.
    pub fn publish(&self, temp: &str, name: &str) -> Result<(), CacheDirError> {
        let err = |source| CacheDirError::Io { path: self.path.join(name), op: "renaming into place", source };
        let (from, to) = (cstr(temp).map_err(err)?, cstr(name).map_err(err)?);
        let dir = self.fd.as_raw_fd();
        // SAFETY: two relative NUL-terminated names under our directory fd.
        if unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Removes `name` if it is there (a failed or refused temporary file, a bad entry).
    pub fn remove(&self, name: &str) {
        if let Ok(c) = cstr(name) {
            // SAFETY: a relative NUL-terminated name under our directory fd.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        }
    }

    /// Writes a small file whole: a new temporary file renamed to `name`.
    pub fn write_file(&self, name: &str, data: &[u8]) -> Result<(), CacheDirError> {
        let (mut f, temp) = self.create_temp(name)?;
        if let Err(source) = f.write_all(data) {
            self.remove(&temp);
            return Err(CacheDirError::Io { path: self.path.join(name), op: "writing", source });
        }
        drop(f);
        self.publish(&temp, name).inspect_err(|_| self.remove(&temp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn uid() -> u32 {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("viaduct-cachedir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn a_private_directory_is_created_and_trusted() {
        let base = temp("create");
        let dir = base.join("a/b");
        let c = CacheDir::open(&dir, uid()).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        c.write_file("x", b"hello").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut c.open_trusted("x").unwrap().unwrap(), &mut s).unwrap();
        assert_eq!(s, "hello");
        assert!(c.open_trusted("missing").unwrap().is_none());
        // No temporary files left.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn links_other_owners_and_writable_directories_are_refused() {
        let base = temp("refuse");
        let real = base.join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = CacheDir::open(&link, uid()).err().expect("a symlinked directory");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // Owned by someone else (as seen by another uid).
        let e = CacheDir::open(&real, uid().wrapping_add(1)).err().expect("wrong owner");
        assert!(e.to_string().contains("owned by uid"), "{e}");
        for mode in [0o775, 0o757, 0o777] {
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = CacheDir::open(&real, uid()).err().expect("writable by others");
            assert!(e.to_string().contains("writable by others"), "{mode:o}: {e}");
        }
        // A world-writable directory above it (without the sticky bit).
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = CacheDir::open(&real, uid()).err().expect("writable parent");
        assert!(e.to_string().contains("others could replace the cache"), "{e}");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
        CacheDir::open(&real, uid()).expect("a sticky parent like /tmp is fine");
    }

    #[test]
    fn files_are_trusted_only_when_regular_and_private() {
        let dir = temp("files");
        let c = CacheDir::open(&dir, uid()).unwrap();
        std::fs::write(dir.join("target"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        assert!(c.open_trusted("link").unwrap_err().contains("symbolic link"));
        std::fs::set_permissions(dir.join("target"), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(c.open_trusted("target").unwrap_err().contains("mode 666"));
        std::fs::create_dir(dir.join("sub")).unwrap();
        assert!(c.open_trusted("sub").unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn new_files_never_follow_or_reuse_a_planted_name() {
        let dir = temp("excl");
        let c = CacheDir::open(&dir, uid()).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("planted")).unwrap();
        let e = c.create_exclusive("planted").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        std::fs::write(dir.join("plain"), b"old").unwrap();
        assert_eq!(c.create_exclusive("plain").unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // Publishing replaces a link by a file; the link's target is untouched.
        c.write_file("planted", b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(dir.join("planted")).unwrap().is_file());
    }
}
