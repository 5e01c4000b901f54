//! Pre-flight checks for device assignment: each finding says what is wrong and how to fix
//! it; `Severity::Block` findings mean VFIO assignment will fail.

use pci::Bdf;

use super::host::read_dir_names;
use super::{PciHost, VFIO_PCI};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("loading kernel module {module} (modprobe)")]
    LoadModule {
        module: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("modprobe {module} failed: {stderr}")]
    Modprobe { module: &'static str, stderr: String },
    #[error("--fix loads modules into the running kernel, not into a sysfs tree under {root}")]
    NotSystemRoot { root: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    /// Works, with a risk or a limit worth knowing.
    Warn,
    /// Assignment will fail until this is fixed.
    Block,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Block => "block",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable check id: iommu, interrupt-remapping, vfio-modules, memlock, device,
    /// vfio-driver, iommu-group, group-viability, in-use, reset.
    pub check: &'static str,
    /// The device it is about, for per-device checks.
    pub device: Option<Bdf>,
    pub severity: Severity,
    pub message: String,
    /// What to do; None when nothing needs doing.
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: &'static str, severity: Severity, message: impl Into<String>, fix: Option<&str>) -> Self {
        Self { check, device: None, severity, message: message.into(), fix: fix.map(str::to_string) }
    }

    fn on(mut self, bdf: Bdf) -> Self {
        self.device = Some(bdf);
        self
    }
}

/// What to check beyond the host-wide checks.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub devices: Vec<Bdf>,
    /// Guest memory that will be pinned for DMA, in bytes.
    pub memory: Option<u64>,
}

/// VFIO's IOMMU backends: the type1 module or iommufd.
const VFIO_MODULES: &[&str] = &["vfio-pci", "vfio_iommu_type1"];
const CAP_IPC_LOCK: u32 = 14;

/// Parses sizes like `512M`, `4G`, `1073741824` (binary units; optional `iB`/`B`).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

fn human_size(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (u, n) in UNITS {
        if b >= n && b % n == 0 {
            return format!("{}{u}", b / n);
        }
    }
    format!("{b}B")
}

impl PciHost {
    /// Runs every host-wide check, then the per-device checks for `opts.devices`.
    pub fn check(&self, opts: &CheckOptions) -> Vec<Finding> {
        let mut v = vec![self.check_iommu(), self.check_interrupt_remapping(), self.check_vfio_modules()];
        v.push(self.check_memlock(opts.memory));
        for bdf in &opts.devices {
            v.extend(self.check_device(*bdf));
        }
        v
    }

    fn check_iommu(&self) -> Finding {
        let units = read_dir_names(&self.path("sys/class/iommu"));
        let groups = self.iommu_groups();
        let cmdline = self.read_attr(&self.path("proc/cmdline")).unwrap_or_default();
        if groups.is_empty() {
            let (msg, fix) = if units.is_empty() {
                ("no IOMMU: the kernel found none (no /sys/class/iommu units, no IOMMU groups)",
                 "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, then boot with intel_iommu=on or amd_iommu=on")
            } else {
                ("an IOMMU is present but not enabled (no IOMMU groups)",
                 "boot with intel_iommu=on (Intel) or amd_iommu=on (AMD); check that iommu=off is not on the kernel command line")
            };
            return Finding::new("iommu", Severity::Block, msg, Some(fix));
        }
        let mut msg = format!("IOMMU on: {} unit(s) ({}), {} groups", units.len(), units.join(","), groups.len());
        if cmdline.split_whitespace().any(|w| w == "iommu=pt") {
            msg.push_str("; iommu=pt (host DMA untranslated, assigned devices still translated)");
        }
        Finding::new("iommu", Severity::Ok, msg, None)
    }

