//! Choosing the IOMMU backend of a VM (iommufd with VFIO device cdevs, or the legacy
//! container), and the file descriptors an orchestrator passes in (`--device fd=N`,
//! `--iommufd fd=N`).
//!
//! iommufd (Linux 6.6+, `CONFIG_IOMMUFD` + `CONFIG_VFIO_DEVICE_CDEV`) shows as `/dev/iommu`
//! plus, per device bound to vfio-pci, `/sys/bus/pci/devices/BDF/vfio-dev/vfioN` with its node
//! `/dev/vfio/devices/vfioN`. It is the default when all of that exists and is usable by this
//! process; the legacy type1 container (`/dev/vfio/vfio` + `/dev/vfio/GROUP`) otherwise.
//!
//! A passed fd is recognised by what it is, not by a path someone claims: `fstat` gives the
//! character device number, and `/sys/dev/char/MAJ:MIN` links to the kernel device behind it:
//! `.../BDF/vfio-dev/vfioN` for a VFIO device cdev, `.../misc/iommu` for `/dev/iommu`.
//!
//! These few lookups decide which nodes this process opens, the same ones vfio-ioctls makes
//! when it opens a device (it reads `iommu_group` and `vfio-dev/` itself), so they live with
//! the opening code rather than in `hostadmin`, whose inventory answers the admin's questions.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use iommufd_ioctls::IommuFd;

use pci::Bdf;

/// `--device ...,iommu=`: which backend a device asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IommuMode {
    /// iommufd when the host offers it for every device of the VM, else legacy.
    #[default]
    Auto,
    Legacy,
    Iommufd,
}

impl FromStr for IommuMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "legacy" => Ok(Self::Legacy),
            "iommufd" => Ok(Self::Iommufd),
            _ => Err(format!("iommu={s}: use iommufd, legacy or auto")),
        }
    }
}

/// The backend a VM uses (one for all its devices: each backend pins guest RAM on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Iommufd,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Legacy => "legacy VFIO container",
            Self::Iommufd => "iommufd",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("{bdf} asks for iommu=legacy and {other} for iommufd: one VM uses one IOMMU backend; give the same iommu= to every --device")]
    Conflict { bdf: Bdf, other: String },
    #[error(
        "{bdf}: iommu=legacy with a passed VFIO device fd: a device cdev works only with iommufd; drop iommu=legacy"
    )]
    LegacyWithFd { bdf: Bdf },
    #[error("--iommufd fd= with iommu=legacy on {bdf}: drop one of them")]
    LegacyWithIommufdFd { bdf: Bdf },
    #[error("{bdf}: iommufd asked for, but {path} is missing: this kernel has no iommufd (Linux 6.6+ with CONFIG_IOMMUFD); use iommu=legacy")]
    NoIommufd { bdf: Bdf, path: String },
    #[error("{bdf}: iommufd asked for, but the device has no VFIO cdev ({path} is missing): this kernel lacks CONFIG_VFIO_DEVICE_CDEV; use iommu=legacy")]
    NoCdev { bdf: Bdf, path: String },
}

/// What one device asks for, as [`choose_backend`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct BackendRequest {
    pub bdf: Bdf,
    pub mode: IommuMode,
    /// The device comes as a passed VFIO cdev fd (`--device fd=N`).
    pub passed_fd: bool,
}

/// The host's iommufd pieces, under `root` (`/` on a real host; a directory in tests).
#[derive(Clone, Debug)]
pub struct IommufdHost {
    root: PathBuf,
}

impl IommufdHost {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn system() -> Self {
        Self::new("/")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `/dev/iommu`.
    pub fn iommu_dev(&self) -> PathBuf {
        self.path("dev/iommu")
    }

