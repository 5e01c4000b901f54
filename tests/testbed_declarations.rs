//! Every testbed check name is written once, in its scenario's header (`# tb-check:` and
//! `# tb-run:` lines, tools/testbed/README.md "Declaring checks"), and both sides are held to
//! it here, in every `cargo test`, without a testbed: a typo fails now instead of after a
//! multi-minute level-1 boot.
//!
//! - Each scenario, the demo and each experiment declares its checks; patterns use only
//!   name characters and `*`.
//! - Shell side: every name given to `tb_check`/`tb_expect` (level 1) must be declared, every
//!   name given to `g_check`/`g_expect`/`g_write_check` (a guest: it becomes RUN/NAME) must be
//!   declared for some run, and every run name given to `tb_run_l2`/`tb_qemu_l2` must be a
//!   declared run. Parts only known at run time (`$var`, `$(...)`) count as `*` (level 1 then
//!   refuses what does not match).
//! - Rust side: every check name tests/*.rs looks up (`assert_check`, `check`, `detail`,
//!   `assert_checks`, `assert_run_checks`) must be declared by a scenario that file reads;
//!   `format!` parts count as `*`, except file constants, which are resolved. A name that is
//!   not written out (a variable) is refused: write the list out with `assert_checks` or
//!   `assert_run_checks`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::declarations::{globs_intersect, header_words, Declarations};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file the testbed runs as a scenario or script: scenarios/, demo.sh, experiments/.
fn testbed_scripts() -> Vec<PathBuf> {
    let tb = root().join("tools/testbed");
    let mut files = vec![tb.join("demo.sh")];
    for dir in ["scenarios", "experiments"] {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(tb.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "sh"))
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    files
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// The first shell word of `s` as a pattern: quotes removed, `$name`, `${...}` and `$(...)`
/// replaced by `*`. Stops at unquoted whitespace or `;`, `|`, `&`, `)`.
fn shell_word(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    let (mut i, mut out, mut quote) = (0, String::new(), None::<char>);
    while i < c.len() {
        let ch = c[i];
        match (quote, ch) {
            (None, ' ' | '\t' | ';' | '|' | '&' | ')') => break,
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), _) if ch == q => quote = None,
            (Some('\''), _) => out.push(ch),
            (_, '\\') => {
                i += 1;
                if let Some(&n) = c.get(i) {
                    out.push(n);
                }
            }
            (_, '$') => {
                out.push('*');
                match c.get(i + 1) {
                    Some('(') | Some('{') => {
                        // Skip to the matching close, nesting counted.
                        let (open, close) = if c[i + 1] == '(' { ('(', ')') } else { ('{', '}') };
                        let mut depth = 0;
                        i += 1;
                        while i < c.len() {
                            if c[i] == open {
                                depth += 1;
                            } else if c[i] == close {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            i += 1;
                        }
                    }
                    _ => {
                        while c.get(i + 1).is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_') {
                            i += 1;
                        }
                    }
                }
            }
            _ => out.push(ch),
        }
        i += 1;
    }
    // Adjacent wildcards say no more than one.
    while out.contains("**") {
        out = out.replace("**", "*");
    }
    out
}

/// (line number, first word after `word`) for each call of the shell function `word`.
fn shell_calls(text: &str, word: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut from = 0;
        while let Some(at) = line[from..].find(word) {
            let start = from + at;
            let end = start + word.len();
            from = end;
            let before = line[..start].chars().last();
            let after = line[end..].chars().next();
            // A whole word followed by a blank: a call, not a definition or part of a name; a
            // raw guest marker only when echoed (not in a grep for one).
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == '_') || !matches!(after, Some(' ' | '\t')) {
                continue;
            }
            if word.starts_with('@') && !line[..start].trim_end_matches(['"', '\'']).trim_end().ends_with("echo") {
                continue;
            }
            out.push((n + 1, shell_word(line[end..].trim_start())));
        }
    }
    out
}

