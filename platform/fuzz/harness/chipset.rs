// The q35 chipset harness, shared by the cargo-fuzz target (platform/fuzz/fuzz_targets) and
// the replay test in `cargo test -p platform` (platform/tests/fuzz_replay.rs). Included
// with `include!`, so plain comments only.
//
// Guest config writes of any width at any offset to the MCH host bridge and the ICH9 LPC
// bridge, and port accesses to the ACPI PM block and the reset control register.
// Invariants:
// - nothing panics;
// - a window effect is reported exactly when the decoded window changes, with the old and
//   new windows, and the decoded window always agrees with the registers read back;
// - power requests come only from the registers that make them: PowerOff from a write
//   covering PM1_CNT's high byte, Reset from the reset control port, Unsupported from the
//   MCH's EXT_TSEG register;
// - the PM timer never shows more than 24 bits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pci::{BusDevice, PciDevice};
use platform::q35::{AcpiPmBlock, Ich9Lpc, Q35HostBridge, ResetControl};
use platform::{Clock, PowerControl, PowerRequest};

#[derive(Default)]
struct Requests(Mutex<Vec<PowerRequest>>);

impl PowerControl for Requests {
    fn request(&self, request: PowerRequest) {
        self.0.lock().unwrap().push(request);
    }
}

struct FakeClock(Arc<Mutex<Duration>>);

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        *self.0.lock().unwrap()
    }
}

fn mch_ecam(m: &mut Q35HostBridge) -> Option<(u64, u64)> {
    let v = u64::from(m.read_config(0x60 / 4)) | (u64::from(m.read_config(0x64 / 4)) << 32);
    if v & 1 == 0 {
        return None;
    }
    let size = match (v >> 1) & 3 {
        0 => 256u64 << 20,
        1 => 128 << 20,
        2 => 64 << 20,
        _ => return None,
    };
    Some((v & 0xf_fc00_0000 & !(size - 1), size))
}

fn lpc_pm(l: &mut Ich9Lpc) -> Option<(u64, u64)> {
    let base = l.read_config(0x40 / 4);
    let cntl = l.read_config(0x44 / 4);
    (cntl & 0x80 != 0).then_some((u64::from(base & 0xff80), 0x80))
}

fn as_pair(w: Option<pci::bridge::Window>) -> Option<(u64, u64)> {
    w.map(|w| (w.base, w.size))
}

pub fn run(data: &[u8]) {
    let requests = Arc::new(Requests::default());
    let now = Arc::new(Mutex::new(Duration::ZERO));
    let mut mch = Q35HostBridge::new(requests.clone());
    let mut lpc = Ich9Lpc::new();
    let mut pm = AcpiPmBlock::new(Box::new(FakeClock(now.clone())), requests.clone());
    let mut reset = ResetControl::new(requests.clone());
    let mut ecam = None;
    let mut pm_window = None;
    for chunk in data.chunks(7) {
        let [op, off, w, d0, d1, d2, d3] = <[u8; 7]>::try_from(chunk).unwrap_or([chunk[0], 0, 0, 0, 0, 0, 0]);
        let width = [1usize, 2, 4, 3, 0, 8][usize::from(w) % 6];
        let bytes: Vec<u8> = [d0, d1, d2, d3, d0, d1, d2, d3][..width].to_vec();
        let before = requests.0.lock().unwrap().len();
        let mut allowed: Option<fn(&PowerRequest) -> bool> = None;
        match op % 6 {
            0 | 1 => {
                // Config write to the MCH; bias towards its interesting registers.
                let offset = if op & 0x80 != 0 { [0x50, 0x60, 0x64, 0x90, 0x9c][usize::from(off) % 5] } else { off };
                let (reg, byte) = (usize::from(offset) / 4, u64::from(offset % 4));
                let e = mch.write_config(reg, byte, &bytes);
                let now_ecam = mch_ecam(&mut mch);
                assert_eq!(as_pair(mch.ecam()), now_ecam, "MCH decode disagrees with PCIEXBAR");
                match e.windows.as_slice() {
                    [] => assert_eq!(now_ecam, ecam, "ECAM moved without an effect"),
                    [m] => {
                        assert_eq!((as_pair(m.old), as_pair(m.new)), (ecam, now_ecam));
                        assert_ne!(m.old, m.new);
                    }
                    more => panic!("{} window effects for one write", more.len()),
                }
                ecam = now_ecam;
                if offset < 0x52 && usize::from(offset) + width > 0x50 {
                    allowed = Some(|r| matches!(r, PowerRequest::Unsupported(_)));
                }
            }
            2 => {
                let offset = if op & 0x80 != 0 { [0x40, 0x44, 0x60, 0xa0, 0xf0][usize::from(off) % 5] } else { off };
                let (reg, byte) = (usize::from(offset) / 4, u64::from(offset % 4));
                let e = lpc.write_config(reg, byte, &bytes);
                let now_pm = lpc_pm(&mut lpc);
                assert_eq!(as_pair(lpc.pm_block()), now_pm, "LPC decode disagrees with PMBASE/ACPI_CNTL");
                match e.windows.as_slice() {
                    [] => assert_eq!(now_pm, pm_window, "PM block moved without an effect"),
                    [m] => assert_eq!((as_pair(m.old), as_pair(m.new)), (pm_window, now_pm)),
                    more => panic!("{} window effects for one write", more.len()),
                }
                pm_window = now_pm;
            }
            3 => {
                let offset = u64::from(off % 0x84);
                pm.write(offset, &bytes);
                if offset <= 5 && offset + bytes.len() as u64 > 5 {
                    allowed = Some(|r| *r == PowerRequest::PowerOff);
                }
            }
            4 => {
                let offset = u64::from(off % 0x84);
                *now.lock().unwrap() += Duration::from_micros(u64::from(d0) << u64::from(d1 % 24));
                let mut out = vec![0u8; width];
                pm.read(offset, &mut out);
                let mut t = [0u8; 4];
                pm.read(8, &mut t);
                assert_eq!(t[3], 0, "PM timer wider than 24 bits");
            }
            _ => {
                reset.write(0, &bytes);
                let mut b = [0u8; 1];
                reset.read(0, &mut b);
                allowed = Some(|r| *r == PowerRequest::Reset);
            }
        }
        // Config reads anywhere never panic.
        let _ = mch.read_config(usize::from(off) * 5);
        let _ = lpc.read_config(usize::from(off) * 5);
        let reqs = requests.0.lock().unwrap();
        for r in &reqs[before..] {
            assert!(allowed.is_some_and(|ok| ok(r)), "unexpected power request {r:?} from op {op}");
        }
    }
}
