//! Shared harness for the testbed-driven integration tests (tools/testbed/README.md).
//!
//! `scenario(name)` gives the structured results of one testbed scenario. When
//! `VIADUCT_TESTBED_RESULTS` names the output dir of a whole-suite run (tools/test boots level 1
//! once for every scenario), the results are read from there; otherwise the scenario is run
//! now with `tools/testbed/run` (one level-1 boot per scenario, cached per test binary).
//!
//! Test files include it with `mod common;` and start with `#![cfg(feature = "testbed")]`.
//! Every check name a test looks up must be declared in the scenario's header
//! ([`declarations`]): a typo panics here, and tests/testbed_declarations.rs finds it in
//! `cargo test` without a testbed.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

pub mod declarations;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use declarations::Declarations;

/// Env var naming the output dir of a finished suite run (holding results.json).
pub const RESULTS_ENV: &str = "VIADUCT_TESTBED_RESULTS";
/// Extra arguments for `tools/testbed/run` when the harness runs a scenario itself
/// (space separated, e.g. `--no-build`).
pub const RUN_ARGS_ENV: &str = "VIADUCT_TESTBED_RUN_ARGS";

/// Sector the guest scenarios write "VIADUCT-GUEST-WROTE <signature>" to.
pub const GUEST_WRITE_LBA: u64 = 2048;

/// One check a scenario emitted (`tb_check` in L1, `g_check` in a guest: RUN/NAME).
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub status: String,
    pub detail: String,
}

/// The results of one scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// pass, fail, skipped, timeout or missing.
    pub status: String,
    /// Why the status is not "pass" (empty when it is).
    pub reason: String,
    /// This scenario's slice of the level-1 console.
    pub log: PathBuf,
    /// The output dir of the level-1 boot it ran in: console.log, markers.log, disk images.
    pub out_dir: PathBuf,
    pub checks: Vec<Check>,
    pub values: BTreeMap<String, String>,
    /// The scenario file's declared check names (None for a `--script` run or hand-written
    /// results: nothing to check names against).
    pub declared: Option<Declarations>,
}

impl Scenario {
    /// Panics unless check `name` is declared in the scenario's header: a name no scenario
    /// can emit is a typo, not a missing result.
    #[track_caller]
    pub fn require_declared(&self, name: &str) {
        if let Some(d) = &self.declared {
            assert!(
                d.matches(name),
                "check {}/{name} is not declared in {} (a `# tb-check:` or `# tb-run:` header line): a typo?",
                self.name,
                d.file.display()
            );
        }
    }

