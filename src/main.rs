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

fn main() -> ExitCode {
    let cli = config::Cli::parse();
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
