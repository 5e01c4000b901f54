//! The testbed's plumbing that needs no QEMU, so it runs in every `cargo test`: `tools/bench`'s
//! table (medians, viaduct/QEMU ratios, targets met or not) from a hand-written marker log,
//! the suite selection and fixed order of `tools/testbed/run --list`, and the TIMEOUT status of
//! a scenario cut short by the run's global timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viaduct-tb-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A finished run of boot-bench with two viaduct and two QEMU samples per metric.
fn fake_bench_run(dir: &Path, status_line: &str) {
    let markers = "\
@@TB boot - uptime=3.5 kernel=6.1.0\r
@@TB begin boot-bench\r
@@TB check boot-bench viaduct-r1/boot pass ok\r
@@TB value boot-bench bench/boot_ms/viaduct 1000\r
@@TB value boot-bench bench/boot_ms/qemu 4000\r
@@TB value boot-bench bench/overhead_kb/viaduct 30000\r
@@TB value boot-bench bench/overhead_kb/qemu 60000\r
@@TB value boot-bench bench/boot_ms/viaduct 3000\r
@@TB value boot-bench bench/boot_ms/qemu 6000\r
@@TB value boot-bench bench/overhead_kb/viaduct 20000\r
@@TB value boot-bench bench/overhead_kb/qemu 100000\r
@@TB value boot-bench bench/extra_mbps/viaduct 50\r
@@TB value boot-bench bench/boot_ms/viaduct-noseccomp 1800\r
@@TB value boot-bench bench/boot_ms/viaduct-noseccomp 2000\r
@@TB value boot-bench bench/bogus/kvmtool 1\r
@@TB value boot-bench viaduct-r1/init_ms 999\r
@@TB end boot-bench rc=0 ms=5000\r
@@TB finished -\r
";
    std::fs::write(dir.join("markers.log"), markers).expect("markers");
    std::fs::write(
        dir.join("results.txt"),
        format!("testbed results: {}\n{status_line}\nRESULT: 1 passed, 0 failed, 0 SKIPPED (ok)\n", dir.display()),
    )
    .expect("results.txt");
}

fn bench_from(dir: &Path, extra: &[&str]) -> Output {
    Command::new(root().join("tools/bench"))
        .arg("--from")
        .arg(dir)
        .args(extra)
        .arg("boot-bench")
        .output()
        .expect("run tools/bench")
}

fn row<'a>(table: &'a str, metric: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(metric))
        .unwrap_or_else(|| panic!("no row for {metric} in:\n{table}"))
}

