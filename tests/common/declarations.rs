//! The check names a testbed scenario declares in its header (tools/testbed/README.md,
//! "Declaring checks"): `# tb-check: NAME...` lines and `# tb-run: RUN...` lines (a level-2
//! run, which brings RUN/boot, RUN/done, RUN/timeout and RUN/iommu-backend). `*` is the one wildcard and matches
//! any text. The shell helpers in level 1 refuse to record an undeclared check; the Rust
//! harness refuses to look one up; tests/testbed_declarations.rs cross-checks both sources
//! without a testbed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The checks `tb_run_l2` (and the scenarios' own VMM runners) report for every run RUN.
pub const RUN_CHECKS: [&str; 4] = ["boot", "done", "timeout", "iommu-backend"];

/// One scenario file's declarations.
#[derive(Debug, Clone)]
pub struct Declarations {
    pub file: PathBuf,
    /// Every declared check-name pattern, the runs' own checks included.
    pub patterns: Vec<String>,
    /// The declared run-name patterns.
    pub runs: Vec<String>,
}

/// The words of every `# tb-KEY:` header line of `text`, in order.
pub fn header_words<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let tag = format!("# tb-{key}:");
    text.lines().filter_map(|l| l.strip_prefix(tag.as_str())).flat_map(str::split_whitespace).collect()
}

impl Declarations {
    pub fn parse(file: &Path, text: &str) -> Declarations {
        let runs: Vec<String> = header_words(text, "run").into_iter().map(String::from).collect();
        let mut patterns: Vec<String> = header_words(text, "check").into_iter().map(String::from).collect();
        for r in &runs {
            patterns.extend(RUN_CHECKS.iter().map(|c| format!("{r}/{c}")));
        }
        Declarations { file: file.to_path_buf(), patterns, runs }
    }

    pub fn load(file: &Path) -> Result<Declarations> {
        let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        Ok(Self::parse(file, &text))
    }

    /// The declarations of tools/testbed/scenarios/NAME.sh, when that file exists (a `--script`
    /// run or a hand-written results file has none to check against).
    pub fn for_scenario(name: &str) -> Option<Declarations> {
        let file = scenario_file(name);
        file.is_file().then(|| Self::load(&file).ok()).flatten()
    }

    /// Whether the check name `name` is declared.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, name))
    }

    /// Whether some name matching `template` (with `*` for parts only known at run time) can
    /// be declared.
    pub fn could_match(&self, template: &str) -> bool {
        self.patterns.iter().any(|p| globs_intersect(p, template))
    }
}

/// tools/testbed/scenarios/NAME.sh in this repository, for a scenario NAME or NAME@K (NAME
/// run on level-1 kernel K).
pub fn scenario_file(name: &str) -> PathBuf {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/testbed/scenarios").join(format!("{name}.sh"))
}

/// `pattern` (with `*` matching any text) matches all of `name`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Classic wildcard matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && p[i] != '*' && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Some string matches both `a` and `b` (each with `*` wildcards).
pub fn globs_intersect(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // ok[i][j]: the suffixes a[i..] and b[j..] have a common match.
    let mut ok = vec![vec![false; b.len() + 1]; a.len() + 1];
    for i in (0..=a.len()).rev() {
        for j in (0..=b.len()).rev() {
            ok[i][j] = match (a.get(i), b.get(j)) {
                (None, None) => true,
                (Some('*'), _) => ok[i + 1][j] || (j < b.len() && ok[i][j + 1]),
                (_, Some('*')) => ok[i][j + 1] || (i < a.len() && ok[i + 1][j]),
                (Some(x), Some(y)) => x == y && ok[i + 1][j + 1],
                _ => false,
            };
        }
    }
    ok[0][0]
}
