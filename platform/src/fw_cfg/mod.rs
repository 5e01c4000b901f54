//! QEMU's firmware configuration device (fw_cfg) as x86 firmware finds it on I/O ports:
//! selector at 0x510 (16-bit writes), data at 0x511 (byte reads), DMA address register at
//! 0x514 (big-endian, high half at 0x514, low half at 0x518, which starts the transfer).
//! Items are byte strings selected by a 16-bit key; named "files" get keys from
//! [`keys::FILE_FIRST`] up and are listed in the directory item ([`keys::FILE_DIR`]).
//!
//! Everything a guest writes here is untrusted: unknown keys read as zeros, accesses of
//! the wrong size are dropped, DMA descriptors pointing outside RAM fail with the error bit
//! and never reach host memory (guest memory is behind [`DmaMemory`]).

pub mod dma;
pub mod items;
pub mod keys;
pub mod linux;
pub mod machine;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use dma::{DmaAccess, DmaMemory, DmaOp};

/// The port range the device occupies, from its base (0x510): selector, data, DMA.
pub const PORT_BASE: u64 = 0x510;
pub const PORT_LEN: u64 = 0x0c;
const OFFSET_SELECTOR: u64 = 0;
const OFFSET_DATA: u64 = 1;
const OFFSET_DMA: u64 = 4;
const OFFSET_DMA_LOW: u64 = 8;

/// A file name fills at most 55 bytes plus its NUL in a directory entry.
pub const FILE_NAME_MAX: usize = 55;
const DIR_ENTRY_LEN: usize = 64;
/// Keys for files stop where the write channel bit starts.
const MAX_FILES: usize = (keys::WRITE_CHANNEL - keys::FILE_FIRST) as usize;
/// Zeros are written to guest memory in pieces of this size (a read past an item's end).
const ZERO_CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name {name:?}: {reason}")]
    FileName { name: String, reason: &'static str },
    #[error("fw_cfg file {name:?} added twice")]
    DuplicateFile { name: String },
    #[error("fw_cfg key {key:#06x} is reserved for the device itself or for files")]
    ReservedKey { key: u16 },
    #[error("fw_cfg key {key:#06x} added twice")]
    DuplicateKey { key: u16 },
    #[error("too many fw_cfg files ({count}; at most {MAX_FILES})")]
    TooManyFiles { count: usize },
    #[error("fw_cfg item {what} is {len} bytes, more than its 32-bit size field holds")]
    TooLarge { what: String, len: usize },
}

/// Produces the final contents of deferred files (see
/// [`FwCfgBuilder::add_deferred_files`]), in the order they were given.
pub type DeferredRefresh = Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>;

/// Collects items before the guest runs; [`FwCfgBuilder::build`] makes the device.
pub struct FwCfgBuilder {
    items: BTreeMap<u16, Vec<u8>>,
    files: BTreeMap<String, Vec<u8>>,
    deferred: Option<(Vec<String>, DeferredRefresh)>,
}

fn check_name(name: &str) -> Result<(), FwCfgError> {
    let err = |reason| Err(FwCfgError::FileName { name: name.to_string(), reason });
    if name.is_empty() {
        return err("empty");
    }
    if name.len() > FILE_NAME_MAX {
        return err("longer than 55 bytes");
    }
    if name.bytes().any(|b| b == 0) {
        return err("contains a NUL byte");
    }
    Ok(())
}

fn check_len(what: &str, data: &[u8]) -> Result<(), FwCfgError> {
    if u32::try_from(data.len()).is_err() {
        return Err(FwCfgError::TooLarge { what: what.to_string(), len: data.len() });
    }
    Ok(())
}

impl Default for FwCfgBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfgBuilder {
    /// The signature and interface items; everything else is added by the caller.
    pub fn new() -> Self {
        let mut items = BTreeMap::new();
        items.insert(keys::SIGNATURE, b"QEMU".to_vec());
        items.insert(keys::ID, (keys::ID_TRADITIONAL | keys::ID_DMA).to_le_bytes().to_vec());
        Self { items, files: BTreeMap::new(), deferred: None }
    }

