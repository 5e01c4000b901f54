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

/// Runs results.awk over `markers` with the known-flake list `flakes` and budget `budget`:
/// (results.json parsed, the text summary).
fn judge_retries(tag: &str, markers: &str, flakes: &str, budget: u32) -> (serde_json::Value, String) {
    let dir = std::env::temp_dir().join(format!("viaduct-tb-retries-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("markers.log"), markers).expect("markers");
    std::fs::write(dir.join("known-flakes"), flakes).expect("flakes");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let run = |fmt: &str| {
        let out = Command::new("awk")
            .args(["-v", &format!("out={}", dir.display()), "-v", "want=a b"])
            .args(["-v", &format!("flakes={}", dir.join("known-flakes").display())])
            .args(["-v", &format!("budget={budget}"), "-v", &format!("fmt={fmt}"), "-f"])
            .arg(root.join("tools/testbed/lib/results.awk"))
            .arg(dir.join("markers.log"))
            .output()
            .expect("run awk");
        assert!(out.status.success(), "awk failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let json = serde_json::from_str(&run("json")).expect("results.json parses");
    let text = run("text");
    std::fs::remove_dir_all(&dir).ok();
    (json, text)
}

const RETRIED: &str = "\
@@TB boot - uptime=3.50 kernel=6.1.0\r
@@TB begin a\r
@@TB check a x pass ok\r
@@TB retry a l2-hang a/vm-2cpu guest hung before init (no init after 120 s)\r
@@TB end a rc=0 ms=10\r
@@TB begin b\r
@@TB check b y pass ok\r
@@TB end b rc=0 ms=10\r
@@TB finished -\r
@@TB retry b l1-crash level-1 level 1 crashed (Kernel panic - not syncing: stack guard page was hit)\r
";

#[test]
fn retries_are_listed_and_fail_the_run_unless_known_and_within_budget() {
    let both_known = "# comment\n\nl2-hang  a/*-2cpu  issue 12: AP bring-up\nl1-crash level-1 nested SVM under TCG\n";
    let (json, text) = judge_retries("known", RETRIED, both_known, 2);
    let retries = json["retries"].as_array().expect("retries");
    assert_eq!(retries.len(), 2, "{json}");
    assert_eq!(retries[0]["kind"], "l2-hang");
    assert_eq!(retries[0]["where"], "a/vm-2cpu");
    assert_eq!(retries[0]["known"], "issue 12: AP bring-up");
    assert_eq!(retries[1]["scenario"], "b");
    assert_eq!(json["retries_ok"], true);
    // Every retry is in the summary, with its reason and its known-flake line.
    assert!(text.contains("RETRY    a") && text.contains("guest hung before init"), "{text}");
    assert!(text.contains("known flake: nested SVM under TCG"), "{text}");
    assert!(text.contains("RETRIES: 2 (budget 2)") && text.contains("(ok)"), "{text}");

    // An unlisted retry fails the run, even when everything passed.
    let (json, text) = judge_retries("unknown", RETRIED, "l2-hang a/* issue 12\n", 2);
    assert_eq!(json["retries"][1]["known"], serde_json::Value::Null);
    assert_eq!(json["retries_ok"], false);
    assert!(text.contains("NOT a known flake") && text.trim_end().ends_with("(FAIL)"), "{text}");

    // So do more retries than the budget, all of them known.
    let (json, text) = judge_retries("budget", RETRIED, both_known, 1);
    assert_eq!(json["retries_ok"], false);
    assert!(text.contains("OVER BUDGET") && text.trim_end().ends_with("(FAIL)"), "{text}");

    // No retries: nothing listed, the run passes.
    let (json, text) = judge_retries("none", MARKERS.split("@@TB begin bad").next().unwrap(), both_known, 2);
    assert_eq!(json["retries"], serde_json::json!([]));
    assert!(text.contains("RETRIES: 0 (budget 2)"), "{text}");
}

const SKIPPED_CHECK: &str = "\
@@TB boot - uptime=3.50 kernel=6.1.0\r
@@TB begin a\r
@@TB check a x pass ok\r
@@TB check a vm/irq-mode skip the driver fell back to INTx\r
@@TB end a rc=0 ms=10\r
@@TB begin b\r
@@TB check b y pass ok\r
@@TB end b rc=0 ms=10\r
@@TB finished -\r
";

#[test]
fn a_skipped_check_fails_the_run_unless_the_known_flake_list_allows_it() {
    // Not listed: the scenario still reads PASS, but the run fails and says why.
    let (json, text) = judge_retries("skip-unknown", SKIPPED_CHECK, "skip a/other known-issues.md\n", 2);
    assert_eq!(json["skips_ok"], false);
    assert_eq!(json["scenarios"]["a"]["checks"][1]["known"], serde_json::Value::Null);
    assert!(text.contains("SKIPPED check a/vm/irq-mode: the driver fell back to INTx"), "{text}");
    assert!(text.contains("NOT a known skip") && text.trim_end().ends_with("(FAIL)"), "{text}");

    // Listed (a glob): printed with its reason, the run passes, no retry counted.
    let (json, text) = judge_retries("skip-known", SKIPPED_CHECK, "skip a/vm/* docs/known-issues.md: L0's model\n", 0);
    assert_eq!(json["skips_ok"], true);
    assert_eq!(json["scenarios"]["a"]["checks"][1]["known"], "docs/known-issues.md: L0's model");
    assert!(text.contains("known skip: docs/known-issues.md: L0's model"), "{text}");
    assert!(text.contains("RETRIES: 0 (budget 0)") && text.trim_end().ends_with("(ok)"), "{text}");

    // A retry line does not allow a skip, nor a skip line a retry.
    let (json, _) = judge_retries("skip-kind", SKIPPED_CHECK, "l2-hang a/vm/* issue 12\n", 2);
    assert_eq!(json["skips_ok"], false);
    let (json, _) = judge_retries("retry-kind", RETRIED, "skip * issue 12\n", 2);
    assert_eq!(json["retries_ok"], false);
}

/// The repository's own list: every line a known kind, a WHERE, and a WHY that names an issue
/// or the docs/known-issues.md entry giving the cause; the e1000e MSI skip is on it.
#[test]
fn the_known_flake_list_names_an_issue_or_a_documented_cause_for_each_line() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let list = std::fs::read_to_string(root.join("tools/testbed/known-flakes")).expect("known-flakes");
    let known_issues = std::fs::read_to_string(root.join("docs/known-issues.md")).expect("known-issues.md");
    let kinds = ["l1-boot", "l1-crash", "l1-hang", "l2-hang", "l2-triple-fault", "l2-reset", "skip"];
    let mut skips = Vec::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut f = line.split_whitespace();
        let (kind, place) = (f.next().unwrap(), f.next().unwrap_or(""));
        let why: Vec<&str> = f.collect();
        assert!(kinds.contains(&kind), "unknown kind in {line:?}");
        assert!(!place.is_empty() && !why.is_empty(), "KIND WHERE WHY expected: {line:?}");
        let why = why.join(" ");
        let issue = why.split("issue ").skip(1).any(|r| r.starts_with(|c: char| c.is_ascii_digit()));
        // A cited docs entry must exist: its quoted title is a bold heading or text there.
        let doc = why.contains("docs/known-issues.md")
            && why.split('"').nth(1).is_some_and(|title| known_issues.contains(title));
        assert!(issue || doc, "names neither an issue nor an existing docs/known-issues.md entry: {line:?}");
        if kind == "skip" {
            skips.push(place.to_string());
        }
    }
    assert!(skips.iter().any(|s| s == "vfio-guest-more/vnic-msi/nic-irq-mode"), "{skips:?}");
}

#[test]
fn an_undeclared_check_name_is_refused() {
    let dir = run_parser("good");
    let mut good = common::load_results(&dir).expect("results.json parses").remove("good").unwrap();
    // No scenario file for hand-written results: no declarations, nothing refused.
    assert!(good.declared.is_none());
    good.declared = Some(common::declarations::Declarations::parse(
        std::path::Path::new("good.sh"),
        "# tb-check: kvm\n# tb-run: guest\n",
    ));
    good.assert_check("kvm");
    good.assert_check("guest/boot");
    let msg = std::panic::catch_unwind(|| good.assert_check("kmv")).expect_err("a typo must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("good/kmv is not declared in good.sh"), "{msg}");
    assert!(std::panic::catch_unwind(|| good.check("guest/first-try")).is_err(), "lookups are held to it too");
    std::fs::remove_dir_all(&dir).ok();
}
