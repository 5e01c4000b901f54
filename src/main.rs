//! viaduct: a KVM virtual machine monitor built for PCI device passthrough.

mod api;
mod boot;
mod config;
mod control;
mod device_manager;
mod devices;
mod irq;
mod layout;
mod privilege;
mod resources;
mod seccomp;
mod signals;
mod stop;
mod terminal;
mod threads;
mod vmm;
mod vstate;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// Clap's own message, squeezed to one line (no usage block), for the one-line error rule.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

fn main() -> ExitCode {
    let parsed = config::Cli::command().try_get_matches().and_then(|m| {
        let cli = config::Cli::from_arg_matches(&m)?;
        Ok((cli, m))
    });
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap formats them, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("viaduct: error: {} (see --help)", one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    env_logger::Builder::new().filter_level(cli.log_level).format_target(false).format_timestamp_millis().init();
    threads::install_panic_hook();
    let run = || {
        config::RunConfig::check_unused(&cli, &matches)
            .and_then(|()| config::RunConfig::try_from(&cli))
            .map_err(anyhow::Error::from)
            .and_then(vmm::Vmm::run)
    };
    // A panic on this thread ends up here (the hook recorded it); on any other thread it
    // stops the VM, and Vmm::run returns it as the error.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
        Err(anyhow::anyhow!(threads::first_panic().unwrap_or_else(|| "the main thread panicked".to_string())))
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("viaduct: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. A cause whose text an outer message already
/// contains is left out: some library errors print their source themselves.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed: inner broke")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner broke")]
    struct Inner;

    #[test]
    fn error_line_is_one_line_without_repeats() {
        let e = anyhow::Error::new(Repeats(Inner)).context("starting\nthe VM");
        assert_eq!(error_line(&e), "starting the VM: outer failed: inner broke");
        let e = anyhow::Error::new(Inner).context("loading");
        assert_eq!(error_line(&e), "loading: inner broke");
    }
}
