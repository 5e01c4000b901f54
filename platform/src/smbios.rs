//! SMBIOS 3.0 tables (DMTF DSP0134 3.0) as QEMU hands them to firmware: the structures in
//! `etc/smbios/smbios-tables` and a 64-bit entry point in `etc/smbios/smbios-anchor` whose
//! structure table address the firmware fills in once it has placed the tables.
//!
//! Structures: 0 (BIOS, optional: with firmware, the firmware describes itself, as it
//! does under QEMU), 1 (system, with the VM's UUID), 3 (chassis), 4 (one per socket), 16
//! (the memory array), 17 (one memory device per 16 GiB, as QEMU splits them), 19 (one
//! mapped range per RAM region), 32 (boot status) and 127 (end).

const ENTRY_POINT_LEN: usize = 0x18;
/// QEMU's largest memory device; bigger RAM becomes several.
const MAX_DEVICE_SIZE: u64 = 16 << 30;
const HANDLE_NONE: u16 = 0xfffe;
const HANDLE_UNKNOWN: u16 = 0xffff;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmbiosError {
    #[error("SMBIOS string {0:?} is empty or holds a NUL byte")]
    BadString(String),
    #[error("SMBIOS structure type {0} has more than 255 strings or bytes of fields")]
    TooLarge(u8),
    #[error("SMBIOS tables ({0} bytes) exceed the 32-bit size of the entry point")]
    TablesTooLarge(usize),
}

/// Type 0 contents, for a VMM that is the platform's firmware (direct kernel boot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BiosInfo {
    pub vendor: String,
    pub version: String,
    pub release_date: String,
}

/// The processor as type 4 describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessorInfo {
    pub sockets: u16,
    pub cores_per_socket: u16,
    pub threads_per_core: u16,
    /// CPUID leaf 1 EAX (signature) and EDX (features): the type 4 "processor ID".
    pub cpuid_1_eax: u32,
    pub cpuid_1_edx: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmbiosConfig {
    pub bios: Option<BiosInfo>,
    pub manufacturer: String,
    pub product: String,
    pub version: String,
    pub uuid: [u8; 16],
    pub processor: ProcessorInfo,
    /// RAM regions `(start, size)`.
    pub memory: Vec<(u64, u64)>,
}

/// The two fw_cfg files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmbiosTables {
    pub anchor: Vec<u8>,
    pub tables: Vec<u8>,
}

/// One structure: formatted area then its string set.
struct Structure {
    ty: u8,
    handle: u16,
    fields: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(ty: u8, handle: u16) -> Self {
        Self { ty, handle, fields: Vec::new(), strings: Vec::new() }
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.fields.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.fields.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.fields.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.fields.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.fields.extend_from_slice(v);
        self
    }

    /// A string field: its 1-based index in the string set, 0 for "none".
    fn str(&mut self, s: &str) -> &mut Self {
        if s.is_empty() {
            return self.u8(0);
        }
        self.strings.push(s.to_string());
        let index = u8::try_from(self.strings.len()).unwrap_or(0);
        self.u8(index)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), SmbiosError> {
        let len = u8::try_from(self.fields.len() + 4).map_err(|_| SmbiosError::TooLarge(self.ty))?;
        if self.strings.len() > 255 {
            return Err(SmbiosError::TooLarge(self.ty));
        }
        out.extend_from_slice(&[self.ty, len]);
        out.extend_from_slice(&self.handle.to_le_bytes());
        out.extend_from_slice(&self.fields);
        for s in &self.strings {
            if s.bytes().any(|b| b == 0) {
                return Err(SmbiosError::BadString(s.clone()));
            }
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        if self.strings.is_empty() {
            out.push(0);
        }
        out.push(0);
        Ok(())
    }
}

/// Builds the structures and the entry point for `cfg`.
pub fn build(cfg: &SmbiosConfig) -> Result<SmbiosTables, SmbiosError> {
    let mut structures = Vec::new();
    let mut next_handle = 0u16;
    let mut handle = || {
        let h = next_handle;
        next_handle += 1;
        h
    };

    if let Some(bios) = &cfg.bios {
        let mut t = Structure::new(0, handle());
        t.str(&bios.vendor).str(&bios.version).u16(0xe800).str(&bios.release_date);
        // ROM size 64 KiB; characteristics: "not supported" (bit 3); extension byte 2:
        // "the system is a virtual machine" (bit 4).
        t.u8(0).u64(1 << 3).u8(0).u8(1 << 4);
        t.u8(0).u8(0).u8(0xff).u8(0xff);
        structures.push(t);
    }

    let mut t1 = Structure::new(1, handle());
    t1.str(&cfg.manufacturer).str(&cfg.product).str(&cfg.version).str("");
    // SMBIOS 2.6+: the first three UUID fields are little-endian.
    let u = cfg.uuid;
    let uuid = [u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]];
    // Wake-up type 6: power switch.
    t1.bytes(&uuid).u8(6).str("").str("");
    structures.push(t1);

