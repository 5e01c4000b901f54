//! What an orchestrator does before it starts viaduct with `--net fd=N`: opens a tap (as
//! root), and runs a command with it as fd 3, e.g.
//!
//!     tap_fd tapfd0 -- viaduct --user vd --net fd=3 ...
//!
//! `--no-vnet-hdr` attaches it without IFF_VNET_HDR. The tap is not persistent: it goes away
//! when the last fd to it closes. Used by the testbed's `unprivileged` scenario.

use std::ffi::CString;
use std::os::unix::process::CommandExt;

/// struct ifreq with its flags member (linux/if.h).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn fail(what: &str) -> ! {
    eprintln!("tap_fd: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sep) = args.iter().position(|a| a == "--") else {
        eprintln!("usage: tap_fd TAP [--no-vnet-hdr] -- COMMAND [ARGS...]");
        std::process::exit(2);
    };
    let (opts, cmd) = (&args[..sep], &args[sep + 1..]);
    let (Some(name), Some(program)) = (opts.first(), cmd.first()) else {
        eprintln!("usage: tap_fd TAP [--no-vnet-hdr] -- COMMAND [ARGS...]");
        std::process::exit(2);
    };
    let vnet_hdr = !opts.iter().any(|o| o == "--no-vnet-hdr");
    let path = CString::new("/dev/net/tun").unwrap();
    // SAFETY: open(2) with a NUL-terminated path; the fd is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
    if fd < 0 {
        fail("opening /dev/net/tun");
    }
    let mut req = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
    let n = name.len().min(15);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
        fail("TUNSETIFF");
    }
    if fd != 3 {
        // SAFETY: dup2 onto fd 3, left open across exec (dup2 clears close-on-exec).
        if unsafe { libc::dup2(fd, 3) } < 0 {
            fail("dup2");
        }
        // SAFETY: closes the original; fd 3 holds the tap now.
        unsafe { libc::close(fd) };
    }
    let err = std::process::Command::new(program).args(&cmd[1..]).exec();
    eprintln!("tap_fd: running {program}: {err}");
    std::process::exit(1);
}
