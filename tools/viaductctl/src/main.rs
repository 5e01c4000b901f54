//! viaductctl: the host side of PCI passthrough — inventory, pre-flight checks, vfio-pci
//! binding with a state file, SR-IOV VFs and their settings; and a client of viaduct's API.

mod api_client;
mod bind;
mod check;
mod list;
mod output;
mod sriov;
mod table;
mod vf;
mod vm;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hostadmin::{Binder, Owner, PciHost, StateFile};

/// Exit status when `check` finds something that blocks assignment.
const EXIT_BLOCKED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "viaductctl",
    version,
    about = "Host tool for VFIO passthrough: inventory, checks, vfio-pci binding, SR-IOV"
)]
struct Cli {
    /// Root under which sys/, proc/, dev/ and run/ are read (tests use fake trees).
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Binding state file [default: ROOT/run/viaduct/bindings].
    #[arg(long, global = true, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List PCI devices with driver, IOMMU group, SR-IOV, NUMA, reset and BARs.
    List(list::ListArgs),
    /// Check the host (and devices) for VFIO assignment; exit 3 if something blocks it.
    Check(check::CheckArgs),
    /// Move a device (or its whole IOMMU group) to vfio-pci, recording its driver.
    Bind(bind::BindArgs),
    /// Take a device off vfio-pci: back to its recorded driver, else the kernel's choice.
    Unbind(bind::UnbindArgs),
    /// Give recorded devices back to their original drivers (all, or those named).
    Restore(bind::RestoreArgs),
    /// Create (or with --num-vfs 0 remove) a PF's SR-IOV virtual functions.
    Sriov(sriov::SriovArgs),
    /// Show or set a VF's MAC, VLAN, trust, spoof check and link state (rtnetlink).
    Vf(vf::VfArgs),
    /// Talk to a running viaduct over its API socket: state, counters, pause, power button,
    /// hot-plug.
    Vm(vm::VmArgs),
}

impl Command {
    fn json(&self) -> bool {
        match self {
            Command::List(a) => a.json,
            Command::Check(a) => a.json,
            Command::Bind(a) => a.json,
            Command::Unbind(a) => a.json,
            Command::Restore(a) => a.json,
            Command::Sriov(a) => a.json,
            Command::Vf(a) => a.json,
            Command::Vm(a) => a.json,
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let host = PciHost::new(&cli.root);
    let state = cli.state_file.clone().map_or_else(|| StateFile::for_host(&host), StateFile::new);
    let binder = || Binder::new(host.clone(), state.clone(), Owner::Viaductctl);
    match &cli.command {
        Command::List(a) => list::run(&host, a)?,
        Command::Check(a) => {
            if check::run(&host, a)? {
                return Ok(ExitCode::from(EXIT_BLOCKED));
            }
        }
        Command::Bind(a) => bind::run_bind(&binder(), a)?,
        Command::Unbind(a) => bind::run_unbind(&binder(), a)?,
        Command::Restore(a) => bind::run_restore(&binder(), a)?,
        Command::Sriov(a) => sriov::run(&host, a)?,
        Command::Vf(a) => vf::run(&host, a)?,
        Command::Vm(a) => vm::run(a)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).parse_default_env().init();
    match run(&cli) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            // The reader of stdout left (e.g. `| head`): not an error worth a message.
            ExitCode::FAILURE
        }
        Err(e) => {
            // Not eprintln!: it panics if stderr is gone.
            let _ = writeln!(std::io::stderr(), "viaductctl: error: {e:#}");
            if cli.command.json() {
                // Scripts parse stdout: they get one JSON document even on failure.
                if let Ok(doc) = serde_json::to_string_pretty(&output::ErrorDoc::from_error(&e)) {
                    let _ = output::write_stdout(&(doc + "\n"));
                }
            }
            ExitCode::FAILURE
        }
    }
}
