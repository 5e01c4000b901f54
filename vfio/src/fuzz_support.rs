//! The property the config-space fuzz target (vfio/fuzz) checks, shared with a unit test so
//! it also runs under plain `cargo test`: whatever a guest writes to config space or to the
//! BARs, no write reaches a host-only field of the device. Host-only: every fully virtualized
//! byte (BARs, ROM BAR, MSI and MSI-X capabilities, capability pointers, hidden capabilities
//! such as SR-IOV), and the virtualized bits of mixed bytes (command decode bits), which may
//! only ever hold the value the VMM fixed.

use std::sync::Arc;

use pci::{BarIndex, InterruptError, MsiMessage, MsiVectors, PciDevice, VectorIndex};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{AssignedConfig, RomOptions};
use crate::device::{DeviceParts, VfioPciDevice};
use crate::host::{FakeHost, CONFIG_REGION};

/// MSI vectors that route nowhere: the fuzz harnesses' interrupt sink.
pub struct NullVectors(pub Vec<EventFd>);

impl MsiVectors for NullVectors {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn irqfd(&self, v: VectorIndex) -> Option<&EventFd> {
        self.0.get(v.0 as usize)
    }
    fn set_route(&mut self, v: VectorIndex, _msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        if v.0 as usize >= self.0.len() {
            return Err(InterruptError::NoSuchVector(v));
        }
        Ok(())
    }
    fn commit(&mut self) -> Result<(), InterruptError> {
        Ok(())
    }
}

/// A captured-style config space: 64-bit BAR0 with MSI-X table/PBA, I/O BAR2, ROM, PM, MSI
/// (64-bit, per-vector mask), MSI-X, a hidden PCI-X, PCIe; SR-IOV, AER, ARI extended.
pub fn sample_config() -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    let mut put = |off: usize, v: u32| c[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(0x00, 0x0010_1b36);
    put(0x04, 0x0010_0006);
    put(0x08, 0x0108_0200);
    put(0x0c, 0x0080_0000);
    put(0x10, 0xfebf_0004);
    put(0x18, 0x0000_c001);
    put(0x34, 0x40);
    put(0x3c, 0x0000_010b);
    put(0x40, 0x0003_5001);
    put(0x50, 0x0186_7005);
    put(0x68, 0x0000_8007);
    put(0x70, 0x0003_6811);
    put(0x74, 0x0000_2000);
    put(0x78, 0x0000_3000);
    put(0x80, 0x0002_0010);
    put(0x100, 0x1401_0010);
    put(0x104, 0xdead_beef);
    put(0x140, 0x1801_0001);
    put(0x180, 0x0001_000e);
    c
}

pub const SAMPLE_SIZES: [u64; 7] = [0x4000, 0, 0x100, 0, 0, 0, 0x10000];

/// Places memory BARs one after the other from 0xe000_0000 (at least a page each) and I/O
/// BARs from port 0xc000, naturally aligned, as a test VMM would.
pub fn place_bars(dev: &mut VfioPciDevice) -> Result<(), crate::device::DeviceError> {
    let (mut mem, mut io) = (0xe000_0000u64, 0xc000u64);
    dev.place_bars(&mut |b| {
        let next = if b.kind == pci::BarKind::Io { &mut io } else { &mut mem };
        let at = next.next_multiple_of(b.size);
        *next = at + b.size.max(if b.kind == pci::BarKind::Io { 1 } else { 0x1000 });
        Some(at)
    })
}

