#![cfg(feature = "testbed")]
//! One viaduct process through many guest boots (scenario lifecycle-restart): with
//! `--on-reboot restart`, a virtio disk, virtio-net on a persistent tap, virtio-rng and the
//! NVMe passed through, every boot uses every device, and what viaduct holds (threads, open
//! fds) is the same at the same point of every boot: a reset tears the old VM down
//! completely. The last boot powers off and viaduct exits 0.

mod common;

const RUN: &str = "lifecycle";

fn results() -> common::Scenario {
    common::scenario("lifecycle-restart").expect("lifecycle-restart results")
}

fn boots(s: &common::Scenario) -> u64 {
    let boots = s.value_u64(&format!("{RUN}/boots")).expect("boots");
    assert!(boots >= 6, "at least five guest reboots, {boots} boots planned");
    boots
}

#[test]
fn every_boot_uses_every_device() {
    let s = results();
    s.assert_check(&format!("{RUN}/tap-persistent"));
    s.assert_check(&format!("{RUN}/boot"));
    for n in 1..=boots(&s) {
        for c in ["counter", "disk-read", "disk-write", "nvme-read", "nvme-write", "hwrng", "ping", "counted"] {
            s.assert_check(&format!("{RUN}/boot{n}-{c}"));
        }
        s.assert_check(&format!("{RUN}/l1-sees-boot{n}-write"));
    }
    s.assert_check(&format!("{RUN}/last-boot"));
    s.assert_check(&format!("{RUN}/done"));
}

#[test]
fn nvme_writes_of_every_boot_land_in_the_image() {
    let s = results();
    let token = s.value(&format!("{RUN}/token")).expect("token").to_string();
    let lba = s.value_u64(&format!("{RUN}/nvme_lba")).expect("nvme_lba");
    for n in 1..=boots(&s) {
        s.assert_sector("disk.img", lba + n, &format!("VIADUCT-LIFECYCLE-NVME {n} {token}"), "this boot's NVMe write");
    }
}

#[test]
fn threads_and_fds_are_the_same_in_every_boot() {
    let s = results();
    let n = boots(&s);
    for what in ["threads", "fds"] {
        let counts: Vec<u64> = (1..=n)
            .map(|b| {
                s.value_u64(&format!("{RUN}/{what}_boot{b}"))
                    .unwrap_or_else(|e| panic!("{e}: boot {b} was not counted (did viaduct survive the reboot?)"))
            })
            .collect();
        let detail = |b: u64| {
            let key = if what == "threads" { "thread_names" } else { "fd_kinds" };
            s.value(&format!("{RUN}/{key}_boot{b}")).unwrap_or("?").to_string()
        };
        assert!(counts[0] > 0, "{what}: nothing counted in boot 1");
        for (i, c) in counts.iter().enumerate() {
            assert_eq!(
                *c,
                counts[0],
                "viaduct's {what} in boot {} differ from boot 1: {counts:?}\n  boot 1: {}\n  boot {}: {}\n  log: {}",
                i + 1,
                detail(1),
                i + 1,
                detail(i as u64 + 1),
                s.log.display()
            );
        }
    }
}

#[test]
fn viaduct_restarts_each_time_and_exits_0() {
    let s = results();
    let n = boots(&s);
    assert_eq!(
        s.value_u64(&format!("{RUN}/vmm_rc")).expect("vmm_rc"),
        0,
        "viaduct's exit status; log: {}",
        s.log.display()
    );
    let pids: Vec<u64> = (1..=n).map(|b| s.value_u64(&format!("{RUN}/pid_boot{b}")).expect("pid")).collect();
    assert!(pids.iter().all(|p| *p == pids[0]), "one viaduct process for every boot: {pids:?}");
    s.assert_check(&format!("{RUN}/nvme-restored"));
    s.assert_passed();
}
