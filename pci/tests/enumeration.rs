//! A guest-style enumeration of a topology built by `PciTopology`, done only through the
//! ECAM window the way Linux's probe does it: scan bus 0, size every BAR with decode off,
//! follow root ports to their secondary buses, and check that every BAR is naturally
//! aligned, inside its bridge's window and inside the host bridge's windows, and that no two
//! BARs overlap. Then move a BAR the way Linux's `pci_std_update_resource` does and check
//! the bus follows.

use std::sync::{Arc, Mutex};

use pci::allocator::{mmio64_window, PciWindows, WindowReserve};
use pci::bridge::Window;
use pci::intx::IntxRouting;
use pci::synthetic::{synthetic_function, SyntheticSpec};
use pci::{Bdf, Bus, BusAccess, PciConfigMmio, PciTopology, SharedPciDevice, TopologyConfig};

const GIB: u64 = 1 << 30;

struct Guest {
    ecam: PciConfigMmio,
}

impl Guest {
    fn read(&mut self, bdf: Bdf, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ecam.read(bdf.ecam_offset() + off, &mut b);
        u32::from_le_bytes(b)
    }

    fn write(&mut self, bdf: Bdf, off: u64, v: u32) {
        self.ecam.write(bdf.ecam_offset() + off, &v.to_le_bytes());
    }

    fn write16(&mut self, bdf: Bdf, off: u64, v: u16) {
        self.ecam.write(bdf.ecam_offset() + off, &v.to_le_bytes());
    }

    /// Sizes BAR register `reg` (and its upper half) like Linux's `__pci_read_base`:
    /// returns (address, size, is_io, is_64bit, prefetchable).
    fn size_bar(&mut self, bdf: Bdf, off: u64) -> Option<(u64, u64, bool, bool, bool)> {
        let orig = self.read(bdf, off);
        self.write(bdf, off, u32::MAX);
        let mask = self.read(bdf, off);
        self.write(bdf, off, orig);
        if mask == 0 {
            return None;
        }
        let io = orig & 1 == 1;
        if io {
            let m = u64::from(mask & 0xffff_fffc) | 0xffff_0000;
            return Some((u64::from(orig & 0xffff_fffc), (!m & 0xffff) + 1, true, false, false));
        }
        let is64 = orig & 0x6 == 0x4;
        let pf = orig & 0x8 != 0;
        let (mut addr, mut m) = (u64::from(orig & !0xf), u64::from(mask & !0xf) | 0xffff_ffff_0000_0000);
        if is64 {
            let hi = self.read(bdf, off + 4);
            self.write(bdf, off + 4, u32::MAX);
            let hmask = self.read(bdf, off + 4);
            self.write(bdf, off + 4, hi);
            addr |= u64::from(hi) << 32;
            m = (m & 0xffff_ffff) | (u64::from(hmask) << 32);
        }
        Some((addr, !m + 1, false, is64, pf))
    }

    fn bridge_window(&mut self, port: Bdf, prefetch: bool) -> Option<(u64, u64)> {
        let (reg, upper) = if prefetch { (0x24, true) } else { (0x20, false) };
        let v = self.read(port, reg);
        let mut base = u64::from(v & 0xfff0) << 16;
        let mut limit = (u64::from(v >> 16 & 0xfff0) << 16) | 0xf_ffff;
        if upper {
            base |= u64::from(self.read(port, 0x28)) << 32;
            limit |= u64::from(self.read(port, 0x2c)) << 32;
        }
        (base <= limit).then_some((base, limit))
    }
}

fn topology() -> (PciTopology, Arc<Bus>, Vec<(Bdf, SharedPciDevice)>) {
    let cfg = TopologyConfig {
        segment: 0,
        windows: PciWindows {
            mmio32: Window { base: 0xc000_0000, size: 0x2000_0000 },
            mmio64: mmio64_window(4 * GIB, 40),
            io: Window { base: 0x1000, size: 0xf000 },
        },
        ecam: Window { base: 0xe000_0000, size: 0x1000_0000 },
        intx: IntxRouting::new(16, 8).expect("lines"),
        port_reserve: WindowReserve::default(),
    };
    let mmio = Arc::new(Bus::new());
    let mut topo = PciTopology::new(cfg, mmio.clone(), Arc::new(Bus::new()), None).expect("topology");
    let mut devs = Vec::new();
    for (i, spec) in [
        "bar0=mem32:16K,bar2=mem64-pf:64G,msix=4",
        "bar0=mem32:1M,bar1=io:256,bar2=mem64-pf:32M,rom=64K",
        "bar0=mem64:2M,bar2=mem32-pf:64K",
    ]
    .iter()
    .enumerate()
    {
        let spec: SyntheticSpec = spec.parse().expect("spec");
        let f: SharedPciDevice = Arc::new(Mutex::new(synthetic_function(&format!("syn{i}"), &spec).expect("function")));
        let bdf = if i < 2 {
            topo.attach_behind_port(&format!("syn{i}"), f.clone())
        } else {
            topo.attach_to_bus0("syn2", f.clone())
        };
        devs.push((bdf.expect("attach"), f));
    }
    (topo, mmio, devs)
}