    /// The name (`vfioN`) of the device's VFIO cdev, from its sysfs `vfio-dev/` directory;
    /// None when the kernel made none (no cdev support, or not bound to vfio-pci).
    pub fn cdev_name(&self, bdf: Bdf) -> Option<String> {
        let dir = self.path(&format!("sys/bus/pci/devices/{bdf}/vfio-dev"));
        let mut names = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_cdev_name(n));
        let name = names.next()?;
        // vfio-pci registers one VFIO device per PCI function.
        names.next().is_none().then_some(name)
    }

    /// The node of a cdev named by [`Self::cdev_name`].
    pub fn cdev_node(&self, name: &str) -> PathBuf {
        self.path("dev/vfio/devices").join(name)
    }

    /// The device's cdev node when it exists and this process may open it read-write.
    fn usable_cdev(&self, bdf: Bdf) -> Option<PathBuf> {
        let node = self.cdev_node(&self.cdev_name(bdf)?);
        usable(&node).then_some(node)
    }
}

fn is_cdev_name(n: &str) -> bool {
    n.strip_prefix("vfio").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `path` exists and this process may open it for reading and writing (effective
/// ids, as open() checks).
fn usable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::R_OK | libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// Picks the VM's backend. Passed device fds and `--iommufd fd=` need iommufd; an explicit
/// `iommu=iommufd` needs `/dev/iommu` (unless passed; each device's cdev is checked by
/// [`check_cdevs`]); `auto` takes iommufd only when `/dev/iommu` and every device's cdev are
/// there and usable, else the legacy container.
pub fn choose_backend(
    host: &IommufdHost,
    requests: &[BackendRequest],
    iommufd_fd_passed: bool,
) -> Result<Backend, BackendError> {
    let legacy = requests.iter().find(|r| r.mode == IommuMode::Legacy);
    if let Some(l) = legacy {
        if l.passed_fd {
            return Err(BackendError::LegacyWithFd { bdf: l.bdf });
        }
        if let Some(o) = requests.iter().find(|r| r.mode == IommuMode::Iommufd || r.passed_fd) {
            return Err(BackendError::Conflict { bdf: l.bdf, other: o.bdf.to_string() });
        }
        if iommufd_fd_passed {
            return Err(BackendError::LegacyWithIommufdFd { bdf: l.bdf });
        }
        return Ok(Backend::Legacy);
    }
    let forced = iommufd_fd_passed || requests.iter().any(|r| r.mode == IommuMode::Iommufd || r.passed_fd);
    if !forced {
        let all_usable = (usable(&host.iommu_dev()) || requests.is_empty())
            && requests.iter().all(|r| host.usable_cdev(r.bdf).is_some());
        return Ok(if all_usable && !requests.is_empty() { Backend::Iommufd } else { Backend::Legacy });
    }
    if let Some(r) = requests.first().filter(|_| !iommufd_fd_passed && !host.iommu_dev().exists()) {
        return Err(BackendError::NoIommufd { bdf: r.bdf, path: host.iommu_dev().display().to_string() });
    }
    Ok(Backend::Iommufd)
}

/// With iommufd: every device not passed as an fd has its cdev. Run after the pre-flight,
/// which names a device that is missing or not on vfio-pci more precisely.
pub fn check_cdevs(host: &IommufdHost, requests: &[BackendRequest]) -> Result<(), BackendError> {
    // A passed cdev was checked when its fd was inspected.
    match requests.iter().find(|r| !r.passed_fd && host.cdev_name(r.bdf).is_none()) {
        Some(r) => {
            let path = host.path(&format!("sys/bus/pci/devices/{}/vfio-dev", r.bdf));
            Err(BackendError::NoCdev { bdf: r.bdf, path: path.display().to_string() })
        }
        None => Ok(()),
    }
}

/// What a passed fd turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PassedFd {
    /// A VFIO device cdev (`/dev/vfio/devices/NAME`) of the PCI function `bdf`.
    DeviceCdev { bdf: Bdf, name: String },
    /// `/dev/iommu`.
    Iommufd,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdError {
    #[error("fd {fd}: 0, 1 and 2 are the console's, not a passed device")]
    Stdio { fd: RawFd },
    #[error("fd {fd} is not open in viaduct (pass it without close-on-exec, e.g. `5<>/dev/vfio/devices/vfio0` in the shell that starts viaduct)")]
    Closed { fd: RawFd },
    #[error("fd {fd} ({what}) is not open for reading and writing (open it with O_RDWR: `<>` in a shell)")]
    NotReadWrite { fd: RawFd, what: String },
    #[error("fd {fd} ({what}) is not a {want}")]
    Wrong { fd: RawFd, what: String, want: &'static str },
    #[error("fd {fd}: {what}: {reason}")]
    Inspect { fd: RawFd, what: String, reason: String },
}

/// What `/proc/self/fd/N` names, for messages.
fn fd_name(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map_or_else(|_| "?".into(), |p| p.display().to_string())
}

const WANT_CDEV: &str = "VFIO device cdev (/dev/vfio/devices/vfioN)";
const WANT_IOMMU: &str = "/dev/iommu";

/// Inspects a passed fd without taking it over: open, read-write, and a VFIO device cdev or
/// `/dev/iommu` according to the kernel (see the module docs). `want` names what the caller
/// needs, for the error.
fn inspect_fd(host: &IommufdHost, fd: RawFd, want: &'static str) -> Result<PassedFd, FdError> {
    if (0..=2).contains(&fd) {
        return Err(FdError::Stdio { fd });
    }
    // SAFETY: F_GETFL on any integer is harmless; an invalid one fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(FdError::Closed { fd });
    }
    let what = fd_name(fd);
    if flags & libc::O_ACCMODE != libc::O_RDWR {
        return Err(FdError::NotReadWrite { fd, what });
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat into the buffer we own; the fd was just seen to be open.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        let reason = std::io::Error::last_os_error().to_string();
        return Err(FdError::Inspect { fd, what, reason });
    }
    // SAFETY: fstat succeeded and filled it.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(FdError::Wrong { fd, what, want });
    }
    let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    let link = host.path(&format!("sys/dev/char/{major}:{minor}"));
    let target = std::fs::read_link(&link).map_err(|_| FdError::Wrong { fd, what: what.clone(), want })?;
    classify_device_link(&target).ok_or(FdError::Wrong { fd, what, want })
}

/// `.../0000:02:00.0/vfio-dev/vfio0` or `.../misc/iommu` (a `/sys/dev/char` link target).
fn classify_device_link(target: &Path) -> Option<PassedFd> {
    let name = target.file_name()?.to_str()?;
    let parent = target.parent()?;
    if parent.file_name()? == "misc" && name == "iommu" {
        return Some(PassedFd::Iommufd);
    }
    if parent.file_name()? == "vfio-dev" && is_cdev_name(name) {
        let bdf = parent.parent()?.file_name()?.to_str()?.parse().ok()?;
        return Some(PassedFd::DeviceCdev { bdf, name: name.to_string() });
    }
    None
}

/// Checks that `fd` is a VFIO device cdev and returns its PCI function.
pub fn device_fd_bdf(host: &IommufdHost, fd: RawFd) -> Result<Bdf, FdError> {
    match inspect_fd(host, fd, WANT_CDEV)? {
        PassedFd::DeviceCdev { bdf, .. } => Ok(bdf),
        PassedFd::Iommufd => Err(FdError::Wrong { fd, what: fd_name(fd), want: WANT_CDEV }),
    }
}

/// Checks that `fd` is `/dev/iommu`.
pub fn check_iommufd_fd(host: &IommufdHost, fd: RawFd) -> Result<(), FdError> {
    match inspect_fd(host, fd, WANT_IOMMU)? {
        PassedFd::Iommufd => Ok(()),
        PassedFd::DeviceCdev { .. } => Err(FdError::Wrong { fd, what: fd_name(fd), want: WANT_IOMMU }),
    }
}

/// A new close-on-exec fd for the same open file as `fd` (which stays open).
pub(crate) fn dup_fd(fd: RawFd) -> std::io::Result<File> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we then own, or fails.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { File::from_raw_fd(new) })
}

