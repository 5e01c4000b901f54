#![cfg(feature = "testbed")]
//! `viaduct --device ...,managed=on` in the testbed (scenario
//! tools/testbed/scenarios/vfio-managed.sh): viaduct binds devices that were on no driver, on
//! igbvf and on nvme to vfio-pci itself, the guest drives them, and each goes back where it
//! was when the guest powers off, when viaduct gets SIGTERM, and (through the state file and
//! `viaductctl restore`) after a SIGKILL. It runs on level 1's iommufd kernel
//! (`vfio-managed@iommufd`), where viaduct must also find the VFIO cdev that binding made.

mod common;

use serde_json::Value;

fn scenario() -> common::Scenario {
    common::scenario("vfio-managed@iommufd").expect("vfio-managed@iommufd scenario results")
}

#[track_caller]
fn value<'a>(s: &'a common::Scenario, key: &str) -> &'a str {
    s.value(key).unwrap_or_else(|| panic!("value {key} missing; log: {}", s.log.display()))
}

const VF0: &str = "0000:01:10.0";
const VF1: &str = "0000:01:10.2";
const NVME: &str = "0000:02:00.0";

#[test]
fn devices_start_on_no_driver_igbvf_and_nvme() {
    let s = scenario();
    s.assert_check("setup");
    assert_eq!(value(&s, "vfs"), format!("{VF0} {VF1}"));
    assert_eq!(value(&s, "state_before_vf0"), "none override=(null)");
    assert_eq!(value(&s, "state_before_vf1"), "igbvf override=(null)");
    assert_eq!(value(&s, "state_before_nvme"), "nvme override=(null)");
}

#[test]
fn guest_gets_managed_devices_and_they_go_back_at_poweroff() {
    let s = scenario();
    s.assert_run_checks(
        "poweroff",
        &["exit-0", "bound-while-running", "vfs-on-igbvf", "nvme-bound", "nvme-read-signature", "done"],
    );
    // Level 1 saw all three on vfio-pci while viaduct ran: viaduct bound them itself.
    assert_eq!(value(&s, "poweroff/seen_on_vfio_pci"), "vf0 vf1 nvme");
    // The guest read what level 0 wrote into disk.img, through the managed NVMe.
    let sig = s.signature("disk.img").unwrap();
    assert!(s.detail("poweroff/nvme-read-signature").contains(&sig));
    assert_eq!(value(&s, "poweroff/vmm_rc"), "0");
    // viaduct ended by itself after the guest (the scenario does not stop it).
    assert!(s.value_u64("poweroff/exit_after_done_ms").is_ok());
    s.assert_run_checks("poweroff", &["vf0-restored", "vf1-restored", "nvme-restored"]);
    for (dev, before) in [("vf0", "none"), ("vf1", "igbvf"), ("nvme", "nvme")] {
        assert_eq!(
            value(&s, &format!("poweroff/state_after_{dev}")),
            format!("{before} override=(null)"),
            "{dev} after the guest powered off"
        );
    }
    s.assert_check("poweroff/no-records-left");
    assert_eq!(value(&s, "poweroff/records_left"), "");
}

