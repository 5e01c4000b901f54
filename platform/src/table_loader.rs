//! QEMU's "linker/loader" (`etc/table-loader`): a script of fixed-size commands telling
//! firmware where to place fw_cfg files in guest memory and how to patch them, so that
//! tables built by the VMM without knowing their final addresses end up linked and
//! checksummed. SeaBIOS (romfile_loader.c) and OVMF (AcpiPlatformDxe) both run it; the
//! commands used here are the three they share:
//!
//! - ALLOCATE: load a file into memory the firmware allocates (`align`, zone: anywhere
//!   high, or the 0xF0000 BIOS segment where an OS scans for the RSDP);
//! - ADD_POINTER: add the address of one file to a little-endian pointer field (1, 2, 4 or
//!   8 bytes) inside another, which initially holds the target's offset in its file;
//! - ADD_CHECKSUM: make the bytes of a range of a file sum to zero by adjusting one byte.
//!
//! [`TableLoader::execute`] runs a script the way firmware does, so direct kernel boot
//! places the very same tables itself.

use std::collections::BTreeMap;

const COMMAND_LEN: usize = 128;
/// File names are 56-byte NUL-terminated fields.
const FILE_FIELD: usize = 56;

const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;

/// Where an ALLOCATE may place a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// Anywhere (firmware uses the top of low RAM).
    High = 1,
    /// The BIOS segment 0xF0000-0xFFFFF (the RSDP, where an OS scans for it).
    FSeg = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Command {
    Allocate { file: String, align: u32, zone: Zone },
    AddPointer { dest: String, src: String, offset: u32, size: u8 },
    AddChecksum { file: String, offset: u32, start: u32, length: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoaderError {
    #[error("table-loader file name {0:?} does not fit its 55-byte field")]
    FileName(String),
    #[error("table-loader: alignment {0} is not a power of two")]
    Align(u32),
    #[error("table-loader: pointer size {0} is not 1, 2, 4 or 8")]
    PointerSize(u8),
    #[error("table-loader: {file:?} is not allocated before it is used")]
    NotAllocated { file: String },
    #[error("table-loader: {file:?} is allocated twice")]
    AllocatedTwice { file: String },
    #[error("table-loader: no file {file:?}")]
    NoFile { file: String },
    #[error("table-loader: {what} at {offset:#x}+{len:#x} runs past the end of {file:?} ({size:#x} bytes)")]
    OutOfRange { what: &'static str, file: String, offset: u64, len: u64, size: usize },
    #[error("table-loader: placing {file:?} failed: {reason}")]
    Place { file: String, reason: String },
    #[error("table-loader: pointer in {file:?} at {offset:#x} overflows when patched")]
    PointerOverflow { file: String, offset: u32 },
}

/// A linker/loader script under construction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableLoader {
    commands: Vec<Command>,
}

fn check_name(name: &str) -> Result<(), LoaderError> {
    if name.is_empty() || name.len() >= FILE_FIELD || name.bytes().any(|b| b == 0) {
        return Err(LoaderError::FileName(name.to_string()));
    }
    Ok(())
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    let mut field = [0u8; FILE_FIELD];
    field[..name.len()].copy_from_slice(name.as_bytes());
    out.extend_from_slice(&field);
}

impl TableLoader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allocate(&mut self, file: &str, align: u32, zone: Zone) -> Result<(), LoaderError> {
        check_name(file)?;
        if !align.is_power_of_two() {
            return Err(LoaderError::Align(align));
        }
        self.commands.push(Command::Allocate { file: file.to_string(), align, zone });
        Ok(())
    }

    /// Adds the address of `src` to the `size`-byte pointer at `offset` in `dest`.
    pub fn add_pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) -> Result<(), LoaderError> {
        check_name(dest)?;
        check_name(src)?;
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(LoaderError::PointerSize(size));
        }
        self.commands.push(Command::AddPointer { dest: dest.to_string(), src: src.to_string(), offset, size });
        Ok(())
    }

    /// Makes `file[start..start + length]` sum to zero by adjusting the byte at `offset`
    /// (which lies inside the range). Add it after the pointers inside the range.
    pub fn add_checksum(&mut self, file: &str, offset: u32, start: u32, length: u32) -> Result<(), LoaderError> {
        check_name(file)?;
        self.commands.push(Command::AddChecksum { file: file.to_string(), offset, start, length });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The `etc/table-loader` contents: 128 bytes per command, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.commands.len() * COMMAND_LEN);
        for c in &self.commands {
            let start = out.len();
            match c {
                Command::Allocate { file, align, zone } => {
                    out.extend_from_slice(&CMD_ALLOCATE.to_le_bytes());
                    put_name(&mut out, file);
                    out.extend_from_slice(&align.to_le_bytes());
                    out.push(*zone as u8);
                }
                Command::AddPointer { dest, src, offset, size } => {
                    out.extend_from_slice(&CMD_ADD_POINTER.to_le_bytes());
                    put_name(&mut out, dest);
                    put_name(&mut out, src);
                    out.extend_from_slice(&offset.to_le_bytes());
                    out.push(*size);
                }
                Command::AddChecksum { file, offset, start, length } => {
                    out.extend_from_slice(&CMD_ADD_CHECKSUM.to_le_bytes());
                    put_name(&mut out, file);
                    out.extend_from_slice(&offset.to_le_bytes());
                    out.extend_from_slice(&start.to_le_bytes());
                    out.extend_from_slice(&length.to_le_bytes());
                }
            }
            out.resize(start + COMMAND_LEN, 0);
        }
        out
    }

    /// Runs the script over `files` as firmware would: `place(name, len, align, zone)`
    /// chooses each allocated file's address; pointers are patched and checksums fixed in
    /// `files`. Returns every allocated file's address. The caller copies the files to
    /// guest memory at those addresses.
    pub fn execute(
        &self,
        files: &mut BTreeMap<String, Vec<u8>>,
        mut place: impl FnMut(&str, usize, u32, Zone) -> Result<u64, String>,
    ) -> Result<BTreeMap<String, u64>, LoaderError> {
        let mut placed: BTreeMap<String, u64> = BTreeMap::new();
        let placed_at = |placed: &BTreeMap<String, u64>, file: &str| {
            placed.get(file).copied().ok_or_else(|| LoaderError::NotAllocated { file: file.to_string() })
        };
        for c in &self.commands {
            match c {
                Command::Allocate { file, align, zone } => {
                    let len = files.get(file).ok_or_else(|| LoaderError::NoFile { file: file.clone() })?.len();
                    if placed.contains_key(file) {
                        return Err(LoaderError::AllocatedTwice { file: file.clone() });
                    }
                    let addr = place(file, len, *align, *zone)
                        .map_err(|reason| LoaderError::Place { file: file.clone(), reason })?;
                    placed.insert(file.clone(), addr);
                }
                Command::AddPointer { dest, src, offset, size } => {
                    let src_addr = placed_at(&placed, src)?;
                    placed_at(&placed, dest)?;
                    let data = files.get_mut(dest).ok_or_else(|| LoaderError::NoFile { file: dest.clone() })?;
                    let (at, n) = (*offset as usize, usize::from(*size));
                    let size_total = data.len();
                    let field = data.get_mut(at..at + n).ok_or(LoaderError::OutOfRange {
                        what: "pointer",
                        file: dest.clone(),
                        offset: u64::from(*offset),
                        len: n as u64,
                        size: size_total,
                    })?;
                    let mut raw = [0u8; 8];
                    raw[..n].copy_from_slice(field);
                    let value = u64::from_le_bytes(raw)
                        .checked_add(src_addr)
                        .filter(|v| n == 8 || *v >> (n * 8) == 0)
                        .ok_or_else(|| LoaderError::PointerOverflow { file: dest.clone(), offset: *offset })?;
                    field.copy_from_slice(&value.to_le_bytes()[..n]);
                }
                Command::AddChecksum { file, offset, start, length } => {
                    placed_at(&placed, file)?;
                    let data = files.get_mut(file).ok_or_else(|| LoaderError::NoFile { file: file.clone() })?;
                    let (s, l, o) = (*start as usize, *length as usize, *offset as usize);
                    let out_of_range = |what, offset: usize, len: usize, size| LoaderError::OutOfRange {
                        what,
                        file: file.clone(),
                        offset: offset as u64,
                        len: len as u64,
                        size,
                    };
                    if s.checked_add(l).is_none_or(|e| e > data.len()) {
                        return Err(out_of_range("checksum range", s, l, data.len()));
                    }
                    if o < s || o >= s + l {
                        return Err(out_of_range("checksum byte", o, 1, data.len()));
                    }
                    // SeaBIOS subtracts the range's sum from the byte; OVMF zeroes the byte
                    // first and stores the negated sum. Both give a zero sum.
                    data[o] = 0;
                    let sum = data[s..s + l].iter().fold(0u8, |a, b| a.wrapping_add(*b));
                    data[o] = sum.wrapping_neg();
                }
            }
        }
        Ok(placed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn commands_serialise_as_128_byte_records() {
        let mut l = TableLoader::new();
        l.allocate("etc/acpi/rsdp", 16, Zone::FSeg).unwrap();
        l.add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 8).unwrap();
        l.add_checksum("etc/acpi/rsdp", 8, 0, 20).unwrap();
        let b = l.to_bytes();
        assert_eq!(b.len(), 3 * 128);
        assert_eq!(&b[0..4], &1u32.to_le_bytes());
        assert_eq!(&b[4..17], b"etc/acpi/rsdp");
        assert_eq!(&b[60..64], &16u32.to_le_bytes());
        assert_eq!(b[64], 2);
        assert_eq!(&b[128..132], &2u32.to_le_bytes());
        assert_eq!(&b[128 + 60..128 + 75], b"etc/acpi/tables");
        assert_eq!(&b[128 + 116..128 + 120], &24u32.to_le_bytes());
        assert_eq!(b[128 + 120], 8);
        assert_eq!(&b[256..260], &3u32.to_le_bytes());
        assert_eq!(&b[256 + 60..256 + 72], &[8, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0]);
    }

    #[test]
    fn builder_refuses_malformed_commands() {
        let mut l = TableLoader::new();
        assert!(l.allocate(&"x".repeat(56), 4, Zone::High).is_err());
        assert!(l.allocate("", 4, Zone::High).is_err());
        assert_eq!(l.allocate("a", 3, Zone::High), Err(LoaderError::Align(3)));
        assert_eq!(l.add_pointer("a", "b", 0, 3), Err(LoaderError::PointerSize(3)));
        assert!(l.is_empty());
    }

    #[test]
    fn execute_links_and_checksums_like_firmware() {
        let mut l = TableLoader::new();
        l.allocate("t", 64, Zone::High).unwrap();
        l.allocate("r", 16, Zone::FSeg).unwrap();
        // "t" holds two tables; the second points at the first (offset 0) with a 4-byte
        // field at 20; the pointer in "r" holds offset 16 (the second table).
        l.add_pointer("t", "t", 20, 4).unwrap();
        l.add_checksum("t", 17, 16, 16).unwrap();
        l.add_pointer("r", "t", 0, 8).unwrap();
        l.add_checksum("r", 8, 0, 16).unwrap();
        let mut files = BTreeMap::new();
        files.insert("t".to_string(), vec![0u8; 32]);
        let mut r = vec![0u8; 16];
        r[0] = 16;
        r[9] = 0x55;
        files.insert("r".to_string(), r);
        let mut calls = Vec::new();
        let placed = l
            .execute(&mut files, |name, len, align, zone| {
                calls.push((name.to_string(), len, align, zone));
                Ok(if zone == Zone::FSeg { 0xf_0000 } else { 0x7fff_0000 })
            })
            .unwrap();
        assert_eq!(calls, vec![("t".into(), 32, 64, Zone::High), ("r".into(), 16, 16, Zone::FSeg)]);
        assert_eq!((placed["t"], placed["r"]), (0x7fff_0000, 0xf_0000));
        let t = &files["t"];
        assert_eq!(u32::from_le_bytes(t[20..24].try_into().unwrap()), 0x7fff_0000);
        assert_eq!(sum(&t[16..32]), 0);
        let r = &files["r"];
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 0x7fff_0010);
        assert_eq!(sum(r), 0);
    }

    #[test]
    fn execute_refuses_bad_scripts() {
        let files = || BTreeMap::from([("a".to_string(), vec![0xffu8; 8])]);
        let run = |l: &TableLoader| l.execute(&mut files(), |_, _, _, _| Ok(0x1000));
        let mut l = TableLoader::new();
        l.add_pointer("a", "a", 0, 4).unwrap();
        assert!(matches!(run(&l), Err(LoaderError::NotAllocated { .. })));
        let mut l = TableLoader::new();
        l.allocate("a", 1, Zone::High).unwrap();
        l.add_pointer("a", "a", 6, 4).unwrap();
        assert!(matches!(run(&l), Err(LoaderError::OutOfRange { .. })));
        let mut l = TableLoader::new();
        l.allocate("a", 1, Zone::High).unwrap();
        l.add_pointer("a", "a", 0, 4).unwrap();
        assert!(matches!(run(&l), Err(LoaderError::PointerOverflow { .. })));
        let mut l = TableLoader::new();
        l.allocate("a", 1, Zone::High).unwrap();
        l.add_checksum("a", 9, 0, 8).unwrap();
        assert!(matches!(run(&l), Err(LoaderError::OutOfRange { .. })));
        let mut l = TableLoader::new();
        l.allocate("b", 1, Zone::High).unwrap();
        assert!(matches!(run(&l), Err(LoaderError::NoFile { .. })));
        let mut l = TableLoader::new();
        l.allocate("a", 1, Zone::High).unwrap();
        l.allocate("a", 1, Zone::High).unwrap();
        assert!(matches!(run(&l), Err(LoaderError::AllocatedTwice { .. })));
        let mut l = TableLoader::new();
        l.allocate("a", 1, Zone::High).unwrap();
        assert!(matches!(l.execute(&mut files(), |_, _, _, _| Err("full".into())), Err(LoaderError::Place { .. })));
    }
}
