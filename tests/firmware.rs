#![cfg(feature = "testbed")]
//! Booting through firmware in the nested testbed (scenario firmware-seabios): Debian's
//! SeaBIOS on viaduct's q35 platform boots the SYSLINUX/MBR test disk from a virtio-blk disk
//! and from an assigned NVMe controller, and a kernel given with --kernel. What the guest saw
//! is checked: the bootloader's command line (so the disk really booted), the SMBIOS tables
//! viaduct passed through fw_cfg, the q35 chipset, the ACPI tables the firmware linked (with
//! MCFG where the firmware put ECAM), no BAR the guest had to move, and a clean power-off
//! through the ICH9 PM block (status 0).

mod common;

fn results() -> common::Scenario {
    common::scenario("firmware-seabios").expect("firmware-seabios results")
}

/// What every firmware-booted guest here must show.
fn assert_platform(s: &common::Scenario, run: &str) {
    s.assert_check(&format!("{run}/boot"));
    s.assert_check(&format!("{run}/done"));
    let v = |k: &str| s.value(&format!("{run}/{k}")).unwrap_or("").to_string();
    assert_eq!(v("vmm_rc"), "0", "{run}: viaduct did not end with 0 on the guest's power-off; log {}", s.log.display());
    assert_eq!(v("firmware"), "bios", "{run}");
    // SMBIOS from fw_cfg, type 0 from SeaBIOS itself.
    assert_eq!(v("dmi_sys_vendor"), "viaduct", "{run}: SMBIOS type 1");
    assert_eq!(v("dmi_bios_vendor"), "SeaBIOS", "{run}: SMBIOS type 0");
    assert_eq!(v("host_bridge"), "0x8086:0x29c0", "{run}: the q35 MCH at 00:00.0");
}

#[test]
fn seabios_boots_the_mbr_disk_from_virtio_blk() {
    let s = results();
    s.assert_check("mbr-disk");
    let run = "seabios-virtio";
    assert_platform(&s, run);
    s.assert_check(&format!("{run}/booted-from-disk"));
    let v = |k: &str| s.value(&format!("{run}/{k}")).unwrap_or("").to_string();
    assert!(v("cmdline").contains("fwdisk=mbr"), "{run}: {}", v("cmdline"));
    assert_eq!(v("dmi_product_name"), "viaduct VM");
    assert_eq!(v("lpc_bridge"), "0x8086:0x2918");
    for table in ["APIC", "DSDT", "FACP", "MCFG"] {
        assert!(v("acpi_tables").split_whitespace().any(|t| t == table), "{run}: no {table} in {}", v("acpi_tables"));
    }
    // MCFG says where SeaBIOS put ECAM (PCIEXBAR = 0xb0000000).
    assert!(v("mmconfig").contains("0xb0000000"), "{run}: {}", v("mmconfig"));
    // The _CRS windows cover every BAR the firmware assigned: Linux moved none.
    assert_eq!(v("bar_conflicts"), "0", "{run}: {}", s.log.display());
    // SMBIOS structures present (types 1, 3, 4, 16, 17, 19, 32 from fw_cfg; 0 from SeaBIOS).
    let types: Vec<&str> = s.value(&format!("{run}/dmi_tables")).unwrap_or("").split_whitespace().collect();
    for t in ["0", "1", "3", "4", "16", "17", "19", "32", "127"] {
        assert!(types.contains(&t), "{run}: SMBIOS type {t} missing from {types:?}");
    }
}

#[test]
fn seabios_boots_the_mbr_disk_from_an_assigned_nvme() {
    let s = results();
    s.assert_check("vfio-bind");
    let run = "seabios-nvme";
    assert_platform(&s, run);
    s.assert_check(&format!("{run}/booted-from-disk"));
    let blocks = s.value(&format!("{run}/block_devices")).unwrap_or("");
    assert!(blocks.contains("nvme0n1"), "{run}: the guest has no NVMe disk: {blocks}");
    // The guest never wrote to the disk it booted from.
    assert_eq!(s.value("mbr_md5_before"), s.value("mbr_md5_after"));
}

#[test]
fn seabios_boots_a_kernel_given_on_the_command_line() {
    let s = results();
    let run = "seabios-kernel";
    assert_platform(&s, run);
    s.assert_check(&format!("{run}/kernel-cmdline"));
}
