//! Command line -> typed, validated configuration. No device logic here.
//!
//! `--device`, `--disk` and `--net` are collected as [`DeviceSpec`]s (raw `key=value,...`
//! lists, already split by [`OptionList`]); the device managers that own those devices parse
//! their keys (see `device_manager`), so adding a device kind never touches this file.

use std::collections::BTreeMap;
use std::path::PathBuf;

#[cfg(test)]
use clap::{CommandFactory, FromArgMatches};
use clap::{Parser, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  viaduct --kernel bzImage --initramfs initrd.cpio.gz --cmdline 'console=ttyS0' \\
          --memory 512M --cpus 2
  viaduct --firmware /usr/share/seabios/bios-256k.bin --disk path=disk.img
  viaduct --firmware code=/usr/share/OVMF/OVMF_CODE_4M.fd,vars=vm1-vars.fd --disk path=disk.img
  viaduct --kernel bzImage --memory size=1G,hugepages=on --cpus boot=4 --serial file=/tmp/con
  viaduct --kernel bzImage --device path=/sys/bus/pci/devices/0000:01:10.0

Exit status: 0 when the guest powers off (or reboots with --on-reboot exit),
128+N when stopped by signal N (SIGTERM/SIGINT), 1 on any error.";

#[derive(Parser, Debug)]
#[command(name = "viaduct", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Guest kernel: a bzImage, or an ELF vmlinux with a PVH entry point. With --firmware,
    /// a bzImage the firmware boots. Needed unless --firmware or --api-socket is given (with
    /// only --api-socket the VM comes from the API's vm.create). Example: --kernel /boot/vmlinuz
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Boot through firmware on a q35-compatible platform: a SeaBIOS or combined OVMF image
    /// (UEFI variables then do not persist), or code=PATH,vars=PATH[,vars-template=PATH] for
    /// OVMF with a per-VM variable store (created from the template, by default the VARS
    /// file beside the code file, when it does not exist).
    /// Example: --firmware code=/usr/share/OVMF/OVMF_CODE_4M.fd,vars=/var/lib/vm1/vars.fd
    #[arg(long, value_name = "PATH|SPEC")]
    pub firmware: Option<String>,

    /// Initramfs (cpio, optionally compressed) loaded below the 32-bit hole.
    /// Example: --initramfs initrd.cpio.gz
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Where the kernel extracted from an xz bzImage is cached, so the guest skips its own
    /// decompressor and is entered through PVH (no KASLR); 'off' boots the bzImage as is.
    /// Default: /var/cache/viaduct (root) or ~/.cache/viaduct. Example: --kernel-cache off
    #[arg(long, value_name = "DIR|off", default_value = "default", hide_default_value = true)]
    pub kernel_cache: String,

    /// Kernel command line (default: console=ttyS0). Example: --cmdline 'console=ttyS0 quiet'
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,

    /// Guest RAM: size=SIZE[,hugepages=on][,shared=on]; a bare SIZE is accepted
    /// (suffixes K, M, G). Example: --memory size=1G,hugepages=on  or  --memory 512M
    #[arg(long, value_name = "SPEC", default_value = "size=512M")]
    pub memory: String,

    /// vCPUs: boot=N, or just N. Example: --cpus boot=2  or  --cpus 2
    #[arg(long, value_name = "SPEC", default_value = "boot=1")]
    pub cpus: String,

    /// Where COM1 goes: stdio, file=PATH or off. Example: --serial file=/tmp/console.log
    #[arg(long, value_name = "SPEC", default_value = "stdio")]
    pub serial: String,

    /// A host PCI device to pass through (repeatable):
    /// path=/sys/bus/pci/devices/BDF (or a bare BDF), or fd=N (a VFIO device cdev opened by
    /// the parent); iommu=iommufd|legacy|auto picks the IOMMU backend (auto: iommufd when
    /// the host has it). Example: --device path=/sys/bus/pci/devices/0000:01:10.0
    #[arg(long, value_name = "SPEC")]
    pub device: Vec<String>,

    /// An iommufd (/dev/iommu) opened by the parent, for devices passed with --device fd=N
    /// (otherwise viaduct opens /dev/iommu itself). Example: --iommufd fd=4
    #[arg(long, value_name = "SPEC")]
    pub iommufd: Option<String>,

    /// A virtio block disk (repeatable). Example: --disk path=disk.img
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<String>,

    /// A virtio network device (repeatable). Example: --net tap=tap0
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,

    /// A virtio-rng entropy device fed from the host's /dev/urandom. Example: --rng
    #[arg(long)]
    pub rng: bool,

    /// A synthetic PCI test function (1b36:0005, like QEMU's pci-testdev; repeatable), for
    /// checking enumeration and window sizing: barN=KIND:SIZE (KIND mem32, mem32-pf, mem64,
    /// mem64-pf, io), rom=SIZE, msix=VECTORS, port=on|off (own PCIe root port, default on).
    /// Example: --pci-synthetic bar0=mem32:16K,bar2=mem64-pf:64G,msix=4
    #[arg(long, value_name = "SPEC")]
    pub pci_synthetic: Vec<String>,

    /// What a guest reboot does: restart the guest, or exit viaduct with status 0.
    /// Example: --on-reboot restart
    #[arg(long, value_enum, value_name = "ACTION", default_value = "exit")]
    pub on_reboot: RebootAction,

    /// Serve the control API (cloud-hypervisor's REST endpoints, HTTP over a Unix socket
    /// created mode 0600): path=PATH, or just PATH. See docs/api.md.
    /// Example: --api-socket /run/viaduct/vm1.sock
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<String>,

    /// seccomp filters on every thread: true (a call outside a thread's filter ends viaduct
    /// with an error), false (no filters), log (allowed, logged by the kernel).
    /// Example: --seccomp log
    #[arg(long, value_enum, value_name = "true|false|log", default_value = "true")]
    pub seccomp: crate::seccomp::SeccompMode,

    /// Started as root: become this user (name, UID or UID:GID) once devices, disks, taps
    /// and /dev/kvm are open, before the guest runs; no capabilities are kept.
    /// Example: --user viaduct
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Log level for messages on stderr: off, error, warn, info, debug, trace.
    /// Example: --log-level info
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
}

