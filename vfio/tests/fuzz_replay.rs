//! The config_writes fuzz harness in plain `cargo test`: every committed seed input (a
//! minimized corpus from cargo-fuzz runs, regressions included) replayed, plus random inputs.
//! The same oracles as the fuzzer; a panic here is a finding.

#[allow(dead_code)]
mod harness {
    include!("../fuzz/harness/config_writes.rs");
}

use std::path::PathBuf;

fn seeds() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/config_writes");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("seed dir entry").path())
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn committed_seeds_replay_without_findings() {
    let seeds = seeds();
    // An empty seed dir would make this test pass vacuously.
    assert!(seeds.len() >= 20, "only {} seeds in fuzz/seeds/config_writes", seeds.len());
    for (path, data) in &seeds {
        let r = std::panic::catch_unwind(|| harness::run(data));
        assert!(r.is_ok(), "seed {} is a finding", path.display());
    }
}

/// Random inputs (a deterministic xorshift stream), half of them biased towards the
/// interesting registers and BAR0's MSI-X pages.
#[test]
fn random_inputs() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..32 {
        let mut data = Vec::with_capacity(1500);
        for _ in 0..1500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x as u8);
        }
        if round % 2 == 0 {
            for rec in data.chunks_mut(13) {
                if rec.len() >= 4 {
                    // Config: the first 0x70 dwords; BAR0: around the MSI-X pages.
                    rec[0] &= 0x01;
                    rec[2] = if rec[0] == 0 { 0 } else { 0x1f + rec[2] % 0x12 };
                    rec[1] %= 0x70;
                    rec[3] = 0;
                }
            }
        }
        harness::run(&data);
    }
}
