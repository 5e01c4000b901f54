//! A synthetic PCI function with BARs of chosen kinds and sizes, for checking what a guest
//! makes of the topology (enumeration, window sizing, 64 GiB BARs) without real hardware.
//! Identity 1b36:0005 (QEMU's "PCI test device" ID, which no Linux driver binds), class
//! 0xff0000 (unassigned). The first 4 KiB of every memory BAR and all of an I/O BAR are
//! read/write scratch registers, the rest of a BAR reads 0 and ignores writes.
//!
//! Spec syntax (comma-separated): `barN=KIND:SIZE` with KIND `mem32`, `mem32-pf`, `mem64`,
//! `mem64-pf` or `io`, `rom=SIZE`, `msix=VECTORS` (table and PBA in their own 64-bit BAR
//! after the others), `port=on|off` (behind a PCIe root port of its own, the default, or
//! directly on bus 0), e.g. `bar0=mem32:16K,bar2=mem64-pf:64G,msix=4`. Sizes take K, M, G.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::bridge::VENDOR_ID_REDHAT;
use crate::capability::msix::MsixConfig;
use crate::capability::pcie::{PcieCapabilityConfig, PciePortType};
use crate::config_space::{DeviceIds, HeaderType};
use crate::device::{BarIndex, BarKind};
use crate::function::{BarSpec, EmulatedFunction, FunctionBackend, FunctionConfig, FunctionError};

pub const DEVICE_ID_SYNTHETIC: u16 = 0x0005;
pub const CLASS_UNASSIGNED: u32 = 0xff_00_00;
const SCRATCH_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyntheticError {
    #[error("synthetic PCI function spec {spec:?}: {reason}")]
    Parse { spec: String, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticSpec {
    pub bars: Vec<BarSpec>,
    pub msix_vectors: Option<u16>,
    /// Behind a root port of its own (host bridge -> root port -> function), else on bus 0.
    pub behind_port: bool,
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        _ => (s, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl FromStr for SyntheticSpec {
    type Err = SyntheticError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| SyntheticError::Parse { spec: spec.to_string(), reason };
        let mut bars = BTreeMap::new();
        let mut msix_vectors = None;
        let mut behind_port = true;
        let mut seen = Vec::new();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| err(format!("{item:?} is not key=value")))?;
            if seen.contains(&key) {
                return Err(err(format!("{key} given twice")));
            }
            seen.push(key);
            match key {
                "rom" => {
                    let size = parse_size(value).ok_or_else(|| err(format!("bad size {value:?}")))?;
                    bars.insert(BarIndex::ROM, BarSpec { index: BarIndex::ROM, kind: BarKind::Rom, size });
                }
                "msix" => {
                    let n = value.parse::<u16>().map_err(|_| err(format!("bad vector count {value:?}")))?;
                    msix_vectors = Some(n);
                }
                "port" => {
                    behind_port = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(err(format!("port={value:?}: use on or off"))),
                    };
                }
                _ => {
                    let index = key
                        .strip_prefix("bar")
                        .and_then(|n| n.parse::<u8>().ok())
                        .filter(|n| *n < 6)
                        .ok_or_else(|| err(format!("unknown key {key:?} (bar0..bar5, rom, msix, port)")))?;
                    let (kind, size) =
                        value.split_once(':').ok_or_else(|| err(format!("{value:?} is not KIND:SIZE")))?;
                    let kind = match kind {
                        "mem32" => BarKind::Mem32 { prefetchable: false },
                        "mem32-pf" => BarKind::Mem32 { prefetchable: true },
                        "mem64" => BarKind::Mem64 { prefetchable: false },
                        "mem64-pf" => BarKind::Mem64 { prefetchable: true },
                        "io" => BarKind::Io,
                        other => return Err(err(format!("unknown BAR kind {other:?}"))),
                    };
                    let size = parse_size(size).ok_or_else(|| err(format!("bad size {size:?}")))?;
                    bars.insert(BarIndex(index), BarSpec { index: BarIndex(index), kind, size });
                }
            }
        }
        let bars: Vec<BarSpec> = bars.into_values().collect();
        if msix_vectors.is_some() && msix_bar(&bars).is_none() {
            return Err(err("msix needs two free BAR registers in a row for its 64-bit table BAR".into()));
        }
        Ok(Self { bars, msix_vectors, behind_port })
    }
}

/// Scratch registers behind the BARs.
pub struct ScratchRegisters {
    regs: BTreeMap<BarIndex, Vec<u8>>,
}

impl FunctionBackend for ScratchRegisters {
    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]) {
        let regs = self.regs.get(&bar);
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.checked_add(i as u64).and_then(|a| usize::try_from(a).ok());
            *b = at.and_then(|a| regs.and_then(|r| r.get(a))).copied().unwrap_or(0);
        }
    }

    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]) {
        let Some(regs) = self.regs.get_mut(&bar) else {
            return;
        };
        for (i, b) in data.iter().enumerate() {
            let at = offset.checked_add(i as u64).and_then(|a| usize::try_from(a).ok());
            if let Some(r) = at.and_then(|a| regs.get_mut(a)) {
                *r = *b;
            }
        }
    }
}

