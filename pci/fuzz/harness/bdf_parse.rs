// The bdf_parse harness, shared by the cargo-fuzz target (pci/fuzz/fuzz_targets) and the
// replay test that runs in `cargo test -p pci` (pci/tests/fuzz_replay.rs). Included with
// `include!`, so plain comments only.
//
// Bdf parsing never panics, and whatever parses prints back to a string that parses to the
// same address.

use pci::Bdf;

pub fn run(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(b) = s.parse::<Bdf>() {
        let again: Bdf = b.to_string().parse().expect("display output parses");
        assert_eq!(again, b);
        assert!(b.device() < 32 && b.function() < 8);
    }
}
