//! The platform fuzz harnesses in plain `cargo test`: every committed seed input (a
//! minimized corpus from cargo-fuzz runs) replayed, plus a few hundred random inputs each.
//! The same invariants as the fuzzers; a panic here is a finding.

#[allow(dead_code)]
mod fw_cfg {
    include!("../fuzz/harness/fw_cfg.rs");
}

#[allow(dead_code)]
mod flash {
    include!("../fuzz/harness/flash.rs");
}

#[allow(dead_code)]
mod chipset {
    include!("../fuzz/harness/chipset.rs");
}

use std::path::PathBuf;

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

fn replay(target: &str, run: fn(&[u8])) {
    let seeds = seeds(target);
    // An empty seed dir would make this test pass vacuously.
    assert!(seeds.len() >= 20, "only {} seeds in fuzz/seeds/{target}", seeds.len());
    for (path, data) in &seeds {
        let r = std::panic::catch_unwind(|| run(data));
        assert!(r.is_ok(), "seed {} is a finding", path.display());
    }
}

#[test]
fn fw_cfg_seeds_replay_without_findings() {
    replay("fw_cfg", fw_cfg::run);
}

#[test]
fn flash_seeds_replay_without_findings() {
    replay("flash", flash::run);
}

#[test]
fn chipset_seeds_replay_without_findings() {
    replay("chipset", chipset::run);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn random_fw_cfg_sequences(data in proptest::collection::vec(proptest::num::u8::ANY, 0..1024)) {
        fw_cfg::run(&data);
    }

    #[test]
    fn random_flash_sequences(data in proptest::collection::vec(proptest::num::u8::ANY, 0..1024)) {
        flash::run(&data);
    }

    #[test]
    fn random_chipset_sequences(data in proptest::collection::vec(proptest::num::u8::ANY, 0..1024)) {
        chipset::run(&data);
    }
}
