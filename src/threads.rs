//! VMM threads and what happens when one panics.
//!
//! Every thread the VMM starts goes through [`spawn`], so each has a name. A panic anywhere
//! (vCPU, virtio I/O thread, DMA mapping, kernel loader, console input, the main thread) is
//! reported by one panic hook: the VM being run is stopped with an error naming the thread,
//! which the user sees as the one `viaduct: error:` line, and viaduct exits 1. The state the
//! thread left behind is not used again: locks it held are poisoned, and a device behind a
//! poisoned lock is treated as failed (see `pci::bus::BusAccess`).

use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;

use crate::seccomp::{self, ThreadKind};
use crate::stop::{StopNotifier, StopReason};

/// Where a panic is reported: the running VM's stop notifier, and the first panic's text.
struct Reporter {
    stop: Option<Arc<StopNotifier>>,
    first_panic: Option<String>,
}

static REPORTER: Mutex<Reporter> = Mutex::new(Reporter { stop: None, first_panic: None });

/// Nothing that can panic runs under the reporter's lock: a poisoned one is still whole.
fn reporter() -> std::sync::MutexGuard<'static, Reporter> {
    REPORTER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a named VMM thread of kind `kind`, whose seccomp filter is installed before `f`
/// runs. A thread whose own filter is narrower than the new thread's (a vCPU starting a
/// virtio I/O thread) has the spawner create it, so the new thread is bound by its own
/// filter only (see `seccomp`).
pub fn spawn<F, T>(kind: ThreadKind, name: impl Into<String>, f: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let builder = std::thread::Builder::new().name(name.into());
    let body = move || {
        install_filter(kind);
        f()
    };
    if seccomp::may_spawn_directly(seccomp::current()) {
        builder.spawn(body)
    } else {
        seccomp::on_spawner(move || builder.spawn(body)).map_err(std::io::Error::other)?
    }
}

/// Installs the calling (new) thread's seccomp filter. A thread never runs without the
/// filter it should have: a failure is a panic, which stops the VM with the error (the
/// panic hook below), before the thread touches guest input.
pub fn install_filter(kind: ThreadKind) {
    if let Err(e) = seccomp::install(kind) {
        panic!("{e}");
    }
}

/// The one line a panic becomes: which thread, where, and the panic's message.
fn describe(info: &std::panic::PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    let payload = info.payload();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    match info.location() {
        Some(l) => format!("thread {name} panicked at {}:{}: {msg}", l.file(), l.line()),
        None => format!("thread {name} panicked: {msg}"),
    }
}

/// Installs the panic hook (once per process). With RUST_BACKTRACE set, the standard
/// report (with the backtrace) is printed too, for whoever debugs it.
pub fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default_hook = std::panic::take_hook();
        let verbose = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        std::panic::set_hook(Box::new(move |info| {
            let line = describe(info);
            if verbose {
                default_hook(info);
            }
            let stop = {
                let mut r = reporter();
                r.first_panic.get_or_insert_with(|| line.clone());
                r.stop.clone()
            };
            if let Some(stop) = stop {
                stop.request(StopReason::Error(line));
            }
        }));
    });
}

/// From now on a panic stops the VM behind `stop` (one VM at a time: every boot sets its
/// own).
pub fn report_panics_to(stop: &Arc<StopNotifier>) {
    reporter().stop = Some(stop.clone());
}

/// The first panic seen so far in this process, if any.
pub fn first_panic() -> Option<String> {
    reporter().first_panic.clone()
}

/// Tests that route panics to a stop notifier of their own take turns (the route is global).
#[cfg(test)]
pub static PANIC_ROUTE: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_stops_the_vm_with_its_name() {
        let _turn = PANIC_ROUTE.lock().unwrap_or_else(|e| e.into_inner());
        install_panic_hook();
        let stop = StopNotifier::new().unwrap();
        report_panics_to(&stop);
        let worker = spawn(ThreadKind::VirtioRng, "virtio-test0", || -> u32 { panic!("queue 3\nis broken") }).unwrap();
        assert!(worker.join().is_err());
        let reason = stop.reason().expect("the panic requested a stop");
        let StopReason::Error(line) = reason else { panic!("not an error: {reason:?}") };
        assert!(line.starts_with("thread virtio-test0 panicked at src/threads.rs:"), "{line}");
        assert!(line.ends_with("queue 3 is broken"), "one line: {line}");
        assert!(!line.contains('\n'));
        assert_eq!(stop.eventfd().read().unwrap(), 1, "the control loop is woken");
        assert!(first_panic().is_some());
    }
}
