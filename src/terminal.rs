//! Raw mode for an interactive console, restored when the guard drops (every exit path,
//! including errors and unwinding panics).

use std::io::IsTerminal;

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
        Some(Self { original })
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
