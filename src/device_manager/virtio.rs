//! Wiring of virtio devices: `--disk` and `--rng` to virtio-pci functions with MSI-X vectors
//! (GSIs from the VM's MSI range) and BARs in the 32-bit PCI window. The PCI segment then
//! puts them on bus 0 (see `mod.rs`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pci::PciDevice;

use crate::config::{ConfigError, DeviceSpec};
use crate::devices::virtio::block::{Block, DiskConfig};
use crate::devices::virtio::pci::{NotifyRegistry, VirtioPciDevice, VirtioPciParts};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::{VirtioDevice, VirtioError};
use crate::irq::{GsiRouting, KvmMsiVectors};
use crate::resources::Resources;
use crate::vstate::memory::GuestMemory;
use crate::vstate::vm::Vm;

const DISK_KEYS: &str = "path,readonly,id";

#[derive(Debug, thiserror::Error)]
pub enum VirtioManagerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--disk id={0} is given twice")]
    DuplicateId(String),
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

pub struct AttachContext<'a> {
    pub vm: &'a Arc<Vm>,
    pub memory: &'a GuestMemory,
    pub resources: &'a Mutex<Resources>,
    pub routing: &'a Arc<Mutex<GsiRouting>>,
}

/// Builds the virtio functions for `disks` (and a virtio-rng when `rng`), BARs placed.
pub fn create_devices(
    ctx: &AttachContext<'_>,
    disks: &[DiskSpec],
    rng: bool,
) -> Result<Vec<Arc<Mutex<VirtioPciDevice>>>, VirtioManagerError> {
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
    if rng {
        let id = "rng0".to_string();
        let dev = Rng::open().map_err(|source| VirtioManagerError::Device { id: id.clone(), what: "virtio-rng", source: Box::new(source) })?;
        out.push(create_one(ctx, &id, Box::new(dev))?);
    }
    Ok(out)
}

fn create_one(
    ctx: &AttachContext<'_>,
    id: &str,
    device: Box<dyn VirtioDevice>,
) -> Result<Arc<Mutex<VirtioPciDevice>>, VirtioManagerError> {
    let alloc = |what| {
        let id = id.to_string();
        move |source| VirtioManagerError::Allocate { id, what, source }
    };
    // One vector per queue and one for configuration changes.
    let nvec = device.queue_max_sizes().len() + 1;
    let gsis = {
        let mut r = ctx.resources.lock().unwrap_or_else(|e| e.into_inner());
        (0..nvec).map(|_| r.allocate_msi_gsi()).collect::<Result<Vec<_>, _>>().map_err(alloc("MSI GSIs"))?
    };
    let vectors = KvmMsiVectors::new(ctx.routing.clone(), &gsis)
        .map_err(|source| VirtioManagerError::Vectors { id: id.to_string(), source })?;
    let notify: Arc<dyn NotifyRegistry> = ctx.vm.clone();
    let mut dev = VirtioPciDevice::new(VirtioPciParts {
        name: id.to_string(),
        device,
        vectors: Box::new(vectors),
        mem: ctx.memory.clone(),
        notify,
    })
    .map_err(|source| VirtioManagerError::Device { id: id.to_string(), what: "creating the virtio-pci function", source: Box::new(source) })?;
    for (bar, size) in dev.bar_sizes() {
        let range = ctx
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate_mmio32(size, size.max(4096))
            .map_err(alloc("a BAR"))?;
        dev.place_bar(bar, range.start())
            .map_err(|source| VirtioManagerError::Device { id: id.to_string(), what: "placing a BAR", source: Box::new(source) })?;
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