    fn check_interrupt_remapping(&self) -> Finding {
        let interrupts = self.read_attr(&self.path("proc/interrupts")).unwrap_or_default();
        // With remapping on, the kernel names its irqchips IR-IO-APIC / IR-PCI-MSI.
        if interrupts.contains("IR-") {
            return Finding::new("interrupt-remapping", Severity::Ok, "interrupt remapping on", None);
        }
        let unsafe_ok = self
            .read_attr(&self.path("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"))
            .map(|v| v == "Y" || v == "1")
            .unwrap_or(false);
        if unsafe_ok {
            return Finding::new("interrupt-remapping", Severity::Warn,
                "interrupt remapping off; VFIO allows assignment only because vfio_iommu_type1 allow_unsafe_interrupts=Y: an assigned device can send arbitrary MSIs to the host",
                Some("enable interrupt remapping (x2APIC / IR in the firmware; remove intremap=off or nointremap from the kernel command line)"));
        }
        Finding::new("interrupt-remapping", Severity::Block,
            "interrupt remapping off: VFIO refuses to attach devices (no IR- irqchips in /proc/interrupts)",
            Some("enable interrupt remapping (x2APIC / IR in the firmware, IOMMU on, no intremap=off); as an unsafe last resort: modprobe vfio_iommu_type1 allow_unsafe_interrupts=1"))
    }

    fn check_vfio_modules(&self) -> Finding {
        let mut missing = Vec::new();
        let vfio_pci = self.driver_loaded(VFIO_PCI);
        if !vfio_pci {
            missing.push("vfio-pci");
        }
        let type1 = self.path("sys/module/vfio_iommu_type1").is_dir();
        let iommufd = self.path("dev/iommu").exists();
        if !type1 && !iommufd {
            missing.push("vfio_iommu_type1");
        }
        let backend = if type1 { "vfio_iommu_type1" } else { "iommufd" };
        let variants = self.loaded_variant_modules();
        let with_variants =
            if variants.is_empty() { String::new() } else { format!(", variant drivers: {}", variants.join(" ")) };
        if missing.is_empty() {
            Finding::new(
                "vfio-modules",
                Severity::Ok,
                format!("vfio-pci loaded{with_variants}, IOMMU backend {backend}"),
                None,
            )
        } else if missing == ["vfio-pci"] && !variants.is_empty() {
            // Devices on a variant driver can be assigned; only binding needs vfio-pci.
            Finding::new(
                "vfio-modules",
                Severity::Warn,
                format!(
                    "vfio-pci not loaded{with_variants}, IOMMU backend {backend}: devices on a variant driver can be assigned, binding others needs vfio-pci"
                ),
                Some("modprobe vfio-pci (or run `viaductctl check --fix`)"),
            )
        } else {
            Finding::new(
                "vfio-modules",
                Severity::Block,
                format!("not loaded: {}", missing.join(", ")),
                Some("modprobe vfio-pci vfio_iommu_type1 (or run `viaductctl check --fix`)"),
            )
        }
    }

    fn has_cap_ipc_lock(&self) -> Option<bool> {
        let status = self.read_attr(&self.path("proc/self/status")).ok()?;
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
        let caps = u64::from_str_radix(hex, 16).ok()?;
        Some(caps & (1 << CAP_IPC_LOCK) != 0)
    }

    /// The soft RLIMIT_MEMLOCK from `/proc/self/limits` (None = unlimited).
    fn memlock_limit(&self) -> Option<Option<u64>> {
        let limits = self.read_attr(&self.path("proc/self/limits")).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max locked memory"))?;
        let soft = line.trim_start_matches("Max locked memory").split_whitespace().next()?;
        if soft == "unlimited" {
            return Some(None);
        }
        soft.parse().ok().map(Some)
    }

