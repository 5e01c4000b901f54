//! The VMM: builds a VM from the config, runs its vCPUs, waits for a stop reason and tears
//! everything down in order. A guest reset either rebuilds the VM or ends the run.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use kvm_bindings::CpuId;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::signal::Killable;

use crate::api::ApiServer;
use crate::boot::{self, acpi::AcpiConfig};
use crate::config::{KernelCache, RebootAction, RunConfig, SerialConfig, VmConfig};
use crate::control::{Control, IdleOutcome, RunningVm};
use crate::device_manager::q35::Q35Chipset;
use crate::device_manager::seams::VmSeams;
use crate::device_manager::{DeviceManager, DeviceManagerConfig};
use crate::devices::cmos::Cmos;
use crate::devices::serial::{self, ConsoleOut, FlushingWriter, SerialDevice};
use crate::layout::RamLayout;
use crate::privilege::SwitchUser;
use crate::seccomp::ThreadKind;
use crate::signals;
use crate::stop::{StopNotifier, StopReason};
use crate::terminal::RawModeGuard;
use crate::vstate::kvm::KvmSystem;
use crate::vstate::memory::{create_guest_memory, GuestMemory};
use crate::vstate::vcpu::{Vcpu, VcpuGate};
use crate::vstate::vm::Vm;

/// The serial device host input goes to; replaced on every (re)boot. The device manager
/// owns the device: input arriving after it is gone is dropped.
type ConsoleInput = Arc<Mutex<Option<Weak<Mutex<SerialDevice>>>>>;

/// The console input slot only ever gets assigned: a poisoned lock still holds a whole
/// value.
fn console_slot(input: &ConsoleInput) -> std::sync::MutexGuard<'_, Option<Weak<Mutex<SerialDevice>>>> {
    input.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where guest console output goes, reopened for every boot.
enum ConsoleSink {
    Stdio,
    File(File),
    Off,
}

impl ConsoleSink {
    fn open(cfg: &SerialConfig) -> anyhow::Result<Self> {
        Ok(match cfg {
            SerialConfig::Stdio => Self::Stdio,
            SerialConfig::Off => Self::Off,
            SerialConfig::File(path) => Self::File(
                File::create(path).with_context(|| format!("creating serial output file {}", path.display()))?,
            ),
        })
    }

    fn writer(&self) -> anyhow::Result<Option<ConsoleOut>> {
        Ok(match self {
            Self::Stdio => Some(Box::new(FlushingWriter(std::io::stdout()))),
            Self::File(f) => Some(Box::new(f.try_clone().context("duplicating the serial output file")?)),
            Self::Off => None,
        })
    }
}

pub struct Vmm;