#[test]
fn every_testbed_script_declares_well_formed_checks() {
    for file in testbed_scripts() {
        let text = std::fs::read_to_string(&file).unwrap();
        let d = Declarations::parse(&file, &text);
        assert!(!d.patterns.is_empty(), "{} declares no checks (`# tb-check:` / `# tb-run:` lines)", rel(&file));
        for p in d.patterns.iter().chain(&d.runs) {
            assert!(
                p.chars().all(|c| c.is_ascii_alphanumeric() || "_.:@/*-".contains(c)),
                "{}: declared name {p:?}: use letters, digits, _ . : @ / - and the wildcard *",
                rel(&file)
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for w in header_words(&text, "check") {
            assert!(seen.insert(w), "{}: check {w} declared twice", rel(&file));
        }
    }
}

#[test]
fn every_check_the_shell_side_emits_is_declared() {
    let mut bad = Vec::new();
    for file in testbed_scripts() {
        let text = std::fs::read_to_string(&file).unwrap();
        let d = Declarations::parse(&file, &text);
        for f in ["tb_check", "tb_expect"] {
            for (line, name) in shell_calls(&text, f) {
                if !d.could_match(&name) {
                    bad.push(format!("{}:{line}: {f} {name}: not declared", rel(&file)));
                }
            }
        }
        for f in ["g_check", "g_expect", "g_write_check", "@@G check"] {
            for (line, name) in shell_calls(&text, f) {
                // RUN/NAME: the part after a declared pattern's first '/' must admit NAME.
                let declared_for_a_run =
                    d.patterns.iter().filter_map(|p| p.split_once('/')).any(|(_, c)| globs_intersect(c, &name));
                if !declared_for_a_run {
                    bad.push(format!("{}:{line}: {f} {name}: not declared for any run (RUN/{name})", rel(&file)));
                }
            }
        }
        for f in ["tb_run_l2", "tb_qemu_l2"] {
            for (line, run) in shell_calls(&text, f) {
                if !d.runs.iter().any(|r| globs_intersect(r, &run)) {
                    bad.push(format!("{}:{line}: {f} {run}: not a declared run (`# tb-run:`)", rel(&file)));
                }
            }
        }
    }
    assert!(bad.is_empty(), "check names the scenarios' headers do not declare:\n{}", bad.join("\n"));
}

/// The text of the parenthesized argument list starting at `s[0] == '('` (strings skipped).
fn call_args(s: &str) -> &str {
    let (mut depth, mut in_str, mut esc) = (0, false, false);
    for (i, ch) in s.char_indices() {
        if in_str {
            match (esc, ch) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return &s[1..i];
                }
            }
            _ => {}
        }
    }
    &s[1..]
}

