#![cfg(feature = "testbed")]
//! The two IOMMU backends in the testbed (docs: README "PCI passthrough", IOMMU backends).
//!
//! The VFIO scenarios are split between level 1's two kernels, each scenario on the kernel
//! its header names (`# tb-l1-kernels:`), so that the suite boots the second kernel for a
//! few scenarios rather than for all of them again: Debian's (no iommufd: viaduct must use
//! the legacy container) and the iommufd kernel (`NAME@iommufd`: viaduct must pick iommufd
//! on its own). `vfio-guest` runs on both. In each, every viaduct guest with assigned devices
//! is checked while it runs (`RUN/iommu-backend`, from level 1's `/proc/PID/fd`): iommufd
//! means `/dev/iommu` plus `/dev/vfio/devices/vfioN` and neither `/dev/vfio/vfio` nor a
//! group; legacy the reverse. Scenario vfio-iommufd: fds passed by a root parent to viaduct
//! running as a user, iommu=legacy on the iommufd kernel, and the errors for bad passed fds.

mod common;

/// The VFIO scenarios with guests that run on the iommufd kernel (as `NAME@iommufd`): the
/// basic guest (two groups in one IOAS; MSI-X, INTx, a reboot) and `managed=on` (the cdev
/// appears only once viaduct has bound the device).
const ON_IOMMUFD: &[&str] = &["vfio-guest", "vfio-managed"];

/// The VFIO scenarios with guests that run on Debian's kernel (plain `NAME`).
const ON_DEBIAN: &[&str] =
    &["vfio-guest", "vfio-guest-more", "vfio-guest-msi", "vfio-guest-trio", "virtio-vfio", "vfio-errors"];

