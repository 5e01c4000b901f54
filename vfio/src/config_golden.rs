//! Config spaces of real devices (captured in the testbed, `vfio/tests/data/*.cfg`) and the
//! samples, driven through fixed write sequences: what the guest reads back and what reaches
//! the device, for every register.

use std::fmt::Write as _;

use pci::BarKind;

use crate::config::{AssignedConfig, RomOptions};

/// A captured device: config bytes and region sizes (BAR0..5, ROM).
pub(crate) struct Dump {
    pub name: &'static str,
    pub config: Vec<u8>,
    pub sizes: [u64; 7],
}

/// Parses a `.cfg` capture: `size N`, `bars S0 .. S5 ROM`, then `lspci -xxxx` lines
/// (lines left out are zero).
fn parse_dump(name: &'static str, text: &str) -> Dump {
    let mut config = Vec::new();
    let mut sizes = [0u64; 7];
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex number");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        if let Some(size) = line.strip_prefix("size ") {
            config = vec![0u8; hex(size) as usize];
        } else if let Some(bars) = line.strip_prefix("bars ") {
            for (s, v) in sizes.iter_mut().zip(bars.split_whitespace()) {
                *s = hex(v);
            }
        } else {
            let (off, bytes) = line.split_once(": ").expect("lspci line");
            let off = hex(off) as usize;
            for (i, b) in bytes.split_whitespace().enumerate() {
                config[off + i] = hex(b) as u8;
            }
        }
    }
    Dump { name, config, sizes }
}

pub(crate) fn dumps() -> Vec<Dump> {
    vec![
        parse_dump("nvme", include_str!("../tests/data/nvme.cfg")),
        parse_dump("igbvf", include_str!("../tests/data/igbvf.cfg")),
        parse_dump("e1000e", include_str!("../tests/data/e1000e.cfg")),
        parse_dump("ahci", include_str!("../tests/data/ahci.cfg")),
        Dump {
            name: "sample",
            config: crate::config::tests::sample_config(),
            sizes: crate::config::tests::sample_sizes(),
        },
        Dump {
            name: "fuzz-sample",
            config: crate::fuzz_support::sample_config(),
            sizes: crate::fuzz_support::SAMPLE_SIZES,
        },
    ]
}

/// One guest config write: dword, byte offset, bytes.
pub(crate) type Write = (usize, u64, Vec<u8>);

/// What one write did: the forwarded bytes (offset, bytes) and the decode changes.
pub(crate) type WriteOutcome = (Vec<(u64, Vec<u8>)>, Option<bool>, Option<bool>);

/// The guest's view of an assigned function plus the device's config bytes behind it.
pub(crate) struct Sim {
    pub engine: AssignedConfig,
    pub device: Vec<u8>,
}

impl Sim {
    /// What a guest read of `reg` returns (the device is read only for device bits, as
    /// VfioPciDevice does).
    pub fn read(&self, reg: usize) -> u32 {
        let mut device = 0;
        if self.engine.device_bits(reg) != 0 {
            let mut b = [0u8; 4];
            if let Some(s) = self.device.get(reg * 4..reg * 4 + 4) {
                b.copy_from_slice(s);
            }
            device = u32::from_le_bytes(b);
        }
        self.engine.read(reg, device)
    }

    pub fn write(&mut self, w: &Write) -> WriteOutcome {
        let out = self.engine.write(w.0, w.1, &w.2);
        for d in &out.device_writes {
            let off = d.offset as usize;
            self.device[off..off + d.data.len()].copy_from_slice(&d.data);
        }
        let forwarded = out.device_writes.into_iter().map(|d| (d.offset, d.data)).collect();
        (forwarded, out.effects.mem_decode, out.effects.io_decode)
    }
}

pub(crate) fn new_engine(d: &Dump, rom: RomOptions) -> AssignedConfig {
    let mut c = AssignedConfig::new(d.name, &d.config, d.sizes, rom).expect("dump parses");
    for (index, addr) in placements(&c) {
        c.place_bar(index, addr).expect("placement fits");
    }
    c
}