/// The string literals in `s`, each with the text right before it.
fn literals(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find('"') {
        let before = rest[..at].to_string();
        let body = &rest[at + 1..];
        let mut end = None;
        let mut esc = false;
        for (i, ch) in body.char_indices() {
            match (esc, ch) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        out.push((before, body[..end].to_string()));
        rest = &body[end + 1..];
    }
    out
}

/// A `format!` template or plain literal as a pattern: `{CONST}` resolved, other `{...}` `*`.
fn template(lit: &str, consts: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = lit;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let inner = &rest[open + 1..close];
        let name = inner.split(':').next().unwrap_or("");
        match consts.get(name) {
            Some(v) if !inner.contains(':') => out.push_str(v),
            _ => out.push('*'),
        }
        rest = rest.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// One argument expression (a literal, `&format!(...)` or `format!(...)`) as a pattern; None
/// for anything else.
fn name_expr(arg: &str, consts: &BTreeMap<String, String>) -> Option<String> {
    let a = arg.trim().trim_start_matches('&');
    if a.starts_with('"') {
        return literals(a).first().map(|(_, l)| template(l, &BTreeMap::new()));
    }
    if let Some(rest) = a.strip_prefix("format!") {
        return literals(rest).first().map(|(_, l)| template(l, consts));
    }
    consts.get(a).cloned()
}

/// Splits a top-level comma-separated list (strings and brackets respected).
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut in_str, mut esc, mut start) = (0i32, false, false, 0);
    let mut out = Vec::new();
    for (i, ch) in s.char_indices() {
        if in_str {
            match (esc, ch) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|x| !x.trim().is_empty()).collect()
}

/// The elements of an array argument `&[a, b, ...]`.
fn array_items(arg: &str) -> Option<Vec<&str>> {
    let a = arg.trim().trim_start_matches('&').trim();
    let inner = a.strip_prefix('[')?.strip_suffix(']')?;
    Some(split_top(inner))
}

/// (line, pattern) for every check name a test file looks up; Err((line, text)) for a name
/// that is not written out.
type Lookup = Result<(usize, String), (usize, String)>;

/// `text` with its `//` comments blanked out (string literals respected), lines kept.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let (mut in_str, mut esc, mut cut) = (false, false, line.len());
        let b = line.as_bytes();
        for i in 0..b.len() {
            match (in_str, esc, b[i]) {
                (true, true, _) => esc = false,
                (true, false, b'\\') => esc = true,
                (true, false, b'"') => in_str = false,
                (false, _, b'"') => in_str = true,
                (false, _, b'/') if b.get(i + 1) == Some(&b'/') => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

fn rust_lookups(text: &str) -> Vec<Lookup> {
    let text = &strip_comments(text);
    // `const NAME: &str = "...";` in the file.
    let mut consts = BTreeMap::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("const ").or_else(|| l.strip_prefix("pub const ")) {
            if let Some((name, value)) = rest.split_once(": &str = ") {
                if let Some((_, v)) = literals(value).first() {
                    consts.insert(name.trim().to_string(), v.clone());
                }
            }
        }
    }
    let line_of = |at: usize| text[..at].lines().count().max(1);
    let mut out = Vec::new();
    for call in [".assert_check(", ".check(", ".detail(", ".assert_checks(", ".assert_run_checks("] {
        let mut from = 0;
        while let Some(at) = text[from..].find(call) {
            let start = from + at;
            from = start + call.len();
            let args = call_args(&text[start + call.len() - 1..]);
            let line = line_of(start);
            let mut push = |expr: &str, prefix: Option<&str>| match name_expr(expr, &consts) {
                Some(p) => out.push(Ok((line, prefix.map_or(p.clone(), |r| format!("{r}/{p}"))))),
                None => out.push(Err((line, expr.trim().to_string()))),
            };
            match call {
                ".assert_checks(" => match array_items(args) {
                    Some(items) => items.into_iter().for_each(|i| push(i, None)),
                    None => push(args, None),
                },
                ".assert_run_checks(" => {
                    let parts = split_top(args);
                    let run = parts.first().and_then(|r| name_expr(r, &consts)).unwrap_or_else(|| "*".into());
                    match parts.get(1).and_then(|a| array_items(a)) {
                        Some(items) => items.into_iter().for_each(|i| push(i, Some(&run))),
                        None => push(args, None),
                    }
                }
                _ => push(args, None),
            }
        }
    }
    out
}

#[test]
fn every_check_the_rust_tests_look_up_is_declared() {
    let mut bad = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    let mut checked = 0;
    for file in files {
        if file.ends_with("testbed_declarations.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // The scenarios this file reads: `scenario("NAME")`.
        let mut decls: Vec<Declarations> = Vec::new();
        let mut from = 0;
        while let Some(at) = text[from..].find("scenario(\"") {
            let start = from + at + "scenario(\"".len();
            let name = &text[start..start + text[start..].find('"').unwrap()];
            from = start;
            match Declarations::for_scenario(name) {
                Some(d) if decls.iter().any(|x| x.file == d.file) => {}
                Some(d) => decls.push(d),
                None => bad.push(format!("{}: scenario({name:?}): no tools/testbed/scenarios/{name}.sh", rel(&file))),
            }
        }
        if decls.is_empty() {
            continue; // hand-written results (testbed_results_parser.rs) or no testbed at all
        }
        for lookup in rust_lookups(&text) {
            match lookup {
                Ok((line, pattern)) => {
                    checked += 1;
                    if !decls.iter().any(|d| d.could_match(&pattern)) {
                        let files: Vec<String> = decls.iter().map(|d| rel(&d.file)).collect();
                        bad.push(format!("{}:{line}: check {pattern:?} is declared in none of {files:?}", rel(&file)));
                    }
                }
                Err((line, expr)) => bad.push(format!(
                    "{}:{line}: check name `{expr}` is not written out: use a literal, format!, assert_checks or \
                     assert_run_checks",
                    rel(&file)
                )),
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(checked > 100, "only {checked} check lookups found in tests/: is the parser still finding them?");
}

#[test]
fn the_parsers_do_what_the_rules_say() {
    assert_eq!(shell_word("\"vfio-bind-$b\" pass \"group $g\""), "vfio-bind-*");
    assert_eq!(shell_word("\"ivshmem-pattern-$(printf 0x%x $off)\" pass"), "ivshmem-pattern-*");
    assert_eq!(shell_word("$run/l1-received pass"), "*/l1-received");
    assert_eq!(shell_word("'a b' x"), "a b");
    assert!(globs_intersect("viaduct-*/boot", "*/boot"));
    assert!(globs_intersect("r1-*", "r*-nvme-read-intx"));
    assert!(!globs_intersect("viaduct-msix/boot", "*/done"));
    let consts = BTreeMap::from([("RUN".to_string(), "trio".to_string())]);
    assert_eq!(name_expr("&format!(\"{RUN}/msix-{bdf}\")", &consts), Some("trio/msix-*".into()));
    assert_eq!(name_expr("\"setup\"", &consts), Some("setup".into()));
    assert_eq!(name_expr("n", &consts), None);
    let text = "const RUN: &str = \"r\";\nfn t() { s.assert_run_checks(RUN, &[\"boot\", \"done\"]); s.check(c); }";
    let got = rust_lookups(text);
    assert!(got.contains(&Ok((2, "r/boot".into()))) && got.contains(&Ok((2, "r/done".into()))), "{got:?}");
    assert!(got.contains(&Err((2, "c".into()))), "{got:?}");
    let d = Declarations::parse(Path::new("x.sh"), "# tb-check: a b-*\n# tb-run: vm\ntrue\n");
    assert!(d.matches("a") && d.matches("b-1") && d.matches("vm/boot") && d.matches("vm/timeout"));
    assert!(!d.matches("vm/first-try") && !d.matches("c"));
}