impl Vmm {
    /// Runs the guest until it powers off, is stopped by a signal or `vmm.shutdown`, or fails.
    /// With only an API socket, waits for `vm.create` and `vm.boot` first.
    pub fn run(run: RunConfig) -> anyhow::Result<ExitCode> {
        // Checked (and the firmware files read) before anything starts; the boot plan is
        // made once more with the rest of the VM's set-up below.
        let mut checked = match &run.vm {
            Some(cfg) => Some((cfg.clone(), preflight(cfg)?)),
            None => None,
        };
        if let Some(user) = &run.user {
            user.check_startable()?;
            if let Some(cfg) = &run.vm {
                check_user_devices(cfg, user)?;
            }
        }
        // Before any thread is spawned (the API's too): every thread inherits the mask.
        let signal_fd = signals::setup()?;
        // Every thread from here on runs under a filter, this one included: the filters are
        // built and the spawner started now, before the API thread and the first device.
        let policy = crate::seccomp::Policy { mode: run.seccomp, switch_to: run.user.as_ref().map(|u| (u.uid, u.gid)) };
        crate::seccomp::init(&policy)?;
        crate::seccomp::install(ThreadKind::Main)?;
        let api = run.api_socket.as_deref().map(ApiServer::start).transpose()?;
        let kvm = KvmSystem::open()?;
        let cpuid = kvm.supported_cpuid()?;
        let console_input: ConsoleInput = Arc::new(Mutex::new(None));
        // Kept across guest resets (its NVRAM and clock offset survive a reboot, as on a PC).
        let cmos = Arc::new(Mutex::new(Cmos::new()));
        let from_command_line = run.vm.is_some();
        let mut control = Control::new(api, run.vm);
        let mut raw_mode = None;
        let mut prepared: Option<(VmConfig, Prepared)> = None;
        let mut boot_next = from_command_line;
        let mut first_boot = true;
        loop {
            if !boot_next {
                match wait_idle(&mut control, &signal_fd)? {
                    Idle::Boot => {}
                    Idle::Exit(code) => return Ok(code),
                }
            }
            boot_next = true;
            let cfg =
                control.config().cloned().ok_or_else(|| anyhow!("booting without a VM config (internal error)"))?;
            // The console and boot plan are set up once per config (the console file is not
            // truncated by a guest reboot, the firmware's UUID stays the same).
            if prepared.as_ref().is_none_or(|(c, _)| !same_boot(c, &cfg)) {
                let checked = checked.take().filter(|(c, _)| same_boot(c, &cfg)).map(|(_, plan)| plan);
                let p = match prepare(&cfg, checked) {
                    Ok(p) => p,
                    Err(e) if control.boot_pending() => {
                        control.boot_done(Err(format!("{e:#}")));
                        boot_next = false;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                prepared = Some((cfg.clone(), p));
            }
            let Some((_, p)) = &prepared else { continue };
            if cfg.serial == SerialConfig::Stdio && raw_mode.is_none() {
                raw_mode = Some(RawModeGuard::enable_on_stdin());
                spawn_stdin_forwarder(console_input.clone())?;
            }
            let platform = Platform { sink: &p.sink, console_input: &console_input, cmos: &cmos };
            let ctx =
                BootContext { kvm: &kvm, cpuid: &cpuid, signal_fd: &signal_fd, first_boot, user: run.user.as_ref() };
            // A VM from the API is checked here (the command line's was checked at start).
            let booted = match run.user.as_ref().map(|u| check_user_devices(&cfg, u)).transpose() {
                Ok(_) => boot_once(&ctx, &cfg, &p.plan, &platform, &mut control),
                Err(e) => Err(e),
            };
            // Whatever ended the VM, a panic on any thread (also during the teardown) is the
            // error the user sees.
            if let Some(panic) = crate::threads::first_panic() {
                bail!(panic);
            }
            let mut reason = match booted {
                Ok(reason) => reason,
                // A VM booted over the API that fails to start leaves viaduct waiting.
                Err(e) if control.boot_pending() => {
                    log::warn!("vm.boot failed: {}", crate::error_line(&e));
                    control.boot_done(Err(crate::error_line(&e)));
                    boot_next = false;
                    continue;
                }
                Err(e) => return Err(e),
            };
            first_boot = false;
            control.vm_ended(&reason);
            // The control loop reads signals only while it waits on a running guest: a guest
            // that resets as soon as it starts would keep a stop signal waiting forever.
            if reason == StopReason::Reset {
                if let Some(n) = signals::read_signal(&signal_fd) {
                    reason = StopReason::Signal(n);
                }
            }
            match reason {
                StopReason::PowerOff => return Ok(ExitCode::SUCCESS),
                StopReason::Reset if cfg.on_reboot == RebootAction::Restart => {
                    log::info!("guest rebooted: restarting it");
                }
                StopReason::Reset => {
                    log::info!("guest rebooted: exiting (--on-reboot exit)");
                    return Ok(ExitCode::SUCCESS);
                }
                StopReason::Reboot => log::info!("vm.reboot: restarting the guest"),
                StopReason::Shutdown => {
                    log::info!("vm.shutdown: the guest is stopped; waiting for vm.boot or vmm.shutdown");
                    boot_next = false;
                }
                StopReason::VmmShutdown => return Ok(ExitCode::SUCCESS),
                StopReason::Signal(n) => {
                    log::info!("stopped by signal {n}");
                    return Ok(signal_exit(n));
                }
                StopReason::Error(msg) => bail!(msg),
            }
        }
    }
}

fn signal_exit(n: i32) -> ExitCode {
    ExitCode::from(128u8.saturating_add(n as u8))
}

/// Whether two configs boot the same way (same console, kernel, firmware files and what the
/// firmware hands a kernel), so one's prepared console and boot plan serve the other.
fn same_boot(a: &VmConfig, b: &VmConfig) -> bool {
    a.serial == b.serial
        && a.kernel == b.kernel
        && a.firmware == b.firmware
        && a.kernel_cache == b.kernel_cache
        && (a.firmware.is_none() || (a.initramfs == b.initramfs && a.cmdline == b.cmdline && a.memory == b.memory))
}

/// `preflight`'s plan for `cfg` (`checked` when it was made already) and the console.
fn prepare(cfg: &VmConfig, checked: Option<Preflight>) -> anyhow::Result<Prepared> {
    let plan = match checked {
        Some(plan) => plan,
        None => preflight(cfg)?,
    };
    let plan = match plan {
        Preflight::Kernel(bzimage) => BootPlan::Kernel { image: kernel_to_boot(cfg, &bzimage)?, bzimage },
        Preflight::Firmware(f) => BootPlan::Firmware(f),
    };
    Ok(Prepared { sink: ConsoleSink::open(&cfg.serial)?, plan })
}

enum Idle {
    Boot,
    Exit(ExitCode),
}

/// No VM runs: serves the API until a `vm.boot`, `vmm.shutdown` or a stop signal.
fn wait_idle(control: &mut Control, signal_fd: &OwnedFd) -> anyhow::Result<Idle> {
    const API: u64 = 0;
    const SIGNAL: u64 = 1;
    let Some(api_fd) = control.api().map(|a| a.eventfd().as_raw_fd()) else {
        bail!("no VM to run and no API socket to get one from (internal error)");
    };
    let epoll = Epoll::new().context("creating the control epoll")?;
    epoll.ctl(ControlOperation::Add, api_fd, EpollEvent::new(EventSet::IN, API)).context("watching the API")?;
    epoll
        .ctl(ControlOperation::Add, signal_fd.as_raw_fd(), EpollEvent::new(EventSet::IN, SIGNAL))
        .context("watching the signalfd")?;
    let mut events = vec![EpollEvent::default(); 2];
    let check = |cfg: &VmConfig| preflight(cfg).map(drop);
    loop {
        if let Some(sig) = signals::read_signal(signal_fd) {
            log::info!("stopped by signal {sig}");
            return Ok(Idle::Exit(signal_exit(sig)));
        }
        while let Some(call) = control.api().and_then(ApiServer::next_call) {
            match control.serve_idle(call, &check) {
                Some(IdleOutcome::Boot) => return Ok(Idle::Boot),
                Some(IdleOutcome::Exit) => return Ok(Idle::Exit(ExitCode::SUCCESS)),
                None => {}
            }
        }
        match epoll.wait(-1, &mut events) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting on the control epoll"),
        }
    }
}

/// What belongs to one VM config: where its console goes and how it boots.
struct Prepared {
    sink: ConsoleSink,
    plan: BootPlan,
}

/// How each boot starts.
enum BootPlan {
    /// Direct kernel boot: `image` (the cached vmlinux, or the bzImage itself) is loaded.
    Kernel {
        image: PathBuf,
        bzimage: PathBuf,
    },
    Firmware(Box<FirmwarePlan>),
}

enum Preflight {
    Kernel(PathBuf),
    Firmware(Box<FirmwarePlan>),
}

/// What `--firmware` boots with, read and checked once.
struct FirmwarePlan {
    files: boot::firmware::FirmwareFiles,
    kernel: Option<platform::fw_cfg::linux::LinuxBoot>,
    linuxboot_rom: Option<Vec<u8>>,
    /// SMBIOS type 1's UUID: the same across guest reboots.
    uuid: [u8; 16],
}

/// What can be refused without touching KVM is checked first: a typo costs nothing and gets
/// the same one-line error on every host (also one without /dev/kvm).
fn preflight(cfg: &VmConfig) -> anyhow::Result<Preflight> {
    if let Some(kernel) = &cfg.kernel {
        boot::kernel::check_readable(kernel, cfg.initramfs.as_deref())?;
    }
    crate::device_manager::vfio::parse_cli(&cfg.devices)?;
    crate::device_manager::vfio::parse_iommufd_cli(cfg.iommufd.as_ref())?;
    crate::device_manager::virtio::parse_disks(&cfg.disks)?;
    crate::device_manager::virtio::parse_nets(&cfg.nets)?;
    let Some(spec) = &cfg.firmware else {
        let kernel = cfg.kernel.clone().ok_or_else(|| anyhow!("nothing to boot"))?;
        return Ok(Preflight::Kernel(kernel));
    };
    let low_end = crate::layout::RamLayout::firmware(cfg.memory.size).low_end;
    let kernel = match &cfg.kernel {
        Some(path) => {
            let image = std::fs::read(path).with_context(|| format!("reading kernel image {}", path.display()))?;
            let initrd = match &cfg.initramfs {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading initramfs {}", p.display()))?),
                None => None,
            };
            let boot = platform::fw_cfg::linux::LinuxBoot::new(&image, initrd, &cfg.cmdline, low_end)
                .with_context(|| format!("booting {} through firmware", path.display()))?;
            Some(boot)
        }
        None => None,
    };
    // Last: a vars file may be created from its template here.
    let files = boot::firmware::open(spec)?;
    let linuxboot_rom = match (&kernel, files.kind) {
        (Some(_), boot::firmware::FirmwareKind::LegacyBios) => {
            let rom = boot::fw_cfg::LINUXBOOT_ROM;
            Some(std::fs::read(rom).with_context(|| {
                format!("--kernel through SeaBIOS needs QEMU's option ROM {rom} (Debian package qemu-system-data)")
            })?)
        }
        _ => None,
    };
    let uuid = boot::fw_cfg::random_uuid();
    Ok(Preflight::Firmware(Box::new(FirmwarePlan { files, kernel, linuxboot_rom, uuid })))
}

/// With `--user`, `managed=on` is refused: giving a device back to its driver at exit writes
/// to sysfs, which the user cannot.
fn check_user_devices(cfg: &VmConfig, user: &SwitchUser) -> anyhow::Result<()> {
    let devices = crate::device_manager::vfio::parse_cli(&cfg.devices)?;
    if let Some(d) = devices.iter().find(|d| d.managed) {
        bail!(
            "--device {}: managed=on needs root at exit, which --user gives up; bind it first (`viaductctl bind {} --user {}`)",
            d.bdf,
            d.bdf,
            user.name
        );
    }
    Ok(())
}

/// Loads the kernel (the cached vmlinux when there is one) and the initramfs into guest RAM.
fn load_boot_images(
    mem: &GuestMemory,
    cfg: &VmConfig,
    kernel: &Path,
    bzimage: &Path,
) -> anyhow::Result<boot::LoadedImages> {
    let initramfs = cfg.initramfs.as_deref();
    match boot::load_images(mem, kernel, initramfs, cfg.memory.size) {
        Ok(images) => Ok(images),
        // An extracted vmlinux needs room for its whole image and bss; the bzImage
        // decompresses itself wherever it fits. What the first try wrote is left in RAM the
        // bzImage either overwrites or hands to the guest as free memory.
        Err(e) if kernel != bzimage => {
            log::warn!("{:#}; booting the bzImage {} instead", anyhow::Error::from(e), bzimage.display());
            Ok(boot::load_images(mem, bzimage, initramfs, cfg.memory.size)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The kernel image to load on every boot: an extracted PVH vmlinux for an xz bzImage (see
/// `boot::vmlinux_cache`), else the image given.
fn kernel_to_boot(cfg: &VmConfig, bzimage: &Path) -> anyhow::Result<PathBuf> {
    let dir = match &cfg.kernel_cache {
        KernelCache::Off => None,
        KernelCache::Dir(d) => Some(d.clone()),
        KernelCache::Default => boot::vmlinux_cache::default_dir(),
    };
    let Some(dir) = dir else { return Ok(bzimage.to_path_buf()) };
    match boot::vmlinux_cache::resolve(bzimage, &dir) {
        Ok(path) => Ok(path),
        // The default cache is a convenience: when it cannot be used, boot the bzImage.
        Err(e) if cfg.kernel_cache == KernelCache::Default => {
            log::warn!("{:#}; booting the bzImage as is", anyhow::Error::from(e));
            Ok(bzimage.to_path_buf())
        }
        Err(e) => Err(e.into()),
    }
}

fn spawn_stdin_forwarder(target: ConsoleInput) -> anyhow::Result<()> {
    // The forwarder feeds a proxy device slot; rebuilt VMs swap the device behind it.
    serial::spawn_input_forwarder(std::io::stdin(), SerialProxy(target))
        .context("starting the console input thread")?;
    Ok(())
}

/// Forwards input to whichever serial device is current.
pub struct SerialProxy(ConsoleInput);

impl serial::InputSink for SerialProxy {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let current = console_slot(&self.0).as_ref().and_then(Weak::upgrade);
        let taken = match current.as_deref().map(Mutex::lock) {
            Some(Ok(mut dev)) => dev.enqueue_input(bytes),
            // No guest yet (or between reboots), or COM1 failed: drop the input rather than
            // block.
            Some(Err(_)) | None => bytes.len(),
        };
        taken
    }
}

/// How long each VM set-up stage took, for the one "booting" log line (where start-up time
/// goes matters: it is part of every boot).
struct StartupTiming {
    last: Instant,
    start: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl StartupTiming {
    fn new() -> Self {
        let now = Instant::now();
        Self { last: now, start: now, stages: Vec::new() }
    }

    fn mark(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.stages.push((stage, now - self.last));
        self.last = now;
    }

    /// Stages that ran side by side since the last mark, each with its own duration.
    fn mark_parallel(&mut self, stages: &[(&'static str, Duration)]) {
        self.stages.extend_from_slice(stages);
        self.last = Instant::now();
    }
}

impl std::fmt::Display for StartupTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ms:", (self.last - self.start).as_millis())?;
        for (stage, d) in &self.stages {
            write!(f, " {stage} {}", d.as_millis())?;
        }
        Ok(())
    }
}

/// How long this process has existed (10 ms resolution): its start time in /proc/self/stat
/// against the boot-time clock it counts from.
fn process_age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces and ')': state is field 3,
    // starttime field 22.
    let start_ticks: u64 = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_s = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&t| t > 0)?;
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the kernel to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    let now = Duration::new(u64::try_from(now.tv_sec).ok()?, u32::try_from(now.tv_nsec).ok()?);
    let start = Duration::from_millis(start_ticks.checked_mul(1000)? / ticks_per_s);
    now.checked_sub(start)
}

/// What outlives one boot of the guest: the console and the CMOS.
struct Platform<'a> {
    sink: &'a ConsoleSink,
    console_input: &'a ConsoleInput,
    cmos: &'a Arc<Mutex<Cmos>>,
}

/// What every boot uses, unchanged from one to the next.
struct BootContext<'a> {
    kvm: &'a KvmSystem,
    cpuid: &'a CpuId,
    signal_fd: &'a OwnedFd,
    first_boot: bool,
    /// `--user`: become that user once this boot's set-up is done (the first boot only).
    user: Option<&'a SwitchUser>,
}

/// Builds one VM, runs it to a stop reason and tears it down.
fn boot_once(
    ctx: &BootContext,
    cfg: &VmConfig,
    plan: &BootPlan,
    platform: &Platform,
    control: &mut Control,
) -> anyhow::Result<StopReason> {
    let BootContext { kvm, cpuid, signal_fd, first_boot, user } = *ctx;
    let Platform { sink, console_input, cmos } = platform;
    let mut timing = StartupTiming::new();
    let ram_layout = match plan {
        BootPlan::Kernel { .. } => RamLayout::direct(cfg.memory.size),
        BootPlan::Firmware(_) => RamLayout::firmware(cfg.memory.size),
    };
    // Declared before the VM and the devices so it is dropped after them (KVM memslots
    // point into it); whoever holds a clone keeps it mapped longer.
    let ram = create_guest_memory(&cfg.memory, &ram_layout).context("allocating guest memory")?;
    let mem = &ram;
    let vm = Arc::new(Vm::create(kvm)?);
    vm.map_guest_memory(mem)?;
    timing.mark("memory");
    let stop = StopNotifier::new().context("creating the stop eventfd")?;
    crate::threads::report_panics_to(&stop);
    let mmio64 = ram_layout.mmio64_window(crate::vstate::cpuid::phys_bits(cpuid.as_slice()));
    let chipset = matches!(plan, BootPlan::Firmware(_)).then(|| Q35Chipset::new(&stop));
    if chipset.is_some() {
        let mut c = cmos.lock().unwrap_or_else(|e| e.into_inner());
        c.set_memory_size(ram_layout.low_end, ram_layout.high_size);
        c.set_cpu_count(cfg.vcpus);
    }
    let mut dm = DeviceManager::new(DeviceManagerConfig {
        seams: VmSeams::of(&vm),
        mmio64,
        stop: stop.clone(),
        console: sink.writer()?,
        cmos: Arc::clone(cmos),
        chipset,
        max_irq_routes: vm.max_irq_routes(),
    })?;
    // Reading the kernel and initramfs into guest RAM needs nothing from the devices, and
    // attaching passed-through devices mostly waits on the host (open, reset): done side
    // by side, the shorter of the two is hidden (0.3-0.6 s with a VFIO device in the testbed).
    let timed_load = || {
        let t = Instant::now();
        let images = match plan {
            BootPlan::Kernel { image, bzimage } => load_boot_images(mem, cfg, image, bzimage).map(Some),
            BootPlan::Firmware(_) => Ok(None),
        };
        (images, t.elapsed())
    };
    let (attached, devices_time, (images, kernel_time)) = std::thread::scope(|s| {
        // Scoped (it borrows guest RAM and the config), so not through `threads::spawn`:
        // the main thread's filter covers the loader's, which it installs first.
        let loader = std::thread::Builder::new().name("kernel-loader".into()).spawn_scoped(s, || {
            crate::threads::install_filter(ThreadKind::KernelLoader);
            timed_load()
        });
        let t = Instant::now();
        let attached = dm.attach_cli_devices(&vm, mem, cfg);
        let devices_time = t.elapsed();
        let loaded = match loader {
            Ok(h) => h.join().unwrap_or_else(|_| (Err(anyhow!("the kernel loading thread panicked")), Duration::ZERO)),
            // No thread to spare: load here instead.
            Err(_) => timed_load(),
        };
        (attached, devices_time, loaded)
    });
    attached?;
    let images = images?;
    *console_slot(console_input) = dm.serial();
    timing.mark_parallel(&[("devices", devices_time), ("kernel", kernel_time)]);

    let (entry, what) = match (plan, images) {
        (BootPlan::Kernel { bzimage, .. }, Some(images)) => {
            let pci_aml = dm.pci_aml()?;
            let aml: [&dyn acpi_tables::Aml; 2] = [&pci_aml, &crate::devices::ged::GedAml];
            let acpi = AcpiConfig {
                vcpus: cfg.vcpus,
                pci_last_bus: pci_aml.last_bus(),
                ecam_base: crate::layout::PCI_ECAM_START,
                pm: boot::acpi::PmRegisters::SleepPort,
                sb_aml: &aml,
            };
            let entry = boot::prepare(mem, &images, &cfg.cmdline, cfg.memory.size, &acpi)?;
            (Some(entry), bzimage.display().to_string())
        }
        (BootPlan::Firmware(f), _) => {
            let boot = boot::fw_cfg::FirmwareBoot {
                vcpus: cfg.vcpus,
                ram: ram_layout,
                cpuid_1: cpuid_leaf1(cpuid),
                uuid: f.uuid,
                boot_order: dm.boot_order(),
                kernel: f.kernel.clone(),
                linuxboot_rom: f.linuxboot_rom.clone(),
            };
            let fw_cfg = boot::fw_cfg::build(&boot, mem, firmware_acpi(&dm, cfg.vcpus, ram_layout)?)?;
            dm.attach_firmware(&f.files, mem, fw_cfg)?;
            (None, format!("firmware {}", f.files.code_path.display()))
        }
        _ => bail!("internal error: a kernel boot without its kernel"),
    };
    timing.mark("tables");

    let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
    for id in 0..cfg.vcpus {
        let vcpu = Vcpu::new(&vm, id)?;
        // Through firmware every vCPU starts from reset: the boot vCPU at 0xFFFFFFF0 in real
        // mode, the others waiting for INIT/SIPI (KVM's initial state).
        vcpu.configure(cpuid, cfg.vcpus, if id == 0 { entry } else { None })?;
        vcpus.push(vcpu);
    }
    timing.mark("vcpus");
    // The whole start, exec included, is what a user waits for; the stages above are only
    // the VM's part of it.
    let since_exec = match first_boot.then(process_age).flatten() {
        Some(age) => format!("; {} ms since viaduct started", age.as_millis()),
        None => String::new(),
    };
    log::info!(
        "booting {what} with {} vCPU(s) and {} MiB (set up in {}{since_exec})",
        cfg.vcpus,
        cfg.memory.size >> 20,
        timing
    );
    // Set-up is done (devices, disks, taps and the kernel are open): from here on viaduct
    // runs as --user, before the DMA mapping and the guest start.
    if let (true, Some(user)) = (first_boot, user) {
        user.apply(cfg.memory.size.saturating_add(hostadmin::MEMLOCK_MARGIN))?;
    }
    dm.start_background_work()?;
    let gate = VcpuGate::new();
    let mut threads = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let buses = dm.buses().clone();
        let vcpu_stop = stop.clone();
        let vcpu_gate = gate.clone();
        match crate::threads::spawn(ThreadKind::Vcpu, format!("vcpu{}", vcpu.id), move || {
            vcpu.run(&buses, &vcpu_stop, &vcpu_gate)
        }) {
            Ok(h) => threads.push(h),
            Err(e) => {
                stop.request(StopReason::Error(format!("starting a vCPU thread failed: {e}")));
                break;
            }
        }
    }

    control.boot_done(Ok(()));
    let kick = || kick_vcpus(&threads);
    let running = RunningVm { vm: &vm, devices: &dm, gate: &gate, kick: &kick, vcpus: threads.len(), stop: &stop };
    let waited = wait_for_stop(&stop, signal_fd, Some((&mut *control, &running)));
    // The teardown, in order: vCPUs (released from any wait, a pause included, first), then
    // every device and the VFIO container (DeviceManager::shutdown), then the VM, guest RAM
    // last.
    control.release_vcpus(&gate);
    dm.cancel_waits();
    stop_vcpus(threads);
    *console_slot(console_input) = None;
    dm.shutdown();
    drop(dm);
    drop(vm);
    drop(ram);
    waited?;
    stop.reason().ok_or_else(|| anyhow!("the VM stopped without a reason (internal error)"))
}

/// CPUID leaf 1 EAX (signature) and EDX (features), for SMBIOS.
fn cpuid_leaf1(cpuid: &CpuId) -> (u32, u32) {
    cpuid.as_slice().iter().find(|e| e.function == 1).map_or((0, 0), |e| (e.eax, e.edx))
}

/// The ACPI tables for the firmware, built when it first reads them: ECAM and the PM block
/// where it programmed them, the 32-bit windows it may allocate from.
fn firmware_acpi(
    dm: &DeviceManager,
    vcpus: u8,
    ram: RamLayout,
) -> anyhow::Result<impl Fn() -> Result<boot::acpi::AcpiTables, boot::acpi::AcpiError> + Send + 'static> {
    let source = dm.pci_aml_source();
    let chipset =
        dm.chipset().cloned().ok_or_else(|| anyhow!("internal error: firmware boot without the q35 chipset"))?;
    Ok(move || {
        let ecam = chipset.ecam();
        let windows = crate::layout::firmware_mmio32_windows(ram.low_end, ecam);
        let host = source.firmware_aml(ecam, &windows).map_err(|e| boot::acpi::AcpiError::Aml(e.to_string()))?;
        let aml: [&dyn acpi_tables::Aml; 2] = [&host, &crate::devices::ged::GedAml];
        // SeaBIOS and OVMF both put the PM block at 0x600 once fw_cfg has a table-loader.
        let pm_base = chipset.pm_base().unwrap_or(0x600);
        boot::acpi::build(&AcpiConfig {
            vcpus,
            pci_last_bus: host.last_bus(),
            ecam_base: ecam.map_or(crate::layout::FIRMWARE_LOW_RAM_MAX, |e| e.base),
            pm: boot::acpi::PmRegisters::Ich9 { pm_base },
            sb_aml: &aml,
        })
    })
}

