//! viaduct: a KVM virtual machine monitor built for PCI device passthrough.

mod boot;
mod config;
mod device_manager;
mod devices;
mod irq;
mod layout;
mod resources;
mod signals;
mod stop;
mod terminal;
mod vmm;
mod vstate;

use std::process::ExitCode;

use clap::Parser;

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
    let cli = match config::Cli::try_parse() {
        Ok(cli) => cli,
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
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_target(false)
        .init();
    let result = config::VmConfig::try_from(&cli)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| vmm::Vmm::run(&cfg));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("viaduct: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