    fn check_memlock(&self, memory: Option<u64>) -> Finding {
        // VFIO pins guest RAM and charges it to RLIMIT_MEMLOCK unless the process has
        // CAP_IPC_LOCK (vfio_iommu_type1: vfio_lock_acct / capable(CAP_IPC_LOCK)).
        if self.has_cap_ipc_lock() == Some(true) {
            return Finding::new("memlock", Severity::Ok,
                "CAP_IPC_LOCK held: pinned guest memory is not limited by RLIMIT_MEMLOCK (for a process run the same way as this one)", None);
        }
        let limit = self.memlock_limit();
        let limit_text = match limit {
            Some(None) => "unlimited".to_string(),
            Some(Some(b)) => human_size(b),
            None => "unknown".to_string(),
        };
        match (memory, limit) {
            (_, Some(None)) => Finding::new("memlock", Severity::Ok, "RLIMIT_MEMLOCK unlimited", None),
            (Some(need), Some(Some(have))) if have >= need => Finding::new("memlock", Severity::Ok,
                format!("RLIMIT_MEMLOCK {limit_text} covers {} of guest memory", human_size(need)), None),
            (Some(need), _) => Finding::new("memlock", Severity::Block,
                format!("RLIMIT_MEMLOCK {limit_text} is below the {} of guest memory VFIO must pin, and there is no CAP_IPC_LOCK", human_size(need)),
                Some("raise the limit (ulimit -l unlimited, LimitMEMLOCK=infinity in a systemd unit, memlock in /etc/security/limits.conf) or grant CAP_IPC_LOCK")),
            (None, _) => Finding::new("memlock", Severity::Warn,
                format!("no CAP_IPC_LOCK and RLIMIT_MEMLOCK {limit_text}: a guest larger than that cannot get devices (pass --memory SIZE to check a guest size)"),
                Some("raise the limit (ulimit -l) or grant CAP_IPC_LOCK")),
        }
    }

    /// Per-device checks: exists, IOMMU group, group viability, reset.
    pub fn check_device(&self, bdf: Bdf) -> Vec<Finding> {
        let f = match self.function(bdf) {
            Ok(f) => f,
            Err(e) => {
                return vec![Finding::new(
                    "device",
                    Severity::Block,
                    e.to_string(),
                    Some("give a BDF from `viaductctl list`"),
                )
                .on(bdf)]
            }
        };
        let mut v = Vec::new();
        let drv = f.driver.as_deref().unwrap_or("no driver");
        v.push(
            Finding::new(
                "device",
                Severity::Ok,
                format!("{:04x}:{:04x} {} on {drv}", f.vendor, f.device, f.class_name()),
                None,
            )
            .on(bdf),
        );
        v.push(self.check_vfio_driver(bdf, drv).on(bdf));
        if f.is_bridge {
            v.push(
                Finding::new(
                    "device",
                    Severity::Block,
                    "a PCI bridge cannot be assigned",
                    Some("assign the devices behind it"),
                )
                .on(bdf),
            );
        }
        let Some(group) = f.iommu_group else {
            v.push(
                Finding::new(
                    "iommu-group",
                    Severity::Block,
                    "no IOMMU group",
                    Some("turn the IOMMU on (see the iommu finding)"),
                )
                .on(bdf),
            );
            return v;
        };
        let members = self.iommu_group_members(group);
        v.push(
            Finding::new(
                "iommu-group",
                Severity::Ok,
                format!("group {group}: {}", members.iter().map(Bdf::to_string).collect::<Vec<_>>().join(" ")),
                None,
            )
            .on(bdf),
        );
        // VFIO opens a group only when every member is on vfio-pci, has no driver, or is a
        // bridge (drivers/vfio/group.c, vfio_dev_driver_allowed).
        let blockers: Vec<String> = members
            .iter()
            .filter(|m| **m != bdf)
            .filter_map(|m| {
                let mf = self.function(*m).ok()?;
                let d = mf.driver?;
                (!mf.is_bridge && d != "pci-stub" && self.vfio_driver(*m).is_none()).then(|| format!("{m} ({d})"))
            })
            .collect();
        if blockers.is_empty() {
            v.push(Finding::new("group-viability", Severity::Ok, "every other group member is free", None).on(bdf));
        } else {
            v.push(
                Finding::new(
                    "group-viability",
                    Severity::Block,
                    format!("other group members are on host drivers: {}", blockers.join(", ")),
                    Some(&format!("bind the whole group: viaductctl bind {bdf} --group")),
                )
                .on(bdf),
            );
        }
        let uses = self.host_uses(bdf);
        if !uses.is_empty() {
            let list = uses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            v.push(
                Finding::new(
                    "in-use",
                    Severity::Warn,
                    format!("the host uses it: {list}"),
                    Some("take the interface down / unmount first; `viaductctl bind` refuses it otherwise (--force overrides)"),
                )
                .on(bdf),
            );
        }
        if f.reset_methods.is_empty() {
            v.push(
                Finding::new(
                    "reset",
                    Severity::Warn,
                    "the kernel has no reset method for it: state may leak between guests",
                    Some("prefer a device with FLR (e.g. an SR-IOV VF) or one alone behind its bridge (bus reset)"),
                )
                .on(bdf),
            );
        } else {
            v.push(
                Finding::new("reset", Severity::Ok, format!("reset methods: {}", f.reset_methods.join(" ")), None)
                    .on(bdf),
            );
        }
        v
    }

