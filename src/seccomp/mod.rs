//! seccomp filters: one per kind of VMM thread, on by default (`--seccomp true|false|log`).
//!
//! Each kind of thread declares what it may call in the module that spawns it (its
//! `seccomp_rules` function, listed in [`ThreadKind::declare`]); this module compiles every
//! declaration once at start (a bad filter fails before anything runs), installs a thread's
//! filter as the first thing the thread does (before it touches guest input), and turns a
//! blocked call into one error line naming the call and the thread (`report`).
//!
//! Filters stack: a thread created by a filtered thread is bound by its creator's filter as
//! well as its own. The main thread builds every VM and starts every other thread, so its
//! filter allows what all of them allow; a thread whose own filter is narrower (a vCPU, which
//! starts a virtio device's I/O thread when the guest driver activates it) hands the creation
//! to the spawner thread, which has the main thread's filter and runs nothing else
//! (`crate::threads::spawn` decides).

mod ioctls;
mod report;
mod rules;
mod syscall_names;

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use ioctls::{block, iommufd, kvm, net, tty, vfio};
pub use rules::{ArgEq, Rules};

/// `--seccomp`: the cloud-hypervisor spelling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    // Filters on; a call outside a thread's filter ends viaduct with an error.
    #[default]
    True,
    // No filters.
    False,
    // Filters on, but a call outside a thread's filter is allowed and logged by the kernel
    // (the audit log, `dmesg`): for finding what a new code path needs.
    Log,
}

/// The kinds of thread viaduct runs, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// Set-up of every VM, the control loop, teardown.
    Main,
    /// Creates threads for filtered threads that may not (see the module doc).
    Spawner,
    /// One per vCPU: KVM_RUN and the device emulation its exits lead to.
    Vcpu,
    /// Reads the kernel and initramfs into guest RAM.
    KernelLoader,
    /// DMA-maps guest RAM for assigned devices.
    DmaMap,
    /// Forwards the terminal's input to the guest's serial port.
    SerialInput,
    /// The API socket's accept thread and its connection threads.
    Api,
    /// I/O threads of virtio devices.
    VirtioBlock,
    VirtioNet,
    VirtioRng,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 10] = [
        Self::Main,
        Self::Spawner,
        Self::Vcpu,
        Self::KernelLoader,
        Self::DmaMap,
        Self::SerialInput,
        Self::Api,
        Self::VirtioBlock,
        Self::VirtioNet,
        Self::VirtioRng,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Spawner => "spawner",
            Self::Vcpu => "vcpu",
            Self::KernelLoader => "kernel-loader",
            Self::DmaMap => "dma-map",
            Self::SerialInput => "serial-input",
            Self::Api => "api",
            Self::VirtioBlock => "virtio-blk",
            Self::VirtioNet => "virtio-net",
            Self::VirtioRng => "virtio-rng",
        }
    }

    /// What this kind itself declares, next to the code that spawns it.
    fn declare(self, r: &mut Rules) {
        match self {
            Self::Main => crate::vmm::seccomp_rules(r),
            // The spawner only creates threads: `rules_for` gives it the main thread's set so
            // what it creates is bound by its own filter alone.
            Self::Spawner => {}
            Self::Vcpu => crate::vstate::vcpu::seccomp_rules(r),
            Self::KernelLoader => crate::boot::seccomp_rules(r),
            Self::DmaMap => crate::device_manager::vfio::dma_seccomp_rules(r),
            Self::SerialInput => crate::devices::serial::seccomp_rules(r),
            Self::Api => crate::api::seccomp_rules(r),
            Self::VirtioBlock => crate::devices::virtio::block::seccomp_rules(r),
            Self::VirtioNet => crate::devices::virtio::net::seccomp_rules(r),
            Self::VirtioRng => crate::devices::virtio::rng::seccomp_rules(r),
        }
    }

    /// Whether threads of this kind create threads themselves (their filter then covers
    /// every other kind's).
    fn covers_all(self) -> bool {
        matches!(self, Self::Main | Self::Spawner)
    }
}

