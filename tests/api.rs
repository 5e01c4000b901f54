#![cfg(feature = "testbed")]
//! viaduct's control API in the nested testbed (scenario api): a Linux guest driven over
//! `--api-socket` with curl and `viaductctl vm` while it runs. What is asserted is what the
//! guest saw (its PCI functions, its clock, its power button, its disk reads as counted by
//! the device) and what clients got back, never viaduct's own log.

mod common;

fn results() -> common::Scenario {
    common::scenario("api").expect("api results")
}

#[test]
fn ping_info_and_counters_describe_the_running_guest() {
    let s = results();
    s.assert_checks(&[
        "api-cli/boot",
        "cli/socket-mode",
        "cli/ping",
        "cli/ping-version",
        "cli/viaductctl-ping",
        "cli/info",
        "cli/info-running",
        // Every BDF vm.info names is a function the guest enumerated, with the right ids.
        "cli/info-bdfs-match-guest",
        "cli/info-nvme-bdf",
        "cli/info-disk-bdf",
        // The device counted the guest's 1 MiB O_DIRECT read (256 requests).
        "cli/counters-disk-requests",
        "cli/viaductctl-counters",
        "cli/socket-removed",
    ]);
    let bdfs = s.value("cli/info_bdfs").unwrap_or_default();
    assert!(bdfs.split_whitespace().count() >= 3, "nvme0, disk0 and rng0 in vm.info: {bdfs}");
}

#[test]
fn pause_stops_the_guest_and_its_clock() {
    let s = results();
    s.assert_checks(&[
        "cli/pause",
        "cli/pause-again",
        "cli/info-paused",
        "cli/paused-guest-silent",
        "cli/resume",
        "cli/resume-again",
        "cli/clock-continues",
        "cli/clock-stopped-while-paused",
    ]);
    let wall = s.value_u64("cli/pause_wall_ms").expect("pause_wall_ms");
    let guest = s.value_u64("cli/pause_guest_ms").expect("pause_guest_ms");
    assert!(wall >= 8000, "level 1 waited {wall} ms around an 8 s pause");
    assert!(guest + 5000 <= wall, "guest clock +{guest} ms over {wall} ms of level 1 with an 8 s pause");
}

#[test]
fn bad_requests_are_refused_and_the_guest_keeps_running() {
    let s = results();
    s.assert_checks(&[
        "bad/unknown-path",
        "bad/outside-api",
        "bad/wrong-method",
        "bad/bad-json",
        "bad/wrong-type",
        "bad/unknown-field",
        "bad/bad-bdf",
        "bad/create-while-running",
        "bad/hotplug-not-yet",
        "bad/huge-body",
        "bad/huge-head",
        "bad/malformed-request-line",
        "bad/chunked",
        "bad/half-open-client",
        "bad/too-many-clients",
        "bad/guest-still-running",
        "bad/ping-after",
    ]);
}

#[test]
fn power_button_powers_the_guest_off_and_viaduct_exits_0() {
    let s = results();
    s.assert_check("cli/power-button");
    s.assert_check("api-cli/power-button-device");
    s.assert_check("api-cli/power-button-press");
    s.assert_check("api-cli/done");
    assert_eq!(s.value("api-cli/vmm_rc"), Some("0"), "viaduct's status after the guest powered off");
}

#[test]
fn a_vm_configured_over_the_api_boots() {
    let s = results();
    s.assert_checks(&[
        "only/info-before-create",
        "only/boot-before-create",
        "only/create-bad-memory",
        "only/create-missing-kernel",
        "only/create-unbound-device",
        "only/boot-unbound-device",
        "only/bind-hint",
        "only/info-after-failed-boot",
        "only/create",
        "only/info-created",
        "only/state-created",
        "only/boot",
        "api-only/boot",
        "api-only/api-booted",
        "api-only/done",
    ]);
    assert_eq!(s.value("api-only/vmm_rc"), Some("0"));
    let mem = s.value_u64("api-only/memtotal_kb").expect("memtotal_kb");
    assert!((200_000..=262_144).contains(&mem), "a 256 MiB guest has {mem} kB");
}

#[test]
fn vm_shutdown_keeps_viaduct_and_vmm_shutdown_ends_it() {
    let s = results();
    s.assert_checks(&[
        "shutdown/create",
        "shutdown/boot",
        "shutdown/vm-shutdown",
        "shutdown/vmm-stays",
        "shutdown/info",
        "shutdown/state-shutdown",
        "shutdown/vmm-shutdown",
        "shutdown/exit-0",
    ]);
    s.assert_passed();
}
