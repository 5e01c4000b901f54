//! End-to-end runs of the viaduct binary on this machine's own /dev/kvm with hand-made guest
//! kernels (a Linux kernel does not boot on kvm_pvm; see docs/known-issues.md). Each tiny kernel writes to
//! COM1 and then powers off through the ACPI sleep-control port or resets through the i8042,
//! so these tests exercise loading (ELF/PVH and bzImage), the 32-bit and 64-bit entry states,
//! the serial console, exit statuses and signal handling.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VIADUCT: &str = env!("CARGO_BIN_EXE_viaduct");
const LOAD_ADDR: u64 = 0x10_0000;

/// Guest code: print `msg` on COM1, then run `tail`. Valid in 32-bit and 64-bit mode.
fn print_then(msg: &str, tail: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in msg.bytes() {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(tail);
    code
}

/// ACPI sleep control: SLP_TYP=5 (S5), SLP_EN; then halt forever.
const POWEROFF: &[u8] = &[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd];
/// i8042 command 0xFE: pulse the CPU reset line.
const I8042_RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];
/// jmp $
const SPIN: &[u8] = &[0xeb, 0xfe];

/// An ELF64 image with one PT_LOAD at 1 MiB and a XEN_ELFNOTE_PHYS32_ENTRY note.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    let code_off = 256u64;
    let note_off = 176u64;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 2, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |f: &mut Vec<u8>, kind: u32, off: u64, addr: u64, size: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for v in [off, addr, addr, size, size, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut f, 1, code_off, LOAD_ADDR, code.len() as u64); // PT_LOAD
    phdr(&mut f, 4, note_off, 0, 24); // PT_NOTE
    assert_eq!(f.len() as u64, note_off);
    for v in [4u32, 4, 18] {
        f.extend_from_slice(&v.to_le_bytes()); // namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY
    }
    f.extend_from_slice(b"Xen\0");
    f.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    f.resize(code_off as usize, 0);
    f.extend_from_slice(code);
    f
}

/// A bzImage (boot protocol 2.15, XLF_KERNEL_64) whose 64-bit entry (+0x200) runs `code`.
fn bzimage(code: &[u8]) -> Vec<u8> {
    let setup_sects = 4u8;
    let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    f[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    f[0x238..0x23c].copy_from_slice(&4096u32.to_le_bytes()); // cmdline_size
    let mut kernel = vec![0xf4u8; 0x200]; // hlt: the 32-bit entry is not used
    kernel.extend_from_slice(code);
    f.extend_from_slice(&kernel);
    f
}

fn write_kernel(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("viaduct-boot-local-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn require_kvm() {
    assert!(Path::new("/dev/kvm").exists(), "these tests run guests on /dev/kvm, which this machine does not have");
}

fn spawn(kernel: &Path, extra: &[&str]) -> Child {
    let memory: &[&str] = if extra.contains(&"--memory") { &[] } else { &["--memory", "64M"] };
    // The test kernels are tiny bzImages that viaduct would remember as "no PVH" in the
    // machine's own cache (/var/cache/viaduct for root): keep that note beside the kernel.
    let cache: Vec<std::ffi::OsString> = if extra.contains(&"--kernel-cache") {
        Vec::new()
    } else {
        vec!["--kernel-cache".into(), kernel.parent().unwrap_or(Path::new(".")).join("cache").into()]
    };
    Command::new(VIADUCT)
        .arg("--kernel")
        .arg(kernel)
        .args(memory)
        .args(cache)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting viaduct")
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn wait(mut child: Child, limit: Duration) -> Finished {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            let s = child.wait().unwrap();
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("viaduct still running after {limit:?} ({s:?}); stderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Finished { code: status.code(), stdout, stderr }
}

#[test]
fn pvh_guest_prints_and_powers_off_with_status_zero() {
    require_kvm();
    let k = write_kernel("pvh.elf", &pvh_elf(&print_then("hello-pvh\n", POWEROFF)));
    let r = wait(spawn(&k, &[]), Duration::from_secs(60));
    assert_eq!(r.stdout, "hello-pvh\n", "stderr: {}", r.stderr);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
}

#[test]
fn bzimage_guest_runs_in_long_mode_with_two_vcpus() {
    require_kvm();
    let k = write_kernel("bz", &bzimage(&print_then("hello-64\n", POWEROFF)));
    let r = wait(spawn(&k, &["--cpus", "2"]), Duration::from_secs(60));
    assert_eq!(r.stdout, "hello-64\n", "stderr: {}", r.stderr);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
}

#[test]
fn serial_to_file_and_off() {
    require_kvm();
    let k = write_kernel("pvh-file.elf", &pvh_elf(&print_then("to-file", POWEROFF)));
    let out = k.with_extension("console");
    let arg = format!("file={}", out.display());
    let r = wait(spawn(&k, &["--serial", &arg]), Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "to-file");
    let r = wait(spawn(&k, &["--serial", "off"]), Duration::from_secs(60));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), ""), "stderr: {}", r.stderr);
}

#[test]
fn i8042_reset_exits_zero_or_restarts_the_guest() {
    require_kvm();
    let k = write_kernel("reset.elf", &pvh_elf(&print_then("boot\n", I8042_RESET)));
    let r = wait(spawn(&k, &["--on-reboot", "exit"]), Duration::from_secs(60));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "boot\n"), "stderr: {}", r.stderr);

    // With restart, the guest boots again and again until we stop viaduct.
    let mut child = spawn(&k, &["--on-reboot", "restart"]);
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let _ = child.stdin.take();
    let r = wait(child, Duration::from_secs(30));
    assert!(r.stdout.matches("boot\n").count() >= 2, "guest did not restart: {:?}", r.stdout);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "stderr: {}", r.stderr);
}