#[test]
fn guest_enumeration_finds_consistent_resources() {
    let (topo, mmio, _devs) = topology();
    let mut g = Guest { ecam: topo.config_mmio() };
    let mut found = Vec::new();
    let mut ranges: Vec<(u64, u64, Bdf)> = Vec::new();
    let mut buses = vec![(0u8, None::<Bdf>)];
    while let Some((bus, parent)) = buses.pop() {
        for devfn in 0..=255u8 {
            let bdf = Bdf::from_devfn(0, bus, devfn);
            let id = g.read(bdf, 0);
            if id == u32::MAX {
                continue;
            }
            found.push((bdf, id));
            let header = g.read(bdf, 0xc) >> 16 & 0x7f;
            if header == 1 {
                let secondary = (g.read(bdf, 0x18) >> 8) as u8;
                buses.push((secondary, Some(bdf)));
                continue;
            }
            // Linux turns decode off while sizing.
            let cmd = g.read(bdf, 4) as u16;
            g.write16(bdf, 4, cmd & !3);
            let mut off = 0x10;
            while off <= 0x24 {
                if let Some((addr, size, io, is64, pf)) = g.size_bar(bdf, off) {
                    assert!(size.is_power_of_two(), "{bdf} BAR at {off:#x}: size {size:#x}");
                    assert_eq!(addr % size, 0, "{bdf} BAR at {off:#x} not naturally aligned");
                    if !io {
                        let (lo, hi) = if pf && is64 { (4 * GIB, 1u64 << 40) } else { (0xc000_0000, 0xe000_0000) };
                        assert!(
                            addr >= lo && addr + size <= hi,
                            "{bdf} BAR {off:#x} {addr:#x}+{size:#x} outside host window"
                        );
                        if let Some(port) = parent {
                            let (b, l) = g.bridge_window(port, pf && is64).expect("bridge window enabled");
                            assert!(
                                addr >= b && addr + size - 1 <= l,
                                "{bdf} BAR {off:#x} outside {port}'s window {b:#x}-{l:#x}"
                            );
                        }
                        ranges.push((addr, size, bdf));
                    }
                    off += if is64 { 8 } else { 4 };
                } else {
                    off += 4;
                }
            }
            g.write16(bdf, 4, cmd);
            // Every PCIe function's capability list is well formed and has 4 KiB.
            assert_ne!(g.read(bdf, 0x100), u32::MAX);
        }
    }
    let ids: Vec<String> = found.iter().map(|(b, id)| format!("{b} {id:08x}")).collect();
    assert_eq!(
        ids,
        vec![
            "0000:00:00.0 00081b36",
            "0000:00:01.0 000c1b36",
            "0000:00:02.0 000c1b36",
            "0000:00:03.0 00051b36",
            "0000:02:00.0 00051b36",
            "0000:01:00.0 00051b36",
        ]
    );
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "{} and {} overlap", w[0].2, w[1].2);
    }
    assert!(ranges.iter().any(|r| r.1 == 64 * GIB));
    // The enumeration (with its sizing probes) left every BAR reachable where it was.
    for (addr, _, bdf) in &ranges {
        assert!(mmio.resolve(*addr, 4).is_some(), "{bdf} BAR at {addr:#x} unmapped after enumeration");
    }
}

#[test]
fn guest_moves_a_64bit_bar_like_linux() {
    let (topo, mmio, devs) = topology();
    let mut g = Guest { ecam: topo.config_mmio() };
    let (bdf, _) = devs[2];
    let old = u64::from(g.read(bdf, 0x10) & !0xf) | (u64::from(g.read(bdf, 0x14)) << 32);
    mmio.write(old + 8, &[0xab]);
    // pci_std_update_resource: memory decode off, low dword, high dword, decode back on.
    let cmd = g.read(bdf, 4) as u16;
    g.write16(bdf, 4, cmd & !2);
    let new = 0xc180_0000u64;
    g.write(bdf, 0x10, new as u32 | 0x4);
    g.write(bdf, 0x14, 0);
    assert!(mmio.resolve(old, 4).is_some(), "no move while decode is off");
    g.write16(bdf, 4, cmd);
    assert!(mmio.resolve(old, 4).is_none());
    let mut b = [0u8; 1];
    assert!(mmio.read(new + 8, &mut b));
    assert_eq!(b[0], 0xab, "same scratch register at the new address");
    assert_eq!(topo.mapped(bdf, pci::BarIndex(0)), Some(new));
}
