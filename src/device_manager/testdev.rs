//! `--pci-synthetic SPEC`: synthetic PCI test functions (1b36:0005, class ff, like QEMU's
//! `pci-testdev`) with BARs of the kinds and sizes the spec names, for checking what a guest
//! makes of our topology: enumeration through ECAM, bridge window sizing, very large 64-bit
//! BARs. No guest driver binds them; their BARs are plain scratch registers.
//!
//! With `port=on` (the default) each function gets a PCIe root port of its own, placed the
//! way firmware would: the port's windows sized to the function's BARs and carved out of the
//! VMM's address pools, BARs programmed inside them, decode on. The guest sees
//! host bridge -> root port -> function. With `port=off` the function sits on bus 0.

use std::sync::{Arc, Mutex};

use pci::allocator::{pool_for, AllocError, Pool, PortPlan, WindowReserve};
use pci::synthetic::{synthetic_function, ScratchRegisters, SyntheticError, SyntheticSpec};
use pci::topology::{bar_requests, program_bars, program_root_port};
use pci::{Bdf, EmulatedFunction, FunctionError, PciDevice, RootError, SharedPciDevice};

use super::pci::PciSegment;
use super::{DeviceId, NewPciFunction, PciFunction};
use crate::resources::{ResourceError, Resources, Taken};

#[derive(Debug, thiserror::Error)]
pub enum TestDevError {
    #[error("--pci-synthetic: {0}")]
    ParseSpec(#[from] SyntheticError),
    #[error("--pci-synthetic {spec}: building the function failed")]
    CreateFunction {
        spec: String,
        #[source]
        source: FunctionError,
    },
    #[error("--pci-synthetic {spec}: no free bus-0 slot or bus number left for its root port")]
    NoFreeSlot { spec: String },
    #[error("--pci-synthetic {spec}: attaching it behind a root port at 00:{slot:02x}.0 failed")]
    AttachToPort {
        spec: String,
        slot: u8,
        #[source]
        source: RootError,
    },
    #[error("--pci-synthetic {spec}: sizing the root port windows failed")]
    SizeWindows {
        spec: String,
        #[source]
        source: AllocError,
    },
    #[error("--pci-synthetic {spec}: no guest address space for it (use smaller BARs)")]
    AllocateAddress {
        spec: String,
        #[source]
        source: ResourceError,
    },
    #[error("--pci-synthetic {spec}: placing its BARs failed")]
    PlaceBar {
        spec: String,
        #[source]
        source: FunctionError,
    },
}

/// What `build` needs from the device manager.
pub struct AttachContext<'a> {
    pub resources: &'a Mutex<Resources>,
}

fn allocate(taken: &mut Taken<'_>, pool: Pool, size: u64, align: u64) -> Result<u64, ResourceError> {
    match pool {
        Pool::Mmio32 => taken.mmio32(size, align),
        Pool::Mmio64 => taken.mmio64(size, align),
        Pool::Io => taken.io(size, align),
    }
}

/// Builds the function `spec` describes, BARs placed; with `port=on` it is put behind a root
/// port of its own already. `index` numbers the option occurrences (id and log names).
pub fn build(
    ctx: &AttachContext<'_>,
    segment: &mut PciSegment,
    index: usize,
    spec_text: &str,
) -> Result<(DeviceId, NewPciFunction), super::DeviceManagerError> {
    let spec: SyntheticSpec = spec_text.parse().map_err(|e| Box::new(TestDevError::ParseSpec(e)))?;
    let name = format!("pci-synthetic#{index}");
    let mut func = synthetic_function(&name, &spec)
        .map_err(|source| Box::new(TestDevError::CreateFunction { spec: spec_text.to_string(), source }))?;
    let mut taken = Taken::new(ctx.resources);
    let (dev, placed) = if spec.behind_port {
        let dev: SharedPciDevice = Arc::new(Mutex::new(func));
        let bdf = attach_behind_port(&mut taken, segment, spec_text, &dev).map_err(Box::new)?;
        (dev, Some(bdf))
    } else {
        place_on_bus0(&mut taken, spec_text, &mut func).map_err(Box::new)?;
        (Arc::new(Mutex::new(func)) as SharedPciDevice, None)
    };
    let mut new = NewPciFunction::on_bus0(PciFunction::Emulated(dev), taken.keep());
    new.placed = placed;
    new.label = format!("{name} ({spec_text})");
    Ok((DeviceId::from(name.as_str()), new))
}

/// Natural alignment for every BAR, from the pool its kind belongs in.
fn place_on_bus0(
    taken: &mut Taken<'_>,
    spec: &str,
    func: &mut EmulatedFunction<ScratchRegisters>,
) -> Result<(), TestDevError> {
    for r in func.bars() {
        let addr = allocate(taken, pool_for(r.kind), r.size, r.size)
            .map_err(|source| TestDevError::AllocateAddress { spec: spec.to_string(), source })?;
        func.place_bar(r.index, addr).map_err(|source| TestDevError::PlaceBar { spec: spec.to_string(), source })?;
    }
    Ok(())
}

