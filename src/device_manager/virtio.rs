//! Wiring of virtio devices: `--disk`, `--net` and `--rng` to virtio-pci functions with MSI-X vectors
//! (GSIs from the VM's MSI range) and BARs in the 32-bit PCI window. The PCI segment then
//! puts them on bus 0 (see `mod.rs`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pci::PciDevice;

use super::seams::VmSeams;
use super::{DeviceId, NewPciFunction, PciFunction};
use crate::config::{ConfigError, DeviceSpec};
use crate::devices::virtio::block::{Block, DiskConfig};
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::pci::{VirtioPciDevice, VirtioPciParts};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{VirtioDevice, VirtioError};
use crate::irq::{GsiRouting, KvmMsiVectors};
use crate::resources::Resources;
use crate::vstate::memory::GuestMemory;

const DISK_KEYS: &str = "path,readonly,id";

#[derive(Debug, thiserror::Error)]
pub enum VirtioManagerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--disk id={0} is given twice")]
    DuplicateId(String),
    #[error("--net id={0} is given twice")]
    DuplicateNetId(String),
    #[error("--net tap={0} is given twice (one tap per device)")]
    DuplicateTap(String),
    #[error("--net mac={0}: want six hex bytes like 52:54:00:12:34:56, unicast (first byte even)")]
    BadMac(String),
    #[error("--net tap={0}: not a valid interface name (1-15 characters, no '/', ':' or spaces)")]
    BadTapName(String),
    #[error("--net: give tap=NAME or fd=N, not both")]
    TapAndFd,
    #[error("--net fd={0}: not a file descriptor number")]
    BadFd(String),
    #[error("--net fd={fd}")]
    PassedTap {
        fd: i32,
        #[source]
        source: Box<VirtioError>,
    },
    #[error("{id}: {what}")]
    Device {
        id: String,
        what: &'static str,
        #[source]
        source: Box<VirtioError>,
    },
    #[error("{id}: allocating {what}")]
    Allocate {
        id: String,
        what: &'static str,
        #[source]
        source: crate::resources::ResourceError,
    },
    #[error("{id}: creating MSI-X vector eventfds")]
    Vectors {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

/// One `--disk`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub id: String,
    pub config: DiskConfig,
}

/// `--disk path=FILE[,readonly=on][,id=NAME]`: the id (default `diskN`) is also the serial
/// number the guest reads.
pub fn parse_disks(specs: &[DeviceSpec]) -> Result<Vec<DiskSpec>, VirtioManagerError> {
    let mut out: Vec<DiskSpec> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        spec.check_keys(DISK_KEYS)?;
        let path = PathBuf::from(spec.require("path")?);
        let readonly = spec.toggle("readonly")?;
        let id = spec.get("id").map_or_else(|| format!("disk{i}"), str::to_string);
        if out.iter().any(|d| d.id == id) {
            return Err(VirtioManagerError::DuplicateId(id));
        }
        out.push(DiskSpec { id: id.clone(), config: DiskConfig { path, readonly, serial: id } });
    }
    Ok(out)
}

/// One `--net`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub id: String,
    pub config: NetConfig,
}

const NET_KEYS: &str = "tap,fd,mac,id";

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// A stable, locally administered address for a tap (QEMU's 52:54:00 prefix), so a guest
/// keeps its MAC from one run to the next.
fn default_mac(tap: &str) -> [u8; 6] {
    // FNV-1a over the tap name.
    let h = tap.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let [a, b, c, _] = h.to_le_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

/// `--net tap=NAME|fd=N[,mac=M][,id=NAME]`: the id defaults to `netN`; `fd=` is a tap another
/// process opened and passed (checked here, before viaduct opens anything).
pub fn parse_nets(specs: &[DeviceSpec]) -> Result<Vec<NetSpec>, VirtioManagerError> {
    let mut out: Vec<NetSpec> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        spec.check_keys(NET_KEYS)?;
        let (tap, fd) = match (spec.get("tap"), spec.get("fd")) {
            (Some(_), Some(_)) => return Err(VirtioManagerError::TapAndFd),
            (_, Some(n)) => {
                let fd: i32 = n.parse().map_err(|_| VirtioManagerError::BadFd(n.to_string()))?;
                // Checked now, before viaduct opens anything that could take that number.
                let (name, _) = crate::devices::virtio::net::tap::passed_tap(fd)
                    .map_err(|source| VirtioManagerError::PassedTap { fd, source: Box::new(source) })?;
                (name, Some(fd))
            }
            _ => {
                let tap = spec.require("tap")?.to_string();
                if !crate::devices::virtio::net::tap::valid_name(&tap) {
                    return Err(VirtioManagerError::BadTapName(tap));
                }
                (tap, None)
            }
        };
        let mac = match spec.get("mac") {
            Some(m) => parse_mac(m).ok_or_else(|| VirtioManagerError::BadMac(m.to_string()))?,
            None => default_mac(&tap),
        };
        let id = spec.get("id").map_or_else(|| format!("net{i}"), str::to_string);
        if out.iter().any(|n| n.id == id) {
            return Err(VirtioManagerError::DuplicateNetId(id));
        }
        if out.iter().any(|n| n.config.tap == tap) {
            return Err(VirtioManagerError::DuplicateTap(tap));
        }
        out.push(NetSpec { id, config: NetConfig { tap, fd, mac } });
    }
    Ok(out)
}

