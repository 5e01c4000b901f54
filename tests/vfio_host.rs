#![cfg(feature = "testbed")]
//! The vfio crate's host side on real VFIO in level 1, no guest: builds
//! `vfio/examples/nvme_probe.rs` (static), embeds it into a one-off level-1 script made from
//! `tools/testbed/scenarios/vfio-host-nvme.sh`, runs it with `tools/testbed/run --script`, and
//! asserts on what level 1 saw: pre-flight errors, config space through the virtualization,
//! BAR0 by trap and by mmap, MSI-X vectors enabled lazily, NVMe Identify and a read of LBA 0
//! by DMA into the mapped buffer (the signature the testbed wrote into disk.img), completions
//! signalled through MSI-X eventfds, the same on the NVMe SR-IOV VF, an igb VF opened, a 4 GiB
//! ivshmem BAR read through its mmap, then INTx (VFIO auto-mask, unmask through the resample
//! eventfd) after the guest-side MSI-X disable, two runs in a row and a run after a SIGKILLed one.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_probe(target_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "-p", "vfio", "--example", "nvme_probe", "--target", "x86_64-unknown-linux-gnu"])
        .status()
        .expect("cargo build of nvme_probe");
    assert!(status.success(), "building vfio/examples/nvme_probe.rs failed");
    target_dir.join("x86_64-unknown-linux-gnu/release/examples/nvme_probe")
}

#[test]
fn nvme_through_the_vfio_crate_in_level1() {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
    let probe = build_probe(&target_dir);
    let work = target_dir.join("testbed/vfio-host");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("vfio-host-nvme.sh");
    let payload = sh(&format!("strip -o {0}/probe.stripped {1} && gzip -9c {0}/probe.stripped | base64", work.display(), probe.display()));
    let scenario = std::fs::read_to_string(repo().join("tools/testbed/scenarios/vfio-host-nvme.sh")).unwrap();
    let text = format!(
        "# tb-timeout: 240\nmkdir -p /tmp/vp && base64 -d <<'B64' | gunzip > /tmp/vp/nvme_probe\n{payload}B64\nchmod +x /tmp/vp/nvme_probe\nTB_VFIO_PROBE=/tmp/vp/nvme_probe\n{scenario}"
    );
    std::fs::write(&script, text).unwrap();
    let out = work.join("run");
    let status = Command::new(repo().join("tools/testbed/run"))
        .args(["--no-build", "--devices", "ivshmem", "--script"])
        .arg(&script)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("tools/testbed/run");
    let results = std::fs::read_to_string(out.join("results.json"))
        .unwrap_or_else(|e| panic!("no results from the testbed ({status}): {e}; see {}", out.display()));
    let json: serde_json::Value = serde_json::from_str(&results).unwrap();
    let s = &json["scenarios"]["vfio-host-nvme"];
    let checks: Vec<(String, String, String)> = s["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {}", out.display()))
        .iter()
        .map(|c| {
            let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (f("name"), f("status"), f("detail"))
        })
        .collect();
    let get = |name: &str| {
        checks
            .iter()
            .find(|c| c.0 == name)
            .unwrap_or_else(|| panic!("check {name} missing; log {}", out.join("console.log").display()))
    };
    let sig = std::fs::read_to_string(out.join("disk.sig")).unwrap();
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
        "r2-probe-rc",
        "after-sigkill",
        "nvme-back",
    ] {
        let c = get(name);
        assert_eq!(c.1, "pass", "{name}: {}", c.2);
    }
    assert!(get("r1-config-ids").2.contains("1b36:0010"));
    assert!(get("preflight-not-bound").2.contains("drivers_probe"), "the error says how to bind");
    assert!(get("r1-nvme-read-lba0-dma").2.contains(sig.trim()), "LBA 0 read by DMA is the disk.img signature");
    // SR-IOV VF with a data path: the NVMe VF reads sriov.img's signature by DMA.
    let sriov_sig = std::fs::read_to_string(out.join("sriov.sig")).unwrap();
    for name in ["nvmevf-nvme-identify-dma-msix", "nvmevf-nvme-read-lba0-dma", "nvmevf-probe-rc"] {
        let c = get(name);
        assert_eq!(c.1, "pass", "{name}: {}", c.2);
    }
    assert_eq!(get("nvmevf-nvme-read-intx").1, "skip", "a VF has no INTx: reported as skipped");
    assert!(get("nvmevf-nvme-read-lba0-dma").2.contains(sriov_sig.trim()));
    // igb VF: opened, config virtualized (MSI-X visible), BARs mmapped.
    for name in ["igbvf-info-ids", "igbvf-info-caps", "igbvf-info-bars", "igbvf-probe-rc"] {
        let c = get(name);
        assert_eq!(c.1, "pass", "{name}: {}", c.2);
    }
    assert!(get("igbvf-info-ids").2.contains("8086:10ca"), "{}", get("igbvf-info-ids").2);
    assert!(get("igbvf-info-caps").2.contains("11@"), "MSI-X capability visible");
    // A 4 GiB 64-bit BAR placed above 4 GiB and read through its mmap at three offsets.
    let placed = &get("ivshmem-bar-placed").2;
    assert!(placed.contains("Mem64") && placed.contains("size 0x100000000"), "{placed}");
    for off in ["0x0", "0x80000000", "0xfffff000"] {
        let c = get(&format!("ivshmem-bar-read-{off}"));
        assert!(c.2.starts_with(&format!("VIADUCT-IVSHMEM@{off} run=")), "ivshmem at {off}: {}", c.2);
    }
    // DMA-map timing of guest-sized RAM (4 KiB pages at least; 2 MiB pages when reserved).
    for name in ["bench-dma-map-256m-4k", "bench-dma-map-512m-4k", "bench-dma-rc"] {
        let c = get(name);
        assert_eq!(c.1, "pass", "{name}: {}", c.2);
    }
    let failed: Vec<_> = checks.iter().filter(|c| c.1 == "fail").collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}");
}