    let mut t3 = Structure::new(3, handle());
    // Type 1 (other), states 3 (safe), security 2 (unknown), no contained elements.
    t3.str(&cfg.manufacturer).u8(1).str("").str("").str("");
    t3.u8(3).u8(3).u8(3).u8(2).u32(0).u8(0).u8(0).u8(0).u8(0).str("");
    structures.push(t3);

    let p = cfg.processor;
    for socket in 0..p.sockets.max(1) {
        let threads = p.cores_per_socket.saturating_mul(p.threads_per_core).max(1);
        let cores = p.cores_per_socket.max(1);
        let mut t4 = Structure::new(4, handle());
        t4.str(&format!("CPU {socket}")).u8(3).u8(0xfe).str(&cfg.manufacturer);
        t4.u32(p.cpuid_1_eax).u32(p.cpuid_1_edx).str("");
        // Voltage, external clock and speeds unknown (0); status: populated, enabled;
        // upgrade 1 (other); no cache structures.
        t4.u8(0).u16(0).u16(0).u16(0).u8(0x41).u8(1);
        t4.u16(HANDLE_UNKNOWN).u16(HANDLE_UNKNOWN).u16(HANDLE_UNKNOWN).str("").str("").str("");
        t4.u8(u8::try_from(cores).unwrap_or(0xff)).u8(u8::try_from(cores).unwrap_or(0xff));
        t4.u8(u8::try_from(threads).unwrap_or(0xff));
        // Characteristics: 64-bit capable (bit 2); family 2 = 1 (other); 16-bit counts.
        t4.u16(1 << 2).u16(1).u16(cores).u16(cores).u16(threads);
        structures.push(t4);
    }

    let total: u64 = cfg.memory.iter().map(|(_, s)| s).sum();
    let devices = total.div_ceil(MAX_DEVICE_SIZE).max(1);
    let array = handle();
    let mut t16 = Structure::new(16, array);
    let total_kib = total >> 10;
    // Location 1 (other), use 3 (system memory), error correction 6 (multi-bit ECC), as QEMU.
    t16.u8(1).u8(3).u8(6);
    t16.u32(u32::try_from(total_kib).ok().filter(|k| *k < 0x8000_0000).unwrap_or(0x8000_0000));
    t16.u16(HANDLE_NONE).u16(u16::try_from(devices).unwrap_or(u16::MAX)).u64(total);
    structures.push(t16);

    let mut left = total;
    for i in 0..devices {
        let size = left.min(MAX_DEVICE_SIZE);
        left -= size;
        let mib = size >> 20;
        let mut t17 = Structure::new(17, handle());
        t17.u16(array).u16(HANDLE_NONE).u16(HANDLE_UNKNOWN).u16(HANDLE_UNKNOWN);
        // Size in MiB, or 0x7fff and the extended size field.
        t17.u16(u16::try_from(mib).ok().filter(|m| *m < 0x7fff).unwrap_or(0x7fff));
        // Form factor 9 (DIMM), no set, type 7 (RAM), detail 2 (other).
        t17.u8(9).u8(0).str(&format!("DIMM {i}")).str("").u8(7).u16(2).u16(0);
        t17.str(&cfg.manufacturer).str("").str("").str("").u8(0);
        t17.u32(u32::try_from(mib).unwrap_or(u32::MAX)).u16(0).u16(0).u16(0).u16(0);
        structures.push(t17);
    }

    for &(start, size) in cfg.memory.iter().filter(|(_, s)| *s > 0) {
        let mut t19 = Structure::new(19, handle());
        let end = start + size - 1;
        match (u32::try_from(start >> 10), u32::try_from(end >> 10)) {
            (Ok(s), Ok(e)) if e != u32::MAX => t19.u32(s).u32(e).u16(array).u8(1).u64(0).u64(0),
            _ => t19.u32(u32::MAX).u32(u32::MAX).u16(array).u8(1).u64(start).u64(end),
        };
        structures.push(t19);
    }

    let mut t32 = Structure::new(32, handle());
    t32.bytes(&[0; 6]).u8(0);
    structures.push(t32);
    structures.push(Structure::new(127, handle()));

