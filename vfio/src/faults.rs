//! The VFIO error interrupt (VFIO_PCI_ERR_IRQ_INDEX): vfio-pci signals it when the host
//! kernel's AER handling reports an uncorrectable error on the device (its `error_detected`
//! callback). Nothing else in viaduct would notice: the device's interrupts and BAR accesses
//! go straight to the guest, which would read all-ones and time out. [`ErrorInterrupt`] owns
//! the eventfd VFIO signals and a thread that waits on it and calls the VMM's handler.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

/// What the VMM does on an error: called on the watcher thread with the number of error
/// events since the last call.
pub type ErrorHandler = Box<dyn Fn(u64) + Send>;

/// The eventfd the host kernel signals and the thread waiting on it; the thread ends when
/// this is dropped (after the VFIO side was disarmed).
pub struct ErrorInterrupt {
    evt: Arc<EventFd>,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ErrorInterrupt {
    /// `bdf` names the thread (`err BDF`, cut to the kernel's 15 characters).
    pub fn new(bdf: &str, on_error: ErrorHandler) -> std::io::Result<Self> {
        let evt = Arc::new(EventFd::new(0)?);
        let quit = Arc::new(AtomicBool::new(false));
        let (e, q) = (evt.clone(), quit.clone());
        let bdf_log = bdf.to_string();
        let thread = std::thread::Builder::new().name(format!("err {}", short_bdf(bdf))).spawn(move || loop {
            match e.read() {
                Ok(_) if q.load(Ordering::Acquire) => return,
                Ok(n) => on_error(n),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    log::error!("{bdf_log}: waiting for the VFIO error interrupt failed: {err}; errors go unnoticed");
                    return;
                }
            }
        })?;
        Ok(Self { evt, quit, thread: Some(thread) })
    }

    /// The eventfd to give VFIO.
    pub fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

/// `0000:02:00.0` -> `02:00.0`: thread names are 15 bytes at most.
fn short_bdf(bdf: &str) -> &str {
    bdf.strip_prefix("0000:").unwrap_or(bdf)
}

impl Drop for ErrorInterrupt {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Release);
        // A failed write means the counter is full: the thread is awake anyway.
        let _ = self.evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn each_signal_reaches_the_handler_and_drop_ends_the_thread() {
        let (tx, rx) = mpsc::channel();
        let irq = ErrorInterrupt::new("0000:02:00.0", Box::new(move |n| tx.send(n).unwrap())).unwrap();
        // What VFIO does: write to the eventfd.
        let fd = irq.fd();
        // SAFETY: fd is the live eventfd owned by `irq`; ManuallyDrop keeps this second
        // EventFd from closing it.
        let alias = std::mem::ManuallyDrop::new(unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        alias.write(1).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), 1);
        alias.write(1).unwrap();
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(), 1);
        drop(irq);
        assert!(rx.recv_timeout(std::time::Duration::from_millis(50)).is_err(), "no call for the quit wake-up");
    }
}
