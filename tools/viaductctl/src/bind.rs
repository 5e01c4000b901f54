//! `viaductctl bind`, `unbind`, `restore`: moving devices to vfio-pci and back.

use anyhow::Context;
use hostadmin::{BindError, BindOutcome, Binder, RestoreOutcome};
use pci::Bdf;
use serde::Serialize;

use crate::output::emit;
use crate::table::{opt, render};

#[derive(clap::Args, Debug)]
pub struct BindArgs {
    /// Device: BDF or the name of one of its network interfaces.
    device: String,
    /// Also bind every other member of its IOMMU group (bridges excepted), as VFIO needs.
    #[arg(long)]
    group: bool,
    /// Bind even if the host uses the device (an interface up, a filesystem mounted).
    #[arg(long)]
    force: bool,
    /// Also hand the device's VFIO nodes (/dev/vfio/GROUP, /dev/vfio/devices/vfioN) to this
    /// user (name, UID or UID:GID), so viaduct can run as that user; `restore` undoes it.
    /// Says what else the user needs.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// With --user: the guest RAM viaduct will get, for the memlock limit it needs.
    #[arg(long, value_name = "SIZE", requires = "user")]
    memory: Option<String>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct UnbindArgs {
    /// Device: BDF or the name of one of its network interfaces.
    device: String,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Devices to restore; none: every device in the state file.
    devices: Vec<String>,
    /// Also restore devices whose viaduct process (managed=on) is still running; the unbind
    /// then waits until that VMM lets the device go.
    #[arg(long)]
    force: bool,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ResultDoc {
    bdf: String,
    /// bound, already-bound, restored, released, nothing-to-do, gone, owner-running, failed
    action: &'static str,
    /// The driver it had before (bind) or was given back (restore).
    previous_driver: Option<String>,
    /// The driver now bound.
    driver: Option<String>,
    error: Option<String>,
    /// Why nothing was done, when that is not an error (owner-running).
    reason: Option<String>,
}

#[derive(Serialize)]
struct ResultsDoc {
    results: Vec<ResultDoc>,
    /// `bind --user`: the user the nodes went to, and the nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<GrantDoc>,
    /// `bind --user`: what else the user needs to run viaduct, one step each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    steps: Vec<String>,
}

#[derive(Serialize)]
struct GrantDoc {
    user: String,
    uid: u32,
    gid: u32,
    nodes: Vec<String>,
}

impl ResultsDoc {
    fn plain(results: Vec<ResultDoc>) -> Self {
        Self { results, grant: None, steps: Vec::new() }
    }
}

fn text(results: &[ResultDoc]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.bdf.clone(),
                r.action.to_string(),
                opt(r.previous_driver.as_deref()),
                opt(r.driver.as_deref()),
                opt(r.error.as_deref().or(r.reason.as_deref())),
            ]
        })
        .collect();
    render(&["BDF", "ACTION", "BEFORE", "NOW", "DETAIL"], &rows)
}

fn bind_doc(binder: &Binder, bdf: Bdf, o: &BindOutcome) -> ResultDoc {
    let (action, previous) = match o {
        BindOutcome::AlreadyBound { driver } => ("already-bound", Some(driver.driver_name().to_string())),
        BindOutcome::Bound { previous } => ("bound", previous.clone()),
    };
    ResultDoc {
        bdf: bdf.to_string(),
        action,
        previous_driver: previous,
        driver: binder.host().driver(bdf),
        error: None,
        reason: None,
    }
}

fn restore_doc(binder: &Binder, bdf: Bdf, r: &Result<RestoreOutcome, BindError>) -> ResultDoc {
    let (action, error) = match r {
        Ok(RestoreOutcome::Restored { .. }) => ("restored", None),
        Ok(RestoreOutcome::Released { .. }) => ("released", None),
        Ok(RestoreOutcome::NothingToDo { .. }) => ("nothing-to-do", None),
        Ok(RestoreOutcome::Gone) => ("gone", None),
        Ok(RestoreOutcome::OwnerRunning { .. }) => ("owner-running", None),
        Err(e) => ("failed", Some(error_chain(e))),
    };
    let reason = match r {
        Ok(RestoreOutcome::OwnerRunning { pid }) => {
            Some(format!("viaduct[{pid}] bound it and is still running; --force restores it anyway"))
        }
        _ => None,
    };
    let previous = match r {
        Ok(RestoreOutcome::Restored { driver }) => driver.clone(),
        _ => None,
    };
    ResultDoc {
        bdf: bdf.to_string(),
        action,
        previous_driver: previous,
        driver: binder.host().driver(bdf),
        error,
        reason,
    }
}

/// An error with its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn resolve(binder: &Binder, spec: &str) -> anyhow::Result<Bdf> {
    Ok(binder.host().resolve_device(spec)?)
}

