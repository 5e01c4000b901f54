#![cfg(feature = "testbed")]
//! viaduct without root in the nested testbed (scenario unprivileged). Run as a user that
//! root prepared (`viaductctl bind --user`, /dev/kvm's group, a memlock limit): the guest
//! reads and writes both an assigned NVMe and a virtio disk, and the VMM has that user's uid,
//! no capabilities and a seccomp filter on every thread. Started as root with `--user` and a
//! tap passed as `--net fd=3`: the same state after its set-up, and the guest pings level 1
//! through the passed tap. The NVMe writes are read back from level 0's image.

mod common;

const USER_RUN: &str = "unpriv-user";
const DROP_RUN: &str = "unpriv-drop";

fn results() -> common::Scenario {
    common::scenario("unprivileged").expect("unprivileged results")
}

fn tokens(s: &common::Scenario) -> (String, String) {
    let t = s.value("unprivileged/tokens").expect("tokens");
    let (a, b) = t.split_once('|').expect("two tokens");
    (a.to_string(), b.to_string())
}

#[test]
fn root_hands_the_device_over_and_takes_it_back() {
    let s = results();
    s.assert_check("bind-user");
    s.assert_check("bind-user-steps");
    s.assert_check("restore");
}

#[test]
fn a_user_runs_the_guest_with_nvme_and_virtio_disk() {
    let s = results();
    for c in [
        "boot",
        "nvme-bound",
        "nvme-read-signature",
        "nvme-write",
        "disk-read-signature",
        "disk-write",
        "disk-image-written",
    ] {
        s.assert_check(&format!("{USER_RUN}/{c}"));
    }
    let (tok, _) = tokens(&s);
    assert_eq!(
        s.sector_line("disk.img", 3000).unwrap(),
        tok,
        "LBA 3000 of disk.img: the NVMe write of the user's guest"
    );
}

#[test]
fn the_users_vmm_has_no_privileges_and_every_thread_filtered() {
    let s = results();
    s.assert_check(&format!("{USER_RUN}/vmm-unprivileged"));
    s.assert_check(&format!("{USER_RUN}/vmm-seccomp"));
    assert_eq!(s.value(&format!("{USER_RUN}/vmm_uid")), Some("1000 1000 1000"));
    assert_eq!(s.value(&format!("{USER_RUN}/vmm_capeff")), Some("0000000000000000"));
    let threads = s.value_u64(&format!("{USER_RUN}/vmm_threads")).unwrap();
    assert!(threads >= 2, "{threads} threads");
    assert_eq!(s.value_u64(&format!("{USER_RUN}/vmm_threads_filtered")).unwrap(), threads);
    // Seen after the guest used its disk: the disk's I/O thread is among the filtered ones.
    let names = s.value(&format!("{USER_RUN}/vmm_thread_names")).unwrap_or_default();
    assert!(names.split_whitespace().any(|n| n == "virtio-disk0"), "threads: {names}");
}

#[test]
fn started_as_root_it_drops_to_the_user_and_uses_the_passed_tap() {
    let s = results();
    for c in
        ["bind", "boot", "nvme-read-signature", "nvme-write", "ping-l1", "vmm-unprivileged", "vmm-seccomp", "tap-gone"]
    {
        s.assert_check(&format!("{DROP_RUN}/{c}"));
    }
    assert_eq!(s.value(&format!("{DROP_RUN}/vmm_uid")), Some("1000 1000 1000"));
    assert_eq!(s.value(&format!("{DROP_RUN}/vmm_capprm")), Some("0000000000000000"));
    // Threads started before the drop (vCPU) and after it (the tap's I/O thread, when the
    // guest driver starts the device) are all filtered.
    let threads = s.value_u64(&format!("{DROP_RUN}/vmm_threads")).unwrap();
    assert_eq!(s.value_u64(&format!("{DROP_RUN}/vmm_threads_filtered")).unwrap(), threads);
    let names = s.value(&format!("{DROP_RUN}/vmm_thread_names")).unwrap_or_default();
    assert!(names.split_whitespace().any(|n| n == "virtio-net0"), "threads: {names}");
    let (_, tok) = tokens(&s);
    assert_eq!(s.sector_line("disk.img", 3008).unwrap(), tok, "LBA 3008 of disk.img: the NVMe write after the drop");
}

#[test]
fn every_check_passed() {
    results().assert_passed();
}