/// The root port and the function behind it, windows and BARs programmed and decode on as
/// firmware would leave them (the relocator maps the BARs as decode turns on). The port
/// stays when the function is detached: it is the root complex's.
fn attach_behind_port(
    taken: &mut Taken<'_>,
    segment: &PciSegment,
    spec: &str,
    dev: &SharedPciDevice,
) -> Result<Bdf, TestDevError> {
    let mut root = segment.root.lock().unwrap_or_else(|e| e.into_inner());
    let no_slot = || TestDevError::NoFreeSlot { spec: spec.to_string() };
    // From the top: the segment hands out bus-0 slots upwards from 1.
    let slot = root.highest_free_slot().ok_or_else(no_slot)?;
    let bus = root.lowest_free_bus().ok_or_else(no_slot)?;
    let attach_err = |source| TestDevError::AttachToPort { spec: spec.to_string(), slot, source };
    let port = root.add_root_port(slot, bus).map_err(attach_err)?;
    let bdf = root.attach_to_port(slot, 0, dev).map_err(attach_err)?;
    let plan = PortPlan::new(port, &bar_requests(bdf, dev), WindowReserve::default())
        .map_err(|source| TestDevError::SizeWindows { spec: spec.to_string(), source })?;
    let mut bases = Vec::with_capacity(plan.windows.len());
    for w in &plan.windows {
        let base = allocate(taken, w.pool, w.size, w.align)
            .map_err(|source| TestDevError::AllocateAddress { spec: spec.to_string(), source })?;
        bases.push(base);
    }
    let layout = plan.place(&bases);
    program_root_port(&mut root, slot, &layout.windows).map_err(attach_err)?;
    program_bars(&mut root, bdf, dev, &layout.bars);
    log::info!("{bdf}: behind root port {port}, windows {:x?}", layout.windows);
    Ok(bdf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_manager::tests::test_dm;
    use crate::device_manager::DeviceManager;
    use pci::{BarIndex, BarKind, BusAccess, PciConfigMmio};

    fn ecam_read(segment: &PciSegment, bdf: Bdf, off: u64) -> u32 {
        let ecam = PciConfigMmio::new(&segment.root);
        let mut b = [0u8; 4];
        ecam.read(bdf.ecam_offset() + off, &mut b);
        u32::from_le_bytes(b)
    }

    fn attach(dm: &mut DeviceManager, index: usize, spec: &str) -> Result<Bdf, super::super::DeviceManagerError> {
        let ctx = AttachContext { resources: &dm.resources };
        let (id, new) = build(&ctx, &mut dm.pci, index, spec)?;
        dm.attach_pci(id, new)
    }

    #[test]
    fn functions_behind_root_ports_and_on_bus0() {
        let (mut dm, _vm) = test_dm();
        let a = attach(&mut dm, 0, "bar0=mem32:16K,bar2=mem64-pf:16G,msix=4").unwrap();
        let b = attach(&mut dm, 1, "bar0=mem32:1M,bar1=io:256,rom=64K").unwrap();
        let c = attach(&mut dm, 2, "bar0=mem32:4K,port=off").unwrap();
        let (buses, segment) = (dm.buses.clone(), &dm.pci);
        assert_eq!(
            (a.to_string(), b.to_string(), c.to_string()),
            ("0000:01:00.0".into(), "0000:02:00.0".into(), "0000:00:01.0".into())
        );
        // Host bridge -> root port 00:1f.0 (secondary bus 1) -> 1b36:0005.
        let port: Bdf = "00:1f.0".parse().unwrap();
        assert_eq!(ecam_read(segment, port, 0), 0x000c_1b36);
        assert_eq!(ecam_read(segment, port, 0x18) & 0xff_ffff, 0x01_0100);
        assert_eq!(ecam_read(segment, a, 0), 0x0005_1b36);
        assert_eq!(ecam_read(segment, c, 0), 0x0005_1b36);
        // Every BAR of the function behind the port sits inside the port's windows, is
        // naturally aligned and reachable on the MMIO / PIO bus.
        let root = segment.root.lock().unwrap();
        for (bdf, port_dev) in [(a, 0x1f), (b, 0x1e)] {
            let windows = root.port_windows(port_dev).unwrap();
            let dev = root.function(bdf).unwrap();
            let bars = dev.lock().unwrap().bars();
            assert!(!bars.is_empty());
            for r in bars {
                assert_eq!(r.addr % r.size, 0, "{bdf} {:?}", r.index);
                let (w, bus) = match r.kind {
                    BarKind::Io => (windows.io, &buses.pio),
                    BarKind::Mem64 { prefetchable: true } => (windows.prefetch, &buses.mmio),
                    _ => (windows.mem, &buses.mmio),
                };
                assert!(w.unwrap().contains(r.addr, r.size), "{bdf} {:?} outside {w:x?}", r.index);
                assert!(bus.resolve(r.addr, 1).is_some(), "{bdf} {:?} not mapped", r.index);
            }
        }
        drop(root);
        // The scratch registers answer through the bus.
        let bar0 = segment.root.lock().unwrap().function(a).unwrap().lock().unwrap().bars()[0];
        assert_eq!(bar0.index, BarIndex(0));
        assert!(buses.mmio.write(bar0.addr + 8, &[1, 2, 3, 4]));
        let mut back = [0u8; 4];
        assert!(buses.mmio.read(bar0.addr + 8, &mut back));
        assert_eq!(back, [1, 2, 3, 4]);
    }

    #[test]
    fn bad_specs_are_one_line_errors() {
        let (mut dm, _vm) = test_dm();
        for (spec, want) in [
            ("bar0=mem32:3K", "building the function failed"),
            ("bar0=mem64-pf:524288G", "no guest address space"),
            ("bar9=mem32:4K", "unknown key"),
            ("port=sideways", "use on or off"),
        ] {
            let e = attach(&mut dm, 0, spec).unwrap_err();
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            assert!(msg.contains("--pci-synthetic") && msg.contains(want), "{spec}: {msg}");
        }
    }
}