#[test]
fn sigterm_restores_and_leaves_other_bindings_alone() {
    let s = scenario();
    s.assert_run_checks(
        "sigterm",
        &["viaductctl-bind-vf0", "guest-ready", "vfs-on-igbvf", "nvme-bound", "nvme-read-signature", "exit-143"],
    );
    assert_eq!(value(&s, "sigterm/vmm_rc"), "143");
    // While the guest ran: all three on vfio-pci; VF1 and the NVMe recorded as this
    // viaduct's (their original drivers kept), VF0 as viaductctl's.
    for dev in ["vf0", "vf1", "nvme"] {
        assert_eq!(
            value(&s, &format!("sigterm/state_during_{dev}")),
            "vfio-pci override=vfio-pci",
            "{dev} while the guest ran"
        );
    }
    let pid = value(&s, "sigterm/pid");
    let during = value(&s, "sigterm/records_during");
    assert!(during.contains(&format!("{VF1} driver=igbvf override=- owner=viaduct[{pid}]")), "{during}");
    assert!(during.contains(&format!("{NVME} driver=nvme override=- owner=viaduct[{pid}]")), "{during}");
    assert!(!during.contains(VF0), "VF0 was not viaduct's to bind: {during}");
    assert!(
        value(&s, "sigterm/records_viaductctl").contains(&format!("{VF0} driver=- override=- owner=viaductctl")),
        "{}",
        value(&s, "sigterm/records_viaductctl")
    );
    // `viaductctl restore` refused to take the running VMM's devices: exit 1, naming it,
    // and both stayed on vfio-pci (its /proc/PID/exe is viaduct).
    assert_eq!(value(&s, "sigterm/restore_live_rc"), "1");
    let err = value(&s, "sigterm/restore_live_err");
    assert!(err.contains("still in use by a running viaduct") && err.contains(&format!("viaduct[{pid}]")), "{err}");
    for dev in ["vf1", "nvme"] {
        assert_eq!(
            value(&s, &format!("sigterm/state_after_live_restore_{dev}")),
            "vfio-pci override=vfio-pci",
            "{dev} after a restore while its VMM ran"
        );
    }
    // After SIGTERM: viaduct's devices back, VF0 still with viaductctl.
    s.assert_check("sigterm/vf1-restored");
    s.assert_check("sigterm/nvme-restored");
    assert_eq!(value(&s, "sigterm/state_after_vf1"), "igbvf override=(null)");
    assert_eq!(value(&s, "sigterm/state_after_nvme"), "nvme override=(null)");
    s.assert_check("sigterm/vf0-left-to-viaductctl");
    assert_eq!(value(&s, "sigterm/state_after_vf0"), "vfio-pci override=vfio-pci");
    s.assert_check("sigterm/no-records-left");
    assert_eq!(value(&s, "sigterm/records_after"), "");
    s.assert_check("sigterm-viaductctl/vf0-restored");
    assert_eq!(value(&s, "sigterm-viaductctl/state_after_vf0"), "none override=(null)");
}

#[test]
fn after_sigkill_viaductctl_restore_gives_the_devices_back() {
    let s = scenario();
    s.assert_run_checks("sigkill", &["guest-ready", "nvme-read-signature", "records-survive"]);
    // SIGKILL: rc 137, no cleanup ran: the devices stay on vfio-pci, the records stay.
    assert_eq!(value(&s, "sigkill/vmm_rc"), "137");
    assert_eq!(value(&s, "sigkill/state_killed_vf1"), "vfio-pci override=vfio-pci");
    assert_eq!(value(&s, "sigkill/state_killed_nvme"), "vfio-pci override=vfio-pci");
    let pid = value(&s, "sigkill/pid");
    let killed = value(&s, "sigkill/records_killed");
    assert!(killed.contains(&format!("{VF1} driver=igbvf override=- owner=viaduct[{pid}]")), "{killed}");
    assert!(killed.contains(&format!("{NVME} driver=nvme override=- owner=viaduct[{pid}]")), "{killed}");

    s.assert_check("sigkill/viaductctl-restore");
    assert_eq!(value(&s, "sigkill/restore_rc"), "0");
    let doc: Value = serde_json::from_str(value(&s, "sigkill/restore_json")).expect("restore --json output");
    let results = doc["results"].as_array().expect("results array");
    for (bdf, driver) in [(VF1, "igbvf"), (NVME, "nvme")] {
        let r = results.iter().find(|r| r["bdf"] == bdf).unwrap_or_else(|| panic!("{bdf} not restored: {doc}"));
        assert_eq!(r["action"], "restored", "{r}");
        assert_eq!(r["driver"], driver, "{r}");
    }
    s.assert_check("sigkill/vf1-restored");
    s.assert_check("sigkill/nvme-restored");
    assert_eq!(value(&s, "sigkill/state_after_vf1"), "igbvf override=(null)");
    assert_eq!(value(&s, "sigkill/state_after_nvme"), "nvme override=(null)");
    assert_eq!(value(&s, "sigkill/records_after"), "");
    // The host's own nvme driver uses the controller again.
    s.assert_check("sigkill/nvme-works-in-l1");
}

#[test]
fn scenario_passed_as_a_whole() {
    scenario().assert_passed();
}