/// The process's iommufd and which passed device fds are bound to it.
///
/// Process-wide because the kernel's state is: VFIO_DEVICE_BIND_IOMMUFD binds the open file of
/// a cdev to one iommufd until that file is closed, and a passed fd stays open for viaduct's
/// whole life (a guest reboot with `--on-reboot restart` builds a new VM that opens the same
/// devices again). So every VM of the process uses this one iommufd, each with an IOAS of its
/// own, and a passed cdev is bound once and attached to each VM's IOAS.
struct ProcessIommufd {
    iommufd: Arc<IommuFd>,
    /// The passed fd it came from (`--iommufd fd=N`), if any.
    passed: Option<RawFd>,
    bound: HashSet<RawFd>,
}

static PROCESS_IOMMUFD: Mutex<Option<ProcessIommufd>> = Mutex::new(None);

/// The process's iommufd: a dup of `passed` (`--iommufd fd=N`) or `/dev/iommu` opened once.
pub(crate) fn process_iommufd(passed: Option<RawFd>) -> std::io::Result<Arc<IommuFd>> {
    let mut p = PROCESS_IOMMUFD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = p.as_ref() {
        if p.passed == passed {
            return Ok(p.iommufd.clone());
        }
    }
    let file = match passed {
        Some(fd) => dup_fd(fd)?,
        None => std::fs::OpenOptions::new().read(true).write(true).open("/dev/iommu")?,
    };
    log::debug!(
        "iommufd: fd {} ({})",
        file.as_raw_fd(),
        passed.map_or("/dev/iommu".into(), |f| format!("passed fd {f}"))
    );
    let iommufd = Arc::new(IommuFd::new_from_fd(file));
    *p = Some(ProcessIommufd { iommufd: iommufd.clone(), passed, bound: HashSet::new() });
    Ok(iommufd)
}