pub struct AttachContext<'a> {
    pub seams: &'a VmSeams,
    pub memory: &'a GuestMemory,
    pub resources: &'a Mutex<Resources>,
    pub routing: &'a Arc<Mutex<GsiRouting>>,
}

/// Builds the virtio functions for `disks`, `nets` (and a virtio-rng when `rng`), BARs placed.
pub fn create_devices(
    ctx: &AttachContext<'_>,
    disks: &[DiskSpec],
    nets: &[NetSpec],
    rng: bool,
) -> Result<Vec<(DeviceId, NewPciFunction)>, VirtioManagerError> {
    let mut out = Vec::new();
    for d in disks {
        let block = Block::open(d.config.clone()).map_err(|source| VirtioManagerError::Device {
            id: d.id.clone(),
            what: "opening the disk image",
            source: Box::new(source),
        })?;
        log::info!(
            "{}: virtio-blk on {} ({} sectors{})",
            d.id,
            block.path().display(),
            block.capacity_sectors(),
            if d.config.readonly { ", read-only" } else { "" }
        );
        out.push(create_one(ctx, &d.id, Box::new(block))?);
    }
    for n in nets {
        let net = Net::open(&n.config).map_err(|source| VirtioManagerError::Device {
            id: n.id.clone(),
            what: "opening the tap",
            source: Box::new(source),
        })?;
        let m = n.config.mac;
        log::info!(
            "{}: virtio-net on tap {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}{}",
            n.id,
            n.config.tap,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            if net.offloads() { ", checksum/TSO offloads" } else { "" }
        );
        out.push(create_one(ctx, &n.id, Box::new(net))?);
    }
    if rng {
        let id = "rng0".to_string();
        let dev = Rng::open().map_err(|source| VirtioManagerError::Device {
            id: id.clone(),
            what: "virtio-rng",
            source: Box::new(source),
        })?;
        out.push(create_one(ctx, &id, Box::new(dev))?);
    }
    Ok(out)
}

/// Builds one function: its MSI GSIs and BAR ranges come from `ctx.resources` and are
/// recorded with it (given back at detach, or at once if building fails).
pub fn create_one(
    ctx: &AttachContext<'_>,
    id: &str,
    device: Box<dyn VirtioDevice>,
) -> Result<(DeviceId, NewPciFunction), VirtioManagerError> {
    let mut taken = crate::resources::Taken::new(ctx.resources);
    let function = build_function(ctx, id, device, &mut taken)?;
    let new = NewPciFunction::on_bus0(PciFunction::Virtio(function), taken.keep());
    Ok((DeviceId::from(id), new))
}

