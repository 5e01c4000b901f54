#![cfg(feature = "testbed")]
//! viaduct boots a Linux guest in the nested testbed (scenario boot-linux): the Debian kernel
//! with a busybox initramfs, 1 and 2 vCPUs. The guest checks what it sees (CPU count, RAM,
//! RTC date) and powers off; viaduct must then exit by itself with status 0.

mod common;

const RUNS: [(&str, u64); 2] = [("viaduct-1cpu", 1), ("viaduct-2cpu", 2)];
const GUEST_MEM_KB: u64 = 256 * 1024;

#[test]
fn guest_boots_to_init_and_sees_its_cpus() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    for (run, cpus) in RUNS {
        s.assert_check(&format!("{run}/boot"));
        s.assert_check(&format!("{run}/cpu-count"));
        let seen = s.value_u64(&format!("{run}/cpus")).expect("cpus value");
        assert_eq!(seen, cpus, "{run}: guest saw {seen} CPUs; log: {}", s.log.display());
        let online = s.value(&format!("{run}/cpus_online")).unwrap_or("");
        let want_online = if cpus == 1 { "0".to_string() } else { format!("0-{}", cpus - 1) };
        assert_eq!(online, want_online, "{run}: online CPUs; log: {}", s.log.display());
    }
}

#[test]
fn guest_sees_its_memory_size() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    for (run, _) in RUNS {
        s.assert_check(&format!("{run}/memory-size"));
        let total = s.value_u64(&format!("{run}/mem_total_kb")).expect("mem_total_kb");
        // All RAM but the legacy BIOS area (0x9fc00..0x100000) is reported to the kernel.
        assert!(
            (GUEST_MEM_KB - 1024..=GUEST_MEM_KB).contains(&total),
            "{run}: kernel saw {total} kB of RAM, configured {GUEST_MEM_KB} kB; log: {}",
            s.log.display()
        );
    }
}

#[test]
fn guest_rtc_has_the_host_date() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    for (run, _) in RUNS {
        s.assert_check(&format!("{run}/rtc-date"));
        s.assert_check(&format!("{run}/system-date"));
        let rtc = s.value(&format!("{run}/rtc_name")).unwrap_or("");
        assert!(rtc.starts_with("rtc_cmos"), "{run}: RTC driver is {rtc:?}, want rtc_cmos");
    }
}

#[test]
fn guest_poweroff_ends_viaduct_with_status_zero() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    for (run, _) in RUNS {
        s.assert_check(&format!("{run}/done"));
        let rc = s.value_u64(&format!("{run}/vmm_rc")).expect("vmm_rc");
        assert_eq!(rc, 0, "{run}: viaduct exited with {rc} after the guest's poweroff; log: {}", s.log.display());
        // tb_run_l2 stops a VMM that is still running 5 s after the guest finished; a clean
        // poweroff exit must not need that.
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        assert!(
            !log.contains(&format!("l2[{run}] VMM still running")),
            "{run}: viaduct did not exit on guest poweroff; log: {}",
            s.log.display()
        );
    }
    s.assert_check("viaduct-reboot/reboot-exit");
    let rc = s.value_u64("viaduct-reboot/vmm_rc").expect("vmm_rc");
    assert_eq!(rc, 0, "viaduct exited with {rc} after the guest's reboot (--on-reboot exit)");
    s.assert_passed();
}

#[test]
fn guest_finds_the_pci_root_complex() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    for (run, _) in RUNS {
        s.assert_check(&format!("{run}/pci-host-bridge"));
        let devices = s.value(&format!("{run}/pci_devices")).unwrap_or("");
        assert!(devices.split_whitespace().any(|d| d == "0000:00:00.0"), "{run}: PCI devices {devices:?}");
    }
}
