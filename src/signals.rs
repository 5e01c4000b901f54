//! Host signals: SIGTERM, SIGINT and SIGHUP (the terminal went away) arrive on a signalfd
//! read by the control loop (blocked in every thread) and stop the VM the orderly way
//! (devices released, `managed=on` devices given back); a no-op SIGRTMIN handler lets us kick
//! vCPU threads out of KVM_RUN.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vmm_sys_util::signal::{block_signal, create_sigset, register_signal_handler, SIGRTMIN};

pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("blocking signal {signal} failed: {cause:?}")]
    Block { signal: libc::c_int, cause: vmm_sys_util::signal::Error },
    #[error("creating the signalfd failed")]
    Signalfd(#[source] std::io::Error),
    #[error("installing the vCPU kick handler failed")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

pub fn vcpu_kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Must run before any other thread is spawned so every thread inherits the mask.
pub fn setup() -> Result<OwnedFd, SignalError> {
    for signal in STOP_SIGNALS {
        match block_signal(signal) {
            // Inherited already blocked: just as good.
            Ok(()) | Err(vmm_sys_util::signal::Error::SignalAlreadyBlocked(_)) => {}
            Err(cause) => return Err(SignalError::Block { signal, cause }),
        }
    }
    register_signal_handler(vcpu_kick_signal(), kick_handler).map_err(SignalError::KickHandler)?;
    let mask = create_sigset(&STOP_SIGNALS).map_err(|e| SignalError::Signalfd(e.into()))?;
    // SAFETY: `mask` is a valid sigset; the returned fd is checked and then owned.
    let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(SignalError::Signalfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The next pending stop signal on `fd`, if any.
pub fn read_signal(fd: &OwnedFd) -> Option<libc::c_int> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into `info`, which is that large.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    (n == size as isize).then_some(info.ssi_signo as libc::c_int)
}
