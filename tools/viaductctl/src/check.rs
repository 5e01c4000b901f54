//! `viaductctl check`: can devices be assigned on this host?

use anyhow::Context;
use hostadmin::{blocked, parse_size, CheckOptions, Finding, PciHost};
use pci::Bdf;
use serde::Serialize;

use crate::output::emit;
use crate::table::{opt, render};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Devices to check as well (BDF or the name of one of their network interfaces).
    devices: Vec<String>,
    /// Guest memory size VFIO will pin (e.g. 4G): checked against RLIMIT_MEMLOCK.
    #[arg(long, value_parser = parse_memory)]
    memory: Option<u64>,
    /// Load missing VFIO modules, then check again.
    #[arg(long)]
    fix: bool,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).filter(|v| *v > 0).ok_or_else(|| format!("'{s}' is not a size: use e.g. 512M, 4G or a byte count"))
}

#[derive(Serialize)]
struct FindingDoc {
    check: &'static str,
    device: Option<String>,
    severity: &'static str,
    message: String,
    fix: Option<String>,
}

/// A checked device's driver as VFIO sees it.
#[derive(Serialize)]
struct DeviceDoc {
    bdf: String,
    driver: Option<String>,
    /// `vfio-pci`, `variant (NAME)` for a driver built on vfio-pci-core, or null.
    vfio: Option<String>,
    /// The node a VMM opens it through, when there is one.
    vfio_node: Option<String>,
}

#[derive(Serialize)]
struct CheckDoc {
    /// False when a finding blocks assignment.
    ok: bool,
    findings: Vec<FindingDoc>,
    /// The devices checked (those that exist).
    devices: Vec<DeviceDoc>,
}

fn doc(f: &Finding) -> FindingDoc {
    FindingDoc {
        check: f.check,
        device: f.device.map(|b| b.to_string()),
        severity: f.severity.as_str(),
        message: f.message.clone(),
        fix: f.fix.clone(),
    }
}

fn text(findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|f| {
            vec![
                f.severity.as_str().to_uppercase(),
                f.check.to_string(),
                opt(f.device),
                match &f.fix {
                    Some(fix) => format!("{} -> fix: {fix}", f.message),
                    None => f.message.clone(),
                },
            ]
        })
        .collect();
    let mut out = render(&["STATUS", "CHECK", "DEVICE", "DETAIL"], &rows);
    out.push_str(if blocked(findings) {
        "result: BLOCKED: device assignment will fail until the BLOCK findings are fixed\n"
    } else {
        "result: OK\n"
    });
    out
}

/// Returns whether assignment is blocked (the caller turns that into the exit status).
pub fn run(host: &PciHost, args: &CheckArgs) -> anyhow::Result<bool> {
    // An unknown device is a finding, not an error: resolve what resolves.
    let mut devices: Vec<Bdf> = Vec::new();
    let mut unknown: Vec<Finding> = Vec::new();
    for spec in &args.devices {
        match host.resolve_device(spec) {
            Ok(b) => devices.push(b),
            Err(e) => unknown.push(Finding {
                check: "device",
                device: None,
                severity: hostadmin::Severity::Block,
                message: e.to_string(),
                fix: Some("give a BDF from `viaductctl list`".into()),
            }),
        }
    }
    let opts = CheckOptions { devices, memory: args.memory };
    let mut findings = host.check(&opts);
    if args.fix && findings.iter().any(|f| f.check == "vfio-modules" && f.severity == hostadmin::Severity::Block) {
        host.load_vfio_modules().context("--fix: loading the VFIO modules")?;
        log::info!("loaded the VFIO modules; checking again");
        findings = host.check(&opts);
    }
    findings.extend(unknown);
    let is_blocked = blocked(&findings);
    let device_docs = opts
        .devices
        .iter()
        .filter(|b| host.device_exists(**b))
        .map(|b| DeviceDoc {
            bdf: b.to_string(),
            driver: host.driver(*b),
            vfio: host.vfio_driver(*b).map(|v| v.to_string()),
            vfio_node: host.vfio_node(*b).map(|n| host.display_path(n.path())),
        })
        .collect();
    let d = CheckDoc { ok: !is_blocked, findings: findings.iter().map(doc).collect(), devices: device_docs };
    emit(args.json, &d, || text(&findings))?;
    Ok(is_blocked)
}
