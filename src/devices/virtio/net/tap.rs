//! A Linux tap interface (`/dev/net/tun`, Documentation/networking/tuntap.rst): opened by
//! name with TUNSETIFF (which creates it when it does not exist), with the virtio-net header
//! in front of every frame when the kernel supports it (IFF_VNET_HDR), so checksum and
//! segmentation offloads pass between the guest and the host stack untouched.
//!
//! Hand-rolled over libc: the rust-vmm ecosystem has no published tap crate (cloud-hypervisor's
//! `net_util` and Firecracker's tap are not on the registry); the ioctls are few and fixed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::super::VirtioError;

const TUN_DEVICE: &str = "/dev/net/tun";
/// The virtio-net header of virtio 1.x (struct virtio_net_hdr_v1, num_buffers included).
pub const VNET_HDR_LEN: usize = 12;
const IFNAMSIZ: usize = 16;

/// struct ifreq with the flags member of its union (linux/if.h): 16 + 24 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = Self { name: [0; IFNAMSIZ], flags: 0, _pad: [0; 22] };
        let n = name.len().min(IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        req
    }
}

pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
    created: bool,
}

fn last_error(name: &str, op: &'static str) -> VirtioError {
    VirtioError::Tap { name: name.to_string(), op, source: std::io::Error::last_os_error() }
}