#[test]
fn sigterm_stops_a_running_guest_in_order() {
    require_kvm();
    let k = write_kernel("spin.elf", &pvh_elf(&print_then("spinning\n", SPIN)));
    for (signal, vcpus) in [(libc::SIGTERM, "1"), (libc::SIGINT, "2"), (libc::SIGHUP, "1")] {
        let child = spawn(&k, &["--cpus", vcpus]);
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let r = wait(child, Duration::from_secs(30));
        assert_eq!(r.stdout, "spinning\n");
        assert_eq!(r.code, Some(128 + signal), "stderr: {}", r.stderr);
    }
}

#[test]
fn errors_are_one_clear_line_and_non_zero() {
    let k = write_kernel("garbage", b"this is not a kernel");
    let cases: [(&[&str], &str); 7] = [
        (&[], "nothing to boot: give --kernel"),
        (&["--kernel", "k", "--frobnicate"], "unexpected argument '--frobnicate'"),
        (&["--kernel", "/nonexistent/vmlinuz"], "opening kernel image /nonexistent/vmlinuz"),
        (&["--kernel", k.to_str().unwrap()], "loading kernel image"),
        (&["--kernel", "k", "--cpus", "0"], "--cpus: boot=0 is out of range"),
        (&["--kernel", "k", "--memory", "size=1G,hugepages=maybe"], "must be 'on' or 'off'"),
        (&["--kernel", "k", "--serial", "pty"], "--serial: 'pty'"),
    ];
    for (args, want) in cases {
        let out = Command::new(VIADUCT).args(args).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.starts_with("viaduct: error: ") && err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn hugepages_back_guest_ram_or_fail_clearly() {
    require_kvm();
    let free: u64 = std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let k = write_kernel("pvh-huge.elf", &pvh_elf(&print_then("huge\n", POWEROFF)));
    let r = wait(spawn(&k, &["--memory", "size=64M,hugepages=on"]), Duration::from_secs(60));
    if free >= 32 {
        assert_eq!((r.code, r.stdout.as_str()), (Some(0), "huge\n"), "stderr: {}", r.stderr);
    } else {
        assert_eq!(r.code, Some(1), "{free} free huge pages, yet: {}", r.stderr);
        assert!(r.stderr.contains("needs 32 free 2 MiB huge pages"), "stderr: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "not one line: {}", r.stderr);
    }
}

/// A bzImage whose xz payload is `vmlinux` (with the size appended, as the kernel build does)
/// and whose own 64-bit entry runs `code`.
fn xz_bzimage(code: &[u8], vmlinux: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut f = bzimage(code);
    let setup_end = (usize::from(f[0x1f1]) + 1) * 512;
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(vmlinux).unwrap();
    let mut payload = enc.finish().unwrap();
    payload.extend_from_slice(&(vmlinux.len() as u32).to_le_bytes());
    let payload_offset = (f.len() - setup_end) as u32;
    f[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
    f[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&payload);
    f
}

#[test]
fn xz_bzimage_boots_its_extracted_kernel_through_pvh() {
    require_kvm();
    let vmlinux = pvh_elf(&print_then("extracted-pvh\n", POWEROFF));
    let k = write_kernel("xz-bz", &xz_bzimage(&print_then("bzimage-path\n", POWEROFF), &vmlinux));
    let cache = k.with_extension("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let cache_arg = cache.to_str().unwrap();
    // Cold: extracted into the cache, then booted through PVH.
    let r = wait(spawn(&k, &["--kernel-cache", cache_arg, "--log-level", "info"]), Duration::from_secs(60));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "extracted-pvh\n"), "stderr: {}", r.stderr);
    // The entry, and the identity record that leads a warm boot to it.
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    let entries: Vec<_> =
        files.iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinux-")).collect();
    assert_eq!((files.len(), entries.len()), (2, 1), "{files:?}");
    assert_eq!(std::fs::read(entries[0]).unwrap(), vmlinux);
    // Warm: straight from the cache. An extraction writes a new file and renames it over the
    // entry: the entry keeping its inode means it was booted as it was.
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(entries[0]).unwrap().ino();
    let r = wait(spawn(&k, &["--kernel-cache", cache_arg]), Duration::from_secs(60));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "extracted-pvh\n"), "stderr: {}", r.stderr);
    assert_eq!(std::fs::metadata(entries[0]).unwrap().ino(), inode, "the cached kernel was extracted again");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    // Off: the bzImage's own entry runs.
    let r = wait(spawn(&k, &["--kernel-cache", "off"]), Duration::from_secs(60));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "bzimage-path\n"), "stderr: {}", r.stderr);
}