/// Runs the guest accesses encoded in `data` and panics on any host-only field reached.
/// Records: kind (bit 0: config/BAR), dword or BAR offset (2 bytes), byte offset, length,
/// then the bytes written.
pub fn run_guest_writes(data: &[u8]) {
    let cfg_bytes = sample_config();
    let host = Arc::new(FakeHost::new(&cfg_bytes, SAMPLE_SIZES, [1, 8, 4]));
    let model = AssignedConfig::new("fuzz", &cfg_bytes, SAMPLE_SIZES, RomOptions::default()).expect("sample parses");
    let fds = (0..8).filter_map(|_| EventFd::new(0).ok()).collect();
    let Ok(mut dev) = VfioPciDevice::new(DeviceParts {
        host: host.clone(),
        rombar: true,
        romfile: None,
        vectors: Box::new(NullVectors(fds)),
        intx: None,
    }) else {
        return;
    };
    place_bars(&mut dev).expect("the sample's BARs fit");
    // The MSI-X table and PBA where the model found them: emulated, so no guest access may
    // change the device's bytes there (misaligned accesses straddling their edges once did).
    let msix: Vec<(u32, std::ops::Range<usize>)> = model
        .msix()
        .map(|m| {
            let m = m.config();
            let range = |at: u32, len: u64| at as usize..(u64::from(at) + len) as usize;
            vec![
                (u32::from(m.table_bar.0), range(m.table_offset, m.table_bytes())),
                (u32::from(m.pba_bar.0), range(m.pba_offset, m.pba_bytes())),
            ]
        })
        .unwrap_or_default();
    let msix_bytes = || -> Vec<Vec<u8>> {
        msix.iter().map(|(r, range)| host.region_bytes(*r).get(range.clone()).unwrap_or_default().to_vec()).collect()
    };
    let msix_before = msix_bytes();
    let mut rest = data;
    while rest.len() >= 5 {
        let (kind, reg, off, len) = (rest[0], u16::from_le_bytes([rest[1], rest[2]]), rest[3], rest[4] as usize);
        rest = &rest[5..];
        let len = (len % 9).min(rest.len());
        let bytes = &rest[..len];
        rest = &rest[len..];
        let before = host.region_bytes(CONFIG_REGION);
        if kind & 1 == 0 {
            let reg = usize::from(reg) % 1100;
            let _ = dev.write_config(reg, u64::from(off % 5), bytes);
            let _ = dev.read_config(reg);
        } else {
            let bar = BarIndex((kind >> 1) % 8);
            let offset = u64::from(reg) | (u64::from(off) << 16);
            dev.write_bar(bar, offset, bytes);
            let mut buf = [0u8; 8];
            dev.read_bar(bar, offset, &mut buf[..len.max(1)]);
        }
        assert_eq!(msix_bytes(), msix_before, "a guest access reached the device's MSI-X table or PBA");
        let after = host.region_bytes(CONFIG_REGION);
        for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
            let virt = model.byte_emulated(i);
            let changed = b ^ a;
            if virt == 0xff {
                assert_eq!(changed, 0, "host-only config byte {i:#x} changed {b:#x} -> {a:#x}");
            } else if changed & virt != 0 {
                assert_eq!(
                    a & virt,
                    model.device_value_byte(i) & virt,
                    "virtualized bits of byte {i:#x} reached the device"
                );
            }
        }
    }
    // Sanity: the fields the property protects are really virtualized in the model.
    for off in
        (0x10..0x28).chain(0x30..0x34).chain(0x50..0x68).chain(0x70..0x7c).chain(0x100..0x140).chain(0x180..0x184)
    {
        assert_eq!(model.byte_emulated(off), 0xff, "byte {off:#x} should be host-only");
    }
    assert_eq!(model.byte_emulated(4) & 0x3, 0x3, "command decode bits are virtualized");
}

#[cfg(test)]
mod tests {
    /// The fuzz property over a deterministic pseudo-random stream (xorshift), so it runs in
    /// every `cargo test` without cargo-fuzz.
    #[test]
    fn random_guest_writes_never_reach_host_only_fields() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..40 {
            let mut data = Vec::with_capacity(2000);
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push(x as u8);
            }
            // Bias some records towards the interesting registers.
            if round % 2 == 0 {
                for rec in data.chunks_mut(13) {
                    if rec.len() >= 3 {
                        rec[1] %= 0x70;
                        rec[2] = 0;
                    }
                }
            }
            super::run_guest_writes(&data);
        }
    }

    /// The config_writes fuzz finding, minimized (memory decode on, then a 2-byte BAR0 write
    /// at 0x3007 across the PBA's end), plus misaligned accesses across the other edges of
    /// the table (0x2000..0x2040) and PBA (0x3000..0x3008).
    #[test]
    fn straddling_msix_accesses_never_reach_the_device() {
        super::run_guest_writes(b"\xda\x01\x00\xff\xff\xff\xff\x00\x01\x07\x30\x00\xff\xff\x08");
        let mut data = vec![0x00, 0x01, 0x00, 0x00, 0x02, 0x06, 0x00];
        for (offset, len) in [(0x1ffcu16, 8u8), (0x1fff, 2), (0x203c, 8), (0x2ffc, 8), (0x3004, 8)] {
            data.extend([0x01, offset as u8, (offset >> 8) as u8, 0x00, len]);
            data.extend(std::iter::repeat_n(0xaa, usize::from(len)));
        }
        super::run_guest_writes(&data);
    }
}
