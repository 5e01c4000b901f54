//! `--device` argument:
//! `path=/sys/bus/pci/devices/BDF[,id=NAME][,rombar=on|off][,romfile=PATH][,managed=on|off]`
//! `[,iommu=iommufd|legacy|auto]`, or a bare BDF; or `fd=N[,...]`: a VFIO device cdev already
//! opened by the parent, whose PCI function is read from the fd itself (a `path=`/`bdf=`
//! given with it must name the same function).

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::str::FromStr;

use pci::Bdf;

use crate::iommufd::{self, FdError, IommuMode, IommufdHost};

const SYSFS_DEVICES: &str = "/sys/bus/pci/devices/";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("--device '{spec}': {reason}")]
    Parse { spec: String, reason: String },
}

/// One device the user asked to assign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub bdf: Bdf,
    /// The sysfs directory (`/sys/bus/pci/devices/BDF`).
    pub path: PathBuf,
    pub id: String,
    pub rombar: bool,
    pub romfile: Option<PathBuf>,
    /// `managed=on`: the VMM binds the device (and its IOMMU group) to vfio-pci itself and
    /// gives it back to its original driver at exit (the `hostadmin` crate's `ManagedDevices`, wired in by the VMM).
    pub managed: bool,
    /// `iommu=`: the IOMMU backend asked for (see [`crate::iommufd::choose_backend`]).
    pub iommu: IommuMode,
    /// `fd=N`: a passed VFIO device cdev fd (its function is `bdf`).
    pub fd: Option<RawFd>,
}

/// The keys `--device` takes, for the VMM's generic option parser.
pub const DEVICE_KEYS: &[&str] = &["path", "bdf", "fd", "id", "rombar", "romfile", "managed", "iommu"];

/// Learns the PCI function of a passed VFIO cdev fd (the real one reads the kernel's view of
/// the fd; tests give their own).
pub trait FdResolver {
    fn device_fd_bdf(&self, fd: RawFd) -> Result<Bdf, FdError>;
}

/// The running host.
pub struct SystemFds;

impl FdResolver for SystemFds {
    fn device_fd_bdf(&self, fd: RawFd) -> Result<Bdf, FdError> {
        iommufd::device_fd_bdf(&IommufdHost::system(), fd)
    }
}

fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={value}: use on or off")),
    }
}

impl FromStr for DeviceSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        Self::parse(spec, &SystemFds)
    }
}

