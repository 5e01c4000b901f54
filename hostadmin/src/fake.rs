//! A fake sysfs tree in a directory, for tests of code built on this layer (here and in
//! viaductctl). It lays out the same files and symlinks the kernel shows; `kernel_write`
//! (wired in by this crate's unit tests) plays the kernel's part when an attribute is written.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use pci::Bdf;

use super::PciHost;

/// Marks a fake driver directory as a VFIO driver's (only the fake kernel reads it).
const VFIO_MARK: &str = ".fake_vfio_driver";

/// One PCI function to put into a fake tree.
#[derive(Debug, Clone)]
pub struct FakeDevice {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// 24-bit class code, e.g. 0x020000 for an Ethernet controller.
    pub class: u32,
    pub iommu_group: Option<u32>,
    /// The driver the kernel would pick on its own; bound at creation when loaded.
    pub native_driver: Option<String>,
    /// `sriov_totalvfs`, for a physical function.
    pub total_vfs: Option<u32>,
    /// Device id of its VFs, for a physical function.
    pub vf_device: u16,
    /// Native driver of its VFs.
    pub vf_driver: Option<String>,
    pub ifname: Option<String>,
    pub reset_methods: String,
    /// (start, size, flags) of BARs 0..5.
    pub bars: Vec<(u64, u64, u64)>,
}

impl FakeDevice {
    pub fn new(bdf: Bdf, vendor: u16, device: u16, class: u32) -> Self {
        Self {
            bdf,
            vendor,
            device,
            class,
            iommu_group: None,
            native_driver: None,
            total_vfs: None,
            vf_device: 0,
            vf_driver: None,
            ifname: None,
            reset_methods: "flr bus".into(),
            bars: vec![(0xfe00_0000, 0x2_0000, 0x0004_0200)],
        }
    }
}

/// What the fake kernel's VFIO core shows when a device is bound to a VFIO driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeVfioKernel {
    /// `vfio-dev/vfioN` in the device's sysfs directory (Linux 6.1+).
    pub vfio_dev_dirs: bool,
    /// `/dev/vfio/devices/vfioN` (CONFIG_VFIO_DEVICE_CDEV; needs `vfio_dev_dirs`).
    pub cdev: bool,
    /// `/dev/vfio/<group>` (CONFIG_VFIO_GROUP).
    pub groups: bool,
}

impl Default for FakeVfioKernel {
    /// Debian 6.1's: vfio-dev directories and group nodes, no cdevs.
    fn default() -> Self {
        Self { vfio_dev_dirs: true, cdev: false, groups: true }
    }
}

/// A fake host tree rooted at a directory.
#[derive(Debug, Clone)]
pub struct FakeSysfs {
    root: PathBuf,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, value)
}