fn build_function(
    ctx: &AttachContext<'_>,
    id: &str,
    device: Box<dyn VirtioDevice>,
    taken: &mut crate::resources::Taken<'_>,
) -> Result<Arc<Mutex<VirtioPciDevice>>, VirtioManagerError> {
    let alloc = |what| {
        let id = id.to_string();
        move |source| VirtioManagerError::Allocate { id, what, source }
    };
    // One vector per queue and one for configuration changes.
    let nvec = device.queue_max_sizes().len() + 1;
    let gsis = (0..nvec).map(|_| taken.msi_gsi()).collect::<Result<Vec<_>, _>>().map_err(alloc("MSI GSIs"))?;
    let vectors = KvmMsiVectors::new(ctx.routing.clone(), &gsis)
        .map_err(|source| VirtioManagerError::Vectors { id: id.to_string(), source })?;
    let mut dev = VirtioPciDevice::new(VirtioPciParts {
        name: id.to_string(),
        device,
        vectors: Box::new(vectors),
        mem: ctx.memory.clone(),
        notify: ctx.seams.ioevents.clone(),
    })
    .map_err(|source| VirtioManagerError::Device {
        id: id.to_string(),
        what: "creating the virtio-pci function",
        source: Box::new(source),
    })?;
    for (bar, size) in dev.bar_sizes() {
        let start = taken.mmio32(size, size.max(4096)).map_err(alloc("a BAR"))?;
        dev.place_bar(bar, start).map_err(|source| VirtioManagerError::Device {
            id: id.to_string(),
            what: "placing a BAR",
            source: Box::new(source),
        })?;
    }
    for b in dev.bars() {
        log::info!("{id}: BAR{} at {:#x} ({:#x} bytes)", b.index.0, b.addr, b.size);
    }
    Ok(Arc::new(Mutex::new(dev)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptionList;

    fn spec(s: &str) -> DeviceSpec {
        OptionList::parse("disk", s, Some("path")).unwrap()
    }

    fn net_spec(s: &str) -> DeviceSpec {
        OptionList::parse("net", s, Some("tap")).unwrap()
    }

    #[test]
    fn net_options() {
        let n = parse_nets(&[net_spec("tap0"), net_spec("tap=vt1,mac=02:00:00:aa:bb:cc,id=mgmt")]).unwrap();
        assert_eq!(n[0].id, "net0");
        assert_eq!(n[0].config.tap, "tap0");
        assert_eq!(n[0].config.mac, default_mac("tap0"));
        assert_eq!(&n[0].config.mac[..3], &[0x52, 0x54, 0x00]);
        assert_ne!(default_mac("tap0"), default_mac("tap1"));
        assert_eq!(
            n[1],
            NetSpec {
                id: "mgmt".into(),
                config: NetConfig { tap: "vt1".into(), fd: None, mac: [2, 0, 0, 0xaa, 0xbb, 0xcc] }
            }
        );
        for bad in [
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=zz:00:00:00:00:00",
            "tap=t,mac=02:00:00:00:00:00:00",
        ] {
            assert!(matches!(parse_nets(&[net_spec(bad)]), Err(VirtioManagerError::BadMac(_))), "{bad}");
        }
        assert!(matches!(parse_nets(&[net_spec("tap=a/b")]), Err(VirtioManagerError::BadTapName(_))));
        assert!(matches!(parse_nets(&[net_spec("tap=a,fd=3")]), Err(VirtioManagerError::TapAndFd)));
        assert!(matches!(parse_nets(&[net_spec("fd=three")]), Err(VirtioManagerError::BadFd(_))));
        let e = parse_nets(&[net_spec("fd=2")]).unwrap_err();
        assert!(matches!(e, VirtioManagerError::PassedTap { fd: 2, .. }), "{e}");
        assert!(parse_nets(&[net_spec("tap=t,queues=2")]).is_err());
        assert!(matches!(parse_nets(&[net_spec("t"), net_spec("t")]), Err(VirtioManagerError::DuplicateTap(_))));
        assert!(matches!(
            parse_nets(&[net_spec("tap=a,id=x"), net_spec("tap=b,id=x")]),
            Err(VirtioManagerError::DuplicateNetId(_))
        ));
    }

    #[test]
    fn disk_options() {
        let d = parse_disks(&[spec("a.img"), spec("path=b.img,readonly=on,id=data")]).unwrap();
        assert_eq!(d[0].id, "disk0");
        assert_eq!(d[0].config.serial, "disk0");
        assert!(!d[0].config.readonly);
        assert_eq!(d[1].config, DiskConfig { path: "b.img".into(), readonly: true, serial: "data".into() });
        assert!(parse_disks(&[spec("path=a,cache=none")]).is_err());
        assert!(parse_disks(&[spec("path=a,readonly=yes")]).is_err());
        assert!(matches!(
            parse_disks(&[spec("path=a,id=x"), spec("path=b,id=x")]),
            Err(VirtioManagerError::DuplicateId(_))
        ));
    }
}
