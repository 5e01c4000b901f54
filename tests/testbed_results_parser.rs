//! The testbed's marker parser (tools/testbed/lib/results.awk) and the Rust harness that reads
//! its results.json, on a hand-written marker log: no QEMU needed, so this runs in every
//! `cargo test`. A scenario must never look like a pass when it failed, was skipped, timed
//! out, exited non-zero, emitted no checks or never ran.

mod common;

use std::path::PathBuf;
use std::process::Command;

const MARKERS: &str = "\
@@TB boot - uptime=3.50 kernel=6.1.0-56-amd64\r
noise from the kernel @@TB check fake x pass\r
@@TB begin good\r
@@TB check good kvm pass /dev/kvm present\r
@@TB value good quote say \"hi\" \\ back\r
@@TB check good guest/boot pass guest init after 12 ms\r
@@TB end good rc=0 ms=1500\r
@@TB begin bad\r
@@TB check bad a pass fine\r
@@TB check bad b fail broke \"badly\"\r
@@TB end bad rc=0 ms=10\r
@@TB begin skipped\r
@@TB skip skipped no viaduct here\r
@@TB end skipped rc=0 ms=1\r
@@TB begin slow\r
@@TB check slow first pass ok\r
@@TB timeout slow 5\r
@@TB end slow rc=137 ms=5100\r
@@TB begin rcfail\r
@@TB check rcfail only pass ok\r
@@TB end rcfail rc=2 ms=3\r
@@TB begin silent\r
@@TB end silent rc=0 ms=3\r
@@TB begin crashed\r
@@TB check crashed started pass ok\r
";

fn run_parser(want: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viaduct-tb-parser-{}-{}", std::process::id(), want.len()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("markers.log"), MARKERS).expect("write markers");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("awk")
        .arg("-v")
        .arg(format!("out={}", dir.display()))
        .arg("-v")
        .arg(format!("want={want}"))
        .arg("-f")
        .arg(root.join("tools/testbed/lib/results.awk"))
        .arg(dir.join("markers.log"))
        .output()
        .expect("run awk");
    assert!(out.status.success(), "awk failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("results.json"), &out.stdout).expect("write results.json");
    dir
}

#[test]
fn statuses_are_never_a_false_pass() {
    let dir = run_parser("good bad skipped slow rcfail silent crashed never");
    let all = common::load_results(&dir).expect("results.json parses");
    let status = |n: &str| all.get(n).map(|s| s.status.clone()).unwrap_or_else(|| "absent".into());
    assert_eq!(status("good"), "pass");
    assert_eq!(status("bad"), "fail");
    assert_eq!(status("skipped"), "skipped");
    assert_eq!(status("slow"), "timeout");
    assert_eq!(status("rcfail"), "fail");
    assert_eq!(status("silent"), "fail");
    assert_eq!(status("crashed"), "missing");
    assert_eq!(status("never"), "missing");
    // Text outside "@@TB" at the line start is not a marker.
    assert!(!all.contains_key("fake"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn checks_values_and_paths_survive_the_round_trip() {
    let dir = run_parser("good bad");
    let all = common::load_results(&dir).expect("results.json parses");
    let good = &all["good"];
    good.assert_check("kvm");
    good.assert_check("guest/boot");
    good.assert_passed();
    assert_eq!(good.value("quote"), Some("say \"hi\" \\ back"));
    assert_eq!(good.check("kvm").map(|c| c.detail.as_str()), Some("/dev/kvm present"));
    assert_eq!(good.log, dir.join("scenarios/good.log"));
    let bad = &all["bad"];
    assert_eq!(bad.check("b").map(|c| c.detail.as_str()), Some("broke \"badly\""));
    let msg = std::panic::catch_unwind(|| bad.assert_check("b")).expect_err("a failed check must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("bad/b") && msg.contains("FAIL") && msg.contains("scenarios/bad.log"), "{msg}");
    let msg = std::panic::catch_unwind(|| bad.assert_check("nope")).expect_err("a missing check must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("MISSING") && msg.contains("bad/nope"), "{msg}");
    let skipped = std::panic::catch_unwind(|| bad.assert_passed());
    assert!(skipped.is_err(), "a failed scenario must not pass assert_passed");
    std::fs::remove_dir_all(&dir).ok();
}
