//! Guest config-space and BAR writes against an assigned device backed by an in-memory
//! region (FakeHost): panics if any write reaches a host-only field (BAR addresses, MSI/MSI-X
//! capability, MSI-X table and PBA, command decode bits, hidden capabilities). Run from
//! vfio/fuzz:
//!     cargo +nightly fuzz run config_writes
//!
//! Two oracles run on every input. `run_guest_writes` (vfio::fuzz_support, also run by
//! `cargo test -p vfio`) compares the host bytes against the virtualization model's own
//! per-byte masks. The second one, below, does not trust the model: its host-only ranges are
//! written out here from the sample device's layout, so a model that wrongly forwarded a
//! whole field would still be caught.
#![no_main]

use std::ops::Range;
use std::sync::Arc;

use pci::{BarIndex, InterruptError, MsiMessage, MsiVectors, PciDevice, VectorIndex};
use vfio::device::{DeviceParts, VfioPciDevice};
use vfio::fuzz_support::{sample_config, SAMPLE_SIZES};
use vfio::host::{FakeHost, CONFIG_REGION};
use vfio::regions::MemorySlots;
use vmm_sys_util::eventfd::EventFd;

/// Config-space bytes of the sample device no guest write may change on the device.
/// The layout is `vfio::fuzz_support::sample_config`: BARs, ROM BAR and capability pointer,
/// MSI at 0x50, hidden PCI-X at 0x68, MSI-X at 0x70, hidden SR-IOV at 0x100 and ARI at 0x180.
const HOST_ONLY_CONFIG: &[Range<usize>] = &[
    0x10..0x28,   // BAR0..BAR5 addresses
    0x30..0x35,   // ROM BAR address, capability pointer
    0x50..0x68,   // MSI: address, data, mask, pending
    0x68..0x70,   // PCI-X (hidden)
    0x70..0x7c,   // MSI-X capability (enable, mask, table/PBA offsets)
    0x100..0x140, // SR-IOV (hidden)
    0x180..0x184, // ARI (hidden)
];
/// The MSI-X table (4 entries at BAR0 + 0x2000) and PBA (BAR0 + 0x3000): the guest's MSI
/// addresses and data are emulated; the device's own table belongs to the host kernel.
const HOST_ONLY_BAR0: &[Range<usize>] = &[0x2000..0x2040, 0x3000..0x3008];
/// Command register: I/O and memory decode (bits 0, 1). Whatever the guest writes, the
/// device keeps decoding what it has BARs for: the sample has memory BARs and an I/O BAR, so
/// the VMM may only ever put both bits on (the guest's own bits are emulated).
const COMMAND_DECODE: u8 = 0x03;
const DEVICE_DECODE: u8 = 0x03;

struct NullVectors(Vec<EventFd>);

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

struct NullSlots(u32);

impl MemorySlots for NullSlots {
    fn map_slot(&mut self, _gpa: u64, _size: u64, _host_addr: u64) -> std::io::Result<u32> {
        self.0 += 1;
        Ok(self.0)
    }
    fn unmap_slot(&mut self, _slot: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_unchanged(what: &str, ranges: &[Range<usize>], before: &[u8], after: &[u8]) {
    for r in ranges {
        for i in r.clone() {
            assert_eq!(
                before[i], after[i],
                "{what} byte {i:#x} is host-only but changed {:#x} -> {:#x}",
                before[i], after[i]
            );
        }
    }
}

/// The independent oracle. Records: kind (bit 0: config/BAR, bits 1..3: BAR), register or
/// BAR offset (2 bytes), byte offset / BAR offset high byte, length, the bytes.
fn independent_oracle(data: &[u8]) {
    let cfg = sample_config();
    let host = Arc::new(FakeHost::new(&cfg, SAMPLE_SIZES, [1, 8, 4]));
    let fds = (0..8).filter_map(|_| EventFd::new(0).ok()).collect();
    let Ok(mut dev) = VfioPciDevice::new(DeviceParts {
        host: host.clone(),
        rombar: true,
        romfile: None,
        vectors: Box::new(NullVectors(fds)),
        intx: None,
        slots: Box::new(NullSlots(0)),
    }) else {
        panic!("the sample device must open");
    };
    let mut next = 0xe000_0000u64;
    let placed = dev.place_bars(&mut |b| {
        let a = next;
        next += b.size.max(0x1000);
        Some(a)
    });
    assert!(placed.is_ok(), "placing the sample BARs failed");
    let cfg0 = host.region_bytes(CONFIG_REGION);
    let bar0 = host.region_bytes(0);
    let mut decode_fixed = false;
    let mut rest = data;
    while rest.len() >= 5 {
        let (kind, reg, off, len) = (rest[0], u16::from_le_bytes([rest[1], rest[2]]), rest[3], rest[4] as usize);
        rest = &rest[5..];
        let len = (len % 9).min(rest.len());
        let bytes = &rest[..len];
        rest = &rest[len..];
        if kind & 1 == 0 {
            // Registers past the end (4 KiB / 4 = 1024) must be ignored, not crash.
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
        let cfg_now = host.region_bytes(CONFIG_REGION);
        assert_unchanged("config", HOST_ONLY_CONFIG, &cfg0, &cfg_now);
        let decode = cfg_now[4] & COMMAND_DECODE;
        assert!(
            decode == DEVICE_DECODE || (decode == cfg0[4] & COMMAND_DECODE && !decode_fixed),
            "command decode bits reached the device: {:#x} -> {decode:#x}",
            cfg0[4] & COMMAND_DECODE
        );
        decode_fixed |= decode == DEVICE_DECODE;
        assert_unchanged("BAR0", HOST_ONLY_BAR0, &bar0, &host.region_bytes(0));
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio::fuzz_support::run_guest_writes(data);
    independent_oracle(data);
});
