#![cfg(feature = "testbed")]
//! The vfio crate's host side on real VFIO in level 1, no guest (scenario vfio-host-nvme: the
//! run builds `vfio/examples/nvme_probe.rs` and puts it into level 1). Asserts on what level 1
//! saw: pre-flight errors, config space through the virtualization, BAR0 by trap and by mmap,
//! MSI-X vectors enabled lazily, NVMe Identify and a read of LBA 0 by DMA into the mapped
//! buffer (the signature the testbed wrote into disk.img), completions signalled through MSI-X
//! eventfds, then INTx (VFIO auto-mask, unmask through the resample eventfd) after MSI-X is
//! disabled; two runs in a row and a run after a SIGKILLed one; the same on the NVMe SR-IOV
//! VF, an igb VF opened, a 4 GiB ivshmem BAR read through its mmap.

mod common;

/// "run=ID" of this testbed run, from the signature L0 wrote into disk.img.
fn run_id(s: &common::Scenario) -> String {
    let sig = s.signature("disk.img").unwrap();
    sig.rsplit("run=").next().unwrap().to_string()
}

#[test]
fn nvme_through_the_vfio_crate_in_level1() {
    let s = common::scenario("vfio-host-nvme").expect("results");
    for name in [
        "preflight-not-bound",
        "preflight-missing",
        "preflight-twice",
        "r1-config-ids",
        "r1-config-caps",
        "r1-bar0-sizing",
        "r1-decode-maps-slots",
        "r1-bar0-trapped-vs-mmap",
        "r1-msix-routes",
        "r1-nvme-identify-dma-msix",
        "r1-nvme-io-queues",
        "r1-nvme-read-lba0-dma",
        "r1-nvme-read-intx",
        "r1-probe-rc",
        "r2-nvme-read-lba0-dma",
        "r2-nvme-read-intx",
        "r2-probe-rc",
        "after-sigkill",
        "nvme-back",
    ] {
        s.assert_check(name);
    }
    let detail = |name: &str| s.check(name).map(|c| c.detail.clone()).unwrap_or_default();
    assert!(detail("r1-config-ids").contains("1b36:0010"), "{}", detail("r1-config-ids"));
    assert!(detail("preflight-not-bound").contains("drivers_probe"), "the error says how to bind");
    assert!(detail("preflight-missing").contains("no such PCI device"), "{}", detail("preflight-missing"));
    let sig = s.signature("disk.img").unwrap();
    let want = &sig[..40.min(sig.len())];
    for name in ["r1-nvme-read-lba0-dma", "r2-nvme-read-lba0-dma"] {
        assert!(detail(name).contains(want), "{name}: LBA 0 read by DMA is the disk.img signature: {}", detail(name));
    }
}

#[test]
fn nvme_sriov_vf_igb_vf_and_a_4_gib_bar() {
    let s = common::scenario("vfio-host-nvme").expect("results");
    // SR-IOV VF with a data path: the NVMe VF reads sriov.img's signature by DMA.
    for name in ["nvmevf-nvme-identify-dma-msix", "nvmevf-nvme-read-lba0-dma", "nvmevf-probe-rc"] {
        s.assert_check(name);
    }
    let detail = |name: &str| s.check(name).map(|c| c.detail.clone()).unwrap_or_default();
    let sriov_sig = s.signature("sriov.img").unwrap();
    assert!(detail("nvmevf-nvme-read-lba0-dma").contains(&sriov_sig[..40.min(sriov_sig.len())]));
    // A VF has no INTx: VFIO reports none, and no INTx read is tried on it.
    s.assert_check("nvmevf-nvme-no-intx");
    assert!(s.check("nvmevf-nvme-read-intx").is_none());
    // igb VF: opened, config virtualized (MSI-X visible), BARs mmapped.
    for name in ["igbvf-info-ids", "igbvf-info-caps", "igbvf-info-bars", "igbvf-probe-rc"] {
        s.assert_check(name);
    }
    assert!(detail("igbvf-info-ids").contains("8086:10ca"), "{}", detail("igbvf-info-ids"));
    assert!(detail("igbvf-info-caps").contains("11@"), "MSI-X capability visible");
    // A 4 GiB 64-bit BAR read through its mmap at 0, 1 GiB, 2 GiB and 4 GiB - 4 KiB: exactly
    // what level 0 wrote there in this run (and the bytes are in the L0 file too).
    let placed = detail("ivshmem-bar-placed");
    assert!(placed.contains("Mem64") && placed.contains("size 0x100000000"), "{placed}");
    let id = run_id(&s);
    for off in [0u64, 0x4000_0000, 0x8000_0000, 0xffff_f000] {
        let want = format!("VIADUCT-IVSHMEM@{off:#x} run={id}");
        let name = format!("ivshmem-bar-read-{off:#x}");
        s.assert_check(&name);
        assert_eq!(detail(&name).trim(), want, "ivshmem through the mmap at {off:#x}");
        let l0 = s.read_file_at("ivshmem.img", off, want.len()).unwrap();
        assert_eq!(String::from_utf8_lossy(&l0), want, "the L0 backing file at {off:#x}");
    }
    s.assert_check("ivshmem-probe-rc");
    s.assert_passed();
}

#[test]
fn dma_map_timing_values() {
    let s = common::scenario("vfio-host-nvme").expect("results");
    for name in ["bench-dma-map-256m-4k", "bench-dma-map-512m-4k", "bench-dma-rc"] {
        s.assert_check(name);
        let d = s.check(name).map(|c| c.detail.clone()).unwrap_or_default();
        if name != "bench-dma-rc" {
            assert!(d.contains("map_ms "), "{name}: {d}");
        }
    }
}