/// Where the MSI-X table and PBA go: their own 64-bit BAR in the first free register pair.
fn msix_bar(bars: &[BarSpec]) -> Option<BarIndex> {
    let used =
        |i: u8| bars.iter().any(|b| b.index.0 == i || (matches!(b.kind, BarKind::Mem64 { .. }) && b.index.0 + 1 == i));
    (0..5u8).find(|i| !used(*i) && !used(i + 1)).map(BarIndex)
}

/// Builds the function; `name` prefixes its logs.
pub fn synthetic_function(
    name: &str,
    spec: &SyntheticSpec,
) -> Result<EmulatedFunction<ScratchRegisters>, FunctionError> {
    let mut bars = spec.bars.clone();
    let msix = match spec.msix_vectors {
        Some(n) => {
            // A spec that did not come through `parse` may have no free pair: BAR 5 then
            // fails cleanly in `EmulatedFunction::new`.
            let index = msix_bar(&bars).unwrap_or(BarIndex(5));
            let table = u64::from(n) * 16;
            let pba_offset = table.next_multiple_of(4096);
            let size = (pba_offset + u64::from(n).div_ceil(64) * 8).next_power_of_two().max(4096);
            bars.push(BarSpec { index, kind: BarKind::Mem64 { prefetchable: false }, size });
            Some(MsixConfig {
                vectors: n,
                table_bar: index,
                table_offset: 0,
                pba_bar: index,
                pba_offset: u32::try_from(pba_offset).unwrap_or(u32::MAX),
            })
        }
        None => None,
    };
    let cfg = FunctionConfig {
        ids: DeviceIds {
            vendor_id: VENDOR_ID_REDHAT,
            device_id: DEVICE_ID_SYNTHETIC,
            class_code: CLASS_UNASSIGNED,
            revision: 0,
            subsystem_vendor_id: VENDOR_ID_REDHAT,
            subsystem_id: 0x1100,
        },
        header: HeaderType::Endpoint,
        pcie: Some(PcieCapabilityConfig { port_type: PciePortType::Endpoint, port_number: 0, slot_occupied: false }),
        power_management: true,
        bars: bars.clone(),
        msi: None,
        msix,
        interrupt_pin: 1,
    };
    let regs = bars
        .iter()
        .filter(|b| b.kind != BarKind::Rom)
        .map(|b| (b.index, vec![0u8; (b.size as usize).min(SCRATCH_BYTES)]))
        .collect();
    EmulatedFunction::new(name, &cfg, ScratchRegisters { regs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PciDevice;

    #[test]
    fn parse_spec() {
        let s: SyntheticSpec = "bar0=mem32:16K,bar2=mem64-pf:64G,bar1=io:256,rom=64K,msix=4".parse().unwrap();
        assert_eq!(s.bars.len(), 4);
        assert_eq!(s.bars[1].kind, BarKind::Io);
        assert_eq!(
            s.bars[2],
            BarSpec { index: BarIndex(2), kind: BarKind::Mem64 { prefetchable: true }, size: 64 << 30 }
        );
        assert_eq!(s.bars[3].index, BarIndex::ROM);
        assert_eq!(msix_bar(&s.bars), Some(BarIndex(4)));
        assert_eq!(s.msix_vectors, Some(4));
        assert!(s.behind_port);
        let s: SyntheticSpec = "bar0=io:32,port=off".parse().unwrap();
        assert!(!s.behind_port);
        for bad in [
            "bar6=mem32:4K",
            "bar0=mem16:4K",
            "bar0=mem32",
            "bar0=mem32:x",
            "foo=1",
            "bar0",
            "msix=-1",
            "bar0=mem32:99999999999G",
            "port=maybe",
            "bar0=mem32:4K,bar0=mem32:8K",
            "bar0=mem64:4K,bar2=mem64:4K,bar4=io:4,msix=1",
        ] {
            assert!(bad.parse::<SyntheticSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_with_msix_bar_and_scratch() {
        let s: SyntheticSpec = "bar0=mem32:16K,bar2=mem64-pf:64G,msix=4".parse().unwrap();
        let mut f = synthetic_function("t", &s).unwrap();
        let bars = f.bars();
        assert_eq!(
            bars.iter().map(|b| (b.index.0, b.size)).collect::<Vec<_>>(),
            vec![(0, 16 << 10), (2, 64 << 30), (4, 8192)]
        );
        f.write_bar(BarIndex(0), 8, &[1, 2, 3, 4]);
        let mut b = [0u8; 4];
        f.read_bar(BarIndex(0), 8, &mut b);
        assert_eq!(b, [1, 2, 3, 4]);
        f.read_bar(BarIndex(2), 1 << 35, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(f.read_config(0), 0x0005_1b36);
        assert!(synthetic_function("bad", &"bar0=mem32:3K".parse().unwrap()).is_err());
    }
}
