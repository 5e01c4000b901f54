#![cfg(feature = "testbed")]
//! viaductctl on a real host (scenario tools/testbed/scenarios/viaductctl.sh): inventory,
//! check, SR-IOV, VF settings through rtnetlink, vfio-pci binding round trips, bad input.
//! The scenario reports viaductctl's own JSON documents; these tests assert on them.

mod common;

use serde_json::Value;

fn scenario() -> common::Scenario {
    common::scenario("viaductctl").expect("viaductctl scenario results")
}

/// A value holding one of viaductctl's JSON documents.
#[track_caller]
fn doc(s: &common::Scenario, key: &str) -> Value {
    let text = s.value(key).unwrap_or_else(|| panic!("value {key} missing; log: {}", s.log.display()));
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("value {key} is not JSON ({e}): {text}\n  log: {}", s.log.display()))
}

#[track_caller]
fn rc(s: &common::Scenario, name: &str) -> u64 {
    s.value_u64(&format!("{name}_rc")).unwrap_or_else(|e| panic!("{e}"))
}

fn device<'a>(d: &'a Value, bdf: &str) -> &'a Value {
    d["devices"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["bdf"] == bdf))
        .unwrap_or_else(|| panic!("{bdf} not listed in {d}"))
}

#[test]
fn list_shows_the_igb_pf_with_seven_vfs_and_its_group() {
    let s = scenario();
    s.assert_check("list-pf");
    let d = doc(&s, "list_pf_json");
    let pf = device(&d, "0000:01:00.0");
    assert_eq!((pf["vendor"].as_str(), pf["device"].as_str()), (Some("8086"), Some("10c9")));
    assert_eq!(pf["driver"], "igb");
    assert_eq!(pf["sriov"]["total_vfs"], 7);
    assert_eq!(pf["sriov"]["num_vfs"], 0);
    let group: u64 = s.value_u64("pf_group").unwrap();
    assert_eq!(pf["iommu_group"].as_u64(), Some(group));
    assert_eq!(pf["iommu_group_members"], serde_json::json!(["0000:01:00.0"]));
    assert!(!pf["reset_methods"].as_array().unwrap().is_empty());
    assert_eq!(pf["net_interfaces"][0].as_str(), s.value("pf_if"));
    // The whole inventory has the NVMe too, and the table row names the PF's SR-IOV state.
    let all = doc(&s, "list_all_json");
    assert_eq!(device(&all, "0000:02:00.0")["device"], "0010");
    let row = s.value("list_text_pf").unwrap();
    assert!(row.contains("8086:10c9") && row.contains("PF 0/7 VFs"), "{row}");
}

