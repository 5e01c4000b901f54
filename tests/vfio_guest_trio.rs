#![cfg(feature = "testbed")]
//! Three assigned functions in one guest (scenario vfio-guest-trio): an igb VF, the whole NVMe
//! and the NVMe SR-IOV VF. Every driver binds, both NVMes read their level-0 image's signature
//! and write a token that is then found in that image on this machine, both count MSI-X
//! interrupts, and no nvme command times out (the VF's admin completions were once lost when
//! host MSI-X was enabled only at the first vector unmask).

mod common;

const RUN: &str = "trio";

fn results() -> common::Scenario {
    common::scenario("vfio-guest-trio").expect("vfio-guest-trio results")
}

#[test]
fn every_driver_binds_and_no_nvme_command_times_out() {
    let s = results();
    s.assert_checks(&["setup", "vfio-bind"]);
    s.assert_run_checks(RUN, &["boot", "igbvf-bound", "nvme-both-bound", "no-timeouts", "done"]);
}

#[test]
fn both_nvmes_read_their_signature_and_their_writes_land_in_level_0() {
    let s = results();
    let token = s.value(&format!("{RUN}/token")).expect("token");
    s.assert_run_checks(RUN, &["nvme-read-signature", "nvme-write", "nvmevf-read-signature", "nvmevf-write"]);
    for (name, img) in [("nvme", "disk.img"), ("nvmevf", "sriov.img")] {
        let sig = s.signature(img).expect("signature");
        let detail = s.detail(&format!("{RUN}/{name}-read-signature"));
        assert!(detail.contains(&sig), "{name} read '{detail}', {img} holds '{sig}'");
        s.assert_sector(img, 6200, &format!("VIADUCT-TRIO-WROTE {token}"), &format!("the guest's {name} write"));
    }
}

#[test]
fn both_nvmes_count_msix_interrupts() {
    let s = results();
    let prefix = format!("{RUN}/msix-");
    let msix: Vec<_> = s.checks.iter().filter(|c| c.name.starts_with(&prefix)).collect();
    assert_eq!(msix.len(), 2, "one MSI-X check per NVMe: {msix:?}");
    for c in msix {
        assert_eq!(c.status, "pass", "{c:?}");
    }
    s.assert_passed();
}

/// The reset method vm.info gives each device is the one level 1's kernel uses (the first of
/// its sysfs reset_method), and a host-side `remove` of the whole NVMe while the guest reads
/// it leaves viaduct running (API answering, the guest never reading other bytes); viaduct
/// then exits 0 at the guest's own end, the removal completes and a rescan brings it back.
#[test]
fn reset_methods_match_level_1_and_a_host_remove_leaves_viaduct_running() {
    let s = results();
    s.assert_run_checks(RUN, &["reset-method-igbvf", "reset-method-nvme", "reset-method-nvmevf"]);
    s.assert_run_checks(
        RUN,
        &["vmm-alive-during-remove", "api-during-remove", "reads-during-remove", "remove-completed", "rescan"],
    );
    assert_eq!(s.value(&format!("{RUN}/vmm_rc")), Some("0"), "viaduct ends with status 0");
}
