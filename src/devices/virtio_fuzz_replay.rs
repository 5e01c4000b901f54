//! The virtio queue fuzz targets (fuzz/: blk_queue, net_queue, rng_queue) in plain `cargo test`:
//! every committed seed input replayed through the same harness the fuzzer runs, plus inputs
//! from a fixed pseudo-random stream. A panic here is a finding.

#[allow(dead_code)]
mod harness {
    use crate::devices::virtio;
    use crate::vstate::memory::GuestMemory;

    include!("../../fuzz/harness/queues.rs");
}

use std::path::PathBuf;

/// The committed seeds of one target (fuzz/seeds/TARGET), sorted by name.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
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

/// Replays `target`'s seeds (at least `min` of them: an emptied seed dir must not pass) and
/// 64 pseudo-random inputs through `body`.
fn replay(target: &str, min: usize, body: fn(&[u8])) {
    let seeds = seeds(target);
    assert!(seeds.len() >= min, "only {} seeds in fuzz/seeds/{target}", seeds.len());
    for (path, data) in &seeds {
        let r = std::panic::catch_unwind(|| body(data));
        assert!(r.is_ok(), "seed {} is a finding", path.display());
    }
    // xorshift64: the same inputs in every run, so a failure reproduces.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ target.len() as u64;
    for case in 0..64 {
        let data: Vec<u8> = (0..(case * 37) % 2048)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(r.is_ok(), "{target}: pseudo-random case {case} ({} bytes) is a finding", data.len());
    }
}

#[test]
fn blk_queue_seeds_replay_without_findings() {
    replay("blk_queue", 1, harness::blk);
}

#[test]
fn net_queue_seeds_replay_without_findings() {
    replay("net_queue", 3, harness::net);
}

#[test]
fn rng_queue_seeds_replay_without_findings() {
    replay("rng_queue", 1, harness::rng);
}