pub fn run_bind(binder: &Binder, args: &BindArgs) -> anyhow::Result<()> {
    let binder = &binder.clone().with_force(args.force);
    let bdf = resolve(binder, &args.device)?;
    let results: Vec<ResultDoc> = if args.group {
        binder
            .bind_group(bdf)
            .with_context(|| format!("binding the IOMMU group of {bdf} to vfio-pci (nothing was changed)"))?
            .iter()
            .map(|(b, o)| bind_doc(binder, *b, o))
            .collect()
    } else {
        let o = binder.bind(bdf).with_context(|| format!("binding {bdf} to vfio-pci (nothing was changed)"))?;
        // VFIO opens only viable groups: say so now rather than at VM start.
        for f in binder.host().check_device(bdf) {
            if f.check == "group-viability" && f.severity == hostadmin::Severity::Block {
                log::warn!("{bdf}: {}; VFIO will refuse its group: {}", f.message, f.fix.unwrap_or_default());
            }
        }
        vec![bind_doc(binder, bdf, &o)]
    };
    let mut doc = ResultsDoc::plain(results);
    if let Some(spec) = &args.user {
        let user = hostadmin::HostUser::lookup(spec).with_context(|| format!("--user {spec}: no such user"))?;
        let ram = match &args.memory {
            Some(m) => Some(hostadmin::parse_size(m).with_context(|| format!("--memory {m}: not a size"))?),
            None => None,
        };
        let mut nodes = Vec::new();
        for r in &doc.results {
            let b: Bdf = r.bdf.parse()?;
            binder.grant(b, user.uid, user.gid).with_context(|| {
                format!("handing the VFIO nodes of {b} to {spec} (`viaductctl restore {b}` undoes what was done)")
            })?;
            nodes.extend(binder.host().vfio_nodes(b).iter().map(|n| binder.host().display_path(n.path())));
        }
        nodes.sort();
        nodes.dedup();
        doc.steps = hostadmin::unprivileged_steps(binder.host(), &user, ram);
        doc.grant = Some(GrantDoc { user: user.name.clone(), uid: user.uid, gid: user.gid, nodes });
    }
    emit(args.json, &doc, || {
        let mut out = text(&doc.results);
        if let Some(g) = &doc.grant {
            let (verb, them) = if g.nodes.len() == 1 { ("belongs", "it") } else { ("belong", "them") };
            out.push_str(&format!(
                "\n{} now {verb} to {} (uid {}); `viaductctl restore` gives {them} back.\n",
                g.nodes.join(", "),
                g.user,
                g.uid
            ));
            out.push_str(&format!("For {} to run viaduct:\n", g.user));
            for s in &doc.steps {
                out.push_str(&format!("  - {s}\n"));
            }
        }
        out
    })
}

pub fn run_unbind(binder: &Binder, args: &UnbindArgs) -> anyhow::Result<()> {
    let bdf = resolve(binder, &args.device)?;
    let r = binder.unbind(bdf);
    let doc = ResultsDoc::plain(vec![restore_doc(binder, bdf, &r)]);
    r.with_context(|| format!("unbinding {bdf}"))?;
    emit(args.json, &doc, || text(&doc.results))
}

/// Restores the named devices or all recorded ones; fails if any device failed, after
/// trying them all. A device whose viaduct process still runs is skipped unless `--force`:
/// with a warning when restoring everything, as a failure when it was named.
pub fn run_restore(binder: &Binder, args: &RestoreArgs) -> anyhow::Result<()> {
    let results: Vec<(Bdf, Result<RestoreOutcome, BindError>)> = if args.devices.is_empty() {
        binder.restore_all(args.force).context("reading the binding state")?
    } else {
        let mut v = Vec::new();
        for spec in &args.devices {
            // A device that is gone can still have a record; take the BDF as written then.
            let bdf = match spec.parse::<Bdf>() {
                Ok(b) => b,
                Err(_) => resolve(binder, spec)?,
            };
            v.push((bdf, binder.restore_abandoned(bdf, args.force)));
        }
        v
    };
    let failed: Vec<String> = results.iter().filter(|(_, r)| r.is_err()).map(|(b, _)| b.to_string()).collect();
    let doc = ResultsDoc::plain(results.iter().map(|(b, r)| restore_doc(binder, *b, r)).collect());
    let in_use: Vec<String> = results
        .iter()
        .filter_map(|(b, r)| match r {
            Ok(RestoreOutcome::OwnerRunning { pid }) => Some(format!("{b} (viaduct[{pid}])")),
            _ => None,
        })
        .collect();
    if !in_use.is_empty() && !args.devices.is_empty() {
        anyhow::bail!(
            "not restored: {} still in use by a running viaduct; stop it, or --force to take the devices anyway (the unbind waits until it lets go)",
            in_use.join(", ")
        );
    }
    if !failed.is_empty() {
        for r in doc.results.iter().filter_map(|r| r.error.as_deref()) {
            log::error!("{r}");
        }
        anyhow::bail!(
            "restoring {} failed; the state file keeps their records, so `viaductctl restore` can retry",
            failed.join(", ")
        );
    }
    emit(args.json, &doc, || {
        if doc.results.is_empty() {
            "nothing recorded: no device to restore\n".into()
        } else {
            text(&doc.results)
        }
    })
}
