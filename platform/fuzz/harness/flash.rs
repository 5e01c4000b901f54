// The CFI flash harness, shared by the cargo-fuzz target (platform/fuzz/fuzz_targets) and
// the replay test in `cargo test -p platform` (platform/tests/fuzz_replay.rs). Included
// with `include!`, so plain comments only.
//
// Sequences of guest reads and writes of any width at any offset (some past the end) of a
// 4-block flash, with command bytes biased towards the real command set. Invariants:
// - nothing panics;
// - the store changes only inside the range a write reports as dirty, and a dirty range
//   lies inside the store;
// - an erase leaves its block all 0xff; a program leaves exactly the written bytes;
// - `array_mode` reports every switch, so a VMM mapping the array while in array mode and
//   unmapping it otherwise always agrees with the device; in array mode reads return the
//   store.

use platform::flash::CfiFlash;

const BLOCK: usize = 256;
const SIZE: usize = 4 * BLOCK;
const COMMANDS: [u8; 16] = [0x10, 0x40, 0x20, 0x28, 0xd0, 0x50, 0x60, 0x01, 0x2f, 0x70, 0x90, 0x98, 0xff, 0xf0, 0x00, 0xe8];

pub fn run(data: &[u8]) {
    let mut store = vec![0xffu8; SIZE];
    for (i, b) in store.iter_mut().enumerate().take(64) {
        *b = i as u8;
    }
    let mut flash = CfiFlash::new(store, BLOCK).expect("valid geometry");
    let mut mapped = true;
    for chunk in data.chunks(4) {
        let [op, a, b, c] = <[u8; 4]>::try_from(chunk).unwrap_or([chunk[0], 0, 0, 0]);
        let offset = (u64::from(a) | (u64::from(b) << 8)) % (SIZE as u64 + 16);
        let width = [1usize, 1, 1, 2, 4, 8][usize::from(op >> 5) % 6];
        if op & 1 == 0 {
            let mut bytes = vec![0u8; width];
            flash.read(offset, &mut bytes);
            if mapped {
                for (i, got) in bytes.iter().enumerate() {
                    let want = flash.store().get(offset as usize + i).copied().unwrap_or(0xff);
                    assert_eq!(*got, want, "array read at {offset:#x}+{i}");
                }
            }
            continue;
        }
        let first = if op & 2 != 0 { COMMANDS[usize::from(c) % COMMANDS.len()] } else { c };
        let mut bytes = vec![first; width];
        for (i, x) in bytes.iter_mut().enumerate().skip(1) {
            *x = c.wrapping_add(i as u8);
        }
        let before = flash.store().clone();
        let w = flash.write(offset, &bytes);
        if let Some(on) = w.array_mode {
            assert_ne!(on, mapped, "array_mode reported without a change");
            mapped = on;
        }
        assert_eq!(mapped, flash.in_array_mode(), "a mode switch went unreported");
        let after = flash.store();
        match &w.dirty {
            None => assert_eq!(&before, after, "store changed without a dirty range"),
            Some(r) => {
                assert!(r.start < r.end && r.end <= SIZE, "dirty range {r:?}");
                assert_eq!(&before[..r.start], &after[..r.start]);
                assert_eq!(&before[r.end..], &after[r.end..]);
                let changed = &after[r.clone()];
                let erased = r.len() == BLOCK && r.start % BLOCK == 0 && changed.iter().all(|x| *x == 0xff);
                assert!(erased || changed == bytes.as_slice(), "dirty range {r:?} holds {changed:x?}");
            }
        }
    }
}