impl DeviceSpec {
    /// Parses one `--device` value; `fds` inspects a passed `fd=` (without taking it over).
    pub fn parse(spec: &str, fds: &dyn FdResolver) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError::Parse { spec: spec.to_string(), reason };
        let mut bdf = None;
        let mut id = None;
        let mut rombar = true;
        let mut romfile = None;
        let mut managed = false;
        let mut iommu = IommuMode::Auto;
        let mut fd = None;
        for (i, part) in spec.split(',').enumerate() {
            let (key, value) = match part.split_once('=') {
                Some(kv) => kv,
                // A bare BDF is accepted as the first item.
                None if i == 0 => ("host", part),
                None => return Err(err(format!("'{part}' is not key=value"))),
            };
            match key {
                "path" | "host" | "bdf" => {
                    if bdf.is_some() {
                        return Err(err("the device is given twice".into()));
                    }
                    let text = value.trim_end_matches('/');
                    let text = text.strip_prefix(SYSFS_DEVICES).unwrap_or(text);
                    if text.contains('/') {
                        return Err(err(format!("'{value}' is not {SYSFS_DEVICES}BDF")));
                    }
                    bdf = Some(Bdf::from_str(text).map_err(|e| err(e.to_string()))?);
                }
                "id" => {
                    let ok = !value.is_empty()
                        && value.len() <= 64
                        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !ok {
                        return Err(err("id must be 1-64 characters of [A-Za-z0-9_-]".into()));
                    }
                    id = Some(value.to_string());
                }
                "rombar" => rombar = on_off(key, value).map_err(err)?,
                "managed" => managed = on_off(key, value).map_err(err)?,
                "iommu" => iommu = value.parse().map_err(err)?,
                "fd" => {
                    let n = value.parse::<RawFd>().ok().filter(|n| *n >= 0);
                    fd = Some(n.ok_or_else(|| err(format!("fd={value}: give a file descriptor number")))?);
                }
                "romfile" => {
                    if value.is_empty() {
                        return Err(err("romfile= needs a path".into()));
                    }
                    romfile = Some(PathBuf::from(value));
                }
                other => return Err(err(format!("unknown key '{other}' ({})", DEVICE_KEYS.join(", ")))),
            }
        }
        if let Some(fd) = fd {
            let of_fd = fds.device_fd_bdf(fd).map_err(|e| err(e.to_string()))?;
            if let Some(named) = bdf.filter(|b| *b != of_fd) {
                return Err(err(format!("fd {fd} is the VFIO cdev of {of_fd}, not of {named}")));
            }
            if managed {
                return Err(err("managed=on with fd=: whoever opened the cdev has bound the device already".into()));
            }
            if iommu == IommuMode::Legacy {
                return Err(err("iommu=legacy with fd=: a VFIO device cdev works only with iommufd".into()));
            }
            bdf = Some(of_fd);
        }
        let bdf = bdf.ok_or_else(|| err("no device: give path=/sys/bus/pci/devices/BDF, a BDF or fd=N".into()))?;
        if romfile.is_some() && !rombar {
            return Err(err("romfile= with rombar=off: the ROM would be invisible".into()));
        }
        Ok(DeviceSpec {
            bdf,
            path: PathBuf::from(format!("{SYSFS_DEVICES}{bdf}")),
            id: id.unwrap_or_else(|| format!("vfio-{bdf}").replace(':', "_")),
            rombar,
            romfile,
            managed,
            iommu,
            fd,
        })
    }
}

/// Parses every `--device` value and refuses the same device (or id) twice.
pub fn parse_devices<S: AsRef<str>>(specs: &[S]) -> Result<Vec<DeviceSpec>, SpecError> {
    parse_devices_with(specs, &SystemFds)
}