    /// A numbered ("legacy") item. Multi-byte numbers in legacy items are little-endian.
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let index = key & !keys::ARCH_LOCAL;
        let reserved = key & keys::WRITE_CHANNEL != 0
            || matches!(key, keys::SIGNATURE | keys::ID | keys::FILE_DIR)
            || (key & keys::ARCH_LOCAL == 0 && index >= keys::FILE_FIRST);
        if reserved {
            return Err(FwCfgError::ReservedKey { key });
        }
        check_len(&format!("{key:#06x}"), &data)?;
        if self.items.insert(key, data).is_some() {
            return Err(FwCfgError::DuplicateKey { key });
        }
        Ok(())
    }

    /// A named file.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        check_name(name)?;
        check_len(name, &data)?;
        if self.files.contains_key(name) {
            return Err(FwCfgError::DuplicateFile { name: name.to_string() });
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::TooManyFiles { count: self.files.len() + 1 });
        }
        self.files.insert(name.to_string(), data);
        Ok(())
    }

    /// Files whose contents depend on what the firmware does before it reads them (ACPI
    /// tables describing where it put the ECAM and PM blocks). The directory lists them
    /// with the sizes of `files`; the first time the guest selects any of them, `refresh`
    /// runs once and its results replace the contents, zero-padded to the listed size. A
    /// result longer than the listed size, or a wrong count of results, keeps the initial
    /// contents (and is logged): the directory the firmware already read cannot change.
    pub fn add_deferred_files(
        &mut self,
        files: Vec<(String, Vec<u8>)>,
        refresh: DeferredRefresh,
    ) -> Result<(), FwCfgError> {
        let mut names = Vec::with_capacity(files.len());
        for (name, data) in files {
            self.add_file(&name, data)?;
            names.push(name);
        }
        self.deferred = Some((names, refresh));
        Ok(())
    }

    /// The device, with file keys assigned in name order.
    pub fn build(self, memory: Arc<dyn DmaMemory>) -> FwCfg {
        let mut items = self.items;
        let mut dir = Vec::with_capacity(4 + self.files.len() * DIR_ENTRY_LEN);
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        let mut file_keys = BTreeMap::new();
        for (i, (name, data)) in self.files.into_iter().enumerate() {
            // Checked when added: at most MAX_FILES files, each under 4 GiB.
            let key = keys::FILE_FIRST + i as u16;
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; FILE_NAME_MAX + 1];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
            items.insert(key, data);
            file_keys.insert(name, key);
        }
        items.insert(keys::FILE_DIR, dir);
        let deferred = self.deferred.map(|(names, refresh)| Deferred {
            keys: names.iter().filter_map(|n| file_keys.get(n).copied()).collect(),
            refresh: Some(refresh),
        });
        FwCfg { items, file_keys, selected: keys::SIGNATURE, offset: 0, dma_high: 0, memory, deferred }
    }
}

struct Deferred {
    keys: Vec<u16>,
    refresh: Option<DeferredRefresh>,
}

/// The device. Put it on the port I/O bus at [`PORT_BASE`], [`PORT_LEN`] long.
pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    file_keys: BTreeMap<String, u16>,
    selected: u16,
    offset: usize,
    /// The high half of the DMA descriptor address, latched until the low half arrives.
    dma_high: u32,
    memory: Arc<dyn DmaMemory>,
    deferred: Option<Deferred>,
}