fn results(name: &str) -> common::Scenario {
    common::scenario(name).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// The `RUN/iommu-backend` checks of a scenario, with the fds each run held.
fn backend_checks(s: &common::Scenario) -> Vec<(String, String)> {
    s.checks
        .iter()
        .filter_map(|c| c.name.strip_suffix("/iommu-backend"))
        .map(|run| (run.to_string(), s.value(&format!("{run}/vfio_fds")).unwrap_or_default().to_string()))
        .collect()
}

#[track_caller]
fn assert_iommufd_fds(scenario: &str, run: &str, fds: &str) {
    let fds: Vec<&str> = fds.split_whitespace().collect();
    assert!(fds.contains(&"/dev/iommu"), "{scenario} {run}: viaduct did not hold /dev/iommu: {fds:?}");
    assert!(fds.iter().any(|f| f.starts_with("/dev/vfio/devices/vfio")), "{scenario} {run}: no device cdev: {fds:?}");
    assert!(!fds.contains(&"/dev/vfio/vfio"), "{scenario} {run}: viaduct held the legacy container: {fds:?}");
    let group =
        fds.iter().find(|f| f.strip_prefix("/dev/vfio/").is_some_and(|g| g.bytes().all(|b| b.is_ascii_digit())));
    assert!(group.is_none(), "{scenario} {run}: viaduct held a VFIO group: {fds:?}");
}

#[track_caller]
fn assert_legacy_fds(scenario: &str, run: &str, fds: &str) {
    let fds: Vec<&str> = fds.split_whitespace().collect();
    assert!(fds.contains(&"/dev/vfio/vfio"), "{scenario} {run}: viaduct did not hold /dev/vfio/vfio: {fds:?}");
    assert!(!fds.contains(&"/dev/iommu"), "{scenario} {run}: viaduct held /dev/iommu: {fds:?}");
    assert!(!fds.iter().any(|f| f.starts_with("/dev/vfio/devices/")), "{scenario} {run}: a device cdev: {fds:?}");
}

#[test]
fn on_the_iommufd_kernel_the_vfio_scenarios_pass_with_iommufd_chosen_by_default() {
    for name in ON_IOMMUFD {
        let s = results(&format!("{name}@iommufd"));
        s.assert_passed();
        let runs = backend_checks(&s);
        assert!(!runs.is_empty(), "{name}@iommufd: no viaduct guest with assigned devices was checked");
        for (run, fds) in runs {
            s.assert_check(&format!("{run}/iommu-backend"));
            assert_iommufd_fds(&s.name, &run, &fds);
        }
    }
}

#[test]
fn on_the_debian_kernel_the_vfio_scenarios_use_the_legacy_container() {
    for name in ON_DEBIAN {
        let s = results(name);
        s.assert_passed();
        let runs = backend_checks(&s);
        assert!(!runs.is_empty(), "{name}: no viaduct guest with assigned devices was checked");
        for (run, fds) in runs {
            s.assert_check(&format!("{run}/iommu-backend"));
            assert_legacy_fds(name, &run, &fds);
        }
    }
}

#[test]
fn guest_writes_through_iommufd_land_in_level_0() {
    // vfio-guest's first guest writes the conventional line into the NVMe's image of its own
    // level-1 boot.
    let s = results("vfio-guest@iommufd");
    let sig = s.signature("disk.img").expect("signature");
    s.assert_sector("disk.img", common::GUEST_WRITE_LBA, &format!("VIADUCT-GUEST-WROTE {sig}"), "the guest's write");
}

#[test]
fn passed_fds_work_for_a_viaduct_without_privileges() {
    let s = results("vfio-iommufd@iommufd");
    for c in [
        "bind",
        "cdev",
        "passed/boot",
        "passed/nvme-bound",
        "passed/nvme-read-signature",
        "passed/nvme-write",
        "passed/done",
        "passed/boot2-found-token",
        "passed/boot2-nvme-bound",
        "passed/boot2-read-signature",
        "passed/boot2-interrupts",
        "passed/restarted",
        "passed/iommu-backend",
        "passed/unprivileged",
        "passed/holds-passed-fds",
    ] {
        s.assert_check(c);
    }
    let sig = s.signature("disk.img").expect("signature");
    let read = &s.check("passed/nvme-read-signature").expect("read check").detail;
    assert!(read.contains(&sig), "the guest read '{read}', disk.img holds '{sig}'");
    let token = s.value("passed/token").expect("token");
    s.assert_sector("disk.img", 3072, token, "the passed-fd guest's write");
    assert_iommufd_fds(&s.name, "passed", s.value("passed/vfio_fds").unwrap_or_default());
    // The passed fds themselves, at their numbers.
    let table = s.value("passed/fd_table").unwrap_or_default();
    assert!(table.contains("5:/dev/vfio/devices/vfio") && table.contains("6:/dev/iommu"), "{table}");
}

#[test]
fn iommu_legacy_still_works_on_the_iommufd_kernel() {
    let s = results("vfio-iommufd@iommufd");
    for c in ["legacy/boot", "legacy/nvme-read-signature", "legacy/nvme-write", "legacy/done", "legacy/iommu-backend"] {
        s.assert_check(c);
    }
    assert_legacy_fds(&s.name, "legacy", s.value("legacy/vfio_fds").unwrap_or_default());
    let token = s.value("legacy/token").expect("token");
    s.assert_sector("disk.img", 3080, token, "the legacy guest's write");
}

#[test]
fn bad_passed_fds_get_one_line_errors() {
    let s = results("vfio-iommufd@iommufd");
    for (run, want) in [
        ("closed", "fd 9 is not open"),
        ("not-a-cdev", "/dev/null"),
        ("read-only", "not open for reading and writing"),
        ("cdev-as-iommufd", "is not a /dev/iommu"),
        ("other-path", "is the VFIO cdev of 0000:02:00.0, not of 0000:01:00.0"),
        ("legacy-with-fd", "only with iommufd"),
    ] {
        s.assert_check(&format!("errors/{run}"));
        let msg = s.value(&format!("errors/{run}_msg")).unwrap_or_default();
        assert!(msg.starts_with("viaduct: error: ") && msg.contains(want), "{run}: {msg}");
    }
    s.assert_check("errors/nvme-still-on-vfio-pci");
    s.assert_passed();
}

#[test]
fn backend_errors_on_the_debian_kernel() {
    let s = results("vfio-errors");
    for (run, want) in [("mixed-backends", "one VM uses one IOMMU backend"), ("no-iommufd", "CONFIG_IOMMUFD")] {
        s.assert_check(&format!("{run}/one-line-exit-1"));
        s.assert_check(&format!("{run}/message"));
        let msg = s.value(&format!("{run}_msg")).unwrap_or_default();
        assert!(msg.contains(want), "{run}: {msg}");
    }
}