/// [`parse_devices`] with passed fds inspected by `fds`.
pub fn parse_devices_with<S: AsRef<str>>(specs: &[S], fds: &dyn FdResolver) -> Result<Vec<DeviceSpec>, SpecError> {
    let mut out: Vec<DeviceSpec> = Vec::new();
    for s in specs {
        let spec = DeviceSpec::parse(s.as_ref(), fds)?;
        if let Some(prev) = out.iter().find(|p| p.bdf == spec.bdf) {
            return Err(SpecError::Parse {
                spec: s.as_ref().into(),
                reason: format!("{} is already assigned by --device {}", spec.bdf, prev.id),
            });
        }
        if out.iter().any(|p| p.id == spec.id) {
            return Err(SpecError::Parse { spec: s.as_ref().into(), reason: format!("id {} is used twice", spec.id) });
        }
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let d: DeviceSpec = "path=/sys/bus/pci/devices/0000:02:00.0,id=nvme0,rombar=off".parse().unwrap();
        assert_eq!(d.bdf, Bdf::new(0, 2, 0, 0).unwrap());
        assert_eq!(d.id, "nvme0");
        assert!(!d.rombar);
        assert_eq!(d.path, PathBuf::from("/sys/bus/pci/devices/0000:02:00.0"));
        let d: DeviceSpec = "01:10.0".parse().unwrap();
        assert_eq!(d.bdf, Bdf::new(0, 1, 0x10, 0).unwrap());
        assert!(d.rombar && d.romfile.is_none());
        let d: DeviceSpec = "0000:01:10.2,romfile=/tmp/x.rom".parse().unwrap();
        assert_eq!(d.romfile, Some(PathBuf::from("/tmp/x.rom")));
        assert!(!d.managed);
        let d: DeviceSpec = "path=/sys/bus/pci/devices/0000:01:10.0,managed=on".parse().unwrap();
        assert!(d.managed);
        let d: DeviceSpec = "0000:01:10.0,managed=off".parse().unwrap();
        assert!(!d.managed);
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "path=/sys/bus/pci/devices/../../etc/passwd",
            "path=/dev/vfio/3",
            "0000:02:00.0,rombar=maybe",
            "0000:02:00.0,foo=1",
            "0000:02:00.0,id=a b",
            "0000:02:00.0,0000:03:00.0",
            "id=x",
            "0000:02:00.0,rombar=off,romfile=/x",
            "0000:02:20.0",
            "0000:02:00.0,managed=yes",
            "0000:02:00.0,managed",
        ] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    /// Passed fds 5 and 6 are cdevs of 02:00.0 and 01:10.0; 7 is something else.
    struct FakeFds;

    impl FdResolver for FakeFds {
        fn device_fd_bdf(&self, fd: RawFd) -> Result<Bdf, FdError> {
            match fd {
                5 => Ok(Bdf::from_devfn(0, 2, 0)),
                6 => Ok(Bdf::from_devfn(0, 1, 0x10 << 3)),
                7 => Err(FdError::Wrong { fd, what: "/dev/null".into(), want: "VFIO device cdev" }),
                _ => Err(FdError::Closed { fd }),
            }
        }
    }

    #[test]
    fn passed_fds_and_iommu_modes() {
        let parse = |s: &str| DeviceSpec::parse(s, &FakeFds);
        let d = parse("fd=5").unwrap();
        assert_eq!((d.bdf, d.fd, d.iommu), (Bdf::from_devfn(0, 2, 0), Some(5), IommuMode::Auto));
        assert_eq!(d.path, PathBuf::from("/sys/bus/pci/devices/0000:02:00.0"));
        assert_eq!(d.id, "vfio-0000_02_00.0");
        let d = parse("fd=6,bdf=0000:01:10.0,iommu=iommufd,id=vf").unwrap();
        assert_eq!((d.bdf, d.iommu, d.id.as_str()), (Bdf::from_devfn(0, 1, 0x10 << 3), IommuMode::Iommufd, "vf"));
        assert_eq!(parse("0000:02:00.0,iommu=legacy").unwrap().iommu, IommuMode::Legacy);
        assert_eq!(parse("0000:02:00.0").unwrap().fd, None);
        for (bad, why) in [
            ("fd=5,path=/sys/bus/pci/devices/0000:01:10.0", "is the VFIO cdev of 0000:02:00.0, not of 0000:01:10.0"),
            ("fd=7", "/dev/null"),
            ("fd=9", "not open"),
            ("fd=x", "fd=x"),
            ("fd=-1", "fd=-1"),
            ("fd=5,managed=on", "managed=on with fd="),
            ("fd=5,iommu=legacy", "only with iommufd"),
            ("0000:02:00.0,iommu=fast", "iommu=fast"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // The same cdev passed twice, or once as fd and once by path.
        let e = parse_devices_with(&["fd=5", "0000:02:00.0"], &FakeFds).unwrap_err();
        assert!(e.to_string().contains("already assigned"), "{e}");
        assert_eq!(parse_devices_with(&["fd=5", "fd=6"], &FakeFds).unwrap().len(), 2);
    }

    #[test]
    fn same_device_twice() {
        let e = parse_devices(&["0000:02:00.0", "path=/sys/bus/pci/devices/0000:02:00.0"]).unwrap_err();
        assert!(e.to_string().contains("already assigned"), "{e}");
        assert_eq!(parse_devices(&["02:00.0", "01:10.0"]).unwrap().len(), 2);
    }
}
