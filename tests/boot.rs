#![cfg(feature = "testbed")]
//! viaduct boots a Linux guest in the nested testbed (scenario boot-linux): the Debian kernel
//! with a busybox initramfs, 1 and 2 vCPUs. The guest checks what it sees (CPU count, RAM,
//! RTC date) and powers off; viaduct must then exit by itself with status 0. Also: guest RAM
//! on huge pages and shared, the error when no huge pages are free, reboot with
//! `--on-reboot exit` and `restart`, `--serial file=` and `off`.

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
    s.assert_passed();
}

#[test]
fn guest_reboot_exits_with_on_reboot_exit() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    s.assert_check("viaduct-reboot/reboot-exit");
    let rc = s.value_u64("viaduct-reboot/vmm_rc").expect("vmm_rc");
    assert_eq!(rc, 0, "viaduct exited with {rc} after the guest's reboot (--on-reboot exit)");
    // One boot: viaduct ended the VM at the reset instead of starting the guest again.
    assert_eq!(s.value_u64("viaduct-reboot/guest_inits").expect("guest_inits"), 1);
    assert!(s.check("viaduct-reboot/timeout").is_none(), "viaduct hung after the guest's reboot");
}

#[test]
fn guest_reboot_restarts_the_guest_with_on_reboot_restart() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    // The first boot marks CMOS NVRAM and reboots; the restarted guest finds the mark
    // (so it really is a second boot of the same VM) and powers off.
    s.assert_check("viaduct-restart/first-boot");
    s.assert_check("viaduct-restart/second-boot");
    s.assert_check("viaduct-restart/restarted");
    let boots = s.value_u64("viaduct-restart/boots").expect("boots");
    assert_eq!(boots, 2, "guest booted {boots} times with --on-reboot restart; log: {}", s.log.display());
    let rc = s.value_u64("viaduct-restart/vmm_rc").expect("vmm_rc");
    assert_eq!(rc, 0, "viaduct exited with {rc} after the restarted guest powered off");
}

#[test]
fn guest_ram_on_hugepages_and_shared() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    s.assert_check("viaduct-1cpu/hugepages");
    let used = s.value_u64("viaduct-1cpu/hugepages_used_peak").expect("hugepages_used_peak");
    assert!(used >= 8, "only {used} huge pages were used by a hugepages=on guest");
    s.assert_check("viaduct-2cpu/shared-memory");
    s.assert_check("hugepages-none/error");
    let rc = s.value_u64("hugepages-none/vmm_rc").expect("vmm_rc");
    assert_eq!(rc, 1, "hugepages=on with no free huge pages exited with {rc}");
}

#[test]
fn serial_console_to_a_file_or_off() {
    let s = common::scenario("boot-linux").expect("boot-linux results");
    s.assert_check("viaduct-reboot/serial-file");
    // (The guest's only trace with the console off: the token it wrote to its disk.)
    s.assert_check("serial-off/quiet-poweroff");
    let rc = s.value_u64("serial-off/vmm_rc").expect("vmm_rc");
    assert_eq!(rc, 0, "--serial off: viaduct exited with {rc}");
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