#[test]
fn check_passes_in_level_1() {
    let s = scenario();
    let d = doc(&s, "check_json");
    assert_eq!(d["ok"], true, "{d:#}");
    assert_eq!(rc(&s, "check"), 0);
    let sev = |check: &str| -> Vec<String> {
        d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == check)
            .map(|f| f["severity"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(sev("iommu"), vec!["ok"]);
    assert_eq!(sev("interrupt-remapping"), vec!["ok"]);
    assert_eq!(sev("vfio-modules"), vec!["ok"]);
    assert_eq!(sev("memlock"), vec!["ok"]);
    assert_eq!(sev("group-viability"), vec!["ok", "ok"]);
    s.assert_check("check-passes");
}

#[test]
fn sriov_creates_two_vfs_that_list_shows_as_the_pfs() {
    let s = scenario();
    s.assert_check("sriov-create");
    let d = doc(&s, "sriov_create_json");
    assert_eq!(d["num_vfs"], 2);
    let vfs: Vec<&str> = d["vfs"].as_array().unwrap().iter().map(|v| v["bdf"].as_str().unwrap()).collect();
    assert_eq!(vfs, vec!["0000:01:10.0", "0000:01:10.2"]);
    assert_eq!(s.value("vfs"), Some("0000:01:10.0 0000:01:10.2"));
    let pf = doc(&s, "list_pf_vfs_json");
    assert_eq!(device(&pf, "0000:01:00.0")["sriov"]["vfs"], serde_json::json!(["0000:01:10.0", "0000:01:10.2"]));
    let l = doc(&s, "list_vfs_json");
    for (i, vf) in vfs.iter().enumerate() {
        let v = device(&l, vf);
        assert_eq!(v["device"], "10ca");
        assert_eq!(v["physfn"]["bdf"], "0000:01:00.0");
        assert_eq!(v["physfn"]["vf_index"], i as u64);
        assert!(v["iommu_group"].is_u64());
    }
    assert_ne!(device(&l, vfs[0])["iommu_group"], device(&l, vfs[1])["iommu_group"]);
    assert_eq!(doc(&s, "sriov_remove_json")["num_vfs"], 0);
    assert_eq!(s.value_u64("vfs_after_remove").unwrap(), 0);
}

#[test]
fn vf_sets_mac_and_vlan_and_the_pf_reports_them() {
    let s = scenario();
    s.assert_check("vf-set");
    // The reply of the set command and a separate read both show the settings.
    for key in ["vf_set_json", "vf_show_json"] {
        let d = doc(&s, key);
        let vf0 = d["vfs"].as_array().unwrap().iter().find(|v| v["index"] == 0).unwrap_or_else(|| panic!("{key}: {d}"));
        assert_eq!(vf0["mac"], "02:00:00:00:00:aa", "{key}: {d}");
        assert_eq!(vf0["vlan"], 100, "{key}: {d}");
        assert_eq!(vf0["bdf"], "0000:01:10.0");
    }
    let show = doc(&s, "vf_show_json");
    let vf1 = &show["vfs"][1];
    assert_eq!(vf1["mac"], "02:00:00:00:00:bb");
    assert_eq!(vf1["trust"], true);
    assert_eq!(vf1["spoofchk"], false);
    // igb logs each request it carried out.
    let dmesg = s.value("vf_dmesg").unwrap_or_default().to_lowercase();
    assert!(dmesg.contains("02:00:00:00:00:aa"), "igb did not log the MAC: {dmesg}");
    assert!(dmesg.contains("setting vlan 100, qos 0x0 on vf 0"), "igb did not log the VLAN: {dmesg}");
    assert!(dmesg.contains("vf 1 is trusted"), "igb did not log VF 1's trust: {dmesg}");
}

#[test]
fn an_unsupported_setting_fails_and_undoes_the_others() {
    let s = scenario();
    // igb has no VF link-state control: the request fails, and the MAC set before it in the
    // same command is put back.
    if rc(&s, "vf_linkstate") == 0 {
        let d = doc(&s, "vf_after_linkstate");
        assert_eq!(d["vfs"][0]["link_state"], "disable", "link-state accepted but not reported: {d}");
        return;
    }
    let err = s.value("vf_linkstate_err").unwrap();
    assert!(err.contains("link-state") && err.contains("nothing was changed"), "{err}");
    assert_eq!(doc(&s, "vf_linkstate_json")["error"]["message"].as_str().map(|m| m.contains("VF 0")), Some(true));
    let after = doc(&s, "vf_after_linkstate_json");
    assert_eq!(after["vfs"][0]["mac"], "02:00:00:00:00:aa", "MAC not rolled back: {after}");
}

#[test]
fn bad_input_gives_clear_errors_and_changes_nothing() {
    let s = scenario();
    let cases = [
        ("bad_vf_index", "VF index 2 does not exist"),
        ("bad_mac", "not a unicast MAC address"),
        ("bad_sriov_nvme", "not an SR-IOV physical function"),
        ("bad_sriov_count", "at most 7 VFs"),
        ("bad_bind", "no PCI device 0000:0f:00.0"),
        ("bad_vlan", "4095"),
        ("bad_bind_pf", "is an SR-IOV PF with 2 VFs"),
    ];
    for (name, want) in cases {
        assert_eq!(rc(&s, name), 1, "{name} should fail with status 1");
        let err = s.value(&format!("{name}_err")).unwrap_or_default();
        assert!(err.contains(want), "{name}: expected '{want}' in: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    s.assert_check("bad-input-changed-nothing");
    let l = doc(&s, "list_after_bad_json");
    assert_eq!(device(&l, "0000:01:00.0")["sriov"]["num_vfs"], 2);
    assert_eq!(device(&l, "0000:02:00.0")["driver"], "nvme");
}

#[test]
fn bind_unbind_restore_round_trip_the_original_driver() {
    let s = scenario();
    let before = s.value("vf0_driver_before").unwrap().to_string();
    let b = doc(&s, "bind_vf0_json");
    assert_eq!(b["results"][0]["action"], "bound");
    assert_eq!(b["results"][0]["previous_driver"].as_str().unwrap_or("none"), before);
    assert_eq!(s.value("bind_vf0_driver"), Some("vfio-pci"));
    s.assert_check("bind-vf0-devnode");
    let state = s.value("state_after_bind").unwrap();
    assert!(
        state.contains("0000:01:10.0")
            && state.contains(&format!("driver={}", if before == "none" { "-" } else { &before })),
        "{state}"
    );
    assert_eq!(doc(&s, "bind_vf0_again_json")["results"][0]["action"], "already-bound");
    assert_eq!(doc(&s, "restore_vf0_json")["results"][0]["action"], "restored");
    assert_eq!(s.value("restore_vf0_driver"), Some(before.as_str()));
    assert_eq!(doc(&s, "restore_vf0_again_json")["results"][0]["action"], "nothing-to-do");
    s.assert_check("vf0-round-trip");

    assert_eq!(s.value("nvme_driver_before"), Some("nvme"));
    assert_eq!(s.value("bind_nvme_driver"), Some("vfio-pci"));
    assert_eq!(doc(&s, "unbind_nvme_json")["results"][0]["action"], "restored");
    assert_eq!(s.value("unbind_nvme_driver"), Some("nvme"));
    let r = doc(&s, "restore_all_json");
    assert_eq!(r["results"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["results"][0]["bdf"], "0000:02:00.0");
    assert_eq!(s.value("restore_all_nvme_driver"), Some("nvme"));
    assert_eq!(s.value("state_after_restore"), Some("absent"));
    s.assert_check("nvme-round-trip");
}

/// A device on vfio-pci is reported as such by list and check, with the group node a VMM
/// opens; before binding, check says the NVMe is on no VFIO driver. The kernel shows what the
/// vfio_driver rule relies on: vfio-dev/vfioN under the device, vfio_pci a holder of
/// vfio_pci_core.
#[test]
fn list_and_check_name_the_vfio_driver_and_its_node() {
    let s = scenario();
    let group: u64 = s.value_u64("vf0_group").unwrap_or_else(|e| panic!("{e}"));
    let l = doc(&s, "list_vf0_bound_json");
    let vf0 = device(&l, "0000:01:10.0");
    assert_eq!(vf0["driver"], "vfio-pci");
    assert_eq!(vf0["vfio"], "vfio-pci");
    assert_eq!(vf0["vfio_node"], format!("/dev/vfio/{group}"));
    let c = doc(&s, "check_vf0_bound_json");
    assert_eq!(c["ok"], true, "{c:#}");
    assert_eq!(c["devices"][0]["vfio"], "vfio-pci");
    let f = c["findings"].as_array().unwrap().iter().find(|f| f["check"] == "vfio-driver").unwrap();
    assert_eq!(f["severity"], "ok");
    assert!(f["message"].as_str().unwrap().starts_with("on vfio-pci, opened through /dev/vfio/"), "{f}");
    let before = doc(&s, "check_json");
    let nvme = before["devices"].as_array().unwrap().iter().find(|d| d["bdf"] == "0000:02:00.0").unwrap();
    assert_eq!((nvme["driver"].as_str(), nvme["vfio"].as_str()), (Some("nvme"), None), "{before:#}");
    let vfio_dev = s.value("vf0_vfio_dev").unwrap_or_default();
    assert!(vfio_dev.trim().starts_with("vfio"), "no vfio-dev/vfioN under the bound VF: {vfio_dev}");
    let holders = s.value("vfio_pci_core_holders").unwrap_or_default();
    assert!(holders.split_whitespace().any(|m| m == "vfio_pci"), "vfio_pci_core holders: {holders}");
}

#[test]
fn unprobed_vfs_bind_from_no_driver_and_go_back_to_none() {
    let s = scenario();
    assert_eq!(s.value("noprobe_vf0_driver"), Some("none"));
    assert_eq!(s.value("noprobe_autoprobe"), Some("1"), "sriov_drivers_autoprobe not put back");
    let b = doc(&s, "bind_unprobed_json");
    assert_eq!(b["results"][0]["previous_driver"], Value::Null);
    assert_eq!(s.value("bind_unprobed_driver"), Some("vfio-pci"));
    assert_eq!(s.value("restore_unprobed_driver"), Some("none"));
}

#[test]
fn the_scenario_passed() {
    scenario().assert_passed();
}

#[test]
fn restore_after_a_killed_vmm_gives_its_devices_back() {
    let s = scenario();
    let before = s.value("vf1_driver_before").unwrap();
    assert_eq!(before, "igbvf", "VF1 was not probed by igbvf; log: {}", s.log.display());
    assert_eq!(s.value("killed_vmm_vf1_driver"), Some("vfio-pci"));
    let r = doc(&s, "restore_killed_json");
    assert_eq!(r["results"][0]["bdf"], "0000:01:10.2", "{r}");
    assert_eq!(r["results"][0]["action"], "restored");
    assert_eq!(s.value("restore_killed_vf1_driver"), Some(before));
    assert_eq!(s.value("restore_killed_override"), Some("(null)"));
}

#[test]
fn group_bind_takes_the_whole_group_but_not_its_bridge() {
    let s = scenario();
    s.assert_check("group-bind-devnode");
    let members = s.value("group_members").unwrap();
    assert!(members.contains("0000:08:01.0") && members.contains("0000:08:02.0"), "{members}");
    let b = doc(&s, "group_bind_json");
    let bound: Vec<&str> = b["results"].as_array().unwrap().iter().map(|r| r["bdf"].as_str().unwrap()).collect();
    assert_eq!(bound, vec!["0000:08:01.0", "0000:08:02.0"], "{b}");
    assert!(b["results"].as_array().unwrap().iter().all(|r| r["action"] == "bound"));
    let before: Vec<&str> = s.value("edu_drivers_before").unwrap().split(' ').collect();
    let after: Vec<&str> = s.value("group_bind_drivers").unwrap().split(' ').collect();
    assert_eq!(&after[..2], &["vfio-pci", "vfio-pci"]);
    assert_eq!(after[2], before[2], "the bridge's driver changed");
    assert_eq!(doc(&s, "group_check_json")["ok"], true);
    assert_eq!(doc(&s, "group_restore_json")["results"].as_array().unwrap().len(), 2);
    assert_eq!(s.value("group_restore_drivers"), s.value("edu_drivers_before"));
}

#[test]
fn check_names_missing_vfio_modules_and_fix_loads_them() {
    let s = scenario();
    assert_eq!(rc(&s, "check_nomod"), 3);
    let d = doc(&s, "check_nomod_json");
    let f = d["findings"].as_array().unwrap().iter().find(|f| f["check"] == "vfio-modules").unwrap();
    assert_eq!(f["severity"], "block", "{d}");
    assert!(f["message"].as_str().unwrap().contains("vfio-pci"));
    assert_eq!(rc(&s, "check_fix"), 0);
    assert_eq!(doc(&s, "check_fix_json")["ok"], true);
    assert_eq!(s.value("check_fix_vfio_loaded"), Some("yes"));
}

#[test]
fn a_device_the_host_uses_is_refused() {
    let s = scenario();
    let iface = s.value("pf_if").unwrap();
    assert_eq!(rc(&s, "bind_inuse"), 1);
    let err = doc(&s, "bind_inuse_json");
    let causes = err["error"]["causes"].to_string();
    assert!(causes.contains(&format!("interface {iface} is up")), "{err}");
    assert_eq!(s.value("bind_inuse_driver"), Some("igb"));
    let c = doc(&s, "check_inuse_json");
    let f = c["findings"].as_array().unwrap().iter().find(|f| f["check"] == "in-use");
    assert_eq!(f.map(|f| f["severity"].as_str()), Some(Some("warn")), "{c}");
}