    /// Which VFIO driver the device is on, if any (see [`crate::VfioDriver`] for the rule).
    /// Not being on one yet blocks nothing: `viaductctl bind` or `managed=on` moves it.
    fn check_vfio_driver(&self, bdf: Bdf, drv: &str) -> Finding {
        const CHECK: &str = "vfio-driver";
        let Some(vfio) = self.vfio_driver(bdf) else {
            return Finding::new(
                CHECK,
                Severity::Ok,
                format!(
                    "not on a VFIO driver ({drv}): `viaductctl bind` or --device ...,managed=on moves it to vfio-pci"
                ),
                None,
            );
        };
        match self.vfio_node(bdf) {
            Some(node) => Finding::new(
                CHECK,
                Severity::Ok,
                format!("on {vfio}, opened through {}", self.display_path(node.path())),
                None,
            ),
            None => Finding::new(
                CHECK,
                Severity::Block,
                format!("on {vfio} but no VFIO device node (/dev/vfio/GROUP or /dev/vfio/devices/vfioN)"),
                Some("populate /dev (devtmpfs, udev), or rebind the device"),
            ),
        }
    }

    /// Loads the VFIO modules (`--fix`). Only for the running host.
    pub fn load_vfio_modules(&self) -> Result<(), CheckError> {
        if self.root() != std::path::Path::new("/") {
            return Err(CheckError::NotSystemRoot { root: self.root().display().to_string() });
        }
        for module in VFIO_MODULES {
            let out = std::process::Command::new("modprobe")
                .arg(module)
                .output()
                .map_err(|source| CheckError::LoadModule { module, source })?;
            if !out.status.success() {
                return Err(CheckError::Modprobe {
                    module,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Whether any finding blocks assignment.
pub fn blocked(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like, FakeSysfs};

    fn find<'a>(v: &'a [Finding], check: &str) -> &'a Finding {
        v.iter().find(|f| f.check == check).unwrap()
    }

    #[test]
    fn testbed_host_passes() {
        let f = testbed_like(temp_root("check").unwrap()).unwrap();
        let v = f.host().check(&CheckOptions { devices: vec![Bdf::new(0, 1, 0, 0).unwrap()], memory: Some(1 << 30) });
        assert!(!blocked(&v), "{v:#?}");
        assert!(find(&v, "group-viability").severity == Severity::Ok);
        assert!(find(&v, "reset").message.contains("flr"));
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    /// A VF on a variant driver: the check says which kind, counts it as a viable group
    /// member, and with only variant drivers loaded, a missing vfio-pci is a warning.
    #[test]
    fn variant_drivers_are_named_and_viable() {
        let f = testbed_like(temp_root("check-variant").unwrap()).unwrap();
        f.add_vfio_driver("mlx5_vfio_pci", "mlx5_vfio_pci").unwrap();
        let (a, b) = (Bdf::new(0, 5, 0, 1).unwrap(), Bdf::new(0, 5, 0, 2).unwrap());
        for bdf in [a, b] {
            let mut d = crate::fake::FakeDevice::new(bdf, 0x15b3, 0x101e, 0x020000);
            d.iommu_group = Some(31);
            d.native_driver = Some("mlx5_vfio_pci".into());
            f.add_device(&d).unwrap();
        }
        let h = f.host();
        let v = h.check_device(a);
        let d = find(&v, "vfio-driver");
        assert_eq!(d.severity, Severity::Ok);
        assert!(d.message.starts_with("on variant (mlx5_vfio_pci), opened through "), "{}", d.message);
        assert_eq!(find(&v, "group-viability").severity, Severity::Ok, "{v:#?}");
        let nvme = h.check_device(Bdf::new(0, 2, 0, 0).unwrap());
        assert!(find(&nvme, "vfio-driver").message.starts_with("not on a VFIO driver (nvme)"));
        assert!(find(&h.check(&CheckOptions::default()), "vfio-modules")
            .message
            .contains("variant drivers: mlx5_vfio_pci"));
        // vfio-pci unloaded: devices on the variant can still be assigned.
        std::fs::remove_dir_all(f.path("sys/bus/pci/drivers/vfio-pci")).unwrap();
        let m = h.check_vfio_modules();
        assert_eq!(m.severity, Severity::Warn, "{m:?}");
        std::fs::remove_file(f.path("sys/module/vfio_pci_core/holders/mlx5_vfio_pci")).unwrap();
        assert_eq!(h.check_vfio_modules().severity, Severity::Block);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn no_iommu_is_the_blocker() {
        let f = FakeSysfs::new(temp_root("check-noiommu").unwrap()).unwrap();
        let v = f.host().check(&CheckOptions::default());
        let i = find(&v, "iommu");
        assert_eq!(i.severity, Severity::Block);
        assert!(i.message.starts_with("no IOMMU"));
        assert!(i.fix.as_deref().unwrap().contains("intel_iommu=on"));
        assert_eq!(find(&v, "interrupt-remapping").severity, Severity::Block);
        assert_eq!(find(&v, "vfio-modules").severity, Severity::Block);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn memlock_without_cap_ipc_lock() {
        let f = testbed_like(temp_root("check-mem").unwrap()).unwrap();
        std::fs::write(f.path("proc/self/status"), "CapEff:\t0000000000000000\n").unwrap();
        let h = f.host();
        assert_eq!(h.check_memlock(Some(8 << 20)).severity, Severity::Ok);
        let m = h.check_memlock(Some(1 << 30));
        assert_eq!(m.severity, Severity::Block);
        assert!(m.message.contains("8M") && m.message.contains("1G"), "{}", m.message);
        assert_eq!(h.check_memlock(None).severity, Severity::Warn);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn a_shared_group_with_a_host_driver_blocks() {
        let f = testbed_like(temp_root("check-group").unwrap()).unwrap();
        let mut d = crate::fake::FakeDevice::new(Bdf::new(0, 1, 0, 1).unwrap(), 0x8086, 0x10c9, 0x020000);
        d.iommu_group = Some(7);
        d.native_driver = Some("igb".into());
        f.add_device(&d).unwrap();
        let v = f.host().check_device(Bdf::new(0, 1, 0, 0).unwrap());
        let g = find(&v, "group-viability");
        assert_eq!(g.severity, Severity::Block);
        assert!(g.message.contains("0000:01:00.1 (igb)"));
        let v = f.host().check_device(Bdf::new(0, 9, 0, 0).unwrap());
        assert_eq!(v[0].severity, Severity::Block);
        std::fs::remove_dir_all(f.root()).unwrap();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(human_size(3 << 30), "3G");
    }
}
