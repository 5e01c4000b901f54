//! The viaduct binary with bad command lines: every mistake ends with one `viaduct: error:`
//! line on stderr naming what is wrong, nothing on stdout, status 1, never a panic. These
//! are refused before /dev/kvm is opened, so they run on any host. Also: `--help` documents
//! every option with an example.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const VIADUCT: &str = env!("CARGO_BIN_EXE_viaduct");

fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    Command::new(VIADUCT).args(args.into_iter().map(Into::into)).stdin(Stdio::null()).output().expect("running viaduct")
}

/// A readable file to stand in for a kernel where the kernel is not what is being tested.
fn some_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viaduct-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("kernel");
    std::fs::write(&path, b"not a kernel").expect("writing a temp file");
    path
}

#[track_caller]
fn assert_refused(args: &[OsString], want: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("{args:?} -> status {:?}, stderr {stderr:?}", out.status.code());
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(out.stdout.is_empty(), "{shown}; stdout {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(!stderr.contains("panicked"), "{shown}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want exactly one line: {shown}");
    assert!(lines[0].starts_with("viaduct: error: "), "{shown}");
    assert!(lines[0].contains(want), "want {want:?} in the message: {shown}");
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn with_kernel(list: &[&str]) -> Vec<OsString> {
    let mut v = vec![OsString::from("--kernel"), some_file().into_os_string()];
    v.extend(args(list));
    v
}

#[test]
fn missing_or_unreadable_files() {
    assert_refused(&args(&[]), "--kernel");
    assert_refused(
        &args(&["--kernel", "/nonexistent/vmlinuz"]),
        "opening kernel image /nonexistent/vmlinuz failed: No such file",
    );
    assert_refused(&args(&["--kernel", "/"]), "opening kernel image / failed: it is a directory");
    assert_refused(
        &with_kernel(&["--initramfs", "/nonexistent/initrd"]),
        "opening initramfs /nonexistent/initrd failed",
    );
    assert_refused(&args(&["--kernel"]), "--kernel");
}

#[test]
fn bad_memory() {
    for (value, want) in [
        ("lots", "'lots' is not a size"),
        ("1", "out of range"),
        ("4T", "out of range"),
        ("99999999999999999999T", "is not a size"),
        ("size=1G,hugepages=maybe", "hugepages='maybe' must be 'on' or 'off'"),
        ("size=1G,colour=red", "unknown key 'colour'"),
        ("size=1G,size=2G", "key 'size' given twice"),
        ("hugepages=on", "missing required key 'size'"),
        (",,", "is not KEY=VALUE"),
        ("", "is not KEY=VALUE"),
    ] {
        assert_refused(&with_kernel(&["--memory", value]), want);
    }
}

#[test]
fn bad_cpus() {
    for (value, want) in [
        ("0", "boot=0 is out of range"),
        ("255", "boot=255 is out of range"),
        ("100000000000000000000", "is not a number"),
        ("-1", "'-1'"),
        ("two", "'two' is not a number"),
        ("boot=", "'' is not a number"),
        ("boot=2,max=4", "unknown key 'max'"),
    ] {
        assert_refused(&with_kernel(&["--cpus", value]), want);
    }
}

#[test]
fn unknown_options_and_values() {
    assert_refused(&with_kernel(&["--frobnicate"]), "unexpected argument '--frobnicate'");
    assert_refused(&with_kernel(&["--on-reboot", "sometimes"]), "sometimes");
    assert_refused(&with_kernel(&["--log-level", "loud"]), "loud");
    assert_refused(&with_kernel(&["--serial", "pty"]), "'pty' is not stdio, off or file=PATH");
    assert_refused(&with_kernel(&["--serial", "file="]), "is not stdio, off or file=PATH");
    assert_refused(&with_kernel(&["stray"]), "unexpected argument 'stray'");
    assert_refused(&with_kernel(&["--kernel-cache", ""]), "--kernel-cache: give a directory or 'off'");
    // An argument that is not UTF-8 is an error, not a panic.
    let mut bad = with_kernel(&["--cmdline"]);
    bad.push(OsString::from_vec(vec![0x66, 0xff, 0xfe]));
    assert_refused(&bad, "UTF-8");
}

#[test]
fn bad_device_specs() {
    assert_refused(&with_kernel(&["--device", ",,"]), "--device: '' is not KEY=VALUE");
    assert_refused(&with_kernel(&["--device", "colour=red"]), "colour");
    assert_refused(&with_kernel(&["--device", "path=zz"]), "'zz' is not a PCI address");
    assert_refused(&with_kernel(&["--device", "0000:01:10.0,rombar=maybe"]), "rombar");
    assert_refused(&with_kernel(&["--disk", "readonly=on"]), "--disk: missing required key 'path'");
    assert_refused(&with_kernel(&["--disk", "path=a.img,speed=fast"]), "speed");
    assert_refused(&with_kernel(&["--seccomp", "maybe"]), "--seccomp");
    assert_refused(&with_kernel(&["--user", "no-such-user-here"]), "--user no-such-user-here: no such user");
    assert_refused(&with_kernel(&["--net", "fd=1"]), "--net fd=1");
    assert_refused(&with_kernel(&["--net", "tap=t0,fd=5"]), "give tap=NAME or fd=N, not both");
    assert_refused(
        &with_kernel(&["--user", "0:0", "--device", "0000:01:10.0,managed=on"]),
        "--device 0000:01:10.0: managed=on needs root at exit, which --user gives up",
    );
}

/// A directory of stand-in firmware files for the checks made before anything starts.
fn firmware_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viaduct-cli-fw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // An image starting with a firmware volume header; `nv`: OVMF's variable store volume.
    let fv = |size: usize, nv: bool| {
        let mut d = vec![0u8; size];
        d[0x28..0x2c].copy_from_slice(b"_FVH");
        if nv {
            d[0x10..0x20].copy_from_slice(&[
                0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50,
            ]);
        }
        d
    };
    let write = |name: &str, data: Vec<u8>| std::fs::write(dir.join(name), data).expect("writing a temp file");
    write("bios.bin", vec![0x90; 256 << 10]);
    write("short.bin", vec![0x90; 1000]);
    write("OVMF_CODE_4M.fd", fv(0x37c000, false));
    write("OVMF_CODE_4M.secboot.fd", fv(0x37c000, false));
    write("OVMF_VARS_4M.fd", fv(0x84000, true));
    write("small-vars.fd", fv(0x20000, true));
    write("not-a-kernel", b"not a kernel".to_vec());
    dir
}

#[test]
fn bad_firmware() {
    let d = firmware_dir();
    let p = |name: &str| d.join(name).to_string_lossy().into_owned();
    let fw = |spec: &str, more: &[&str]| {
        let mut v = args(&["--firmware", spec]);
        v.extend(args(more));
        v
    };
    assert_refused(&fw("/nonexistent/bios.bin", &[]), "opening firmware /nonexistent/bios.bin failed: No such file");
    assert_refused(&fw("/", &[]), "it is a directory");
    assert_refused(&fw(&p("short.bin"), &[]), "1000 bytes is not a firmware image size");
    assert_refused(&fw(&p("OVMF_CODE_4M.fd"), &[]), "OVMF code image without its variable store");
    assert_refused(&fw(&p("OVMF_CODE_4M.secboot.fd"), &[]), "Secure Boot build, which needs SMM");
    let code = p("OVMF_CODE_4M.fd");
    assert_refused(&fw(&format!("code={},vars={}", p("bios.bin"), p("x.fd")), &[]), "is not a UEFI (OVMF) image");
    assert_refused(&fw(&format!("code={code},vars={}", p("small-vars.fd")), &[]), "do not make up one flash device");
    assert_refused(
        &fw(&format!("code={code},vars=/nonexistent/dir/vm.fd"), &[]),
        "creating vars file /nonexistent/dir/vm.fd from",
    );
    assert_refused(
        &fw(&format!("code={code},vars={},vars-template={}", p("new.fd"), p("none.fd")), &[]),
        "does not exist and there is no template",
    );
    // A vars file that exists but cannot be written: a directory, and (unless root, who may
    // write anyway) a read-only file.
    assert_refused(&fw(&format!("code={code},vars={}", d.display()), &[]), "cannot be opened for writing");
    let ro = d.join("readonly-vars.fd");
    std::fs::copy(d.join("OVMF_VARS_4M.fd"), &ro).expect("copying the vars template");
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).expect("chmod");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_refused(&fw(&format!("code={code},vars={}", ro.display()), &[]), "cannot be opened for writing");
    }
    assert_refused(&fw(&format!("code={code}"), &[]), "--firmware: missing required key 'vars'");
    assert_refused(&fw(&p("bios.bin"), &["--initramfs", "i"]), "--initramfs needs --kernel");
    assert_refused(&fw(&p("bios.bin"), &["--cmdline", "quiet"]), "--cmdline needs --kernel");
    assert_refused(&fw(&p("bios.bin"), &["--kernel", "k", "--kernel-cache", "off"]), "--kernel-cache makes no sense");
    assert_refused(&fw(&p("bios.bin"), &["--kernel", &p("not-a-kernel")]), "not a bzImage");
    assert!(!d.join("new.fd").exists(), "nothing is created for a refused command line");
}