    /// The check `name` as emitted (None when it was not); `name` must be declared.
    #[track_caller]
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.require_declared(name);
        self.checks.iter().find(|c| c.name == name)
    }

    /// The detail text of check `name` ("" when it was not emitted); `name` must be declared.
    #[track_caller]
    pub fn detail(&self, name: &str) -> &str {
        self.check(name).map_or("", |c| c.detail.as_str())
    }

    /// [`Self::assert_check`] for each name.
    #[track_caller]
    pub fn assert_checks(&self, names: &[&str]) {
        for n in names {
            self.assert_check(n);
        }
    }

    /// [`Self::assert_check`] for RUN/NAME, each name: the checks of one level-2 run.
    #[track_caller]
    pub fn assert_run_checks(&self, run: &str, names: &[&str]) {
        for n in names {
            self.assert_check(&format!("{run}/{n}"));
        }
    }

    /// Panics unless check `name` was emitted with status pass; the message names the check,
    /// what was seen instead and the log to read.
    #[track_caller]
    pub fn assert_check(&self, name: &str) {
        self.require_declared(name);
        match self.checks.iter().find(|c| c.name == name) {
            Some(c) if c.status == "pass" => {}
            Some(c) => panic!(
                "testbed check {}/{} is {}{}: {}\n  log: {}",
                self.name,
                name,
                c.status.to_uppercase(),
                if c.status == "skip" { " (SKIPPED is not a pass)" } else { "" },
                c.detail,
                self.log.display()
            ),
            None => panic!(
                "testbed check {}/{} is MISSING (scenario status {}{}{})\n  log: {}\n  checks seen: {}",
                self.name,
                name,
                self.status,
                if self.reason.is_empty() { "" } else { ": " },
                self.reason,
                self.log.display(),
                self.checks.iter().map(|c| format!("{}={}", c.name, c.status)).collect::<Vec<_>>().join(" ")
            ),
        }
    }

    /// Panics unless the whole scenario passed (every check passed, it ended with rc 0);
    /// a skipped scenario is not a pass.
    #[track_caller]
    pub fn assert_passed(&self) {
        if self.status != "pass" {
            let failed: Vec<String> = self
                .checks
                .iter()
                .filter(|c| c.status != "pass")
                .map(|c| format!("  {} {}: {}", c.status.to_uppercase(), c.name, c.detail))
                .collect();
            panic!(
                "testbed scenario {} is {}: {}\n{}\n  log: {}",
                self.name,
                self.status.to_uppercase(),
                self.reason,
                failed.join("\n"),
                self.log.display()
            );
        }
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// A value parsed as an unsigned integer.
    pub fn value_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .value(key)
            .ok_or_else(|| anyhow!("testbed value {}/{} missing; log: {}", self.name, key, self.log.display()))?;
        v.trim().parse().with_context(|| format!("testbed value {}/{} = {v:?} is not a number", self.name, key))
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// `len` bytes at `offset` of a file in the run's output dir (e.g. "disk.img").
    pub fn read_file_at(&self, file: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.out_dir.join(file);
        let mut f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        f.seek(SeekFrom::Start(offset)).with_context(|| format!("seek {} to {offset}", path.display()))?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).with_context(|| format!("read {len} bytes at {offset} of {}", path.display()))?;
        Ok(buf)
    }

    /// The first line of a 512-byte sector of a disk image, as text.
    pub fn sector_line(&self, image: &str, lba: u64) -> Result<String> {
        let bytes = self.read_file_at(image, lba * 512, 512)?;
        let end = bytes.iter().position(|&b| b == b'\n' || b == 0).unwrap_or(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// Asserts that sector `lba` of `image` starts with the line `want`: `what` (e.g. "the
    /// guest's write") landed in the image file on this machine.
    #[track_caller]
    pub fn assert_sector(&self, image: &str, lba: u64, want: &str, what: &str) {
        let got = self.sector_line(image, lba).unwrap_or_else(|e| panic!("{image}: {e:#}"));
        assert_eq!(got, want, "{what} is not at LBA {lba} of {}", self.out_dir().join(image).display());
    }

    /// The signature L0 wrote at the start of a disk image ("disk.img" -> disk.sig).
    pub fn signature(&self, image: &str) -> Result<String> {
        let stem = image.strip_suffix(".img").unwrap_or(image);
        let path = self.out_dir.join(format!("{stem}.sig"));
        let s = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        Ok(s.trim_end().to_owned())
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The output dir of the suite run named by `VIADUCT_TESTBED_RESULTS`, if any.
pub fn suite_dir() -> Option<PathBuf> {
    std::env::var_os(RESULTS_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Every scenario in `DIR/results.json`, by name.
pub fn load_results(dir: &Path) -> Result<HashMap<String, Scenario>> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read {} (did the testbed run finish?)", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let out_dir = json["out_dir"].as_str().map(PathBuf::from).unwrap_or_else(|| dir.to_path_buf());
    let scenarios =
        json["scenarios"].as_object().ok_or_else(|| anyhow!("{}: no \"scenarios\" object", path.display()))?;
    let text_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut map = HashMap::new();
    for (name, s) in scenarios {
        let checks = s["checks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| Check {
                        name: text_of(&c["name"]),
                        status: text_of(&c["status"]),
                        detail: text_of(&c["detail"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let values = s["values"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), text_of(v))).collect())
            .unwrap_or_default();
        map.insert(
            name.clone(),
            Scenario {
                name: name.clone(),
                status: text_of(&s["status"]),
                reason: text_of(&s["reason"]),
                log: s["log"].as_str().map(PathBuf::from).unwrap_or_else(|| out_dir.join("console.log")),
                // A scenario run on another level-1 kernel (NAME@K) has its own dir.
                out_dir: s["out_dir"].as_str().map_or_else(|| out_dir.clone(), PathBuf::from),
                checks,
                values,
                declared: Declarations::for_scenario(name),
            },
        );
    }
    Ok(map)
}

/// Boots level 1 once: `tools/testbed/run --out OUT ARGS...` (e.g. `["--script", path]`,
/// `["--bin", probe]`, scenario names; `VIADUCT_TESTBED_RUN_ARGS` is added too), and returns
/// every scenario of that run. A failing scenario is a result, not an error; an error means
/// the run wrote no results (the message names OUT, which holds console.log).
pub fn run_testbed(out: &Path, args: &[&str]) -> Result<HashMap<String, Scenario>> {
    let mut cmd = Command::new(repo_root().join("tools/testbed/run"));
    cmd.arg("--out").arg(out);
    if let Ok(extra) = std::env::var(RUN_ARGS_ENV) {
        cmd.args(extra.split_whitespace());
    }
    cmd.args(args);
    eprintln!("testbed: running {cmd:?} (one level-1 boot)");
    // A run with a failing scenario exits 1 too: its results.json says which check failed.
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !out.join("results.json").exists() {
        bail!("{cmd:?} exited with {status} and wrote no results; see {}", out.display());
    }
    load_results(out)
}

/// Runs `tools/testbed/run` for one scenario into target/testbed/test-NAME.
fn run_scenario(name: &str) -> Result<PathBuf> {
    let out = repo_root().join("target/testbed").join(format!("test-{name}"));
    eprintln!("testbed: {RESULTS_ENV} unset: running scenario {name} alone");
    run_testbed(&out, &[name])?;
    Ok(out)
}

/// The results of scenario `name` (see the module docs for where they come from).
pub fn scenario(name: &str) -> Result<Scenario> {
    static CACHE: OnceLock<Mutex<HashMap<String, Scenario>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // Held across the run, so that two tests asking for one scenario boot level 1 once.
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = cache.get(name) {
        return Ok(s.clone());
    }
    let dir = match suite_dir() {
        Some(dir) => dir,
        None => run_scenario(name)?,
    };
    let mut all = load_results(&dir)?;
    let s = all
        .remove(name)
        .ok_or_else(|| anyhow!("scenario {name} is not in {}/results.json (was it run?)", dir.display()))?;
    cache.insert(name.to_owned(), s.clone());
    Ok(s)
}