#[test]
fn bench_table_takes_medians_ratios_and_judges_targets() {
    let dir = temp_dir("bench");
    fake_bench_run(&dir, "  PASS     boot-bench                 1 checks, 5.0 s");
    let out = bench_from(&dir, &[]);
    let all = text(&out);
    assert!(out.status.success(), "tools/bench failed:\n{all}");
    // boot_ms: medians 2000 vs 5000 -> 0.40, target <= 0.5: met.
    let boot = row(&all, "boot_ms");
    assert!(boot.contains("2000 (n=2)") && boot.contains("5000 (n=2)"), "{boot}");
    assert!(boot.contains("0.40") && boot.contains("<= 0.5") && boot.ends_with("met"), "{boot}");
    // overhead_kb: 25000 vs 80000 -> 0.31 > 0.25: NOT MET.
    let over = row(&all, "overhead_kb");
    assert!(over.contains("0.31") && over.contains("NOT MET"), "{over}");
    // A metric with one side only has no ratio and no verdict; unknown VMMs are ignored.
    let extra = row(&all, "extra_mbps");
    assert!(extra.contains("50 (n=1)") && !extra.contains("met"), "{extra}");
    assert!(!all.contains("bogus"), "{all}");
    assert!(all.contains("BENCH: 3 metrics, 1 targets met, 1 NOT MET, 0 no data"), "{all}");
    // --seccomp-cost's rounds: viaduct (filters on) against viaduct --seccomp false, after
    // the table: 2000 vs 1900.
    let cost = all.split("=== seccomp's cost").nth(1).unwrap_or_else(|| panic!("no seccomp table in:\n{all}"));
    let boot = row(cost, "boot_ms");
    assert!(boot.contains("2000 (n=2)") && boot.contains("1900 (n=2)") && boot.ends_with("1.05"), "{boot}");
    assert!(!cost.contains("overhead_kb"), "only metrics with both: {cost}");
    let tsv = std::fs::read_to_string(dir.join("bench.tsv")).expect("bench.tsv");
    assert!(tsv.lines().any(|l| l == "boot-bench\tboot_ms\t2000\t5000\t2\t2\t0.40\t<= 0.5\tmet"), "{tsv}");

    // --strict turns an unmet target into a failure.
    let strict = bench_from(&dir, &["--strict"]);
    assert!(!strict.status.success(), "--strict must fail on NOT MET:\n{}", text(&strict));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_numbers_of_a_failed_scenario_are_flagged_and_fail_the_run() {
    let dir = temp_dir("bench-fail");
    fake_bench_run(&dir, "  FAIL     boot-bench                 1 check(s) failed; log: x");
    std::fs::write(
        dir.join("results.txt"),
        "  FAIL     boot-bench                 1 check(s) failed; log: x\nRESULT: 0 passed, 1 failed, 0 SKIPPED (FAIL)\n",
    )
    .expect("results.txt");
    let out = bench_from(&dir, &[]);
    let all = text(&out);
    assert!(!out.status.success(), "a failed bench scenario must fail tools/bench:\n{all}");
    assert!(all.contains("scenario status FAIL: these numbers are suspect"), "{all}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_lists_test_and_bench_suites_in_a_fixed_order() {
    let list = |args: &[&str]| {
        let out = Command::new(root().join("tools/testbed/run")).arg("--list").args(args).output().expect("run --list");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let order: u32 = w[2].trim_start_matches("order=").parse().expect("order");
                (w[0].to_owned(), w[1].trim_start_matches("suite=").to_owned(), order)
            })
            .collect::<Vec<_>>()
    };
    let tests = list(&[]);
    assert!(!tests.is_empty());
    assert!(tests.iter().all(|(_, suite, _)| suite == "test"), "{tests:?}");
    assert!(!tests.iter().any(|(n, _, _)| n == "boot-bench"), "benchmarks are not tests");
    let benches = list(&["--suite", "bench"]);
    assert!(benches.iter().any(|(n, _, _)| n == "boot-bench"), "{benches:?}");
    assert!(benches.iter().all(|(_, suite, _)| suite == "bench"), "{benches:?}");
    // The run order is (tb-order, name), whatever the suite.
    let all = list(&["--suite", "all"]);
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    assert_eq!(all, sorted);
    assert_eq!(all.len(), tests.len() + benches.len());
}

#[test]
fn a_scenario_cut_by_the_global_timeout_is_a_timeout() {
    let dir = temp_dir("global-timeout");
    std::fs::write(dir.join("markers.log"), "@@TB boot - uptime=1\n@@TB begin a\n@@TB check a x pass ok\n")
        .expect("markers");
    let out = Command::new("awk")
        .args(["-v", &format!("out={}", dir.display()), "-v", "want=a b"])
        .args(["-v", "global_timeout=600", "-v", "fmt=text", "-f"])
        .arg(root().join("tools/testbed/lib/results.awk"))
        .arg(dir.join("markers.log"))
        .output()
        .expect("awk");
    let t = text(&out);
    let a = t.lines().find(|l| l.contains(" a ")).unwrap_or_default();
    assert!(a.starts_with("  TIMEOUT") && a.contains("global timeout (600 s)"), "{t}");
    assert!(a.contains(&format!("log: {}/scenarios/a.log", dir.display())), "{t}");
    assert!(t.contains("MISSING  b"), "{t}");
    assert!(t.contains("(FAIL)"), "{t}");
    std::fs::remove_dir_all(&dir).ok();
}