/// `--kernel-cache`: where extracted kernels go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelCache {
    /// The per-user default (see `boot::vmlinux_cache::default_dir`).
    Default,
    Dir(PathBuf),
    Off,
}

impl KernelCache {
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        match spec {
            "default" => Ok(Self::Default),
            "off" => Ok(Self::Off),
            "" => Err(ConfigError::KernelCache),
            dir => Ok(Self::Dir(PathBuf::from(dir))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RebootAction {
    Restart,
    Exit,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--{flag}: '{item}' is not KEY=VALUE")]
    ParseOption { flag: &'static str, item: String },
    #[error("--{flag}: key '{key}' given twice")]
    DuplicateKey { flag: &'static str, key: String },
    #[error("--{flag}: unknown key '{key}' (known: {known})")]
    UnknownKey { flag: &'static str, key: String, known: &'static str },
    #[error("--{flag}: '{value}' is not a size (examples: 512M, 2G, 1048576)")]
    ParseSize { flag: &'static str, value: String },
    #[error("--{flag}: {key}='{value}' must be 'on' or 'off'")]
    ParseToggle { flag: &'static str, key: String, value: String },
    #[error("--{flag}: '{value}' is not a number")]
    ParseNumber { flag: &'static str, value: String },
    #[error("--memory: size {size} is out of range (minimum 64M, maximum 1T, multiple of 4K)")]
    MemorySize { size: u64 },
    #[error("--cpus: boot={count} is out of range (1..=254)")]
    CpuCount { count: u64 },
    #[error("--serial: '{0}' is not stdio, off or file=PATH")]
    Serial(String),
    #[error("--kernel-cache: give a directory or 'off'")]
    KernelCache,
    #[error("--{flag}: missing required key '{key}'")]
    MissingKey { flag: &'static str, key: &'static str },
    #[error("--{flag} needs --kernel (with only --api-socket the VM is configured by vm.create)")]
    NeedsKernel { flag: &'static str },
    #[error("nothing to boot: give --kernel (direct kernel boot), --firmware (boot through firmware), or --api-socket to configure the VM over the API")]
    NothingToBoot,
    #[error("--{flag} needs --kernel (without it the firmware boots a disk's own kernel)")]
    FirmwareNeedsKernel { flag: &'static str },
    #[error("--kernel-cache makes no sense with --firmware: the firmware boots the bzImage itself")]
    KernelCacheWithFirmware,
    #[error("--firmware: give PATH, or code=PATH,vars=PATH[,vars-template=PATH]")]
    FirmwareSpec,
    #[error("--user {0}: no such user")]
    UnknownUser(String),
}

/// What a VM boots from, on the command line and in the API's `payload`: a kernel, firmware,
/// or a kernel through firmware; an initramfs and a command line go with a kernel only.
pub fn check_boot_source(kernel: bool, firmware: bool, initramfs: bool, cmdline: bool) -> Result<(), ConfigError> {
    if kernel {
        return Ok(());
    }
    if !firmware {
        return Err(ConfigError::NothingToBoot);
    }
    if initramfs {
        return Err(ConfigError::FirmwareNeedsKernel { flag: "initramfs" });
    }
    if cmdline {
        return Err(ConfigError::FirmwareNeedsKernel { flag: "cmdline" });
    }
    Ok(())
}

/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// `--firmware`: one image, or OVMF's code and variable store as two files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirmwareSpec {
    Image(PathBuf),
    Split { code: PathBuf, vars: PathBuf, vars_template: Option<PathBuf> },
}

impl FirmwareSpec {
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let opts = OptionList::parse("firmware", spec, Some("path"))?;
        opts.check_keys("path,code,vars,vars-template")?;
        let path = |key| opts.get(key).filter(|p| !p.is_empty()).map(PathBuf::from);
        match (path("path"), path("code"), path("vars"), path("vars-template")) {
            (Some(image), None, None, None) => Ok(Self::Image(image)),
            (None, Some(code), Some(vars), template) => Ok(Self::Split { code, vars, vars_template: template }),
            (None, Some(_), None, _) => Err(ConfigError::MissingKey { flag: "firmware", key: "vars" }),
            _ => Err(ConfigError::FirmwareSpec),
        }
    }

    /// The spec as `--firmware` takes it (what `vm.info` shows).
    pub fn to_spec(&self) -> String {
        match self {
            Self::Image(path) => path.display().to_string(),
            Self::Split { code, vars, vars_template } => {
                let mut s = format!("code={},vars={}", code.display(), vars.display());
                if let Some(t) = vars_template {
                    s.push_str(&format!(",vars-template={}", t.display()));
                }
                s
            }
        }
    }
}

/// A `key=value,key=value` list. A leading bare value is stored under `default_key`
/// (so `--memory 512M` reads as `size=512M`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionList {
    pub flag: &'static str,
    values: BTreeMap<String, String>,
}

impl OptionList {
    pub fn parse(flag: &'static str, spec: &str, default_key: Option<&str>) -> Result<Self, ConfigError> {
        let mut values = BTreeMap::new();
        for (i, item) in spec.split(',').enumerate() {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) if !k.is_empty() => (k.to_string(), v.to_string()),
                None if i == 0 && default_key.is_some() && !item.is_empty() => {
                    (default_key.unwrap_or_default().to_string(), item.to_string())
                }
                _ => return Err(ConfigError::ParseOption { flag, item: item.to_string() }),
            };
            if values.insert(key.clone(), value).is_some() {
                return Err(ConfigError::DuplicateKey { flag, key });
            }
        }
        Ok(Self { flag, values })
    }

    /// An option list from `(key, value)` pairs (the API's JSON bodies), with the same
    /// duplicate-key rule as the command line.
    pub fn from_pairs(flag: &'static str, pairs: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut values = BTreeMap::new();
        for (key, value) in pairs {
            if values.insert(key.to_string(), value.clone()).is_some() {
                return Err(ConfigError::DuplicateKey { flag, key: key.to_string() });
            }
        }
        Ok(Self { flag, values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn require(&self, key: &'static str) -> Result<&str, ConfigError> {
        self.get(key).ok_or(ConfigError::MissingKey { flag: self.flag, key })
    }

    /// Refuses keys outside `known` (a comma-separated list, also used in the message).
    pub fn check_keys(&self, known: &'static str) -> Result<(), ConfigError> {
        match self.values.keys().find(|k| !known.split(',').any(|n| n == k.as_str())) {
            Some(key) => Err(ConfigError::UnknownKey { flag: self.flag, key: key.clone(), known }),
            None => Ok(()),
        }
    }

    pub fn toggle(&self, key: &str) -> Result<bool, ConfigError> {
        match self.get(key) {
            None | Some("off") => Ok(false),
            Some("on") => Ok(true),
            Some(v) => Err(ConfigError::ParseToggle { flag: self.flag, key: key.to_string(), value: v.to_string() }),
        }
    }
}

/// Parses `512M`, `2G`, `64K` or a plain byte count.
pub fn parse_size(flag: &'static str, value: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::ParseSize { flag, value: value.to_string() };
    let (digits, shift) = match value.char_indices().last() {
        Some((i, 'K' | 'k')) => (&value[..i], 10),
        Some((i, 'M' | 'm')) => (&value[..i], 20),
        Some((i, 'G' | 'g')) => (&value[..i], 30),
        Some((i, 'T' | 't')) => (&value[..i], 40),
        _ => (value, 0),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    pub size: u64,
    pub hugepages: bool,
    pub shared: bool,
}

impl MemoryConfig {
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let opts = OptionList::parse("memory", spec, Some("size"))?;
        opts.check_keys("size,hugepages,shared")?;
        let size = parse_size("memory", opts.require("size")?)?;
        Self::new(size, opts.toggle("hugepages")?, opts.toggle("shared")?)
    }

    /// The one place guest RAM sizes are checked (command line and API).
    pub fn new(size: u64, hugepages: bool, shared: bool) -> Result<Self, ConfigError> {
        if !(64 << 20..=1 << 40).contains(&size) || size % 4096 != 0 {
            return Err(ConfigError::MemorySize { size });
        }
        Ok(Self { size, hugepages, shared })
    }
}

pub fn parse_cpus(spec: &str) -> Result<u8, ConfigError> {
    let opts = OptionList::parse("cpus", spec, Some("boot"))?;
    opts.check_keys("boot")?;
    let value = opts.require("boot")?;
    let count: u64 = value.parse().map_err(|_| ConfigError::ParseNumber { flag: "cpus", value: value.to_string() })?;
    cpu_count(count)
}

/// The one place vCPU counts are checked (command line and API).
pub fn cpu_count(count: u64) -> Result<u8, ConfigError> {
    // APIC IDs are 8 bits in the xAPIC MADT entries we emit; 255 is the broadcast ID.
    match u8::try_from(count) {
        Ok(n @ 1..=254) => Ok(n),
        _ => Err(ConfigError::CpuCount { count }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    Stdio,
    File(PathBuf),
    Off,
}

impl SerialConfig {
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        match spec {
            "stdio" | "tty" => Ok(Self::Stdio),
            "off" | "null" => Ok(Self::Off),
            _ => match spec.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(ConfigError::Serial(spec.to_string())),
            },
        }
    }
}

/// One `--device`, `--disk` or `--net` occurrence; the owning device manager validates keys.
pub type DeviceSpec = OptionList;

/// What viaduct was started with: a VM from the command line, the API socket, or both.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// None: the VM comes from the API (`vm.create`).
    pub vm: Option<VmConfig>,
    pub api_socket: Option<PathBuf>,
    /// `--seccomp`, for every thread of the process.
    pub seccomp: crate::seccomp::SeccompMode,
    /// `--user`: who viaduct becomes once the first VM is set up.
    pub user: Option<crate::privilege::SwitchUser>,
}

/// The VM options a command line without --kernel must not have: they would be ignored.
const VM_FLAGS: &[&str] = &[
    "initramfs",
    "kernel-cache",
    "cmdline",
    "memory",
    "cpus",
    "serial",
    "device",
    "disk",
    "net",
    "rng",
    "pci-synthetic",
    "on-reboot",
];

impl TryFrom<&Cli> for RunConfig {
    type Error = ConfigError;

    fn try_from(cli: &Cli) -> Result<Self, ConfigError> {
        let api_socket = match &cli.api_socket {
            Some(spec) => {
                let opts = OptionList::parse("api-socket", spec, Some("path"))?;
                opts.check_keys("path")?;
                let path = opts.require("path")?;
                if path.is_empty() {
                    return Err(ConfigError::MissingKey { flag: "api-socket", key: "path" });
                }
                Some(PathBuf::from(path))
            }
            None => None,
        };
        let vm = if cli.kernel.is_some() || cli.firmware.is_some() {
            Some(VmConfig::try_from(cli)?)
        } else if api_socket.is_none() {
            return Err(ConfigError::NothingToBoot);
        } else {
            None
        };
        let user = match &cli.user {
            Some(u) => Some(crate::privilege::SwitchUser::lookup(u).map_err(|_| ConfigError::UnknownUser(u.clone()))?),
            None => None,
        };
        Ok(Self { vm, api_socket, seccomp: cli.seccomp, user })
    }
}

impl RunConfig {
    /// Refuses VM options next to `--api-socket` without `--kernel` or `--firmware` (given
    /// on the command line, not defaulted): the API's config would silently replace them.
    pub fn check_unused(cli: &Cli, matches: &clap::ArgMatches) -> Result<(), ConfigError> {
        if cli.kernel.is_some() || cli.firmware.is_some() {
            return Ok(());
        }
        for flag in VM_FLAGS {
            let id = flag.replace('-', "_");
            if matches.value_source(&id) == Some(clap::parser::ValueSource::CommandLine) {
                return Err(ConfigError::NeedsKernel { flag });
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Always there for direct boot; with firmware, a kernel the firmware boots (optional).
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    pub kernel_cache: KernelCache,
    pub cmdline: String,
    pub firmware: Option<FirmwareSpec>,
    pub memory: MemoryConfig,
    pub vcpus: u8,
    pub serial: SerialConfig,
    pub devices: Vec<DeviceSpec>,
    /// `--iommufd fd=N`, checked by device_manager::vfio.
    pub iommufd: Option<DeviceSpec>,
    pub disks: Vec<DeviceSpec>,
    pub nets: Vec<DeviceSpec>,
    pub rng: bool,
    /// `--pci-synthetic` specs, parsed by device_manager::testdev.
    pub pci_synthetic: Vec<String>,
    pub on_reboot: RebootAction,
}

impl TryFrom<&Cli> for VmConfig {
    type Error = ConfigError;

    fn try_from(cli: &Cli) -> Result<Self, ConfigError> {
        let list = |flag: &'static str, specs: &[String], default_key: &str| {
            specs.iter().map(|s| OptionList::parse(flag, s, Some(default_key))).collect::<Result<Vec<_>, _>>()
        };
        let firmware = cli.firmware.as_deref().map(FirmwareSpec::parse).transpose()?;
        check_boot_source(cli.kernel.is_some(), firmware.is_some(), cli.initramfs.is_some(), cli.cmdline.is_some())?;
        let kernel_cache = KernelCache::parse(&cli.kernel_cache)?;
        if firmware.is_some() && kernel_cache != KernelCache::Default {
            return Err(ConfigError::KernelCacheWithFirmware);
        }
        Ok(Self {
            kernel: cli.kernel.clone(),
            initramfs: cli.initramfs.clone(),
            kernel_cache,
            cmdline: cli.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            firmware,
            memory: MemoryConfig::parse(&cli.memory)?,
            vcpus: parse_cpus(&cli.cpus)?,
            serial: SerialConfig::parse(&cli.serial)?,
            devices: list("device", &cli.device, "path")?,
            iommufd: cli.iommufd.as_deref().map(|s| OptionList::parse("iommufd", s, Some("fd"))).transpose()?,
            disks: list("disk", &cli.disk, "path")?,
            nets: list("net", &cli.net, "tap")?,
            rng: cli.rng,
            pci_synthetic: cli.pci_synthetic.clone(),
            on_reboot: cli.on_reboot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<VmConfig, String> {
        let mut full = vec!["viaduct", "--kernel", "k"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        VmConfig::try_from(&cli).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = cli(&[]).unwrap();
        assert_eq!(c.memory, MemoryConfig { size: 512 << 20, hugepages: false, shared: false });
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.serial, SerialConfig::Stdio);
        assert_eq!(c.on_reboot, RebootAction::Exit);
        assert_eq!(c.kernel_cache, KernelCache::Default);
        assert_eq!(cli(&["--kernel-cache", "off"]).unwrap().kernel_cache, KernelCache::Off);
        assert_eq!(cli(&["--kernel-cache", "/c"]).unwrap().kernel_cache, KernelCache::Dir("/c".into()));
        assert!(cli(&["--kernel-cache", ""]).is_err());
    }

    fn run_cli(args: &[&str]) -> Result<RunConfig, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        RunConfig::try_from(&cli).map_err(|e| e.to_string())
    }

    #[test]
    fn process_options_go_with_or_without_a_vm() {
        let r = run_cli(&["viaduct", "--kernel", "k"]).unwrap();
        assert_eq!((r.seccomp, r.user), (crate::seccomp::SeccompMode::True, None));
        let r = run_cli(&["viaduct", "--api-socket", "/s", "--seccomp", "log", "--user", "0:0"]).unwrap();
        assert_eq!(r.seccomp, crate::seccomp::SeccompMode::Log);
        assert_eq!(r.user.map(|u| (u.uid, u.gid)), Some((0, 0)));
        assert_eq!(
            run_cli(&["viaduct", "--kernel", "k", "--seccomp", "false"]).unwrap().seccomp,
            crate::seccomp::SeccompMode::False
        );
        assert!(run_cli(&["viaduct", "--kernel", "k", "--seccomp", "off"]).is_err());
        assert!(run_cli(&["viaduct", "--kernel", "k", "--user", "no-such-user-here"]).is_err());
    }

    #[test]
    fn shorthands_and_full_forms() {
        let c = cli(&["--memory", "1G", "--cpus", "2"]).unwrap();
        assert_eq!(c.memory.size, 1 << 30);
        assert_eq!(c.vcpus, 2);
        let c = cli(&["--memory", "size=256M,hugepages=on,shared=on", "--cpus", "boot=4"]).unwrap();
        assert_eq!(c.memory, MemoryConfig { size: 256 << 20, hugepages: true, shared: true });
        assert_eq!(c.vcpus, 4);
        let c = cli(&["--serial", "file=/tmp/x", "--device", "/sys/x", "--device", "path=/y"]).unwrap();
        assert_eq!(c.serial, SerialConfig::File("/tmp/x".into()));
        assert_eq!(c.devices[0].get("path"), Some("/sys/x"));
        assert_eq!(c.devices[1].get("path"), Some("/y"));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for args in [
            &["--memory", "lots"][..],
            &["--memory", "size=1G,hugepages=maybe"],
            &["--memory", "size=1G,color=red"],
            &["--memory", "1"],
            &["--memory", "99999999999999999999T"],
            &["--memory", "size=1G,size=2G"],
            &["--cpus", "0"],
            &["--cpus", "255"],
            &["--cpus", "-1"],
            &["--cpus", "boot="],
            &["--serial", "pty"],
            &["--serial", "file="],
            &["--memory", ",,"],
            &["--on-reboot", "sometimes"],
        ] {
            assert!(cli(args).is_err(), "{args:?} was accepted");
        }
    }

    fn run(args: &[&str]) -> Result<RunConfig, String> {
        let mut full = vec!["viaduct"];
        full.extend_from_slice(args);
        let m = Cli::command().try_get_matches_from(full).map_err(|e| e.to_string())?;
        let cli = Cli::from_arg_matches(&m).map_err(|e| e.to_string())?;
        RunConfig::check_unused(&cli, &m).map_err(|e| e.to_string())?;
        RunConfig::try_from(&cli).map_err(|e| e.to_string())
    }

    #[test]
    fn api_socket_alone_or_beside_a_vm() {
        let r = run(&["--api-socket", "/tmp/a.sock"]).unwrap();
        assert!(r.vm.is_none());
        assert_eq!(r.api_socket, Some(PathBuf::from("/tmp/a.sock")));
        let r = run(&["--api-socket", "path=/tmp/b.sock", "--kernel", "k", "--memory", "1G"]).unwrap();
        assert_eq!(r.vm.unwrap().memory.size, 1 << 30);
        assert_eq!(r.api_socket, Some(PathBuf::from("/tmp/b.sock")));
        assert!(run(&[]).unwrap_err().contains("--kernel"));
        let e = run(&["--api-socket", "/tmp/a.sock", "--memory", "1G"]).unwrap_err();
        assert!(e.contains("--memory needs --kernel"), "{e}");
        assert!(run(&["--api-socket", "path="]).is_err());
        assert!(run(&["--api-socket", "path=/a,mode=0666"]).unwrap_err().contains("unknown key"));
        let r = run(&["--api-socket", "/tmp/a.sock", "--firmware", "/fw", "--memory", "1G"]).unwrap();
        assert!(r.vm.unwrap().kernel.is_none());
    }

    fn cli_raw(args: &[&str]) -> Result<VmConfig, String> {
        let mut full = vec!["viaduct"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        VmConfig::try_from(&cli).map_err(|e| e.to_string())
    }

    #[test]
    fn firmware_specs() {
        let c = cli_raw(&["--firmware", "/fw/bios.bin"]).unwrap();
        assert_eq!(c.firmware, Some(FirmwareSpec::Image("/fw/bios.bin".into())));
        assert_eq!((c.kernel, c.cmdline.as_str()), (None, DEFAULT_CMDLINE));
        let c = cli_raw(&["--firmware", "code=/c.fd,vars=/v.fd", "--kernel", "k", "--cmdline", "x"]).unwrap();
        assert_eq!(
            c.firmware,
            Some(FirmwareSpec::Split { code: "/c.fd".into(), vars: "/v.fd".into(), vars_template: None })
        );
        assert_eq!(c.kernel, Some("k".into()));
        let c = cli_raw(&["--firmware", "code=/c.fd,vars=/v.fd,vars-template=/t.fd"]).unwrap();
        assert!(matches!(c.firmware, Some(FirmwareSpec::Split { vars_template: Some(_), .. })));
        for (args, want) in [
            (&[][..], "nothing to boot"),
            (&["--firmware", "code=/c.fd"][..], "missing required key 'vars'"),
            (&["--firmware", "vars=/v.fd"], "give PATH, or code=PATH,vars=PATH"),
            (&["--firmware", "/a,code=/c,vars=/v"], "give PATH, or code=PATH,vars=PATH"),
            (&["--firmware", "path="], "give PATH"),
            (&["--firmware", "code=/c,vars=/v,colour=red"], "unknown key 'colour'"),
            (&["--firmware", "/fw", "--initramfs", "i"], "--initramfs needs --kernel"),
            (&["--firmware", "/fw", "--cmdline", "quiet"], "--cmdline needs --kernel"),
            (&["--firmware", "/fw", "--kernel", "k", "--kernel-cache", "off"], "--kernel-cache makes no sense"),
        ] {
            let err = cli_raw(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("m", "4096"), Ok(4096));
        assert_eq!(parse_size("m", "2k"), Ok(2048));
        assert_eq!(parse_size("m", "3G"), Ok(3 << 30));
        assert!(parse_size("m", "").is_err());
        assert!(parse_size("m", "G").is_err());
        assert!(parse_size("m", "1é").is_err());
    }
}