/// The control loop while the guest runs: serves the API (when there is one) and blocks until
/// a vCPU, a device or the API asks to stop, or a stop signal arrives.
fn wait_for_stop(
    stop: &StopNotifier,
    signal_fd: &OwnedFd,
    mut api: Option<(&mut Control, &RunningVm)>,
) -> anyhow::Result<()> {
    const STOP_EVT: u64 = 0;
    const SIGNAL: u64 = 1;
    const API: u64 = 2;
    let epoll = Epoll::new().context("creating the control epoll")?;
    if let Some(api) = api.as_ref().and_then(|(control, _)| control.api()) {
        epoll
            .ctl(ControlOperation::Add, api.eventfd().as_raw_fd(), EpollEvent::new(EventSet::IN, API))
            .context("watching the API")?;
    }
    epoll
        .ctl(ControlOperation::Add, stop.eventfd().as_raw_fd(), EpollEvent::new(EventSet::IN, STOP_EVT))
        .context("watching the stop eventfd")?;
    epoll
        .ctl(ControlOperation::Add, signal_fd.as_raw_fd(), EpollEvent::new(EventSet::IN, SIGNAL))
        .context("watching the signalfd")?;
    let mut events = vec![EpollEvent::default(); 4];
    while !stop.is_requested() {
        // Requests that came in while the VM was being built are served first.
        if let Some((control, running)) = api.as_mut() {
            while let Some(call) = control.api().and_then(ApiServer::next_call) {
                control.serve_running(call, running);
            }
        }
        if stop.is_requested() {
            break;
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("waiting on the control epoll"),
        };
        for ev in &events[..n] {
            match ev.data() {
                SIGNAL => {
                    while let Some(sig) = signals::read_signal(signal_fd) {
                        stop.request(StopReason::Signal(sig));
                    }
                }
                STOP_EVT => {
                    let _ = stop.eventfd().read();
                }
                // API calls are taken at the top of the loop.
                _ => {}
            }
        }
    }
    Ok(())
}