    let mut tables = Vec::new();
    for s in &structures {
        s.encode(&mut tables)?;
    }
    let max = u32::try_from(tables.len()).map_err(|_| SmbiosError::TablesTooLarge(tables.len()))?;
    let mut anchor = Vec::with_capacity(ENTRY_POINT_LEN);
    anchor.extend_from_slice(b"_SM3_");
    anchor.push(0);
    anchor.push(ENTRY_POINT_LEN as u8);
    // Version 3.0.0, entry point revision 1.
    anchor.extend_from_slice(&[3, 0, 0, 1, 0]);
    anchor.extend_from_slice(&max.to_le_bytes());
    anchor.extend_from_slice(&0u64.to_le_bytes());
    let sum = anchor.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    anchor[5] = sum.wrapping_neg();
    Ok(SmbiosTables { anchor, tables })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(bios: bool, memory: Vec<(u64, u64)>) -> SmbiosConfig {
        SmbiosConfig {
            bios: bios.then(|| BiosInfo { vendor: "viaduct".into(), version: "1".into(), release_date: "".into() }),
            manufacturer: "viaduct".into(),
            product: "viaduct VM".into(),
            version: "0.1.0".into(),
            uuid: [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8],
            processor: ProcessorInfo {
                sockets: 1,
                cores_per_socket: 2,
                threads_per_core: 1,
                cpuid_1_eax: 0x800f12,
                cpuid_1_edx: 0x178bfbff,
            },
            memory,
        }
    }

    /// (type, formatted bytes, strings) of every structure, walking the blob as a reader
    /// (dmidecode, firmware) does.
    fn walk(mut b: &[u8]) -> Vec<(u8, Vec<u8>, Vec<String>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (ty, len) = (b[0], b[1] as usize);
            let fields = b[..len].to_vec();
            let mut at = len;
            let mut strings = Vec::new();
            loop {
                let end = at + b[at..].iter().position(|x| *x == 0).unwrap();
                if end == at {
                    at += 1;
                    if strings.is_empty() {
                        at += 1;
                    }
                    break;
                }
                strings.push(String::from_utf8(b[at..end].to_vec()).unwrap());
                at = end + 1;
            }
            out.push((ty, fields, strings));
            b = &b[at..];
        }
        out
    }

    #[test]
    fn structures_and_entry_point() {
        let t = build(&cfg(false, vec![(0, 2 << 30), (4 << 30, 30 << 30)])).unwrap();
        assert_eq!(t.anchor.len(), 0x18);
        assert_eq!(&t.anchor[..5], b"_SM3_");
        assert_eq!(t.anchor.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u32::from_le_bytes(t.anchor[12..16].try_into().unwrap()) as usize, t.tables.len());
        let s = walk(&t.tables);
        let types: Vec<u8> = s.iter().map(|x| x.0).collect();
        // 32 GiB: two 16 GiB devices; two mapped ranges.
        assert_eq!(types, vec![1, 3, 4, 16, 17, 17, 19, 19, 32, 127]);
        let t1 = &s[0];
        assert_eq!(t1.1.len(), 0x1b);
        assert_eq!(&t1.1[8..12], &[0x78, 0x56, 0x34, 0x12], "UUID time_low little-endian");
        assert_eq!(t1.2, vec!["viaduct", "viaduct VM", "0.1.0"]);
        let t4 = &s[2];
        assert_eq!(t4.1.len(), 0x30);
        assert_eq!((t4.1[0x23], t4.1[0x25]), (2, 2), "core and thread counts");
        let t16 = &s[3];
        assert_eq!(t16.1.len(), 0x17);
        assert_eq!(u64::from_le_bytes(t16.1[0x0f..0x17].try_into().unwrap()), 32 << 30);
        let t17 = &s[4];
        assert_eq!(t17.1.len(), 0x28);
        assert_eq!(u16::from_le_bytes([t17.1[0x0c], t17.1[0x0d]]), 16 << 10);
        let t19 = &s[7];
        assert_eq!(t19.1.len(), 0x1f);
        assert_eq!(u32::from_le_bytes(t19.1[4..8].try_into().unwrap()), 4 << 20, "start in KiB");
        assert_eq!(u32::from_le_bytes(t19.1[8..12].try_into().unwrap()), (34 << 20) - 1);
        // The handles are unique.
        let mut handles: Vec<u16> = s.iter().map(|x| u16::from_le_bytes([x.1[2], x.1[3]])).collect();
        handles.dedup();
        assert_eq!(handles.len(), s.len());
    }

    #[test]
    fn optional_bios_and_huge_memory() {
        let t = build(&cfg(true, vec![(0, 3 << 30), (4 << 30, 5 << 40)])).unwrap();
        let s = walk(&t.tables);
        assert_eq!(s[0].0, 0);
        assert_eq!(s[0].1.len(), 0x18);
        assert_eq!(s[0].2, vec!["viaduct", "1"], "empty strings are omitted");
        let t19 = s.iter().filter(|x| x.0 == 19).nth(1).unwrap();
        assert_eq!(&t19.1[4..12], &[0xff; 8], "beyond 4 TiB: extended addresses");
        assert_eq!(u64::from_le_bytes(t19.1[0x0f..0x17].try_into().unwrap()), 4 << 30);
        let mut bad = cfg(false, vec![(0, 1 << 20)]);
        bad.product = "a\0b".into();
        assert!(matches!(build(&bad), Err(SmbiosError::BadString(_))));
    }
}