#[test]
fn help_documents_every_option_with_an_example() {
    let out = run(["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    // Option blocks: from an option line (indented at most 6 columns) to the next one;
    // wrapped description lines are indented further.
    let options = help.split("\nOptions:\n").nth(1).expect("an Options section").split("\n\n").next().unwrap_or("");
    let mut blocks: Vec<String> = Vec::new();
    for line in options.lines() {
        let t = line.trim_start();
        if line.len() - t.len() <= 6 && t.starts_with('-') {
            blocks.push(t.to_string());
        } else if let Some(b) = blocks.last_mut() {
            b.push(' ');
            b.push_str(t);
        }
    }
    let documented: Vec<&str> =
        blocks.iter().filter_map(|b| b.split_whitespace().find(|w| w.starts_with("--"))).collect();
    for want in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--memory",
        "--cpus",
        "--serial",
        "--device",
        "--disk",
        "--net",
        "--rng",
        "--on-reboot",
        "--log-level",
        "--kernel-cache",
        "--firmware",
        "--seccomp",
        "--user",
    ] {
        assert!(documented.contains(&want), "{want} missing from --help: {documented:?}");
    }
    for b in blocks.iter().filter(|b| !b.contains("--help") && !b.contains("--version")) {
        assert!(b.contains("Example: --"), "no example in --help for: {b}");
    }
    assert!(help.contains("Exit status"), "--help says nothing about exit statuses");
}