/// A name the kernel accepts for an interface (dev_valid_name()).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// The interface name and flags of a tap passed as `fd`, or why it cannot be used.
pub fn passed_tap(fd: RawFd) -> Result<(String, libc::c_short), VirtioError> {
    let label = format!("fd {fd}");
    let err = |op: &'static str, errno: i32| VirtioError::Tap {
        name: label.clone(),
        op,
        source: std::io::Error::from_raw_os_error(errno),
    };
    if fd < 3 {
        return Err(err("a passed tap fd (0, 1 and 2 are stdin, stdout and stderr)", libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(last_error(&label, "a passed tap fd (is it open in viaduct's process?)"));
    }
    let mut req = IfReq::new("");
    // SAFETY: TUNGETIFF fills a struct ifreq, which `req` is; on another kind of fd it fails.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
        return Err(last_error(&label, "TUNGETIFF (is it a /dev/net/tun fd attached to a tap?)"));
    }
    if req.flags & libc::IFF_TAP as libc::c_short == 0 {
        return Err(err("checking its kind: a tun (IP packets), not a tap (Ethernet frames)", libc::EINVAL));
    }
    if req.flags & libc::IFF_NO_PI as libc::c_short == 0 {
        return Err(err(
            "checking its flags: attached without IFF_NO_PI (frames would carry packet information)",
            libc::EINVAL,
        ));
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    Ok((String::from_utf8_lossy(&req.name[..len]).into_owned(), req.flags))
}

impl Tap {
    /// Opens tap `name`, creating it (and setting it up) when it does not exist yet. A
    /// created tap disappears when viaduct exits; an existing one is left as it was.
    pub fn open(name: &str) -> Result<Self, VirtioError> {
        if !valid_name(name) {
            return Err(VirtioError::Tap {
                name: name.to_string(),
                op: "checking the interface name",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let existed = Path::new("/sys/class/net").join(name).exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(|source| VirtioError::Tap {
                name: name.to_string(),
                op: "opening /dev/net/tun (modprobe tun?)",
                source,
            })?;
        let fd = file.as_raw_fd();
        let mut features: libc::c_uint = 0;
        // SAFETY: TUNGETFEATURES writes one unsigned int to the pointer, which is valid.
        let vnet_hdr = unsafe { libc::ioctl(fd, libc::TUNGETFEATURES, &mut features) } == 0
            && features & libc::IFF_VNET_HDR as libc::c_uint != 0;
        let mut req = IfReq::new(name);
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | if vnet_hdr { libc::IFF_VNET_HDR } else { 0 }) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a struct ifreq; `req` has its layout and size.
        if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
            return Err(last_error(name, "TUNSETIFF (is it a tap, not a tun or a multi-queue tap?)"));
        }
        let tap = Self { file, name: name.to_string(), vnet_hdr, created: !existed };
        if vnet_hdr {
            let len = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid.
            if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &len) } < 0 {
                return Err(last_error(name, "TUNSETVNETHDRSZ"));
            }
            tap.set_offload(0)?;
        }
        if tap.created {
            tap.set_up()?;
        }
        log::info!(
            "tap {name}: {} (virtio-net header {})",
            if tap.created { "created" } else { "attached" },
            if vnet_hdr { "on: offloads possible" } else { "off: no offloads" }
        );
        Ok(tap)
    }

    /// A tap someone else opened and passed to viaduct as fd `fd` (`--net fd=N`, as
    /// orchestrators pass them): checked to be an attached tap without packet information
    /// headers, duplicated (each boot gets its own copy; `fd` stays open), made non-blocking.
    /// Its virtio-net header is used when the tap was attached with IFF_VNET_HDR (it cannot
    /// be turned on once attached).
    pub fn from_fd(fd: RawFd) -> Result<Self, VirtioError> {
        let (name, flags) = passed_tap(fd)?;
        let label = format!("fd {fd} ({name})");
        // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor (checked below) and changes nothing else.
        let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if raw < 0 {
            return Err(last_error(&label, "duplicating the passed fd"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let file = File::from(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        // SAFETY: F_GETFL/F_SETFL on our descriptor; only O_NONBLOCK is added.
        let nonblocking = unsafe {
            let fl = libc::fcntl(raw, libc::F_GETFL);
            fl >= 0 && libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
        };
        if !nonblocking {
            return Err(last_error(&label, "making it non-blocking"));
        }
        let vnet_hdr = flags & libc::IFF_VNET_HDR as libc::c_short != 0;
        let tap = Self { file, name, vnet_hdr, created: false };
        if vnet_hdr {
            let len = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is valid.
            if unsafe { libc::ioctl(raw, libc::TUNSETVNETHDRSZ, &len) } < 0 {
                return Err(last_error(&label, "TUNSETVNETHDRSZ"));
            }
            tap.set_offload(0)?;
        }
        log::info!(
            "tap {}: passed as fd {fd} (virtio-net header {})",
            tap.name,
            if vnet_hdr { "on: offloads possible" } else { "off: attached without IFF_VNET_HDR, no offloads" }
        );
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames carry a virtio-net header (TUNSETVNETHDRSZ = [`VNET_HDR_LEN`]).
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// What the guest accepts on receive (TUN_F_* flags): the tap may then hand us packets
    /// with partial checksums or larger than the MTU (GSO) instead of finishing them itself.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), VirtioError> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value; no memory is passed.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) } < 0 {
            return Err(last_error(&self.name, "TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// Sets IFF_UP (SIOCGIFFLAGS / SIOCSIFFLAGS on a datagram socket).
    fn set_up(&self) -> Result<(), VirtioError> {
        // SAFETY: plain socket(2); the fd is owned by `sock` right after.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_error(&self.name, "socket for SIOCSIFFLAGS"));
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let mut req = IfReq::new(&self.name);
        // SAFETY: SIOCGIFFLAGS fills the flags of a struct ifreq, which `req` is.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(last_error(&self.name, "SIOCGIFFLAGS"));
        }
        req.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads a struct ifreq, which `req` is.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(last_error(&self.name, "SIOCSIFFLAGS (setting the link up)"));
        }
        Ok(())
    }

    pub fn try_clone(&self) -> Result<Self, VirtioError> {
        let file = self.file.try_clone().map_err(|source| VirtioError::Tap {
            name: self.name.clone(),
            op: "duplicating the fd",
            source,
        })?;
        Ok(Self { file, name: self.name.clone(), vnet_hdr: self.vnet_hdr, created: self.created })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// One frame (with its header when [`Tap::has_vnet_hdr`]); WouldBlock when none is queued.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Sends one frame; the tap takes it whole or not at all.
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_name("tap0"));
        assert!(valid_name("viaduct-net-01"));
        assert!(!valid_name(""));
        assert!(!valid_name("a-name-that-is-too-long"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(".."));
    }

    #[test]
    fn passed_fds_that_are_not_taps_are_refused() {
        let e = passed_tap(1).unwrap_err().to_string();
        assert!(e.contains("fd 1") && e.contains("stdin, stdout and stderr"), "{e}");
        let f = File::open("/dev/null").unwrap();
        let e = passed_tap(f.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("TUNGETIFF"), "{e}");
        let closed = f.as_raw_fd();
        drop(f);
        assert!(passed_tap(closed).unwrap_err().to_string().contains("is it open"));
        assert!(Tap::from_fd(closed).is_err());
    }

    /// A tap opened the way an orchestrator does and handed over as an fd number.
    #[test]
    fn a_passed_tap_fd_is_used_as_it_was_attached() {
        if OpenOptions::new().read(true).write(true).open(TUN_DEVICE).is_err() {
            eprintln!("skipped: no {TUN_DEVICE} here");
            return;
        }
        let name = format!("vdt{}", std::process::id() % 100_000);
        for (flags, vnet) in
            [(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR, true), (libc::IFF_TAP | libc::IFF_NO_PI, false)]
        {
            let fresh = OpenOptions::new().read(true).write(true).open(TUN_DEVICE).unwrap();
            let mut req = IfReq::new(&name);
            req.flags = flags as libc::c_short;
            // SAFETY: TUNSETIFF with a struct ifreq; the result is checked.
            if unsafe { libc::ioctl(fresh.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
                eprintln!("skipped: TUNSETIFF: {} (no CAP_NET_ADMIN?)", std::io::Error::last_os_error());
                return;
            }
            assert_eq!(passed_tap(fresh.as_raw_fd()).unwrap().0, name);
            let tap = Tap::from_fd(fresh.as_raw_fd()).unwrap();
            assert_eq!((tap.name(), tap.has_vnet_hdr()), (name.as_str(), vnet));
            assert_ne!(tap.raw_fd(), fresh.as_raw_fd(), "a duplicate, the passed fd stays");
            // SAFETY: F_GETFL reads the status flags of our duplicate.
            assert_ne!(unsafe { libc::fcntl(tap.raw_fd(), libc::F_GETFL) } & libc::O_NONBLOCK, 0);
        }
        // A tun (IP packets) is refused.
        let fresh = OpenOptions::new().read(true).write(true).open(TUN_DEVICE).unwrap();
        let mut req = IfReq::new(&name);
        req.flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF with a struct ifreq; the result is checked.
        assert!(unsafe { libc::ioctl(fresh.as_raw_fd(), libc::TUNSETIFF, &mut req) } >= 0);
        assert!(passed_tap(fresh.as_raw_fd()).unwrap_err().to_string().contains("a tun"));
    }

    #[test]
    fn bad_name_is_refused_before_opening_anything() {
        let err = Tap::open("x/y").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("x/y"), "{err}");
    }
}