/// Where the BARs go: memory from 0xe000_0000, I/O from port 0xc000, naturally aligned.
pub(crate) fn placements(c: &AssignedConfig) -> Vec<(pci::BarIndex, u64)> {
    let (mut mem, mut io) = (0xe000_0000u64, 0xc000u64);
    c.bar_specs()
        .iter()
        .map(|b| {
            let next = if b.kind == BarKind::Io { &mut io } else { &mut mem };
            let at = next.next_multiple_of(b.size);
            *next = at + b.size;
            (b.index, at)
        })
        .collect()
}

fn w32(reg: usize, v: u32) -> Write {
    (reg, 0, v.to_le_bytes().to_vec())
}

/// The guest-visible standard capabilities: (id, offset).
fn visible_caps(sim: &Sim) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut ptr = (sim.read(13) & 0xfc) as usize;
    while ptr >= 0x40 && out.len() < 48 {
        let d = sim.read(ptr / 4);
        out.push(((d & 0xff) as u8, ptr));
        ptr = ((d >> 8) & 0xfc) as usize;
    }
    out
}

/// The fixed write sequences, built from what the guest sees of the device.
pub(crate) fn sequences(sim: &Sim) -> Vec<(&'static str, Vec<Write>)> {
    let caps = visible_caps(sim);
    let cap = |id: u8| caps.iter().find(|c| c.0 == id).map(|c| c.1);
    // Firmware: size every BAR and the ROM, put them back, enable decode and bus master.
    let mut probe = Vec::new();
    for reg in (4..10).chain([12]) {
        let v = sim.read(reg);
        probe.push(w32(reg, u32::MAX));
        probe.push(w32(reg, v));
    }
    probe.push((1, 0, vec![0x07, 0x00]));
    // A driver: interrupt line, MSI (64-bit address, data, a masked vector, MME = 4), then
    // MSI-X (enabled and masked, unmasked), PM and PCIe device control, BAR moves with decode
    // on, the ROM enabled, then decode and bus master off again.
    let mut driver = vec![(15, 0, vec![0x0b]), (1, 0, vec![0x06, 0x04])];
    if let Some(o) = cap(0x05) {
        driver.extend([
            w32(o / 4 + 1, 0xfee0_1004),
            w32(o / 4 + 2, 0x0000_0001),
            w32(o / 4 + 3, 0x0000_4041),
            w32(o / 4 + 4, 0x0000_0002),
            (o / 4, 2, vec![0x21, 0x00]),
            (o / 4, 2, vec![0x00]),
        ]);
    }
    if let Some(o) = cap(0x11) {
        driver.extend([(o / 4, 2, vec![0x00, 0xc0]), (o / 4, 3, vec![0x80]), (o / 4, 3, vec![0x00])]);
    }
    if let Some(o) = cap(0x01) {
        driver.extend([(o / 4 + 1, 0, vec![0x03, 0x01]), (o / 4 + 1, 0, vec![0x00, 0x00])]);
    }
    if let Some(o) = cap(0x10) {
        driver.extend([(o / 4 + 2, 0, vec![0x1f, 0x29]), (o / 4 + 2, 2, vec![0x0f, 0x00])]);
    }
    for reg in 4..10 {
        let v = sim.read(reg);
        driver.push(w32(reg, v.wrapping_add(0x0010_0000)));
    }
    driver.extend([w32(12, sim.read(12) | 1), (1, 0, vec![0x00])]);
    let ones = (0..1030).map(|reg| w32(reg, u32::MAX)).collect();
    let zeros = (0..1030).map(|reg| w32(reg, 0)).collect();
    let bytes = (0..4096).map(|off| (off / 4, (off % 4) as u64, vec![0xa5])).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let random = (0..3000)
        .map(|i| {
            let r = next();
            // The header, capabilities and the first extended capabilities; the whole space
            // is covered by the sequences above.
            let reg = (r % 64) as usize + if i % 2 == 0 { 0 } else { 64 };
            let (offset, len) = [(0, 4), (0, 2), (2, 2), (0, 1), (1, 1), (2, 1), (3, 1)][(r >> 20) as usize % 7];
            (reg, offset, (r >> 32).to_le_bytes()[..len].to_vec())
        })
        .collect();
    vec![("probe", probe), ("driver", driver), ("ones", ones), ("zeros", zeros), ("bytes", bytes), ("random", random)]
}

