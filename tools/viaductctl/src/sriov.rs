//! `viaductctl sriov`: create or remove a PF's VFs.

use anyhow::Context;
use hostadmin::{PciHost, SriovOptions};
use serde::Serialize;

use crate::output::emit;
use crate::table::{opt, render};

#[derive(clap::Args, Debug)]
pub struct SriovArgs {
    /// Physical function: BDF or the name of its network interface.
    pf: String,
    /// Number of VFs to have; 0 removes them all.
    #[arg(long)]
    num_vfs: u32,
    /// Leave the new VFs without a driver (sriov_drivers_autoprobe=0 while they are
    /// created), ready for `viaductctl bind`.
    #[arg(long)]
    no_probe: bool,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct VfDoc {
    index: usize,
    bdf: String,
    driver: Option<String>,
    iommu_group: Option<u32>,
}

#[derive(Serialize)]
struct SriovDoc {
    pf: String,
    total_vfs: u32,
    num_vfs: usize,
    vfs: Vec<VfDoc>,
}

pub fn run(host: &PciHost, args: &SriovArgs) -> anyhow::Result<()> {
    let pf = host.resolve_device(&args.pf)?;
    let opts = SriovOptions { autoprobe: args.no_probe.then_some(false) };
    let vfs =
        host.set_num_vfs(pf, args.num_vfs, opts).with_context(|| format!("setting {pf} to {} VFs", args.num_vfs))?;
    let total_vfs = host.sriov_info(pf).map_or(0, |s| s.total_vfs);
    let doc = SriovDoc {
        pf: pf.to_string(),
        total_vfs,
        num_vfs: vfs.len(),
        vfs: vfs
            .iter()
            .enumerate()
            .map(|(index, b)| VfDoc {
                index,
                bdf: b.to_string(),
                driver: host.driver(*b),
                iommu_group: host.iommu_group(*b),
            })
            .collect(),
    };
    emit(args.json, &doc, || {
        let rows: Vec<Vec<String>> = doc
            .vfs
            .iter()
            .map(|v| vec![v.index.to_string(), v.bdf.clone(), opt(v.driver.as_deref()), opt(v.iommu_group)])
            .collect();
        format!(
            "{}: {} of {} VFs\n{}",
            doc.pf,
            doc.num_vfs,
            doc.total_vfs,
            if rows.is_empty() { String::new() } else { render(&["VF", "BDF", "DRIVER", "GROUP"], &rows) }
        )
    })
}
