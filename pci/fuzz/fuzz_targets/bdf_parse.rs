#![no_main]
//! Bdf parsing: never panics, and whatever parses prints back to a string that parses to
//! the same address.

use libfuzzer_sys::fuzz_target;
use pci::Bdf;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(b) = s.parse::<Bdf>() {
        let again: Bdf = b.to_string().parse().expect("display output parses");
        assert_eq!(again, b);
        assert!(b.device() < 32 && b.function() < 8);
    }
});
