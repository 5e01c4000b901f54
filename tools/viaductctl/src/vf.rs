//! `viaductctl vf`: show or set VF MAC, VLAN, trust, spoof check and link state through
//! rtnetlink on the PF's netdev.

use anyhow::Context;
use hostadmin::{MacAddr, PciHost, Rtnetlink, VfLinkState, VfSettings, VfStatus};
use serde::Serialize;

use crate::output::emit;
use crate::table::{opt, render};

#[derive(clap::Args, Debug)]
pub struct VfArgs {
    /// Physical function: BDF or the name of its network interface.
    pf: String,
    /// VF index (0-based); without it, every VF is shown.
    index: Option<u32>,
    /// Administrative MAC address of the VF.
    #[arg(long)]
    mac: Option<String>,
    /// VLAN id the PF tags the VF's traffic with; 0 removes it.
    #[arg(long)]
    vlan: Option<u16>,
    /// 802.1p priority for --vlan (0-7).
    #[arg(long, requires = "vlan", default_value_t = 0)]
    qos: u8,
    /// Let the VF change its MAC, use promiscuous modes, etc.
    #[arg(long, value_parser = parse_onoff)]
    trust: Option<bool>,
    /// Drop frames whose source MAC is not the VF's.
    #[arg(long, value_parser = parse_onoff)]
    spoofchk: Option<bool>,
    /// VF link: auto (follows the PF), enable, disable.
    #[arg(long)]
    link_state: Option<VfLinkState>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_onoff(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}': use on or off")),
    }
}

#[derive(Serialize)]
struct VfDoc {
    index: u32,
    bdf: Option<String>,
    mac: Option<String>,
    vlan: Option<u16>,
    qos: Option<u8>,
    spoofchk: Option<bool>,
    trust: Option<bool>,
    link_state: Option<&'static str>,
}

#[derive(Serialize)]
struct VfListDoc {
    pf: String,
    interface: String,
    vfs: Vec<VfDoc>,
}

fn doc(host: &PciHost, pf: pci::Bdf, s: &VfStatus) -> VfDoc {
    let bdf = host.sriov_info(pf).and_then(|i| i.vfs.get(s.index as usize).copied());
    VfDoc {
        index: s.index,
        bdf: bdf.map(|b| b.to_string()),
        mac: s.mac.map(|m| m.to_string()),
        vlan: s.vlan,
        qos: s.qos,
        spoofchk: s.spoofchk,
        trust: s.trust,
        link_state: s.link_state.map(VfLinkState::as_str),
    }
}

fn onoff(b: Option<bool>) -> String {
    opt(b.map(|b| if b { "on" } else { "off" }))
}

pub fn run(host: &PciHost, args: &VfArgs) -> anyhow::Result<()> {
    let settings = VfSettings {
        mac: args.mac.as_deref().map(str::parse::<MacAddr>).transpose()?,
        vlan: args.vlan.map(|v| (v, args.qos)),
        trust: args.trust,
        spoofchk: args.spoofchk,
        link_state: args.link_state,
    };
    settings.validate()?;
    let pf = host.pf_netdev(&args.pf)?;
    if args.index.is_none() && !settings.is_empty() {
        anyhow::bail!("settings need a VF index: viaductctl vf {} INDEX ...", args.pf);
    }
    let mut nl = Rtnetlink::open()?;
    let statuses: Vec<VfStatus> = match args.index {
        Some(i) if !settings.is_empty() => {
            vec![nl
                .configure_vf(&pf, i, &settings)
                .with_context(|| format!("configuring VF {i} of {} (nothing was changed)", pf.ifname))?]
        }
        Some(i) => {
            if i >= pf.num_vfs {
                return Err(hostadmin::VfError::VfOutOfRange { bdf: pf.bdf, index: i, num_vfs: pf.num_vfs }.into());
            }
            nl.vf_status(&pf)?.into_iter().filter(|s| s.index == i).collect()
        }
        None => nl.vf_status(&pf)?,
    };
    let d = VfListDoc {
        pf: pf.bdf.to_string(),
        interface: pf.ifname.clone(),
        vfs: statuses.iter().map(|s| doc(host, pf.bdf, s)).collect(),
    };
    emit(args.json, &d, || {
        let rows: Vec<Vec<String>> = d
            .vfs
            .iter()
            .map(|v| {
                vec![
                    v.index.to_string(),
                    opt(v.bdf.as_deref()),
                    opt(v.mac.as_deref()),
                    opt(v.vlan),
                    opt(v.qos),
                    onoff(v.spoofchk),
                    onoff(v.trust),
                    opt(v.link_state),
                ]
            })
            .collect();
        format!(
            "{} ({})\n{}",
            d.pf,
            d.interface,
            render(&["VF", "BDF", "MAC", "VLAN", "QOS", "SPOOFCHK", "TRUST", "LINK"], &rows)
        )
    })
}
