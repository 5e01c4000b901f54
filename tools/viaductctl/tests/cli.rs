//! viaductctl against fake sysfs trees (and, for `check`, against this machine): output
//! shapes, exit statuses, and that refused requests change nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hostadmin::fake::{temp_root, testbed_like, FakeDevice, FakeSysfs};
use pci::Bdf;

fn viaductctl(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_viaductctl"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("running viaductctl")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file's content and every link's target under a tree, to prove nothing changed.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let v = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "dir".into()
            } else {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            };
            m.insert(p, v);
        }
    }
    m
}

/// Paths that differ between two snapshots (added, removed or changed), except `ignore`.
fn changed(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>, ignore: &[&str]) -> Vec<PathBuf> {
    let keys: std::collections::BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k) && !ignore.iter().any(|i| k.ends_with(i)))
        .cloned()
        .collect()
}

fn testbed(tag: &str) -> FakeSysfs {
    let f = testbed_like(temp_root(tag).unwrap()).unwrap();
    std::fs::write(f.path("sys/class/net/eth0/ifindex"), "2\n").unwrap();
    f
}

#[test]
fn list_json_shows_the_pf_its_group_and_sriov() {
    let f = testbed("cli-list");
    let out = viaductctl(f.root(), &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = json(&out);
    let devs = doc["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 3);
    let pf = devs.iter().find(|d| d["bdf"] == "0000:01:00.0").unwrap();
    assert_eq!(pf["vendor"], "8086");
    assert_eq!(pf["device"], "10c9");
    assert_eq!(pf["class_key"], "net");
    assert_eq!(pf["driver"], "igb");
    assert_eq!(pf["iommu_group"], 7);
    assert_eq!(pf["iommu_group_members"], serde_json::json!(["0000:01:00.0"]));
    assert_eq!(pf["sriov"]["total_vfs"], 7);
    assert_eq!(pf["sriov"]["num_vfs"], 0);
    assert_eq!(pf["net_interfaces"], serde_json::json!(["eth0"]));
    assert_eq!(pf["bars"][0]["size"], 0x20000);
    assert_eq!(pf["assignable"], true);
    std::fs::remove_dir_all(f.root()).unwrap();
}

#[test]
fn list_filters_and_table() {
    let f = testbed("cli-filter");
    let out = viaductctl(f.root(), &["list", "--class", "net", "--json"]);
    let doc = json(&out);
    assert_eq!(doc["devices"].as_array().unwrap().len(), 1);
    let out = viaductctl(f.root(), &["list", "--assignable", "--json"]);
    let doc = json(&out);
    let bdfs: Vec<&str> = doc["devices"].as_array().unwrap().iter().map(|d| d["bdf"].as_str().unwrap()).collect();
    assert_eq!(bdfs, vec!["0000:01:00.0", "0000:02:00.0"]);
    let out = viaductctl(f.root(), &["list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("0000:01:00.0")).unwrap();
    assert!(line.contains("8086:10c9") && line.contains("PF 0/7 VFs") && line.contains("eth0"), "{line}");
    // Columns line up: every row has the header's DRIVER column at the same offset.
    let col = text.lines().next().unwrap().find("DRIVER").unwrap();
    assert!(text.lines().skip(1).all(|l| l[col..].starts_with(|c: char| c != ' ')), "{text}");
    let out = viaductctl(f.root(), &["list", "--class", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(f.root()).unwrap();
}

#[test]
fn check_passes_on_the_testbed_shape_and_names_the_missing_iommu() {
    let f = testbed("cli-check");
    let out = viaductctl(f.root(), &["check", "0000:01:00.0", "--memory", "1G", "--json"]);
    let doc = json(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["ok"], true);
    let checks: Vec<&str> = doc["findings"].as_array().unwrap().iter().map(|x| x["check"].as_str().unwrap()).collect();
    for c in
        ["iommu", "interrupt-remapping", "vfio-modules", "memlock", "device", "iommu-group", "group-viability", "reset"]
    {
        assert!(checks.contains(&c), "{c} missing: {checks:?}");
    }
    let bare = FakeSysfs::new(temp_root("cli-check-bare").unwrap()).unwrap();
    let out = viaductctl(bare.root(), &["check", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["findings"][0]["check"], "iommu");
    assert_eq!(doc["findings"][0]["severity"], "block");
    std::fs::remove_dir_all(f.root()).unwrap();
    std::fs::remove_dir_all(bare.root()).unwrap();
}

/// On the real host: a machine without IOMMU groups must get the iommu blocker and exit 3;
/// one with groups must not be blocked by the iommu check.
#[test]
fn check_on_this_machine() {
    let out = viaductctl(Path::new("/"), &["check", "--json"]);
    let doc = json(&out);
    let iommu = doc["findings"].as_array().unwrap().iter().find(|x| x["check"] == "iommu").unwrap().clone();
    let has_groups = std::fs::read_dir("/sys/kernel/iommu_groups").map(|mut d| d.next().is_some()).unwrap_or(false);
    if has_groups {
        assert_eq!(iommu["severity"], "ok", "{doc:#}");
    } else {
        assert_eq!(iommu["severity"], "block", "{doc:#}");
        assert!(iommu["message"].as_str().unwrap().contains("IOMMU"));
        assert_eq!(out.status.code(), Some(3));
        let text = viaductctl(Path::new("/"), &["check"]);
        let t = String::from_utf8(text.stdout).unwrap();
        assert!(t.lines().any(|l| l.starts_with("BLOCK") && l.contains("iommu")), "{t}");
        assert!(t.contains("result: BLOCKED"));
    }
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let f = testbed("cli-bad");
    let before = snapshot(f.root());
    let cases: &[(&[&str], &str)] = &[
        (&["bind", "0000:09:00.0"], "no PCI device 0000:09:00.0"),
        (&["bind", "zz:00.0"], "no network interface 'zz:00.0'"),
        (&["bind", "0000:00:01.0"], "is a PCI bridge"),
        (&["unbind", "0000:09:00.0"], "no PCI device 0000:09:00.0"),
        (&["sriov", "0000:02:00.0", "--num-vfs", "2"], "is not an SR-IOV physical function"),
        (&["sriov", "0000:01:00.0", "--num-vfs", "8"], "at most 7 VFs"),
        (&["sriov", "0000:07:00.0", "--num-vfs", "1"], "no PCI device 0000:07:00.0"),
        (&["vf", "0000:01:00.0", "0", "--mac", "01:02:03:04:05:06"], "not a unicast MAC"),
        (&["vf", "0000:01:00.0", "0", "--mac", "02:02:03:04:05"], "not a unicast MAC"),
        (&["vf", "eth0", "0", "--vlan", "100"], "has 0 VFs, so VF index 0 does not exist"),
        (&["vf", "0000:02:00.0", "0", "--trust", "on"], "is not an SR-IOV physical function"),
        (&["vf", "eth9", "0", "--trust", "on"], "no PCI device or network interface 'eth9'"),
        (&["vf", "eth0", "0", "--vlan", "4096"], "out of range"),
    ];
    for (args, want) in cases {
        let out = viaductctl(f.root(), args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // With --json, a failure still prints exactly one JSON document.
    let out = viaductctl(f.root(), &["bind", "0000:09:00.0", "--json"]);
    assert!(json(&out)["error"]["message"].as_str().unwrap().contains("0000:09:00.0"));
    assert_eq!(before, snapshot(f.root()), "a refused request changed the tree");
    std::fs::remove_dir_all(f.root()).unwrap();
}

#[test]
fn restore_with_nothing_recorded_is_a_no_op() {
    let f = testbed("cli-restore");
    let out = viaductctl(f.root(), &["restore", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["results"], serde_json::json!([]));
    std::fs::remove_dir_all(f.root()).unwrap();
}

/// A VF on a vfio-pci variant driver: list and check (JSON and text) name the kind, the
/// check passes, and bind leaves it where it is without recording anything.
#[test]
fn a_variant_driver_is_shown_as_such_and_accepted() {
    let f = testbed("cli-variant");
    f.add_vfio_driver("mlx5_vfio_pci", "mlx5_vfio_pci").unwrap();
    let vf = Bdf::new(0, 5, 0, 1).unwrap();
    let mut d = FakeDevice::new(vf, 0x15b3, 0x101e, 0x020000);
    d.iommu_group = Some(30);
    d.native_driver = Some("mlx5_vfio_pci".into());
    f.add_device(&d).unwrap();
    let out = viaductctl(f.root(), &["list", "--json"]);
    let doc = json(&out);
    let dev = |bdf: &str| doc["devices"].as_array().unwrap().iter().find(|d| d["bdf"] == bdf).unwrap().clone();
    assert_eq!(dev("0000:05:00.1")["driver"], "mlx5_vfio_pci");
    assert_eq!(dev("0000:05:00.1")["vfio"], "variant (mlx5_vfio_pci)");
    assert_eq!(dev("0000:05:00.1")["vfio_node"], "/dev/vfio/30");
    assert_eq!(dev("0000:02:00.0")["vfio"], serde_json::Value::Null);
    let text = String::from_utf8(viaductctl(f.root(), &["list"]).stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("0000:05:00.1")).unwrap();
    assert!(line.contains("variant (mlx5_vfio_pci)"), "{text}");

    let out = viaductctl(f.root(), &["check", "0000:05:00.1", "0000:02:00.0", "--json"]);
    let doc = json(&out);
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["devices"][0]["vfio"], "variant (mlx5_vfio_pci)");
    assert_eq!(doc["devices"][1]["vfio"], serde_json::Value::Null);
    assert_eq!(doc["devices"][1]["driver"], "nvme");
    let text = String::from_utf8(viaductctl(f.root(), &["check", "0000:05:00.1"]).stdout).unwrap();
    assert!(text.lines().any(|l| l.contains("vfio-driver") && l.contains("on variant (mlx5_vfio_pci)")), "{text}");

    let before = snapshot(f.root());
    let out = viaductctl(f.root(), &["bind", "0000:05:00.1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &json(&out)["results"][0];
    assert_eq!(r["action"], "already-bound");
    assert_eq!(r["driver"], "mlx5_vfio_pci");
    let diff = changed(&before, &snapshot(f.root()), &[]);
    assert!(diff.is_empty(), "bind changed a device that was ready: {diff:?}");
    std::fs::remove_dir_all(f.root()).unwrap();
}

/// restore and the state file's rules as a user meets them: a device of a running viaduct is
/// skipped (all) or refused (named) unless --force, a tampered record is skipped with a
/// warning naming it, a symlinked state file is refused.
#[test]
fn restore_respects_a_running_vmm_and_refuses_a_tampered_state_file() {
    let f = testbed("cli-restore-owner");
    std::fs::create_dir_all(f.path("run/viaduct")).unwrap();
    let state = f.path("run/viaduct/bindings");
    std::fs::write(
        &state,
        "0000:02:00.0 driver=nvme override=- owner=viaduct[4242]\n0000:01:00.0 driver=igb override=- owner=viaduct[12ab]\n",
    )
    .unwrap();
    f.add_process(4242, "viaduct", Some("/usr/bin/viaduct"), 'S').unwrap();
    let before = snapshot(f.root());

    let out = viaductctl(f.root(), &["restore", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&out)["results"].clone();
    assert_eq!(r.as_array().unwrap().len(), 1, "the tampered record is not acted upon: {r}");
    assert_eq!(r[0]["bdf"], "0000:02:00.0");
    assert_eq!(r[0]["action"], "owner-running");
    assert!(r[0]["reason"].as_str().unwrap().contains("viaduct[4242]"), "{r}");
    let err = stderr(&out);
    assert!(err.contains("viaduct[4242]") && err.contains("still running"), "{err}");
    assert!(err.contains("ignoring the record") && err.contains("viaduct[12ab]"), "{err}");

    let out = viaductctl(f.root(), &["restore", "0000:02:00.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("still in use by a running viaduct") && stderr(&out).contains("--force"));
    let diff = changed(&before, &snapshot(f.root()), &["run/viaduct/bindings.lock"]);
    assert!(diff.is_empty(), "a skipped restore changed {diff:?}");

    // Forced, the device is taken (the fake tree has no kernel to probe: the attempt fails,
    // which shows it was not skipped).
    let out = viaductctl(f.root(), &["restore", "0000:02:00.0", "--force"]);
    let err = stderr(&out);
    assert!(err.contains("restoring although viaduct[4242] is still running (forced)"), "{err}");
    assert!(!err.contains("still in use"), "{err}");

    // A symlink where the state file should be: refused, its target untouched.
    std::fs::write(f.path("elsewhere"), "x\n").unwrap();
    std::fs::remove_file(&state).unwrap();
    std::os::unix::fs::symlink(f.path("elsewhere"), &state).unwrap();
    let out = viaductctl(f.root(), &["restore"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is a symbolic link"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(f.path("elsewhere")).unwrap(), "x\n");
    std::fs::remove_dir_all(f.root()).unwrap();
}

/// A one-shot API server: answers the next connection with `response`, returns the request.
fn fake_api(path: &Path, response: &'static str) -> std::thread::JoinHandle<String> {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let mut req = Vec::new();
        // Head and body arrive together for these small requests; read until the head ends
        // and Content-Length bytes follow.
        loop {
            let n = s.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if req.len() >= end + 4 + len || n == 0 {
                    break;
                }
            }
        }
        s.write_all(response.as_bytes()).unwrap();
        String::from_utf8_lossy(&req).into_owned()
    })
}

#[test]
fn vm_talks_http_over_the_api_socket() {
    let dir = temp_root("vm-api").unwrap();
    let sock = dir.join("api.sock");
    let body = r#"{"state":"Running","config":{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1}},"memory_actual_size":268435456,"devices":[{"id":"disk0","kind":"virtio-blk","bdf":"0000:00:01.0"}]}"#;
    let response: &'static str = Box::leak(
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_boxed_str(),
    );
    let server = fake_api(&sock, response);
    let out = viaductctl(&dir, &["vm", "--api-socket", sock.to_str().unwrap(), "info"]);
    let req = server.join().unwrap();
    assert!(req.starts_with("GET /api/v1/vm.info HTTP/1.1\r\n"), "{req}");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state: Running") && text.contains("disk0  virtio-blk  0000:00:01.0"), "{text}");

    std::fs::remove_file(&sock).unwrap();
    let server =
        fake_api(&sock, "HTTP/1.1 501 Not Implemented\r\nContent-Length: 27\r\n\r\n{\"error\":\"no hot-plug yet\"}");
    let out = viaductctl(&dir, &["vm", "--api-socket", sock.to_str().unwrap(), "add-disk", "/d.img", "--json"]);
    let req = server.join().unwrap();
    assert!(req.starts_with("PUT /api/v1/vm.add-disk HTTP/1.1\r\n"), "{req}");
    assert!(req.ends_with(r#"{"path":"/d.img","readonly":false}"#), "{req}");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["error"]["message"], "vm.add-disk: HTTP 501: no hot-plug yet");

    let out = viaductctl(&dir, &["vm", "--api-socket", "/nonexistent/api.sock", "ping"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("connecting to the API socket /nonexistent/api.sock"), "{}", stderr(&out));
}