/// Forces every vCPU thread out of KVM_RUN once (a pause checks its gate then).
fn kick_vcpus(threads: &[JoinHandle<()>]) {
    for t in threads.iter().filter(|t| !t.is_finished()) {
        if let Err(e) = t.kill(signals::vcpu_kick_signal()) {
            log::debug!("kicking a vCPU thread failed: {e}");
        }
    }
}

/// Kicks every vCPU out of KVM_RUN until its thread has seen the stop request and ended.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    // A kick that lands just before KVM_RUN is lost, hence the retry loop.
    while threads.iter().any(|t| !t.is_finished()) {
        for t in threads.iter().filter(|t| !t.is_finished()) {
            if let Err(e) = t.kill(signals::vcpu_kick_signal()) {
                log::debug!("kicking a vCPU thread failed: {e}");
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for t in threads {
        // A panic was reported by the panic hook (and is the run's error).
        let _ = t.join();
    }
}

/// The main thread's own seccomp filter (the filter it gets also allows what every other
/// kind of thread does: it starts them, see `seccomp`). It builds every VM: opens
/// /dev/kvm's VM and vCPUs, assigned devices (VFIO groups, containers, iommufd, sysfs for
/// `managed=on`), disks, taps, the kernel cache; maps guest RAM; runs the control loop
/// (epoll on eventfds and a signalfd) and tears down. Still no exec, ptrace, mount, module
/// loading, namespaces, or ioctls of devices viaduct does not drive.
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    use crate::seccomp::{block, iommufd, kvm, net, tty, vfio, ArgEq};
    r.allow(&[
        // Files: kernel, initramfs, disks, the kernel cache, sysfs, device nodes.
        libc::SYS_openat,
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_statfs,
        libc::SYS_fstatfs,
        libc::SYS_getdents64,
        libc::SYS_readlink,
        libc::SYS_readlinkat,
        libc::SYS_access,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_mkdir,
        libc::SYS_mkdirat,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_ftruncate,
        libc::SYS_fallocate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fcntl,
        libc::SYS_flock,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_fchmod,
        libc::SYS_getcwd,
        // Guest RAM (memfd, hugetlbfs).
        libc::SYS_memfd_create,
        // The control loop and device wiring.
        libc::SYS_eventfd2,
        libc::SYS_signalfd4,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_ppoll,
        libc::SYS_poll,
        libc::SYS_pipe2,
        // Kicking vCPUs out of KVM_RUN; signal handlers set at start.
        libc::SYS_tgkill,
        libc::SYS_rt_sigaction,
        // Bringing a tap up (an AF_INET datagram socket for SIOCSIFFLAGS); the API socket
        // (connect tells a live socket from a stale one).
        libc::SYS_socket,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_connect,
        // Threads: creation, and what a new thread does before its own filter is in place.
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        // Who runs viaduct (the default kernel cache, the memlock limit).
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_prlimit64,
        libc::SYS_uname,
        // --user: checking no capability is left after the switch.
        libc::SYS_capget,
    ]);
    // New threads name themselves and install their own filter.
    r.allow_when(libc::SYS_prctl, &[ArgEq::int(0, libc::PR_SET_NAME as u64)]);
    r.allow_when(libc::SYS_prctl, &[ArgEq::int(0, libc::PR_SET_NO_NEW_PRIVS as u64), ArgEq::int(1, 1)]);
    r.allow_when(libc::SYS_seccomp, &[ArgEq::int(0, u64::from(libc::SECCOMP_SET_MODE_FILTER)), ArgEq::int(1, 0)]);
    r.allow_ioctls(&[
        kvm::GET_API_VERSION,
        kvm::CREATE_VM,
        kvm::GET_MSR_INDEX_LIST,
        kvm::CHECK_EXTENSION,
        kvm::GET_VCPU_MMAP_SIZE,
        kvm::GET_SUPPORTED_CPUID,
        kvm::GET_MSR_FEATURE_INDEX_LIST,
        kvm::CREATE_VCPU,
        kvm::SET_USER_MEMORY_REGION,
        kvm::SET_TSS_ADDR,
        kvm::SET_IDENTITY_MAP_ADDR,
        kvm::CREATE_IRQCHIP,
        kvm::IRQ_LINE,
        kvm::GET_IRQCHIP,
        kvm::SET_IRQCHIP,
        kvm::SET_GSI_ROUTING,
        kvm::IRQFD,
        kvm::CREATE_PIT2,
        kvm::IOEVENTFD,
        kvm::SET_CLOCK,
        kvm::GET_CLOCK,
        kvm::GET_PIT2,
        kvm::SET_PIT2,
        kvm::ENABLE_CAP,
        kvm::SIGNAL_MSI,
        kvm::CREATE_DEVICE,
        kvm::SET_DEVICE_ATTR,
        kvm::GET_DEVICE_ATTR,
        kvm::HAS_DEVICE_ATTR,
        kvm::GET_REGS,
        kvm::SET_REGS,
        kvm::GET_SREGS,
        kvm::SET_SREGS,
        kvm::GET_MSRS,
        kvm::SET_MSRS,
        kvm::GET_FPU,
        kvm::SET_FPU,
        kvm::GET_LAPIC,
        kvm::SET_LAPIC,
        kvm::SET_CPUID2,
        kvm::GET_CPUID2,
        kvm::GET_MP_STATE,
        kvm::SET_MP_STATE,
        kvm::GET_VCPU_EVENTS,
        kvm::SET_VCPU_EVENTS,
        kvm::GET_XSAVE,
        kvm::SET_XSAVE,
        kvm::GET_XCRS,
        kvm::SET_XCRS,
        kvm::KVMCLOCK_CTRL,
        kvm::GET_TSC_KHZ,
        kvm::SET_TSC_KHZ,
        vfio::GET_API_VERSION,
        vfio::CHECK_EXTENSION,
        vfio::SET_IOMMU,
        vfio::IOMMU_GET_INFO,
        vfio::IOMMU_MAP_DMA,
        vfio::IOMMU_UNMAP_DMA,
        vfio::GROUP_GET_STATUS,
        vfio::GROUP_SET_CONTAINER,
        vfio::GROUP_UNSET_CONTAINER,
        vfio::GROUP_GET_DEVICE_FD,
        vfio::DEVICE_GET_INFO,
        vfio::DEVICE_GET_REGION_INFO,
        vfio::DEVICE_GET_IRQ_INFO,
        vfio::DEVICE_SET_IRQS,
        vfio::DEVICE_RESET,
        vfio::DEVICE_GET_PCI_HOT_RESET_INFO,
        vfio::DEVICE_PCI_HOT_RESET,
        vfio::DEVICE_FEATURE,
        vfio::DEVICE_BIND_IOMMUFD,
        vfio::DEVICE_ATTACH_IOMMUFD_PT,
        vfio::DEVICE_DETACH_IOMMUFD_PT,
        iommufd::DESTROY,
        iommufd::IOAS_ALLOC,
        iommufd::IOAS_ALLOW_IOVAS,
        iommufd::IOAS_IOVA_RANGES,
        iommufd::IOAS_MAP,
        iommufd::IOAS_MAP_FILE,
        iommufd::IOAS_UNMAP,
        iommufd::OPTION,
        iommufd::GET_HW_INFO,
        net::TUNSETIFF,
        net::TUNGETIFF,
        net::TUNGETFEATURES,
        net::TUNSETOFFLOAD,
        net::TUNSETVNETHDRSZ,
        net::TUNGETVNETHDRSZ,
        net::SIOCGIFFLAGS,
        net::SIOCSIFFLAGS,
        tty::TCGETS,
        tty::TIOCGWINSZ,
        tty::FIONBIO,
        tty::FIOCLEX,
        block::BLKGETSIZE64,
        block::BLKSSZGET,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn a_panicking_vmm_thread_ends_the_control_loop_with_its_name() {
        let _turn = crate::threads::PANIC_ROUTE.lock().unwrap_or_else(|e| e.into_inner());
        crate::threads::install_panic_hook();
        let stop = StopNotifier::new().unwrap();
        crate::threads::report_panics_to(&stop);
        let mut fds = [0; 2];
        // SAFETY: pipe fills the two-int array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are fresh and owned here only.
        let (quiet, _writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let vcpu = crate::threads::spawn(ThreadKind::Vcpu, "vcpu7", || {
            std::thread::sleep(Duration::from_millis(20));
            panic!("emulation bug");
        })
        .unwrap();
        wait_for_stop(&stop, &quiet, None).unwrap();
        assert!(vcpu.join().is_err());
        match stop.reason() {
            Some(StopReason::Error(line)) => {
                assert!(line.starts_with("thread vcpu7 panicked at") && line.ends_with("emulation bug"), "{line}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn process_age_is_this_process_lifetime() {
        let age = process_age().expect("/proc/self/stat and CLOCK_BOOTTIME");
        // The test binary started a moment ago, not long before.
        assert!(age < Duration::from_secs(3600), "{age:?}");
    }
}
