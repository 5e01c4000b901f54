// The fw_cfg harness, shared by the cargo-fuzz target (platform/fuzz/fuzz_targets) and the
// replay test in `cargo test -p platform` (platform/tests/fuzz_replay.rs). Included with
// `include!`, so plain comments only.
//
// Sequences of guest accesses to the fw_cfg ports (selector, data, DMA address register,
// any offset and width) with DMA descriptors placed in a small guest RAM, some pointing
// outside it. Invariants checked:
// - nothing panics, and DMA never touches memory outside guest RAM (the RAM model refuses);
// - every data-port byte equals what a shadow model (selected item, offset) predicts;
// - a DMA read leaves exactly the item's bytes (or zeros past its end) at its target, and
//   the descriptor's control word becomes 0, or has only the error bit set;
// - deferred files are refreshed at most once and never change size.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pci::BusDevice;
use platform::fw_cfg::{dma, keys, FwCfg, FwCfgBuilder};

const RAM_LEN: usize = 0x4000;

struct Ram(Mutex<Vec<u8>>);

impl Ram {
    fn slice(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let ram = self.0.lock().unwrap();
        let a = usize::try_from(addr).ok()?;
        ram.get(a..a.checked_add(len)?).map(|s| s.to_vec())
    }
}

impl dma::DmaMemory for Ram {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        match self.slice(addr, buf.len()) {
            Some(s) => {
                buf.copy_from_slice(&s);
                true
            }
            None => false,
        }
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        let mut ram = self.0.lock().unwrap();
        let Some(dst) = usize::try_from(addr).ok().and_then(|a| ram.get_mut(a..a.checked_add(data.len())?)) else {
            return false;
        };
        dst.copy_from_slice(data);
        true
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }
}

/// What the guest should read: the items as built, with deferred ones replaced on first use.
struct Shadow {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    offset: usize,
    deferred: Vec<u16>,
    refreshed: bool,
}

