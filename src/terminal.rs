//! Raw mode for an interactive console, restored when the guard drops (every exit path,
//! including errors and unwinding panics).

use std::io::IsTerminal;
use std::sync::OnceLock;

/// The settings raw mode replaced, for a fatal signal's handler (`seccomp`'s SIGSYS report),
/// which cannot wait for the guard's drop. Set once, read without locks.
static ORIGINAL: OnceLock<libc::termios> = OnceLock::new();

pub struct RawModeGuard {
    original: libc::termios,
}

impl RawModeGuard {
    /// Puts stdin in raw mode if it is a terminal; `None` otherwise (pipe, file, /dev/null).
    pub fn enable_on_stdin() -> Option<Self> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it and its result is checked.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (is_terminal succeeded) and `original` is a valid termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            log::warn!("tcgetattr on stdin failed: {}", std::io::Error::last_os_error());
            return None;
        }
        let mut raw = original;
        // SAFETY: cfmakeraw only modifies the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so our own log lines (stderr) still start at column 0.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: valid fd and termios pointer; the result is checked.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            log::warn!("putting stdin in raw mode failed: {}", std::io::Error::last_os_error());
            return None;
        }
        let _ = ORIGINAL.set(original);
        Some(Self { original })
    }
}

/// Puts the terminal back as raw mode found it, from a signal handler about to end the
/// process (async-signal-safe: one tcsetattr, no locks, no allocation).
pub fn restore_after_fatal_signal() {
    if let Some(original) = ORIGINAL.get() {
        // SAFETY: restores settings read from the same fd; the result does not matter.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in enable_on_stdin on the same fd.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.original) } != 0 {
            log::warn!("restoring the terminal failed: {}", std::io::Error::last_os_error());
        }
    }
}
