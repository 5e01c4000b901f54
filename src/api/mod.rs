//! The control API (`--api-socket`): cloud-hypervisor's REST endpoints over HTTP/1.1 on a
//! Unix socket.
//!
//! Threads: one accepts connections, and each connection gets a short-lived thread (at most
//! [`MAX_CONNECTIONS`] at once) that reads one request under a deadline, parses and validates
//! it into an [`ApiRequest`], hands it to the control loop over a channel (waking the loop's
//! epoll through an eventfd) and writes the typed reply back. Only the control loop
//! (`crate::control`) touches the VM.

pub mod config;
pub mod http;
pub mod request;
pub mod routes;
pub mod socket;
pub mod types;

use crate::seccomp::ThreadKind;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use request::{ApiCall, ApiError, ApiReply, ApiRequest};

/// Connections served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 8;
/// A request's head and body must arrive within this time of the connection's start.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// A client that does not read its answer within this time loses it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection reads what the client still sends (see [`linger_close`]).
const LINGER: Duration = Duration::from_secs(1);
/// Refusals when every connection slot is busy linger shorter: the accept thread waits.
const BUSY_LINGER: Duration = Duration::from_millis(200);
/// At most this much is read and dropped while lingering.
const LINGER_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error("creating the API eventfd failed")]
    EventFd(#[source] std::io::Error),
    #[error("starting the API thread failed")]
    Thread(#[source] std::io::Error),
}

/// The control loop's end of the API: requests arrive on [`Self::next_call`], and
/// [`Self::eventfd`] becomes readable when one is waiting. Dropping it removes the socket.
pub struct ApiServer {
    path: PathBuf,
    /// The socket file's identity, so a file someone else put there meanwhile is left alone.
    inode: (u64, u64),
    calls: Receiver<ApiCall>,
    evt: Arc<EventFd>,
    /// Connections being served, so the last answers (`vmm.shutdown`'s) go out before exit.
    live: Arc<AtomicUsize>,
}

/// How long exit waits for answers still being written.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

impl ApiServer {
    /// Binds `path` and starts serving it.
    pub fn start(path: &Path) -> Result<Self, ApiServerError> {
        let listener = socket::bind(path)?;
        let meta = std::fs::metadata(path).map_err(|source| socket::SocketError::Io {
            path: path.to_path_buf(),
            what: "reading its metadata",
            source,
        })?;
        let evt = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ApiServerError::EventFd)?);
        let (tx, calls) = std::sync::mpsc::channel();
        let thread_evt = evt.clone();
        let live = Arc::new(AtomicUsize::new(0));
        let thread_live = live.clone();
        crate::threads::spawn(ThreadKind::Api, "api", move || accept_loop(listener, tx, thread_evt, thread_live))
            .map_err(ApiServerError::Thread)?;
        log::info!("API listening on {}", path.display());
        Ok(Self { path: path.to_path_buf(), inode: (meta.dev(), meta.ino()), calls, evt, live })
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The next waiting request, if any (clears the eventfd first, so a request arriving
    /// after the last call here wakes the loop again).
    pub fn next_call(&self) -> Option<ApiCall> {
        let _ = self.evt.read();
        self.calls.try_recv().ok()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Calls not taken get 503; answers given are let out (a slow reader is not waited
        // for beyond the timeout).
        while let Ok(call) = self.calls.try_recv() {
            call.answer(Err(ApiError::new(503, "viaduct is shutting down")));
        }
        let start = std::time::Instant::now();
        while self.live.load(Ordering::Relaxed) > 0 && start.elapsed() < DRAIN_TIMEOUT {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.inode {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Decrements the live-connection count when a connection thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_loop(listener: UnixListener, tx: Sender<ApiCall>, evt: Arc<EventFd>, live: Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("API: accepting a connection failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if live.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            live.fetch_sub(1, Ordering::Relaxed);
            log::debug!("API: {MAX_CONNECTIONS} connections busy, refusing one");
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let busy = ApiError::new(503, format!("{MAX_CONNECTIONS} API requests are in progress; try again"));
            let _ = stream.write_all(&routes::error_response(&busy).to_bytes());
            linger_close(stream, BUSY_LINGER);
            continue;
        }
        let slot = Slot(live.clone());
        let (tx, evt) = (tx.clone(), evt.clone());
        let spawned = crate::threads::spawn(ThreadKind::Api, "api-conn", move || {
            let _slot = slot;
            serve_connection(stream, &tx, &evt);
        });
        if let Err(e) = spawned {
            log::warn!("API: no thread for a connection: {e}");
        }
    }
}

/// One connection: one request, one answer, closed.
fn serve_connection(mut stream: UnixStream, tx: &Sender<ApiCall>, evt: &EventFd) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let response = match http::read_request(&mut stream, READ_DEADLINE) {
        Ok(req) => match routes::route(&req) {
            Ok(request) => routes::reply_response(call(request, tx, evt)),
            Err(e) => {
                log::info!("API: {} refused ({}): {}", req.path, e.status, e.message);
                routes::error_response(&e)
            }
        },
        Err(e) => match e.status() {
            Some(status) => {
                log::info!("API: request refused ({status}): {e}");
                routes::error_response(&ApiError::new(status, e.to_string()))
            }
            None => {
                log::debug!("API: {e}");
                return;
            }
        },
    };
    // The client may be gone by now: nothing to do about it.
    let _ = stream.write_all(&response.to_bytes());
    linger_close(stream, LINGER);
}

/// Closes a connection so that the client gets its answer: a socket closed with request bytes
/// still unread (a body refused without reading it, a request not read at all) makes the
/// client's next write fail, and clients such as curl then drop the answer too. So the write
/// side is closed first (the client sees the end of the answer), and what the client still
/// sends is read and dropped until it closes, for a bounded time and size: HTTP servers'
/// "lingering close".
fn linger_close(mut stream: UnixStream, wait: Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_MAX {
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Hands `request` to the control loop and waits for its answer.
fn call(request: ApiRequest, tx: &Sender<ApiCall>, evt: &EventFd) -> ApiReply {
    let name = request.name();
    let (call, reply) = ApiCall::new(request);
    if tx.send(call).is_err() {
        return Err(ApiError::new(503, "viaduct is shutting down"));
    }
    let _ = evt.write(1);
    match reply.recv_timeout(request::REPLY_TIMEOUT) {
        Ok(r) => r,
        Err(RecvTimeoutError::Timeout) => Err(ApiError::new(
            503,
            format!("{name}: no answer from the VMM within {} s", request::REPLY_TIMEOUT.as_secs()),
        )),
        Err(RecvTimeoutError::Disconnected) => Err(ApiError::new(503, format!("{name}: viaduct is shutting down"))),
    }
}

/// The `api_request` fuzz target's harness over its committed seeds (fuzz/seeds/api_request).
#[cfg(test)]
mod fuzz_replay {
    include!("../../fuzz/harness/api_request.rs");

    #[test]
    fn committed_seeds_replay_without_findings() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/api_request");
        let mut seeds: Vec<_> =
            std::fs::read_dir(&dir).expect("fuzz/seeds/api_request").map(|e| e.unwrap().path()).collect();
        seeds.sort();
        assert!(seeds.len() >= 20, "only {} seeds in {}", seeds.len(), dir.display());
        for path in seeds {
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("seed {} fails the harness", path.display());
            }
        }
    }
}

/// The seccomp filter of the API threads: accept connections on the socket the main thread
/// bound, read requests and write answers (with timeouts), close them lingering; hand each
/// request to the control loop (a channel and an eventfd). Connection threads are created by
/// the spawner. No files, no devices, no KVM.
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    r.allow(&[
        libc::SYS_accept4,
        libc::SYS_accept,
        libc::SYS_read,
        libc::SYS_recvfrom,
        libc::SYS_writev,
        libc::SYS_sendto,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        libc::SYS_shutdown,
        libc::SYS_poll,
        libc::SYS_ppoll,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(path: &Path, raw: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The API thread end to end on a real socket, with this test as the control loop.
    #[test]
    fn requests_reach_the_control_loop_and_bad_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("viaduct-api-server-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let server = ApiServer::start(&path).unwrap();
        let loop_thread = std::thread::spawn(move || {
            // Serve two calls, then leave (dropping the server removes the socket).
            let mut served = Vec::new();
            while served.len() < 2 {
                match server.next_call() {
                    Some(call) => {
                        served.push(call.request.name());
                        let reply = match call.request {
                            ApiRequest::VmmPing => Ok(Some(serde_json::json!({"version": "x"}))),
                            _ => Err(ApiError::conflict("no VM")),
                        };
                        call.answer(reply);
                    }
                    None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            served
        });
        let ok = roundtrip(&path, b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("{\"version\":\"x\"}"), "{ok}");
        let bad = roundtrip(&path, b"GET /api/v1/nothing HTTP/1.1\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 404 "), "{bad}");
        let bad = roundtrip(&path, b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 1\r\n\r\n{");
        assert!(bad.starts_with("HTTP/1.1 400 ") && bad.contains("bad JSON body"), "{bad}");
        // A client that leaves mid-request costs nothing.
        let mut gone = UnixStream::connect(&path).unwrap();
        gone.write_all(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Le").unwrap();
        drop(gone);
        let conflict = roundtrip(&path, b"PUT /api/v1/vm.pause HTTP/1.1\r\n\r\n");
        assert!(conflict.starts_with("HTTP/1.1 409 ") && conflict.contains("{\"error\":\"no VM\"}"), "{conflict}");
        assert_eq!(loop_thread.join().unwrap(), vec!["vmm.ping", "vm.pause"]);
        assert!(!path.exists(), "the socket file is removed with the server");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
