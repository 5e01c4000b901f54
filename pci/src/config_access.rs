//! Config space access for the guest: configuration mechanism #1 (ports 0xCF8/0xCFC) and
//! ECAM, routed to the [`PciRoot`]. Both hold the root weakly (the VMM's PCI segment owns it),
//! lock it per access and never wait while holding it: a write the function can complete
//! only later (a Bus Master enable waiting for guest RAM's DMA mapping, [`ConfigWait`]) is
//! waited for here with no lock held, then written again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::bdf::Bdf;
use crate::bus::{failed_device, BusAccess};
use crate::root::PciRoot;
#[cfg(doc)]
use crate::ConfigWait;

/// Locks the root for one access; `None` (logged) once a panic poisoned it: config space
/// then reads all-ones, as if nothing were there.
fn lock(root: &Mutex<PciRoot>) -> Option<MutexGuard<'_, PciRoot>> {
    root.lock().map_err(|_| failed_device("PCI root complex")).ok()
}

/// Splits a config access of `len` bytes at byte `offset` into (dword, byte in dword);
/// `None` if it is not 1, 2 or 4 bytes or straddles a dword.
fn dword_access(offset: usize, len: usize) -> Option<(usize, u64)> {
    let byte = offset % 4;
    (matches!(len, 1 | 2 | 4) && byte + len <= 4).then_some((offset / 4, byte as u64))
}

fn read_bytes(root: &Weak<Mutex<PciRoot>>, bdf: Bdf, offset: usize, data: &mut [u8]) {
    let Some((reg, byte)) = dword_access(offset, data.len()) else {
        data.fill(0xff);
        return;
    };
    let root = root.upgrade();
    let value = root.as_deref().and_then(lock).map_or(u32::MAX, |r| r.read_config(bdf, reg) >> (byte * 8));
    for (i, b) in data.iter_mut().enumerate() {
        *b = (value >> (i * 8)) as u8;
    }
}

/// A config write. When the function cannot complete it yet (a Bus Master enable waiting
/// for guest RAM's DMA mapping), this vCPU waits here with no lock held, so every other
/// vCPU's config accesses go on meanwhile, then writes again.
fn write_bytes(root: &Weak<Mutex<PciRoot>>, bdf: Bdf, offset: usize, data: &[u8]) {
    let Some((reg, byte)) = dword_access(offset, data.len()) else { return };
    let Some(wait) = root.upgrade().and_then(|r| lock(&r)?.write_config(bdf, reg, byte, data)) else { return };
    if wait.gate.wait() {
        if let Some(r) = root.upgrade() {
            if let Some(mut r) = lock(&r) {
                // The gate is open now: this write completes (no second wait).
                let _ = r.write_config(bdf, wait.reg, wait.offset, &wait.data);
            }
        }
    }
}

/// Configuration mechanism #1: address latch at 0xCF8, data window at 0xCFC..0xCFF.
/// Insert it on the port I/O bus at 0xCF8 with length 8. Bits 27:24 of the address carry
/// extended register bits 11:8 (the AMD convention Linux also uses), reaching the whole
/// 4 KiB config space.
pub struct PciConfigIo {
    root: Weak<Mutex<PciRoot>>,
    segment: u16,
    /// The latch; guests serialize CF8/CFC pairs themselves (Linux: pci_config_lock).
    address: AtomicU32,
    /// The chipset register sharing the latch's ports: byte accesses to 0xCF9 (the reset
    /// control register of PIIX/ICH southbridges), held weakly like the root.
    port_cf9: Option<Weak<dyn BusAccess>>,
}

impl PciConfigIo {
    pub fn new(root: &Arc<Mutex<PciRoot>>) -> Self {
        let segment = lock(root).map_or(0, |r| r.segment());
        Self { root: Arc::downgrade(root), segment, address: AtomicU32::new(0), port_cf9: None }
    }

    /// Also forwards byte accesses to port 0xCF9 to `device` (at its offset 0).
    pub fn with_port_cf9(root: &Arc<Mutex<PciRoot>>, device: &Arc<dyn BusAccess>) -> Self {
        Self { port_cf9: Some(Arc::downgrade(device)), ..Self::new(root) }
    }

    fn target(&self) -> Option<(Bdf, usize)> {
        let address = self.address.load(Ordering::Relaxed);
        if address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (address >> 16) as u8;
        let devfn = (address >> 8) as u8;
        let offset = (address & 0xfc) as usize | (((address >> 24) & 0xf) as usize) << 8;
        Some((Bdf::from_devfn(self.segment, bus, devfn), offset))
    }
}

impl BusAccess for PciConfigIo {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes()),
            1 if data.len() == 1 && self.port_cf9.is_some() => {
                if let Some(d) = &self.port_cf9 {
                    d.read(0, data);
                }
            }
            4..=7 => match self.target() {
                Some((bdf, reg_off)) => read_bytes(&self.root, bdf, reg_off + (offset as usize - 4), data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match offset {
            // Only dword writes latch the address; byte writes to 0xCF8..0xCFB are other
            // devices' registers on real chipsets (e.g. 0xCF9 reset control).
            0 if data.len() == 4 => {
                self.address.store(u32::from_le_bytes([data[0], data[1], data[2], data[3]]), Ordering::Relaxed)
            }
            1 if data.len() == 1 && self.port_cf9.is_some() => {
                if let Some(d) = &self.port_cf9 {
                    d.write(0, data);
                }
            }
            4..=7 => {
                if let Some((bdf, reg_off)) = self.target() {
                    write_bytes(&self.root, bdf, reg_off + (offset as usize - 4), data);
                }
            }
            _ => ratelog::debug_limited!("PCI config port write of {} bytes at {offset} dropped", data.len()),
        }
    }
}

/// ECAM (PCIe enhanced configuration access, base spec 7.2.2): 4 KiB per function,
/// bus << 20 | devfn << 12. Insert it on the MMIO bus at the window advertised in MCFG,
/// `(last_bus + 1) << 20` bytes long.
pub struct PciConfigMmio {
    root: Weak<Mutex<PciRoot>>,
    segment: u16,
}

impl PciConfigMmio {
    pub fn new(root: &Arc<Mutex<PciRoot>>) -> Self {
        let segment = lock(root).map_or(0, |r| r.segment());
        Self { root: Arc::downgrade(root), segment }
    }
}

impl BusAccess for PciConfigMmio {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >> 28 != 0 {
            data.fill(0xff);
            return;
        }
        let (bdf, reg_off) = Bdf::from_ecam_offset(self.segment, offset);
        read_bytes(&self.root, bdf, reg_off, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset >> 28 != 0 {
            return;
        }
        let (bdf, reg_off) = Bdf::from_ecam_offset(self.segment, offset);
        write_bytes(&self.root, bdf, reg_off, data);
    }
}
