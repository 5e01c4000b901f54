//! The API's listening socket: created mode 0600 without touching the process umask, and a
//! stale socket file replaced only when nothing listens on it.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("--api-socket {path}: the path is longer than a Unix socket address allows ({max} bytes)")]
    PathTooLong { path: PathBuf, max: usize },
    #[error("--api-socket {path}: another process is listening on it (is another viaduct running?)")]
    InUse { path: PathBuf },
    #[error("--api-socket {path}: the file exists and is not a socket; remove it or choose another path")]
    NotASocket { path: PathBuf },
    #[error("--api-socket {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Binds and listens on `path`. A socket file already there is removed only when connecting
/// to it is refused (its owner is gone); anything else is an error naming the path.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |what| {
        let path = path.to_path_buf();
        move |source| SocketError::Io { path, what, source }
    };
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(SocketError::PathTooLong { path: path.to_path_buf(), max: addr.sun_path.len() - 1 });
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse { path: path.to_path_buf() }),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                log::info!("removing the stale API socket {}", path.display());
                std::fs::remove_file(path).map_err(io("removing the stale socket file"))?;
            }
            Err(e) => return Err(io("checking the existing socket file")(e)),
        },
        Ok(_) => return Err(SocketError::NotASocket { path: path.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("looking at the path")(e)),
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the result is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io("creating the socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // The socket file takes the socket inode's mode masked by the umask (Linux unix_bind):
    // narrowing the inode first makes the file 0600 from its creation, with no window in
    // which others could connect and no process-wide umask change racing other threads.
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } != 0 {
        return Err(io("setting the socket's mode")(std::io::Error::last_os_error()));
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(io("binding the socket")(std::io::Error::last_os_error()));
    }
    // SAFETY: listen(2) on a bound socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(io("listening on the socket")(e));
    }
    Ok(UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("viaduct-api-socket-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("api.sock")
    }

    #[test]
    fn created_0600_whatever_the_umask() {
        let path = tmp("mode");
        let _l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn a_live_socket_is_kept_and_a_stale_one_replaced() {
        let path = tmp("stale");
        let live = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        drop(live);
        // The file is still there, but nobody listens: replaced.
        assert!(path.exists());
        let again = bind(&path).unwrap();
        drop(again);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(bind(&path), Err(SocketError::NotASocket { .. })));
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert!(matches!(bind(&long), Err(SocketError::PathTooLong { .. })));
    }
}
