//! The pci fuzz harnesses in plain `cargo test`: every committed seed input (for config_msix
//! a minimized corpus from the long cargo-fuzz runs) replayed, plus a few hundred random
//! inputs. The same invariants as the fuzzer; a panic here is a finding.

#[allow(dead_code)]
mod harness {
    include!("../fuzz/harness/config_msix.rs");
}

mod bdf_parse {
    include!("../fuzz/harness/bdf_parse.rs");
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

#[test]
fn committed_seeds_replay_without_findings() {
    let seeds = seeds("config_msix");
    // An empty seed dir would make this test pass vacuously.
    assert!(seeds.len() >= 20, "only {} seeds in fuzz/seeds/config_msix", seeds.len());
    for (path, data) in &seeds {
        let r = std::panic::catch_unwind(|| harness::run(data));
        assert!(r.is_ok(), "seed {} is a finding", path.display());
    }
}

#[test]
fn bdf_parse_seeds_replay_without_findings() {
    let seeds = seeds("bdf_parse");
    assert!(seeds.len() >= 10, "only {} seeds in fuzz/seeds/bdf_parse", seeds.len());
    for (path, data) in &seeds {
        let r = std::panic::catch_unwind(|| bdf_parse::run(data));
        assert!(r.is_ok(), "seed {} is a finding", path.display());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn random_access_sequences(data in proptest::collection::vec(proptest::num::u8::ANY, 0..1024)) {
        harness::run(&data);
    }

    #[test]
    fn random_bdf_strings(s in "[0-9a-fA-F:.x+ -]{0,16}") {
        bdf_parse::run(s.as_bytes());
    }
}