/// What the filters are built for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub mode: SeccompMode,
    /// The user and group viaduct switches to after set-up (`--user`): the C library makes
    /// every thread alive at that moment switch, so every filter allows exactly that switch.
    pub switch_to: Option<(libc::uid_t, libc::gid_t)>,
}

/// The complete rule set of `kind` under `policy`.
pub fn rules_for(kind: ThreadKind, policy: &Policy) -> Rules {
    let mut r = Rules::new();
    rules::base(&mut r);
    if kind.covers_all() {
        for k in ThreadKind::ALL {
            k.declare(&mut r);
        }
    } else {
        kind.declare(&mut r);
    }
    if let Some((uid, gid)) = policy.switch_to {
        let three = |v: u32| [ArgEq::int(0, v.into()), ArgEq::int(1, v.into()), ArgEq::int(2, v.into())];
        r.allow_when(libc::SYS_setresuid, &three(uid));
        r.allow_when(libc::SYS_setresgid, &three(gid));
        r.allow(&[libc::SYS_setgroups]);
    }
    r
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter of {kind} threads failed")]
    Compile {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("installing the seccomp filter of thread {thread} failed (a kernel without seccomp? --seccomp false runs without filters)")]
    Install {
        thread: String,
        #[source]
        source: seccompiler::Error,
    },
    #[error("installing the SIGSYS handler failed")]
    Handler(#[source] std::io::Error),
    #[error("starting the spawner thread failed")]
    Spawner(#[source] std::io::Error),
    #[error("the spawner thread is gone")]
    SpawnerGone,
}

/// Compiles `kind`'s filter into BPF.
pub fn compile(kind: ThreadKind, policy: &Policy) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Compile { kind: kind.name(), source };
    let on_mismatch = match policy.mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(
        rules_for(kind, policy).to_seccompiler().map_err(err)?,
        on_mismatch,
        SeccompAction::Allow,
        ARCH,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;

type Job = Box<dyn FnOnce() + Send>;

struct Installed {
    programs: Vec<(ThreadKind, BpfProgram)>,
    spawner: Mutex<mpsc::Sender<Job>>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Compiles every filter, installs the SIGSYS handler and starts the spawner thread. Does
/// nothing with `--seccomp false`. Call it once, before the threads it should cover start.
pub fn init(policy: &Policy) -> Result<(), SeccompError> {
    if policy.mode == SeccompMode::False || INSTALLED.get().is_some() {
        return Ok(());
    }
    let programs =
        ThreadKind::ALL.iter().map(|&k| Ok((k, compile(k, policy)?))).collect::<Result<Vec<_>, SeccompError>>()?;
    report::install_handler().map_err(SeccompError::Handler)?;
    let (tx, rx) = mpsc::channel::<Job>();
    let installed = INSTALLED.get_or_init(|| Installed { programs, spawner: Mutex::new(tx) });
    let _ = installed;
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            if let Err(e) = install(ThreadKind::Spawner) {
                // Nothing can be created without it: every request fails, loudly.
                log::error!("{e}");
                return;
            }
            for job in rx {
                job();
            }
        })
        .map_err(SeccompError::Spawner)?;
    Ok(())
}

/// Installs `kind`'s filter on the calling thread (nothing when [`init`] did not run or
/// filters are off). A thread is never left running without the filter it asked for: the
/// error is for the caller to stop on.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(installed) = INSTALLED.get() else { return Ok(()) };
    let Some((_, program)) = installed.programs.iter().find(|(k, _)| *k == kind) else { return Ok(()) };
    report::set_identity(kind);
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        thread: std::thread::current().name().unwrap_or("main").to_string(),
        source,
    })
}

/// The filter installed on the calling thread, if any.
pub fn current() -> Option<ThreadKind> {
    report::current_kind()
}