impl FwCfg {
    /// The key the directory gives file `name`.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        self.file_keys.get(name).copied()
    }

    /// An item's current contents (for tests and diagnostics).
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(Vec::as_slice)
    }

    fn select(&mut self, key: u16) {
        self.selected = key & !keys::WRITE_CHANNEL;
        self.offset = 0;
        self.run_deferred();
    }

    fn run_deferred(&mut self) {
        let Some(d) = self.deferred.as_mut() else { return };
        if !d.keys.contains(&self.selected) {
            return;
        }
        let Some(refresh) = d.refresh.take() else { return };
        let contents = refresh();
        if contents.len() != d.keys.len() {
            log::error!("fw_cfg: {} deferred files refreshed into {} contents; kept", d.keys.len(), contents.len());
            return;
        }
        for (key, mut data) in d.keys.iter().zip(contents) {
            let Some(item) = self.items.get_mut(key) else { continue };
            if data.len() > item.len() {
                log::error!(
                    "fw_cfg: item {key:#06x} grew from {} to {} bytes after the directory was read; kept",
                    item.len(),
                    data.len()
                );
                continue;
            }
            data.resize(item.len(), 0);
            *item = data;
        }
    }

    fn remaining(&self) -> &[u8] {
        self.items.get(&self.selected).and_then(|d| d.get(self.offset..)).unwrap_or(&[])
    }

    fn read_data(&mut self, out: &mut [u8]) {
        let rest = self.remaining();
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        out[n..].fill(0);
        self.offset += n;
    }

    /// Runs the descriptor at `addr` and writes its control word back.
    fn dma(&mut self, addr: u64) {
        let mut raw = [0u8; dma::DESCRIPTOR_LEN];
        if !self.memory.read(addr, &mut raw) {
            self.note_bad(format_args!("DMA descriptor at {addr:#x} is not in RAM"));
            return;
        }
        let access = DmaAccess::parse(&raw);
        if let Some(key) = access.select() {
            self.select(key);
        }
        let ok = match access.op() {
            DmaOp::Read => self.dma_read(access.address, access.length),
            DmaOp::Skip => {
                let n = self.remaining().len().min(access.length as usize);
                self.offset += n;
                true
            }
            // No item here is writable (QEMU's are only for features we do not offer).
            DmaOp::Write => false,
            DmaOp::None => true,
        };
        let control = if ok { 0 } else { dma::CONTROL_ERROR };
        if !self.memory.write(addr, &control.to_be_bytes()) {
            self.note_bad(format_args!("DMA descriptor at {addr:#x} cannot be written back"));
        }
    }

    fn dma_read(&mut self, dst: u64, len: u32) -> bool {
        let len = len as usize;
        let rest = self.remaining();
        let n = rest.len().min(len);
        if n > 0 {
            if !self.memory.write(dst, &rest[..n]) {
                return false;
            }
            self.offset += n;
        }
        // Past the item's end (or an unknown key): zeros, as QEMU fills them.
        let zeros = [0u8; ZERO_CHUNK];
        let mut done = n;
        while done < len {
            let chunk = (len - done).min(ZERO_CHUNK);
            let Some(at) = dst.checked_add(done as u64) else { return false };
            if !self.memory.write(at, &zeros[..chunk]) {
                return false;
            }
            done += chunk;
        }
        true
    }

    fn note_bad(&mut self, what: std::fmt::Arguments) {
        ratelog::warn_limited!("fw_cfg: {what}");
    }
}

