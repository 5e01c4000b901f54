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
    s.assert_checks(&[
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
    ]);
    assert!(s.detail("r1-config-ids").contains("1b36:0010"), "{}", s.detail("r1-config-ids"));
    assert!(s.detail("preflight-not-bound").contains("drivers_probe"), "the error says how to bind");
    assert!(s.detail("preflight-missing").contains("no such PCI device"), "{}", s.detail("preflight-missing"));
    let sig = s.signature("disk.img").unwrap();
    let want = &sig[..40.min(sig.len())];
    for (round, read) in [(1, s.detail("r1-nvme-read-lba0-dma")), (2, s.detail("r2-nvme-read-lba0-dma"))] {
        assert!(read.contains(want), "round {round}: LBA 0 read by DMA is the disk.img signature: {read}");
    }
}

#[test]
fn nvme_sriov_vf_igb_vf_and_a_4_gib_bar() {
    let s = common::scenario("vfio-host-nvme").expect("results");
    // SR-IOV VF with a data path: the NVMe VF reads sriov.img's signature by DMA.
    s.assert_checks(&["nvmevf-nvme-identify-dma-msix", "nvmevf-nvme-read-lba0-dma", "nvmevf-probe-rc"]);
    let sriov_sig = s.signature("sriov.img").unwrap();
    assert!(s.detail("nvmevf-nvme-read-lba0-dma").contains(&sriov_sig[..40.min(sriov_sig.len())]));
    // A VF has no INTx: VFIO reports none, and no INTx read is tried on it.
    s.assert_check("nvmevf-nvme-no-intx");
    assert!(s.check("nvmevf-nvme-read-intx").is_none());
    // igb VF: opened, config virtualized (MSI-X visible), BARs mmapped.
    // (igbvf-info-caps passes only with an MSI-X capability in the virtualized config space.)
    s.assert_checks(&["igbvf-info-ids", "igbvf-info-caps", "igbvf-info-bars", "igbvf-probe-rc"]);
    assert!(s.detail("igbvf-info-ids").contains("8086:10ca"), "{}", s.detail("igbvf-info-ids"));
    // A 4 GiB 64-bit BAR read through its mmap at 0, 1 GiB, 2 GiB and 4 GiB - 4 KiB: exactly
    // what level 0 wrote there in this run (and the bytes are in the L0 file too).
    let placed = s.value("ivshmem-bar-placed").unwrap_or_default();
    assert!(placed.contains("Mem64") && placed.contains("size 0x100000000"), "{placed}");
    let id = run_id(&s);
    for off in [0u64, 0x4000_0000, 0x8000_0000, 0xffff_f000] {
        let want = format!("VIADUCT-IVSHMEM@{off:#x} run={id}");
        s.assert_check(&format!("ivshmem-bar-read-{off:#x}"));
        let read = s.detail(&format!("ivshmem-bar-read-{off:#x}"));
        assert_eq!(read.trim(), want, "ivshmem through the mmap at {off:#x}");
        let l0 = s.read_file_at("ivshmem.img", off, want.len()).unwrap();
        assert_eq!(String::from_utf8_lossy(&l0), want, "the L0 backing file at {off:#x}");
    }
    s.assert_check("ivshmem-probe-rc");
    s.assert_passed();
}

#[test]
fn dma_map_timing_values() {
    let s = common::scenario("vfio-host-nvme").expect("results");
    s.assert_checks(&["bench-dma-map-256m-4k", "bench-dma-map-512m-4k", "bench-dma-rc"]);
    for (mib, d) in [(256, s.detail("bench-dma-map-256m-4k")), (512, s.detail("bench-dma-map-512m-4k"))] {
        assert!(d.contains("map_ms "), "{mib} MiB: {d}");
    }
}