/// FNV-1a, for digests of long logs.
pub(crate) fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

/// `what OFF: VALUE` per dword with a value, `what FIRST..=LAST: VALUE` for runs of equal ones.
fn runs(out: &mut String, what: &str, values: &[Option<u32>]) {
    let mut i = 0;
    while i < values.len() {
        let Some(v) = values[i] else {
            i += 1;
            continue;
        };
        let end = i + values[i..].iter().take_while(|x| **x == Some(v)).count();
        if end - i == 1 {
            let _ = writeln!(out, "{what} {:03x}: {v:08x}", i * 4);
        } else {
            let _ = writeln!(out, "{what} {:03x}..={:03x}: {v:08x}", i * 4, (end - 1) * 4);
        }
        i = end;
    }
}

/// The record of one sequence: the guest's view of every dword at the end (0 left out), the
/// device's config dwords that changed, and digests of every forwarded write and of the
/// written dword's read-back after each write.
pub(crate) fn record(sim: &mut Sim, writes: &[Write]) -> String {
    let initial = sim.device.clone();
    let (mut fwd_digest, mut read_digest, mut forwarded) = (0xcbf2_9ce4_8422_2325u64, 0xcbf2_9ce4_8422_2325u64, 0);
    for w in writes {
        let (fwd, mem, io) = sim.write(w);
        for (off, bytes) in &fwd {
            fnv(&mut fwd_digest, &off.to_le_bytes());
            fnv(&mut fwd_digest, bytes);
            forwarded += 1;
        }
        fnv(&mut read_digest, &sim.read(w.0).to_le_bytes());
        fnv(&mut read_digest, &[mem.map_or(2, u8::from), io.map_or(2, u8::from)]);
    }
    let guest: Vec<u32> = (0..1024).map(|reg| sim.read(reg)).collect();
    let device: Vec<Option<u32>> = (0..sim.device.len() / 4)
        .map(|reg| {
            let (a, b) = (&initial[reg * 4..reg * 4 + 4], &sim.device[reg * 4..reg * 4 + 4]);
            (a != b).then(|| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        })
        .collect();
    let mut out = String::new();
    runs(&mut out, "guest", &guest.iter().map(|v| (*v != 0).then_some(*v)).collect::<Vec<_>>());
    runs(&mut out, "device", &device);
    let _ =
        writeln!(out, "forwarded {forwarded} writes, digest {fwd_digest:016x}; read-back digest {read_digest:016x}");
    out
}

/// Every dump through every sequence, against the records in `vfio/tests/data/golden/`.
/// After a deliberate change, `VFIO_GOLDEN_BLESS=1 cargo test -p vfio golden` rewrites
/// them: review the diff.
#[test]
fn golden_records() {
    let bless = std::env::var_os("VFIO_GOLDEN_BLESS").is_some();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden");
    for d in dumps() {
        let fresh = Sim { engine: new_engine(&d, RomOptions::default()), device: d.config.clone() };
        let mut text = format!(
            "# {}: the guest's view and the device's config after each write sequence of\n\
             # vfio/src/config_golden.rs (VFIO_GOLDEN_BLESS=1 rewrites this file)\n",
            d.name
        );
        for (name, writes) in sequences(&fresh) {
            let mut sim = Sim { engine: new_engine(&d, RomOptions::default()), device: d.config.clone() };
            let _ = writeln!(text, "[{name}]");
            text.push_str(&record(&mut sim, &writes));
        }
        let path = dir.join(format!("{}.golden", d.name));
        if bless {
            std::fs::create_dir_all(&dir).expect("golden dir");
            std::fs::write(&path, &text).expect("writing a golden record");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some((i, (got, exp))) = text.lines().zip(want.lines()).enumerate().find(|(_, (a, b))| a != b) {
            panic!("{}: line {}: got '{got}', expected '{exp}'", path.display(), i + 1);
        }
        assert_eq!(text.lines().count(), want.lines().count(), "{}: line count", path.display());
    }
}