/// Whether a thread running `current` may create a thread of any kind itself, without its
/// own filter narrowing the new thread's.
pub fn may_spawn_directly(current: Option<ThreadKind>) -> bool {
    current.is_none_or(ThreadKind::covers_all)
}

/// Runs `job` on the spawner thread and returns what it returned.
pub fn on_spawner<R: Send + 'static>(job: impl FnOnce() -> R + Send + 'static) -> Result<R, SeccompError> {
    let installed = INSTALLED.get().ok_or(SeccompError::SpawnerGone)?;
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    installed.spawner.lock().unwrap_or_else(|e| e.into_inner()).send(job).map_err(|_| SeccompError::SpawnerGone)?;
    rx.recv().map_err(|_| SeccompError::SpawnerGone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_for_x86_64_in_every_mode() {
        for mode in [SeccompMode::True, SeccompMode::Log] {
            for switch_to in [None, Some((1000, 1000))] {
                let policy = Policy { mode, switch_to };
                for kind in ThreadKind::ALL {
                    let bpf = compile(kind, &policy).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
                    assert!(bpf.len() > 10 && bpf.len() < 4096, "{kind:?}: {} instructions", bpf.len());
                }
            }
        }
    }

    #[test]
    fn the_main_filter_covers_every_kind() {
        let policy = Policy::default();
        let main = rules_for(ThreadKind::Main, &policy);
        assert_eq!(main, rules_for(ThreadKind::Spawner, &policy));
        for kind in ThreadKind::ALL {
            let mut merged = main.clone();
            merged.merge(&rules_for(kind, &policy));
            assert_eq!(merged, main, "{kind:?} allows something the main thread's filter does not");
        }
    }

    #[test]
    fn a_vcpu_may_run_but_not_create_vms() {
        let vcpu = rules_for(ThreadKind::Vcpu, &Policy::default());
        assert!(vcpu.allows_ioctl(kvm::RUN));
        assert!(!vcpu.allows_ioctl(kvm::CREATE_VM));
        assert!(!vcpu.allows_ioctl(kvm::CREATE_VCPU));
        assert!(!vcpu.allows_ioctl(vfio::IOMMU_MAP_DMA));
        for forbidden in [libc::SYS_execve, libc::SYS_openat, libc::SYS_socket, libc::SYS_clone, libc::SYS_clone3] {
            assert!(!vcpu.mentions(forbidden), "{forbidden}");
        }
    }

    /// The iommufd back-end (a VFIO cdev bound to /dev/iommu or to a passed iommufd): set up
    /// and torn down by the main thread, guest RAM mapped by the DMA-mapping thread.
    #[test]
    fn the_iommufd_backend_is_allowed_where_it_runs() {
        let main = rules_for(ThreadKind::Main, &Policy::default());
        for request in [
            iommufd::IOAS_ALLOC,
            iommufd::IOAS_MAP,
            iommufd::IOAS_MAP_FILE,
            iommufd::IOAS_UNMAP,
            iommufd::DESTROY,
            vfio::DEVICE_BIND_IOMMUFD,
            vfio::DEVICE_ATTACH_IOMMUFD_PT,
            vfio::DEVICE_DETACH_IOMMUFD_PT,
        ] {
            assert!(main.allows_ioctl(request), "{request:#x}");
        }
        let dma = rules_for(ThreadKind::DmaMap, &Policy::default());
        assert!(dma.allows_ioctl(iommufd::IOAS_MAP) && dma.allows_ioctl(vfio::IOMMU_MAP_DMA));
        assert!(!dma.allows_ioctl(vfio::DEVICE_BIND_IOMMUFD));
        let vcpu = rules_for(ThreadKind::Vcpu, &Policy::default());
        assert!(!vcpu.allows_ioctl(iommufd::IOAS_MAP) && !vcpu.allows_ioctl(iommufd::IOAS_UNMAP));
    }

    #[test]
    fn no_thread_may_exec_trace_or_mount() {
        let policy = Policy { mode: SeccompMode::True, switch_to: Some((1, 1)) };
        for kind in ThreadKind::ALL {
            let r = rules_for(kind, &policy);
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_init_module,
                libc::SYS_finit_module,
                libc::SYS_kexec_load,
                libc::SYS_bpf,
                libc::SYS_unshare,
                libc::SYS_setns,
                libc::SYS_process_vm_writev,
                libc::SYS_setuid,
            ] {
                assert!(!r.mentions(forbidden), "{kind:?} allows {forbidden}");
            }
        }
    }

    /// Set in the child process the trap tests start (a filter cannot be removed again).
    const CHILD: &str = "VIADUCT_SECCOMP_TEST_CHILD";

    /// Runs `test` in a child process (this test binary again) with `mode`; its exit status
    /// and stderr.
    fn in_child(test: &str, mode: &str) -> (Option<i32>, String) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, mode)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// In the child: a vCPU-filtered thread calls socket(2), which no vCPU needs.
    fn blocked_call_child(mode: &str) {
        let mode = if mode == "log" { SeccompMode::Log } else { SeccompMode::True };
        init(&Policy { mode, switch_to: None }).unwrap();
        let t = std::thread::Builder::new()
            .name("vcpu-test".into())
            .spawn(|| {
                install(ThreadKind::Vcpu).unwrap();
                assert_eq!(current(), Some(ThreadKind::Vcpu));
                assert!(!may_spawn_directly(current()));
                // Allowed calls still work: a lock, a log line, an eventfd write.
                let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
                evt.write(1).unwrap();
                eprintln!("still running");
                // SAFETY: socket(2) with constant arguments; the fd, if any, is closed below.
                let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                // Only reached in log mode.
                // SAFETY: closes the fd socket() returned.
                unsafe { libc::close(fd) };
            })
            .unwrap();
        t.join().unwrap();
        // And a thread created on behalf of a filtered thread gets its own filter only.
        let spawned = on_spawner(|| {
            std::thread::spawn(|| {
                // SAFETY: PR_GET_SECCOMP only reads this thread's seccomp mode.
                unsafe { libc::prctl(libc::PR_GET_SECCOMP) }
            })
        })
        .unwrap();
        assert_eq!(spawned.join().unwrap(), 2, "the spawner's thread is filtered");
        std::process::exit(7);
    }

    #[test]
    fn a_blocked_call_ends_the_process_with_one_line_naming_it() {
        match std::env::var(CHILD) {
            Ok(mode) => blocked_call_child(&mode),
            Err(_) => {
                let (status, stderr) =
                    in_child("seccomp::tests::a_blocked_call_ends_the_process_with_one_line_naming_it", "true");
                assert_eq!(status, Some(1), "{stderr}");
                assert!(stderr.contains("still running"), "{stderr}");
                let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
                assert_eq!(
                    errors,
                    ["viaduct: error: thread vcpu-test made a system call its seccomp filter (vcpu) does not allow: \
                      socket (41); this is a viaduct bug (--seccomp log lets such calls through and logs them)"],
                    "{stderr}"
                );
            }
        }
    }

    #[test]
    fn log_mode_lets_the_call_through() {
        match std::env::var(CHILD) {
            Ok(mode) => blocked_call_child(&mode),
            Err(_) => {
                let (status, stderr) = in_child("seccomp::tests::log_mode_lets_the_call_through", "log");
                assert_eq!(status, Some(7), "{stderr}");
                assert!(!stderr.contains("error"), "{stderr}");
            }
        }
    }

    #[test]
    fn only_the_planned_user_switch_is_allowed() {
        let r = rules_for(ThreadKind::Vcpu, &Policy { mode: SeccompMode::True, switch_to: Some((1000, 100)) });
        assert!(r.mentions(libc::SYS_setresuid));
        assert!(!rules_for(ThreadKind::Vcpu, &Policy::default()).mentions(libc::SYS_setresuid));
    }
}
