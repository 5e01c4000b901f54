#![cfg(feature = "testbed")]
//! The testbed itself (scenario tools/testbed/scenarios/testbed-selftest.sh): level 1 has a
//! working /dev/kvm, IOMMU groups, the igb SR-IOV PF, VFs, and devices bind to vfio-pci.

mod common;

#[test]
fn level1_has_kvm_and_iommu_groups() {
    let s = common::scenario("testbed-selftest").expect("testbed-selftest results");
    s.assert_check("kvm-dev");
    s.assert_check("kvm-amd");
    s.assert_check("iommu-groups");
    s.assert_check("group-per-device");
    assert!(s.value_u64("iommu_groups").expect("iommu_groups") >= 3, "log: {}", s.log.display());
    let groups: Vec<&str> =
        ["group_igb", "group_nvme", "group_nvme_sriov"].iter().map(|k| s.value(k).unwrap_or("")).collect();
    assert!(groups.iter().all(|g| !g.is_empty()), "groups {groups:?}; log: {}", s.log.display());
    assert!(
        groups[0] != groups[1] && groups[1] != groups[2] && groups[0] != groups[2],
        "groups {groups:?} not distinct"
    );
}

#[test]
fn igb_pf_makes_vfs_that_bind_to_vfio() {
    let s = common::scenario("testbed-selftest").expect("testbed-selftest results");
    s.assert_check("igb-pf");
    assert_eq!(s.value("igb_pf_id"), Some("8086:10c9"));
    s.assert_check("nvme");
    assert_eq!(s.value("nvme_id"), Some("1b36:0010"));
    s.assert_check("igb-totalvfs");
    assert_eq!(s.value_u64("igb_sriov_totalvfs").expect("totalvfs"), 7);
    s.assert_check("vfs-created");
    assert_eq!(s.value("igb_vfs"), Some("0000:01:10.0 0000:01:10.2"));
    s.assert_check("vf-own-group");
    s.assert_check("vf-vfio-bind");
    s.assert_check("nvme-vfio-bind");
    s.assert_passed();
}