impl FakeSysfs {
    /// An empty host (no IOMMU, no devices) under `root`, which should be a fresh directory.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let f = Self { root: root.into() };
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers",
            "sys/kernel/iommu_groups",
            "sys/class/net",
            "sys/class/iommu",
            "sys/module",
            "proc/self",
            "dev",
            "run",
        ] {
            fs::create_dir_all(f.root.join(d))?;
        }
        write(&f.root.join("sys/bus/pci/drivers_probe"), "")?;
        write(&f.root.join("proc/cmdline"), "console=ttyS0\n")?;
        write(&f.root.join("proc/interrupts"), "           CPU0\n  0:  10  IO-APIC   2-edge  timer\n")?;
        write(&f.root.join("proc/self/status"), "Name:\tx\nCapEff:\t000001ffffffffff\n")?;
        write(
            &f.root.join("proc/self/limits"),
            "Max locked memory         8388608              8388608              bytes     \n",
        )?;
        Ok(f)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn host(&self) -> PciHost {
        PciHost::new(&self.root)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Registers a PCI driver (as loading its module would).
    pub fn add_driver(&self, name: &str) -> io::Result<()> {
        let d = self.root.join("sys/bus/pci/drivers").join(name);
        fs::create_dir_all(&d)?;
        write(&d.join("bind"), "")?;
        write(&d.join("unbind"), "")?;
        write(&d.join("new_id"), "")
    }

    /// Registers a VFIO PCI driver (vfio-pci or a variant) from `module`, which links
    /// vfio-pci-core. Devices bound to it get what the VFIO core makes (see
    /// [`FakeVfioKernel`]).
    pub fn add_vfio_driver(&self, name: &str, module: &str) -> io::Result<()> {
        self.add_driver(name)?;
        let ddir = self.root.join("sys/bus/pci/drivers").join(name);
        let mdir = self.root.join("sys/module").join(module);
        fs::create_dir_all(&mdir)?;
        symlink(&mdir, ddir.join("module"))?;
        let holders = self.root.join("sys/module/vfio_pci_core/holders");
        fs::create_dir_all(&holders)?;
        symlink(&mdir, holders.join(module))?;
        write(&ddir.join(VFIO_MARK), "")
    }

    /// Sets what the VFIO core shows for devices bound from now on.
    pub fn set_vfio_kernel(&self, k: FakeVfioKernel) -> io::Result<()> {
        let flags = [(k.vfio_dev_dirs, "vfio_dev_dirs"), (k.cdev, "cdev"), (k.groups, "groups")];
        let words: Vec<&str> = flags.iter().filter(|(on, _)| *on).map(|(_, w)| *w).collect();
        write(&self.root.join(".fake_vfio_kernel"), &words.join(" "))
    }

    fn vfio_kernel(&self) -> FakeVfioKernel {
        match fs::read_to_string(self.root.join(".fake_vfio_kernel")) {
            Ok(s) => {
                let has = |w: &str| s.split_whitespace().any(|x| x == w);
                FakeVfioKernel { vfio_dev_dirs: has("vfio_dev_dirs"), cdev: has("cdev"), groups: has("groups") }
            }
            Err(_) => FakeVfioKernel::default(),
        }
    }

    fn group_of(&self, bdf: Bdf) -> Option<String> {
        let target = fs::read_link(self.device_dir(bdf).join("iommu_group")).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The VFIO core registering a device: vfio-dev/vfioN, its cdev, its group's node.
    fn vfio_register(&self, bdf: Bdf) -> io::Result<()> {
        let k = self.vfio_kernel();
        let seq_file = self.root.join(".fake_vfio_seq");
        let n: u32 = self.read(&seq_file).parse().unwrap_or(0);
        fs::write(&seq_file, (n + 1).to_string())?;
        if k.vfio_dev_dirs {
            fs::create_dir_all(self.device_dir(bdf).join("vfio-dev").join(format!("vfio{n}")))?;
            if k.cdev {
                write(&self.root.join("dev/vfio/devices").join(format!("vfio{n}")), "")?;
            }
        }
        if let (true, Some(g)) = (k.groups, self.group_of(bdf)) {
            write(&self.root.join("dev/vfio").join(g), "")?;
        }
        Ok(())
    }

    /// The VFIO core letting go of a device; the group node goes with its last VFIO member.
    fn vfio_unregister(&self, bdf: Bdf) -> io::Result<()> {
        let vdir = self.device_dir(bdf).join("vfio-dev");
        for name in crate::host::read_dir_names(&vdir) {
            let _ = fs::remove_file(self.root.join("dev/vfio/devices").join(name));
        }
        let _ = fs::remove_dir_all(vdir);
        let Some(g) = self.group_of(bdf) else { return Ok(()) };
        let members = crate::host::read_dir_names(&self.root.join("sys/kernel/iommu_groups").join(&g).join("devices"));
        let still_vfio = members.iter().any(|m| {
            m != &bdf.to_string()
                && fs::read_link(self.root.join("sys/bus/pci/devices").join(m).join("driver"))
                    .is_ok_and(|d| d.join(VFIO_MARK).exists())
        });
        if !still_vfio {
            let _ = fs::remove_file(self.root.join("dev/vfio").join(g));
        }
        Ok(())
    }

    /// Adds a process as `/proc/PID` shows it: `stat` with its state letter (`S`, `R`, `Z`...),
    /// `comm`, and an `exe` link to `exe` (None: no link, as when it cannot be read).
    pub fn add_process(&self, pid: u32, comm: &str, exe: Option<&str>, state: char) -> io::Result<()> {
        let dir = self.root.join("proc").join(pid.to_string());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        write(&dir.join("stat"), &format!("{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560\n"))?;
        write(&dir.join("comm"), &format!("{comm}\n"))?;
        if let Some(exe) = exe {
            symlink(exe, dir.join("exe"))?;
        }
        Ok(())
    }

    /// Adds a kernel module directory (`/sys/module/NAME`).
    pub fn add_module(&self, name: &str) -> io::Result<()> {
        fs::create_dir_all(self.root.join("sys/module").join(name))
    }

    /// Makes the host look like it has a working IOMMU with interrupt remapping.
    pub fn add_iommu(&self) -> io::Result<()> {
        fs::create_dir_all(self.root.join("sys/class/iommu/dmar0/intel-iommu"))?;
        write(&self.root.join("sys/class/iommu/dmar0/intel-iommu/ecap"), "f0207ae\n")?;
        write(&self.root.join("proc/cmdline"), "console=ttyS0 intel_iommu=on\n")?;
        write(&self.root.join("proc/interrupts"), "           CPU0\n 24:  5  IR-PCI-MSI-0000:01:00.0   0-edge  eth0\n")
    }

    pub fn add_device(&self, dev: &FakeDevice) -> io::Result<()> {
        let dir = self.root.join("sys/bus/pci/devices").join(dev.bdf.to_string());
        fs::create_dir_all(&dir)?;
        write(&dir.join("vendor"), &format!("0x{:04x}\n", dev.vendor))?;
        write(&dir.join("device"), &format!("0x{:04x}\n", dev.device))?;
        write(&dir.join("subsystem_vendor"), &format!("0x{:04x}\n", dev.vendor))?;
        write(&dir.join("subsystem_device"), "0x0000\n")?;
        write(&dir.join("class"), &format!("0x{:06x}\n", dev.class))?;
        write(&dir.join("numa_node"), "-1\n")?;
        write(&dir.join("driver_override"), "(null)\n")?;
        write(&dir.join("reset"), "")?;
        if !dev.reset_methods.is_empty() {
            write(&dir.join("reset_method"), &format!("{}\n", dev.reset_methods))?;
        }
        // Header type at 0x0e: 1 for bridges.
        let mut config = vec![0u8; 64];
        config[0..2].copy_from_slice(&dev.vendor.to_le_bytes());
        config[2..4].copy_from_slice(&dev.device.to_le_bytes());
        config[0x0e] = u8::from(dev.class >> 8 == 0x0604);
        fs::write(dir.join("config"), &config)?;
        let mut res = String::new();
        for i in 0..13 {
            let (start, size, flags) = dev.bars.get(i).copied().unwrap_or((0, 0, 0));
            let end = if size == 0 { 0 } else { start + size - 1 };
            res.push_str(&format!("0x{start:016x} 0x{end:016x} 0x{flags:016x}\n"));
        }
        write(&dir.join("resource"), &res)?;
        if let Some(native) = &dev.native_driver {
            write(&dir.join(".native_driver"), native)?;
        }
        if let Some(g) = dev.iommu_group {
            let gdir = self.root.join("sys/kernel/iommu_groups").join(g.to_string());
            fs::create_dir_all(gdir.join("devices"))?;
            symlink(&dir, gdir.join("devices").join(dev.bdf.to_string()))?;
            symlink(&gdir, dir.join("iommu_group"))?;
        }
        if let Some(total) = dev.total_vfs {
            write(&dir.join("sriov_totalvfs"), &format!("{total}\n"))?;
            write(&dir.join("sriov_numvfs"), "0\n")?;
            write(&dir.join("sriov_drivers_autoprobe"), "1\n")?;
            write(&dir.join("sriov_offset"), "128\n")?;
            write(&dir.join("sriov_stride"), "2\n")?;
            write(&dir.join("sriov_vf_device"), &format!("{:04x}\n", dev.vf_device))?;
            write(&dir.join(".vf_driver"), dev.vf_driver.as_deref().unwrap_or(""))?;
        }
        if let Some(ifname) = &dev.ifname {
            fs::create_dir_all(dir.join("net").join(ifname))?;
            let ndir = self.root.join("sys/class/net").join(ifname);
            fs::create_dir_all(&ndir)?;
            symlink(&dir, ndir.join("device"))?;
        }
        if let Some(native) = &dev.native_driver {
            if self.root.join("sys/bus/pci/drivers").join(native).is_dir() {
                self.bind(dev.bdf, native)?;
            }
        }
        Ok(())
    }

    /// Binds a device to a driver by making the kernel's links.
    pub fn bind(&self, bdf: Bdf, driver: &str) -> io::Result<()> {
        let dir = self.root.join("sys/bus/pci/devices").join(bdf.to_string());
        let ddir = self.root.join("sys/bus/pci/drivers").join(driver);
        symlink(&ddir, dir.join("driver"))?;
        symlink(&dir, ddir.join(bdf.to_string()))?;
        if ddir.join(VFIO_MARK).exists() {
            self.vfio_register(bdf)?;
        }
        Ok(())
    }

    pub fn unbind(&self, bdf: Bdf) -> io::Result<()> {
        let dir = self.root.join("sys/bus/pci/devices").join(bdf.to_string());
        if let Ok(target) = fs::read_link(dir.join("driver")) {
            let _ = fs::remove_file(target.join(bdf.to_string()));
            fs::remove_file(dir.join("driver"))?;
            if target.join(VFIO_MARK).exists() {
                self.vfio_unregister(bdf)?;
            }
        }
        Ok(())
    }

    fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.root.join("sys/bus/pci/devices").join(bdf.to_string())
    }

    fn read(&self, path: &Path) -> String {
        fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
    }

    /// The kernel's pci_device_can_probe(): a VF of a PF with sriov_drivers_autoprobe=0 is
    /// probed only when it has a driver_override.
    fn can_probe(&self, bdf: Bdf) -> bool {
        let dir = self.device_dir(bdf);
        let ov = self.read(&dir.join("driver_override"));
        let has_override = !ov.is_empty() && ov != "(null)";
        let autoprobe = self.read(&dir.join("physfn/sriov_drivers_autoprobe"));
        has_override || autoprobe != "0"
    }

    fn probe(&self, bdf: Bdf) -> io::Result<()> {
        let dir = self.device_dir(bdf);
        if dir.join("driver").exists() || !self.can_probe(bdf) {
            return Ok(());
        }
        let ov = self.read(&dir.join("driver_override"));
        let pick = if !ov.is_empty() && ov != "(null)" { ov } else { self.read(&dir.join(".native_driver")) };
        if !pick.is_empty() && self.root.join("sys/bus/pci/drivers").join(&pick).is_dir() {
            self.bind(bdf, &pick)?;
        }
        Ok(())
    }

    /// The kernel's reaction to an attribute write, as far as the sysfs layer relies on it.
    /// Returns an error where the kernel's store handler would.
    pub fn kernel_write(&self, path: &Path, value: &str) -> io::Result<()> {
        let rel = path.strip_prefix(&self.root).map_err(|_| io::Error::from_raw_os_error(libc::ENOENT))?;
        let parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        match parts.as_slice() {
            ["sys", "bus", "pci", "drivers_probe"] => self.probe(value.parse().map_err(|_| einval())?),
            ["sys", "bus", "pci", "drivers", drv, "unbind"] => {
                let bdf: Bdf = value.parse().map_err(|_| einval())?;
                let ddir = self.root.join("sys/bus/pci/drivers").join(drv);
                if !ddir.join(bdf.to_string()).exists() {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                self.unbind(bdf)
            }
            ["sys", "bus", "pci", "drivers", drv, "bind"] => {
                let bdf: Bdf = value.parse().map_err(|_| einval())?;
                if self.device_dir(bdf).join("driver").exists() {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                if !self.can_probe(bdf) {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                self.bind(bdf, drv)
            }
            ["sys", "bus", "pci", "devices", bdf, "driver_override"] => {
                if value.is_empty() {
                    fs::write(self.device_dir(bdf.parse().map_err(|_| einval())?).join("driver_override"), "(null)\n")?;
                }
                Ok(())
            }
            ["sys", "bus", "pci", "devices", bdf, "sriov_numvfs"] => {
                let pf: Bdf = bdf.parse().map_err(|_| einval())?;
                let n: u32 = value.parse().map_err(|_| einval())?;
                self.set_num_vfs(pf, n)
            }
            _ => Ok(()),
        }
    }

    /// VFs at function offset 128, stride 2 (the igb layout: 01:00.0 -> 01:10.0, 01:10.2...).
    fn vf_bdf(pf: Bdf, i: u32) -> Bdf {
        let rid = u32::from(pf.devfn()) + 128 + 2 * i;
        Bdf::from_devfn(pf.segment(), pf.bus(), (rid & 0xff) as u8)
    }

    fn set_num_vfs(&self, pf: Bdf, n: u32) -> io::Result<()> {
        let dir = self.device_dir(pf);
        let total: u32 = self.read(&dir.join("sriov_totalvfs")).parse().unwrap_or(0);
        // The file already holds the new value: the real "current" is the virtfn count.
        let current = (0..total).filter(|i| dir.join(format!("virtfn{i}")).exists()).count() as u32;
        if n > total {
            return Err(io::Error::from_raw_os_error(libc::ERANGE));
        }
        if n != 0 && current != 0 {
            fs::write(dir.join("sriov_numvfs"), format!("{current}\n"))?;
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        for i in 0..current {
            let vf = Self::vf_bdf(pf, i);
            self.unbind(vf)?;
            let _ = fs::remove_dir_all(self.device_dir(vf));
            fs::remove_file(dir.join(format!("virtfn{i}")))?;
        }
        let vendor = u16::from_str_radix(self.read(&dir.join("vendor")).trim_start_matches("0x"), 16).unwrap_or(0);
        let vf_device = u16::from_str_radix(&self.read(&dir.join("sriov_vf_device")), 16).unwrap_or(0);
        let vf_driver = self.read(&dir.join(".vf_driver"));
        let autoprobe = self.read(&dir.join("sriov_drivers_autoprobe")) == "1";
        let next_group = self.host().iommu_groups().last().map_or(0, |g| g + 1);
        for i in 0..n {
            let vf = Self::vf_bdf(pf, i);
            let mut d = FakeDevice::new(vf, vendor, vf_device, 0x020000);
            d.iommu_group = Some(next_group + i);
            d.native_driver = (!vf_driver.is_empty()).then(|| vf_driver.clone());
            d.reset_methods = "flr".into();
            let bind_now = autoprobe && d.native_driver.is_some();
            let native = d.native_driver.take();
            self.add_device(&d)?;
            if let Some(native) = native {
                write(&self.device_dir(vf).join(".native_driver"), &native)?;
                if bind_now && self.root.join("sys/bus/pci/drivers").join(&native).is_dir() {
                    self.bind(vf, &native)?;
                }
            }
            symlink(&dir, self.device_dir(vf).join("physfn"))?;
            symlink(self.device_dir(vf), dir.join(format!("virtfn{i}")))?;
        }
        fs::write(dir.join("sriov_numvfs"), format!("{n}\n"))
    }
}

/// A fresh, empty directory for one test's fake tree.
pub fn temp_root(tag: &str) -> io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "viaduct-fake-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
impl FakeSysfs {
    /// The host view with this fake kernel reacting to writes.
    pub(crate) fn live_host(&self) -> PciHost {
        let me = self.clone();
        let mut h = PciHost::new(&self.root);
        h.kernel = Some(std::sync::Arc::new(move |_h: &PciHost, p: &Path, v: &str| me.kernel_write(p, v)));
        h
    }
}

/// The testbed's shape: igb PF 01:00.0 with 7 VFs possible, an NVMe at 02:00.0, a root port
/// at 00:01.0, drivers loaded.
pub fn testbed_like(root: impl Into<PathBuf>) -> io::Result<FakeSysfs> {
    let f = FakeSysfs::new(root)?;
    for d in ["igb", "igbvf", "nvme", "pcieport"] {
        f.add_driver(d)?;
    }
    for m in ["vfio", "vfio_iommu_type1", "vfio_pci_core"] {
        f.add_module(m)?;
    }
    f.add_vfio_driver("vfio-pci", "vfio_pci")?;
    fs::create_dir_all(f.path("dev/vfio"))?;
    write(&f.path("dev/vfio/vfio"), "")?;
    f.add_iommu()?;
    let mut rp = FakeDevice::new(Bdf::from_devfn(0, 0, 1 << 3), 0x1b36, 0x000c, 0x060400);
    rp.iommu_group = Some(1);
    rp.native_driver = Some("pcieport".into());
    rp.bars.clear();
    f.add_device(&rp)?;
    let mut pf = FakeDevice::new(Bdf::from_devfn(0, 1, 0), 0x8086, 0x10c9, 0x020000);
    pf.iommu_group = Some(7);
    pf.native_driver = Some("igb".into());
    pf.total_vfs = Some(7);
    pf.vf_device = 0x10ca;
    pf.vf_driver = Some("igbvf".into());
    pf.ifname = Some("eth0".into());
    pf.bars = vec![
        (0xfe80_0000, 0x2_0000, 0x0004_0200),
        (0, 0, 0),
        (0xc000, 0x20, 0x101),
        (0xfe82_0000, 0x4000, 0x0004_0200),
    ];
    f.add_device(&pf)?;
    let mut nvme = FakeDevice::new(Bdf::from_devfn(0, 2, 0), 0x1b36, 0x0010, 0x010802);
    nvme.iommu_group = Some(8);
    nvme.native_driver = Some("nvme".into());
    f.add_device(&nvme)?;
    Ok(f)
}
