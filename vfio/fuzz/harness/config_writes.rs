// The config_writes harness, shared by the cargo-fuzz target (vfio/fuzz/fuzz_targets) and the
// replay test that runs in `cargo test -p vfio` (vfio/tests/fuzz_replay.rs). Included with
// `include!`, so plain comments only.
//
// Guest config-space and BAR accesses against an assigned device backed by an in-memory
// region (FakeHost), its config effects applied by the one handler the VMM uses
// (pci::BusRelocator with memory slots). Three oracles run on every input:
// - vfio::fuzz_support::run_guest_writes compares the device's bytes against the
//   virtualization model's own per-byte masks;
// - `independent_oracle` does not trust the model: its host-only ranges are written out here
//   from the sample device's layout, so a model that wrongly forwarded a whole field would
//   still be caught;
// - the memory slots: every slot lies in a memory BAR where the bus has it, while memory
//   decode is on, never over the MSI-X table or PBA pages (the host's table is never exposed
//   to the guest), and with decode on every mmappable area of a mapped BAR has its slot.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use pci::{BarIndex, BarKind, Bdf, Bus, BusRelocator, ConfigEffectsHandler, MemorySlots, PciDevice, SharedPciDevice};
use vfio::device::{DeviceParts, VfioPciDevice};
use vfio::fuzz_support::{sample_config, NullVectors, SAMPLE_SIZES};
use vfio::host::{FakeHost, CONFIG_REGION};
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
/// The pages holding them: never guest memory.
const MSIX_PAGES_BAR0: Range<u64> = 0x2000..0x4000;
/// What of BAR0 (16 KiB) is mmappable: everything below the MSI-X pages.
const BAR0_MAPPABLE: (u64, u64) = (0, 0x2000);
/// Command register: I/O and memory decode (bits 0, 1). Whatever the guest writes, the
/// device keeps decoding what it has BARs for: the sample has memory BARs and an I/O BAR, so
/// the VMM may only ever put both bits on (the guest's own bits are emulated).
const COMMAND_DECODE: u8 = 0x03;
const DEVICE_DECODE: u8 = 0x03;

/// The last slot id, and the live slots: (id, guest address, size).
type SlotTable = (u32, Vec<(u32, u64, u64)>);

#[derive(Clone, Default)]
struct Slots(Arc<Mutex<SlotTable>>);

impl MemorySlots for Slots {
    fn map_slot(&mut self, gpa: u64, size: u64, _host_addr: u64) -> std::io::Result<u32> {
        let mut s = self.0.lock().unwrap();
        let end = gpa + size;
        assert!(s.1.iter().all(|(_, g, z)| end <= *g || gpa >= g + z), "overlapping memory slots");
        s.0 += 1;
        let id = s.0;
        s.1.push((id, gpa, size));
        Ok(id)
    }
    fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()> {
        let mut s = self.0.lock().unwrap();
        let before = s.1.len();
        s.1.retain(|(id, _, _)| *id != slot);
        assert_eq!(s.1.len() + 1, before, "unmapping a slot that does not exist");
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

/// The memory slots agree with the bus and the guest's decode bit, and keep off the MSI-X
/// pages.
fn check_memslots(dev: &Arc<Mutex<VfioPciDevice>>, relocator: &BusRelocator, bdf: Bdf, slots: &Slots) {
    let mut d = dev.lock().unwrap();
    let decode = d.read_config(1) & 0x2 != 0;
    let bars = d.bars();
    let live = slots.0.lock().unwrap().1.clone();
    for (_, gpa, size) in &live {
        assert!(decode, "memory slot at {gpa:#x} with memory decode off");
        let bar = bars.iter().find(|r| {
            matches!(r.kind, BarKind::Mem32 { .. } | BarKind::Mem64 { .. })
                && relocator.mapped(bdf, r.index) == Some(r.addr)
                && *gpa >= r.addr
                && gpa + size <= r.addr + r.size
        });
        let Some(bar) = bar else { panic!("memory slot {gpa:#x}+{size:#x} outside every mapped memory BAR") };
        if bar.index == BarIndex(0) {
            let (start, end) = (gpa - bar.addr, gpa - bar.addr + size);
            assert!(
                end <= MSIX_PAGES_BAR0.start || start >= MSIX_PAGES_BAR0.end,
                "memory slot over BAR0 +{start:#x}..{end:#x} exposes the MSI-X table or PBA"
            );
        }
    }
    let bar0 = bars.iter().find(|r| r.index == BarIndex(0)).expect("BAR0");
    if decode && relocator.mapped(bdf, BarIndex(0)) == Some(bar0.addr) {
        let want = (bar0.addr + BAR0_MAPPABLE.0, BAR0_MAPPABLE.1);
        assert!(live.iter().any(|(_, g, s)| (*g, *s) == want), "BAR0 mapped and decoded but its area has no slot");
    }
}

/// The independent oracles. Records: kind (bit 0: config/BAR, bits 1..3: BAR), register or
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
    }) else {
        panic!("the sample device must open");
    };
    assert!(vfio::fuzz_support::place_bars(&mut dev).is_ok(), "placing the sample BARs failed");
    let dev = Arc::new(Mutex::new(dev));
    let shared: SharedPciDevice = dev.clone();
    let bdf = Bdf::from_devfn(0, 1, 0);
    let slots = Slots::default();
    let mut relocator = BusRelocator::new(Arc::new(Bus::new()), Arc::new(Bus::new()));
    relocator.set_memory_slots(Box::new(slots.clone()));
    relocator.attach(bdf, &shared).expect("the sample's BARs fit on empty buses");
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
            let effects = dev.lock().unwrap().write_config(reg, u64::from(off % 5), bytes);
            if !effects.is_empty() {
                relocator.apply(bdf, &shared, effects);
            }
            let _ = dev.lock().unwrap().read_config(reg);
        } else {
            let bar = BarIndex((kind >> 1) % 8);
            let offset = u64::from(reg) | (u64::from(off) << 16);
            let mut d = dev.lock().unwrap();
            d.write_bar(bar, offset, bytes);
            let mut buf = [0u8; 8];
            d.read_bar(bar, offset, &mut buf[..len.max(1)]);
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
        check_memslots(&dev, &relocator, bdf, &slots);
    }
    relocator.detach(&shared);
    assert!(slots.0.lock().unwrap().1.is_empty(), "teardown left memory slots");
}

/// Runs one input through every oracle.
pub fn run(data: &[u8]) {
    vfio::fuzz_support::run_guest_writes(data);
    independent_oracle(data);
}
