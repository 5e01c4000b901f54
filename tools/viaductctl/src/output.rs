//! Output: one JSON document on stdout with --json, else text; diagnostics go to stderr.

use std::io::Write;

use serde::Serialize;

/// Writes to stdout without println!'s panic when the reader went away (`| head`).
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Prints a command's result: `json` as the only document on stdout, or `text`.
pub fn emit<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    let s = if json { serde_json::to_string_pretty(value)? + "\n" } else { text() };
    write_stdout(&s)?;
    Ok(())
}

#[derive(Serialize)]
pub struct ErrorDoc {
    pub error: ErrorBody,
}

#[derive(Serialize)]
pub struct ErrorBody {
    pub message: String,
    /// The chain of causes, outermost first.
    pub causes: Vec<String>,
}

impl ErrorDoc {
    pub fn from_error(e: &anyhow::Error) -> Self {
        Self { error: ErrorBody { message: e.to_string(), causes: e.chain().skip(1).map(|c| c.to_string()).collect() } }
    }
}