impl Shadow {
    fn select(&mut self, key: u16, refreshed_items: &BTreeMap<u16, Vec<u8>>) {
        self.selected = key & !keys::WRITE_CHANNEL;
        self.offset = 0;
        if !self.refreshed && self.deferred.contains(&self.selected) {
            self.refreshed = true;
            for (k, v) in refreshed_items {
                self.items.insert(*k, v.clone());
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let item = self.items.get(&self.selected).map(Vec::as_slice).unwrap_or(&[]);
        let rest = item.get(self.offset..).unwrap_or(&[]);
        let k = rest.len().min(n);
        let mut out = rest[..k].to_vec();
        out.resize(n, 0);
        self.offset += k;
        out
    }
}

fn build(ram: Arc<Ram>, grow: bool, refreshes: Arc<Mutex<u32>>) -> (FwCfg, Shadow, BTreeMap<u16, Vec<u8>>) {
    let mut b = FwCfgBuilder::new();
    b.add_item(keys::NB_CPUS, 4u16.to_le_bytes().to_vec()).unwrap();
    b.add_item(keys::E820_TABLE, vec![0; 4]).unwrap();
    b.add_file("etc/e820", (0u8..40).collect()).unwrap();
    b.add_file("bootorder", b"/pci@i0cf8/scsi@2/disk@0,0\0".to_vec()).unwrap();
    let new_tables = if grow { vec![0xab; 70] } else { vec![0xcd; 50] };
    let fresh = new_tables.clone();
    b.add_deferred_files(
        vec![("etc/acpi/tables".into(), vec![1; 64]), ("etc/acpi/rsdp".into(), vec![2; 36])],
        Box::new(move || {
            *refreshes.lock().unwrap() += 1;
            vec![fresh, vec![3; 36]]
        }),
    )
    .unwrap();
    let fw = b.build(ram);
    let mut items = BTreeMap::new();
    for key in [keys::SIGNATURE, keys::ID, keys::NB_CPUS, keys::E820_TABLE, keys::FILE_DIR] {
        items.insert(key, fw.item(key).unwrap().to_vec());
    }
    let mut deferred = Vec::new();
    let mut refreshed = BTreeMap::new();
    for name in ["etc/e820", "bootorder", "etc/acpi/tables", "etc/acpi/rsdp"] {
        let key = fw.file_key(name).unwrap();
        items.insert(key, fw.item(key).unwrap().to_vec());
        if name.starts_with("etc/acpi") {
            deferred.push(key);
        }
    }
    let tables = fw.file_key("etc/acpi/tables").unwrap();
    let rsdp = fw.file_key("etc/acpi/rsdp").unwrap();
    if !grow {
        let mut t = new_tables;
        t.resize(64, 0);
        refreshed.insert(tables, t);
    }
    refreshed.insert(rsdp, vec![3; 36]);
    let shadow = Shadow { items, selected: keys::SIGNATURE, offset: 0, deferred, refreshed: false };
    (fw, shadow, refreshed)
}

/// Picks a key: mostly existing ones, sometimes anything.
fn key_from(raw: u16, shadow: &Shadow) -> u16 {
    let known: Vec<u16> = shadow.items.keys().copied().collect();
    if raw & 0x8000 != 0 {
        raw & 0x7fff | if raw & 1 != 0 { keys::ARCH_LOCAL } else { 0 }
    } else {
        known[usize::from(raw) % known.len()] | (raw & keys::WRITE_CHANNEL)
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let grow = input.u8().is_some_and(|b| b & 1 != 0);
    let ram = Arc::new(Ram(Mutex::new(vec![0x5a; RAM_LEN])));
    let refreshes = Arc::new(Mutex::new(0));
    let (mut fw, mut shadow, refreshed) = build(ram.clone(), grow, refreshes.clone());
    let sizes: BTreeMap<u16, usize> = shadow.items.iter().map(|(k, v)| (*k, v.len())).collect();
    while let Some(op) = input.u8() {
        match op % 6 {
            0 => {
                let Some(raw) = input.u16() else { break };
                let key = key_from(raw, &shadow);
                fw.write(0, &key.to_le_bytes());
                shadow.select(key, &refreshed);
            }
            1 => {
                let n = usize::from(input.u8().unwrap_or(1)) % 70 + 1;
                let mut got = vec![0u8; n];
                fw.read(1, &mut got);
                assert_eq!(got, shadow.take(n), "data port");
            }
            2 => {
                // A DMA descriptor at `at`, mostly inside RAM.
                let (Some(at), Some(ctl), Some(len), Some(target)) = (input.u16(), input.u32(), input.u16(), input.u16())
                else {
                    break;
                };
                let at = u64::from(at) % (RAM_LEN as u64 + 0x40);
                let len = u32::from(len) % 0x900;
                let target = u64::from(target) % (RAM_LEN as u64 + 0x100);
                // Mostly well-formed control words: select an existing key, then one op.
                let ctl = if ctl & 0x8000_0000 != 0 {
                    ctl
                } else {
                    let key = u32::from(key_from(ctl as u16, &shadow));
                    let opbits = [dma::CONTROL_READ, dma::CONTROL_SKIP, dma::CONTROL_WRITE, 0][(ctl >> 16) as usize % 4];
                    (key << 16) | if ctl & 0x10000 != 0 { dma::CONTROL_SELECT } else { 0 } | opbits
                };
                let mut d = Vec::new();
                d.extend_from_slice(&ctl.to_be_bytes());
                d.extend_from_slice(&len.to_be_bytes());
                d.extend_from_slice(&target.to_be_bytes());
                let placed = {
                    let mut r = ram.0.lock().unwrap();
                    match r.get_mut(at as usize..at as usize + 16) {
                        Some(dst) => {
                            dst.copy_from_slice(&d);
                            true
                        }
                        None => false,
                    }
                };
                let before = if len == 0 { Some(Vec::new()) } else { ram.slice(target, len as usize) };
                fw.write(8, &(at as u32).to_be_bytes());
                if !placed {
                    continue;
                }
                let access = dma::DmaAccess::parse(&d.try_into().unwrap());
                if let Some(k) = access.select() {
                    shadow.select(k, &refreshed);
                }
                let control = u32::from_be_bytes(ram.slice(at, 4).unwrap().try_into().unwrap());
                assert!(control == 0 || control == dma::CONTROL_ERROR, "control word {control:#x}");
                match access.op() {
                    dma::DmaOp::Read => {
                        let expect = shadow.take(len as usize);
                        if before.is_some() {
                            assert_eq!(control, 0, "DMA read inside RAM failed");
                            // The descriptor may overlap the target: compare outside it.
                            let got = ram.slice(target, len as usize).unwrap_or_default();
                            for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
                                let addr = target + i as u64;
                                if addr < at || addr >= at + 4 {
                                    assert_eq!(g, e, "DMA read byte {i}");
                                }
                            }
                        } else {
                            assert_eq!(control, dma::CONTROL_ERROR, "read outside RAM must fail");
                            // How far a failed read moved the offset is not specified:
                            // select the item again on both sides.
                            fw.write(0, &shadow.selected.to_le_bytes());
                            shadow.offset = 0;
                        }
                    }
                    dma::DmaOp::Skip => {
                        shadow.take(len as usize);
                        assert_eq!(control, 0);
                    }
                    dma::DmaOp::Write => assert_eq!(control, dma::CONTROL_ERROR),
                    dma::DmaOp::None => assert_eq!(control, 0),
                }
            }
            3 => {
                // Any access at any offset of the port range.
                let (Some(off), Some(w)) = (input.u8(), input.u8()) else { break };
                let off = u64::from(off % 16);
                let width = [1usize, 2, 4, 8][usize::from(w % 4)];
                let mut bytes = vec![0u8; width];
                for b in bytes.iter_mut() {
                    *b = input.u8().unwrap_or(0);
                }
                if (off, width) == (0, 2) || (off, width) == (4, 4) || (off, width) == (8, 4) || (off, width) == (4, 8) {
                    // Selector and DMA writes are covered above with a model; here only
                    // the bad shapes.
                    continue;
                }
                fw.write(off, &bytes);
            }
            4 => {
                let (Some(off), Some(w)) = (input.u8(), input.u8()) else { break };
                let off = u64::from(off % 16);
                let mut bytes = vec![0u8; usize::from(w % 9)];
                fw.read(off, &mut bytes);
                if off == 1 {
                    assert_eq!(bytes, shadow.take(bytes.len()), "data port");
                } else if (4..12).contains(&off) {
                    for (i, b) in bytes.iter().enumerate() {
                        assert_eq!(*b, b"QEMU CFG".get(off as usize - 4 + i).copied().unwrap_or(0));
                    }
                }
            }
            _ => {
                // Re-read the directory and check sizes never changed.
                fw.write(0, &keys::FILE_DIR.to_le_bytes());
                shadow.select(keys::FILE_DIR, &refreshed);
                let dir = shadow.take(4 + 4 * 64);
                let mut got = vec![0u8; dir.len()];
                fw.read(1, &mut got);
                assert_eq!(got, dir);
                for key in shadow.deferred.clone() {
                    assert_eq!(fw.item(key).map(<[u8]>::len), sizes.get(&key).copied());
                }
            }
        }
        assert!(*refreshes.lock().unwrap() <= 1, "deferred files refreshed twice");
    }
}