/// Whether passed device fd `fd` was already bound to the process's iommufd.
pub(crate) fn passed_fd_bound(fd: RawFd) -> bool {
    PROCESS_IOMMUFD.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|p| p.bound.contains(&fd))
}

pub(crate) fn mark_passed_fd_bound(fd: RawFd) {
    if let Some(p) = PROCESS_IOMMUFD.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        p.bound.insert(fd);
    }
}

/// Whether a character device node is there (tests and the testbed look for them).
pub fn is_char_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// 0000:02:00.0 and 0000:01:10.0.
    const NVME: Bdf = Bdf::from_devfn(0, 2, 0);
    const VF: Bdf = Bdf::from_devfn(0, 1, 0x10 << 3);

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("viaduct-iommufd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A tree with `/dev/iommu` (when `iommu`) and cdevs for `cdevs` (sysfs entry + node).
    /// The nodes are plain files: only existence and access are looked at.
    fn tree(tag: &str, iommu: bool, cdevs: &[(Bdf, &str)]) -> IommufdHost {
        let root = temp(tag);
        std::fs::create_dir_all(root.join("dev/vfio/devices")).unwrap();
        if iommu {
            std::fs::write(root.join("dev/iommu"), "").unwrap();
        }
        for (bdf, name) in cdevs {
            std::fs::create_dir_all(root.join(format!("sys/bus/pci/devices/{bdf}/vfio-dev/{name}"))).unwrap();
            std::fs::write(root.join("dev/vfio/devices").join(name), "").unwrap();
        }
        IommufdHost::new(root)
    }

    fn req(bdf: Bdf, mode: IommuMode) -> BackendRequest {
        BackendRequest { bdf, mode, passed_fd: false }
    }

    #[test]
    fn auto_takes_iommufd_only_when_every_device_has_a_cdev() {
        let h = tree("auto-all", true, &[(NVME, "vfio0"), (VF, "vfio1")]);
        let both = [req(NVME, IommuMode::Auto), req(VF, IommuMode::Auto)];
        assert_eq!(choose_backend(&h, &both, false), Ok(Backend::Iommufd));
        assert_eq!(h.cdev_name(VF).as_deref(), Some("vfio1"));

        let h = tree("auto-one", true, &[(NVME, "vfio0")]);
        assert_eq!(choose_backend(&h, &both, false), Ok(Backend::Legacy));
        assert_eq!(choose_backend(&h, &both[..1], false), Ok(Backend::Iommufd));

        // The sysfs entry without its /dev node (e.g. no devtmpfs in a container).
        let h = tree("auto-nonode", true, &[(NVME, "vfio0")]);
        std::fs::remove_file(h.cdev_node("vfio0")).unwrap();
        assert_eq!(choose_backend(&h, &both[..1], false), Ok(Backend::Legacy));

        // A kernel without iommufd (Debian's 6.1 and 6.12): no /dev/iommu, no vfio-dev.
        let h = tree("auto-none", false, &[]);
        assert_eq!(choose_backend(&h, &both, false), Ok(Backend::Legacy));
        assert_eq!(choose_backend(&h, &[], false), Ok(Backend::Legacy));
    }

    #[test]
    fn explicit_choices_and_their_errors() {
        let h = tree("explicit", true, &[(NVME, "vfio0")]);
        assert_eq!(choose_backend(&h, &[req(NVME, IommuMode::Legacy)], false), Ok(Backend::Legacy));
        assert_eq!(choose_backend(&h, &[req(NVME, IommuMode::Iommufd)], false), Ok(Backend::Iommufd));
        let both = [req(NVME, IommuMode::Iommufd), req(VF, IommuMode::Auto)];
        assert_eq!(choose_backend(&h, &both, false), Ok(Backend::Iommufd));
        assert_eq!(check_cdevs(&h, &both[..1]), Ok(()));
        let e = check_cdevs(&h, &both).unwrap_err();
        assert!(matches!(e, BackendError::NoCdev { bdf: VF, .. }), "{e}");
        assert!(e.to_string().contains("vfio-dev") && e.to_string().contains("iommu=legacy"), "{e}");
        let passed = BackendRequest { bdf: VF, mode: IommuMode::Auto, passed_fd: true };
        assert_eq!(check_cdevs(&h, &[both[0], passed]), Ok(()));
        let e = choose_backend(&h, &[req(NVME, IommuMode::Legacy), req(VF, IommuMode::Iommufd)], false).unwrap_err();
        assert!(matches!(e, BackendError::Conflict { .. }), "{e}");
        let e = choose_backend(&h, &[req(NVME, IommuMode::Legacy)], true).unwrap_err();
        assert!(matches!(e, BackendError::LegacyWithIommufdFd { .. }), "{e}");
        let fd_req = BackendRequest { bdf: VF, mode: IommuMode::Legacy, passed_fd: true };
        assert!(matches!(choose_backend(&h, &[fd_req], false), Err(BackendError::LegacyWithFd { .. })));

        let h = tree("explicit-none", false, &[]);
        let e = choose_backend(&h, &[req(NVME, IommuMode::Iommufd)], false).unwrap_err();
        assert!(matches!(e, BackendError::NoIommufd { .. }), "{e}");
        assert!(e.to_string().contains("CONFIG_IOMMUFD"), "{e}");
        // A passed device fd forces iommufd; with --iommufd fd= no /dev/iommu is needed.
        let fd_req = BackendRequest { bdf: NVME, mode: IommuMode::Auto, passed_fd: true };
        assert!(matches!(choose_backend(&h, &[fd_req], false), Err(BackendError::NoIommufd { .. })));
        assert_eq!(choose_backend(&h, &[fd_req], true), Ok(Backend::Iommufd));
    }

    #[test]
    fn cdev_names() {
        assert!(is_cdev_name("vfio0") && is_cdev_name("vfio12"));
        assert!(!is_cdev_name("vfio") && !is_cdev_name("vfio-1") && !is_cdev_name("noiommu-vfio0"));
        // Two cdevs for one function is not something the kernel makes: refuse to guess.
        let h = tree("two", true, &[(NVME, "vfio0"), (NVME, "vfio1")]);
        assert_eq!(h.cdev_name(NVME), None);
    }

    #[test]
    fn device_links() {
        let cdev = Path::new("../../devices/pci0000:00/0000:00:02.0/0000:02:00.0/vfio-dev/vfio3");
        assert_eq!(classify_device_link(cdev), Some(PassedFd::DeviceCdev { bdf: NVME, name: "vfio3".into() }));
        assert_eq!(classify_device_link(Path::new("../../devices/virtual/misc/iommu")), Some(PassedFd::Iommufd));
        for other in
            ["../../devices/virtual/misc/vfio", "../../devices/virtual/vfio/3", "../../devices/virtual/mem/null"]
        {
            assert_eq!(classify_device_link(Path::new(other)), None, "{other}");
        }
    }

    /// Real fds against a fake `/sys/dev/char`: /dev/null's number made to look like a cdev.
    #[test]
    fn inspecting_passed_fds() {
        let root = temp("fds");
        let h = IommufdHost::new(&root);
        let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").unwrap();
        let meta = std::fs::metadata("/dev/null").unwrap();
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        let (maj, min) = (libc::major(rdev), libc::minor(rdev));
        std::fs::create_dir_all(root.join("sys/dev/char")).unwrap();
        let link = root.join(format!("sys/dev/char/{maj}:{min}"));

        // Not a VFIO cdev (the kernel's real link for /dev/null).
        symlink("../../devices/virtual/mem/null", &link).unwrap();
        let e = device_fd_bdf(&h, null.as_raw_fd()).unwrap_err();
        assert!(matches!(e, FdError::Wrong { .. }), "{e}");
        assert!(e.to_string().contains("/dev/null"), "{e}");

        std::fs::remove_file(&link).unwrap();
        symlink("../../devices/pci0000:00/0000:00:02.0/0000:02:00.0/vfio-dev/vfio0", &link).unwrap();
        assert_eq!(device_fd_bdf(&h, null.as_raw_fd()), Ok(NVME));
        assert!(matches!(check_iommufd_fd(&h, null.as_raw_fd()), Err(FdError::Wrong { .. })));

        std::fs::remove_file(&link).unwrap();
        symlink("../../devices/virtual/misc/iommu", &link).unwrap();
        assert_eq!(check_iommufd_fd(&h, null.as_raw_fd()), Ok(()));
        assert!(matches!(device_fd_bdf(&h, null.as_raw_fd()), Err(FdError::Wrong { .. })));

        // Read-only, a regular file, closed, the console.
        let ro = File::open("/dev/null").unwrap();
        assert!(matches!(inspect_fd(&h, ro.as_raw_fd(), WANT_CDEV), Err(FdError::NotReadWrite { .. })));
        let regular_path = root.join("regular");
        std::fs::write(&regular_path, "x").unwrap();
        let regular = std::fs::OpenOptions::new().read(true).write(true).open(&regular_path).unwrap();
        let e = inspect_fd(&h, regular.as_raw_fd(), WANT_CDEV).unwrap_err();
        assert!(matches!(e, FdError::Wrong { .. }) && e.to_string().contains("regular"), "{e}");
        // (A number far above any open fd: one just closed could be reused by another test.)
        assert_eq!(inspect_fd(&h, 1 << 20, WANT_CDEV), Err(FdError::Closed { fd: 1 << 20 }));
        assert_eq!(inspect_fd(&h, 2, WANT_IOMMU), Err(FdError::Stdio { fd: 2 }));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn modes() {
        assert_eq!("iommufd".parse(), Ok(IommuMode::Iommufd));
        assert_eq!("legacy".parse(), Ok(IommuMode::Legacy));
        assert_eq!("auto".parse(), Ok(IommuMode::Auto));
        assert!("vfio".parse::<IommuMode>().is_err());
    }
}