impl pci::BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // The data port; a `rep insb` arrives as one access of many bytes.
            OFFSET_DATA => self.read_data(data),
            OFFSET_DMA..=11 => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = (offset - OFFSET_DMA) as usize + i;
                    *b = dma::DMA_SIGNATURE.get(at).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (OFFSET_SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (OFFSET_DMA, 4) => self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            (OFFSET_DMA_LOW, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            (OFFSET_DMA, 8) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(data);
                self.dma_high = 0;
                self.dma(u64::from_be_bytes(be));
            }
            // Writes through the data port were dropped by QEMU 2.4 too.
            _ => self.note_bad(format_args!("{}-byte write at port offset {offset} dropped", data.len())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use pci::BusDevice;

    use super::*;

    /// Guest RAM `[0, len)` for DMA tests.
    pub(crate) struct Ram(pub Mutex<Vec<u8>>);

    impl Ram {
        pub(crate) fn new(len: usize) -> Arc<Self> {
            Arc::new(Self(Mutex::new(vec![0; len])))
        }

        pub(crate) fn bytes(&self, addr: usize, len: usize) -> Vec<u8> {
            self.0.lock().unwrap()[addr..addr + len].to_vec()
        }

        pub(crate) fn put(&self, addr: usize, data: &[u8]) {
            self.0.lock().unwrap()[addr..addr + data.len()].copy_from_slice(data);
        }
    }

    impl DmaMemory for Ram {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let ram = self.0.lock().unwrap();
            let Some(src) = usize::try_from(addr).ok().and_then(|a| ram.get(a..a.checked_add(buf.len())?)) else {
                return false;
            };
            buf.copy_from_slice(src);
            true
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

    pub(crate) fn select(fw: &mut FwCfg, key: u16) {
        fw.write(OFFSET_SELECTOR, &key.to_le_bytes());
    }

    pub(crate) fn read_port(fw: &mut FwCfg, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for b in out.iter_mut() {
            fw.read(OFFSET_DATA, std::slice::from_mut(b));
        }
        out
    }

    /// Reads file `name` through the directory, as firmware does over the ports.
    pub(crate) fn read_file(fw: &mut FwCfg, name: &str) -> Option<Vec<u8>> {
        select(fw, keys::FILE_DIR);
        let count = u32::from_be_bytes(read_port(fw, 4).try_into().unwrap());
        for _ in 0..count {
            let e = read_port(fw, DIR_ENTRY_LEN);
            let size = u32::from_be_bytes(e[..4].try_into().unwrap()) as usize;
            let key = u16::from_be_bytes([e[4], e[5]]);
            let end = e[8..].iter().position(|b| *b == 0).unwrap();
            if &e[8..8 + end] == name.as_bytes() {
                select(fw, key);
                return Some(read_port(fw, size));
            }
        }
        None
    }

    fn dma_descriptor(ram: &Ram, at: usize, control: u32, length: u32, address: u64) {
        let mut d = Vec::new();
        d.extend_from_slice(&control.to_be_bytes());
        d.extend_from_slice(&length.to_be_bytes());
        d.extend_from_slice(&address.to_be_bytes());
        ram.put(at, &d);
    }

    fn kick(fw: &mut FwCfg, at: u64) {
        fw.write(OFFSET_DMA, &((at >> 32) as u32).to_be_bytes());
        fw.write(OFFSET_DMA_LOW, &(at as u32).to_be_bytes());
    }

    fn device(ram: &Arc<Ram>) -> FwCfg {
        let mut b = FwCfgBuilder::new();
        b.add_item(keys::NB_CPUS, 2u16.to_le_bytes().to_vec()).unwrap();
        b.add_file("etc/zeta", vec![7; 3]).unwrap();
        b.add_file("etc/alpha", b"hello".to_vec()).unwrap();
        b.build(ram.clone())
    }

    #[test]
    fn signature_id_and_directory_over_ports() {
        let ram = Ram::new(0x1000);
        let mut fw = device(&ram);
        select(&mut fw, keys::SIGNATURE);
        assert_eq!(read_port(&mut fw, 4), b"QEMU");
        assert_eq!(read_port(&mut fw, 2), [0, 0], "past the end reads zeros");
        select(&mut fw, keys::ID);
        assert_eq!(read_port(&mut fw, 4), 3u32.to_le_bytes());
        select(&mut fw, keys::NB_CPUS);
        assert_eq!(read_port(&mut fw, 2), [2, 0]);
        // Files are keyed in name order.
        assert_eq!((fw.file_key("etc/alpha"), fw.file_key("etc/zeta")), (Some(0x20), Some(0x21)));
        assert_eq!(read_file(&mut fw, "etc/alpha").unwrap(), b"hello");
        assert_eq!(read_file(&mut fw, "etc/zeta").unwrap(), [7; 3]);
        assert!(read_file(&mut fw, "etc/none").is_none());
        // A `rep insb` arrives as one multi-byte access.
        select(&mut fw, 0x20);
        let mut five = [0u8; 5];
        fw.read(OFFSET_DATA, &mut five);
        assert_eq!(&five, b"hello");
        // The DMA register reads the signature.
        let mut sig = [0u8; 8];
        fw.read(OFFSET_DMA, &mut sig);
        assert_eq!(&sig, b"QEMU CFG");
        let mut low = [0u8; 4];
        fw.read(OFFSET_DMA_LOW, &mut low);
        assert_eq!(&low, b" CFG");
        // The write channel bit selects the same item.
        select(&mut fw, keys::NB_CPUS | keys::WRITE_CHANNEL);
        assert_eq!(read_port(&mut fw, 1), [2]);
        // Unknown keys read zeros; 1-byte selector writes and data writes are dropped.
        select(&mut fw, 0x7777);
        assert_eq!(read_port(&mut fw, 2), [0, 0]);
        fw.write(OFFSET_SELECTOR, &[keys::SIGNATURE as u8]);
        fw.write(OFFSET_DATA, &[1]);
        assert_eq!(read_port(&mut fw, 1), [0]);
    }

    #[test]
    fn dma_select_read_skip_and_errors() {
        let ram = Ram::new(0x2000);
        let mut fw = device(&ram);
        let key = u32::from(fw.file_key("etc/alpha").unwrap());
        // Select + read 3 bytes into 0x800.
        dma_descriptor(&ram, 0x100, (key << 16) | dma::CONTROL_SELECT | dma::CONTROL_READ, 3, 0x800);
        kick(&mut fw, 0x100);
        assert_eq!(ram.bytes(0x100, 4), [0; 4], "control written back as 0");
        assert_eq!(ram.bytes(0x800, 3), b"hel");
        // Skip 1, then read 4: "o" and zero fill.
        ram.put(0x900, &[0xee; 4]);
        dma_descriptor(&ram, 0x100, dma::CONTROL_SKIP, 1, 0);
        kick(&mut fw, 0x100);
        dma_descriptor(&ram, 0x100, dma::CONTROL_READ, 4, 0x900);
        kick(&mut fw, 0x100);
        assert_eq!(ram.bytes(0x900, 4), [b'o', 0, 0, 0]);
        // Writes are refused with the error bit.
        dma_descriptor(&ram, 0x100, dma::CONTROL_WRITE, 4, 0x900);
        kick(&mut fw, 0x100);
        assert_eq!(ram.bytes(0x100, 4), dma::CONTROL_ERROR.to_be_bytes());
        // A target outside RAM: error, nothing written.
        dma_descriptor(&ram, 0x100, (key << 16) | dma::CONTROL_SELECT | dma::CONTROL_READ, 5, 0x1ffe);
        kick(&mut fw, 0x100);
        assert_eq!(ram.bytes(0x100, 4), dma::CONTROL_ERROR.to_be_bytes());
        // A huge zero fill that runs off the end of RAM: error, no panic.
        dma_descriptor(&ram, 0x100, dma::CONTROL_READ, u32::MAX, 0x1000);
        kick(&mut fw, 0x100);
        assert_eq!(ram.bytes(0x100, 4), dma::CONTROL_ERROR.to_be_bytes());
        // A descriptor outside RAM or at the top of the address space is ignored.
        kick(&mut fw, u64::MAX - 4);
        fw.write(OFFSET_DMA, &(u64::MAX - 8).to_be_bytes());
        // Only the low half starts a transfer, and the high half is used once.
        dma_descriptor(&ram, 0x200, dma::CONTROL_SELECT | (u32::from(keys::SIGNATURE) << 16), 0, 0);
        fw.write(OFFSET_DMA, &1u32.to_be_bytes());
        fw.write(OFFSET_DMA_LOW, &0x200u32.to_be_bytes());
        assert_eq!(ram.bytes(0x200, 4), [0, 0, 0, 8], "descriptor at 4 GiB + 0x200: not RAM, untouched");
        fw.write(OFFSET_DMA_LOW, &0x200u32.to_be_bytes());
        assert_eq!(ram.bytes(0x200, 4), [0; 4]);
        assert_eq!(read_port(&mut fw, 4), b"QEMU", "the DMA select took effect");
    }

    #[test]
    fn builder_refuses_bad_items() {
        let mut b = FwCfgBuilder::new();
        assert_eq!(b.add_item(keys::SIGNATURE, vec![]), Err(FwCfgError::ReservedKey { key: 0 }));
        assert!(b.add_item(keys::FILE_DIR, vec![]).is_err());
        assert!(b.add_item(0x20, vec![]).is_err());
        assert!(b.add_item(keys::WRITE_CHANNEL | 3, vec![]).is_err());
        b.add_item(keys::E820_TABLE, vec![0; 4]).unwrap();
        assert_eq!(b.add_item(keys::E820_TABLE, vec![]), Err(FwCfgError::DuplicateKey { key: keys::E820_TABLE }));
        assert!(b.add_file("", vec![]).is_err());
        assert!(b.add_file(&"x".repeat(56), vec![]).is_err());
        assert!(b.add_file("a\0b", vec![]).is_err());
        b.add_file(&"x".repeat(55), vec![]).unwrap();
        assert!(matches!(b.add_file(&"x".repeat(55), vec![]), Err(FwCfgError::DuplicateFile { .. })));
    }

    #[test]
    fn deferred_files_refresh_once_on_first_select() {
        let ram = Ram::new(0x100);
        let mut b = FwCfgBuilder::new();
        let runs = Arc::new(Mutex::new(0));
        let r = runs.clone();
        b.add_deferred_files(
            vec![("etc/a".into(), vec![1; 4]), ("etc/b".into(), vec![2; 2])],
            Box::new(move || {
                *r.lock().unwrap() += 1;
                vec![vec![9, 9], vec![3; 5]]
            }),
        )
        .unwrap();
        let mut fw = b.build(ram);
        // Reading the directory does not refresh.
        select(&mut fw, keys::FILE_DIR);
        assert_eq!(*runs.lock().unwrap(), 0);
        assert_eq!(read_file(&mut fw, "etc/b").unwrap(), [2; 2], "grown content is refused");
        assert_eq!(read_file(&mut fw, "etc/a").unwrap(), [9, 9, 0, 0], "shorter content is padded");
        assert_eq!(*runs.lock().unwrap(), 1);
    }
}
