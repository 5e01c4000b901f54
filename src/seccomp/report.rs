//! A blocked system call becomes one error line and the end of the process, not a silent
//! death: the filters return SECCOMP_RET_TRAP, the kernel raises SIGSYS on the calling thread,
//! and this handler names the call and the thread.
//!
//! Only async-signal-safe work happens in the handler: the thread's name is copied into a
//! thread-local when its filter is installed, the line is formatted into a stack buffer and
//! written with one write(2), the terminal is put back, and the process ends with _exit(2).
//! Nothing is torn down: the kernel closes every fd, which releases (and resets) assigned
//! devices; `managed=on` devices stay bound to vfio-pci until `viaductctl restore`.

use std::cell::Cell;
use std::io;

use super::syscall_names::NAMES;
use super::ThreadKind;

/// si_code of a SIGSYS raised by a seccomp filter (include/uapi/asm-generic/siginfo.h).
const SYS_SECCOMP: libc::c_int = 1;
const NAME_MAX: usize = 24;

#[derive(Clone, Copy)]
struct Identity {
    name: [u8; NAME_MAX],
    len: u8,
    kind: Option<ThreadKind>,
}

thread_local! {
    // const-initialised and without a destructor: reading it is a plain TLS access, safe in
    // a signal handler.
    static IDENTITY: Cell<Identity> = const { Cell::new(Identity { name: [0; NAME_MAX], len: 0, kind: None }) };
}

/// Remembers the calling thread's name and filter for the report.
pub(super) fn set_identity(kind: ThreadKind) {
    let mut id = Identity { name: [0; NAME_MAX], len: 0, kind: Some(kind) };
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("main").as_bytes();
    let n = name.len().min(NAME_MAX);
    id.name[..n].copy_from_slice(&name[..n]);
    id.len = n as u8;
    IDENTITY.with(|c| c.set(id));
}

pub(super) fn current_kind() -> Option<ThreadKind> {
    IDENTITY.with(|c| c.get().kind)
}

/// The `_sigsys` member of siginfo_t (include/uapi/asm-generic/siginfo.h), which the libc
/// crate does not expose: after si_signo, si_errno, si_code and padding to 8 bytes.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A line built without allocating.
struct Line {
    buf: [u8; 320],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: u64, radix: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(v % radix) as usize];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report, separate from the handler so it can be tested.
fn describe(line: &mut Line, id: &Identity, syscall: i64, arg1: u64) {
    line.push(b"viaduct: error: thread ");
    line.push(if id.len == 0 { b"?" } else { &id.name[..usize::from(id.len)] });
    line.push(b" made a system call its seccomp filter (");
    line.push(id.kind.map_or("none", ThreadKind::name).as_bytes());
    line.push(b") does not allow: ");
    match usize::try_from(syscall).ok().and_then(|n| NAMES.get(n)).filter(|n| !n.is_empty()) {
        Some(name) => {
            line.push(name.as_bytes());
            line.push(b" (");
            line.push_num(syscall as u64, 10);
            line.push(b")");
        }
        None => {
            line.push(b"system call ");
            line.push_num(syscall as u64, 10);
        }
    }
    if syscall == libc::SYS_ioctl {
        line.push(b" request 0x");
        line.push_num(arg1 & 0xffff_ffff, 16);
    }
    line.push(b"; this is a viaduct bug (--seccomp log lets such calls through and logs them)\n");
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: an SA_SIGINFO handler gets a valid siginfo; for SYS_SECCOMP the kernel filled
    // the _sigsys member that SigsysInfo lays out.
    let info = unsafe { &*(info as *const SigsysInfo) };
    let syscall = if info.code == SYS_SECCOMP { i64::from(info.syscall) } else { -1 };
    // SAFETY: the third argument of an SA_SIGINFO handler is the interrupted ucontext; the
    // trapped call's second argument is still in rsi.
    let arg1 = unsafe { (*(context as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RSI as usize] } as u64;
    let id = IDENTITY.with(|c| c.get());
    let mut line = Line { buf: [0; 320], len: 0 };
    if syscall < 0 {
        line.push(b"viaduct: error: SIGSYS received\n");
    } else {
        describe(&mut line, &id, syscall, arg1);
    }
    // SAFETY: writes our own buffer to stderr; the result does not matter, we exit next.
    let _ = unsafe { libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len) };
    crate::terminal::restore_after_fatal_signal();
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(1) };
}

/// Installs the SIGSYS handler (process-wide).
pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; the fields set below are the
    // handler, its flags and an empty mask.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa_mask is a sigset_t owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: installs a handler that only does async-signal-safe work (see the module doc).
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(id: &Identity, syscall: i64, arg1: u64) -> String {
        let mut line = Line { buf: [0; 320], len: 0 };
        describe(&mut line, id, syscall, arg1);
        String::from_utf8(line.buf[..line.len].to_vec()).unwrap()
    }

    #[test]
    fn the_report_names_thread_filter_and_call() {
        let mut id = Identity { name: [0; NAME_MAX], len: 5, kind: Some(ThreadKind::Vcpu) };
        id.name[..5].copy_from_slice(b"vcpu1");
        let s = text(&id, libc::SYS_socket, 0);
        assert!(s.starts_with("viaduct: error: thread vcpu1 made a system call its seccomp filter (vcpu)"), "{s}");
        assert!(s.contains("does not allow: socket (41);"), "{s}");
        assert!(s.ends_with('\n') && s.matches('\n').count() == 1);
        let s = text(&id, libc::SYS_ioctl, 0xffff_ffff_0000_ae01);
        assert!(s.contains("ioctl (16) request 0xae01;"), "{s}");
        let s = text(&id, 9999, 0);
        assert!(s.contains("does not allow: system call 9999;"), "{s}");
    }
}
