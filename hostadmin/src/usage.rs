//! Whether the host itself uses a device: taking it away would cut a live network link or
//! yank a mounted filesystem (dpdk-devbind refuses "active" interfaces for the same reason).

use std::fmt;
use std::fs;

use pci::Bdf;

use super::host::read_dir_names;
use super::PciHost;

/// One way the host uses a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostUse {
    /// A network interface of the device is administratively up.
    InterfaceUp(String),
    /// A block device (or partition) of the device is mounted.
    Mounted { device: String, mountpoint: String },
    /// A block device (or partition) of the device is active swap.
    Swap(String),
}

impl fmt::Display for HostUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostUse::InterfaceUp(i) => write!(f, "interface {i} is up"),
            HostUse::Mounted { device, mountpoint } => {
                write!(f, "/dev/{device} is mounted on {mountpoint}")
            }
            HostUse::Swap(d) => write!(f, "/dev/{d} is swap"),
        }
    }
}

const IFF_UP: u64 = 1;

impl PciHost {
    /// Block devices (and partitions) whose sysfs node lies under the PCI function's.
    fn block_devices(&self, bdf: Bdf) -> Vec<String> {
        let Ok(dev) = fs::canonicalize(self.device_dir(bdf)) else {
            return Vec::new();
        };
        let class = self.path("sys/class/block");
        let mut v: Vec<String> = read_dir_names(&class)
            .into_iter()
            .filter(|name| fs::canonicalize(class.join(name)).is_ok_and(|p| p.starts_with(&dev)))
            .collect();
        v.sort();
        v
    }

    /// How the host uses the function right now; empty when it is free to take.
    pub fn host_uses(&self, bdf: Bdf) -> Vec<HostUse> {
        let mut uses = Vec::new();
        for ifname in self.net_interfaces(bdf) {
            let flags = self.read_attr(&self.path("sys/class/net").join(&ifname).join("flags")).unwrap_or_default();
            let flags = u64::from_str_radix(flags.trim_start_matches("0x"), 16).unwrap_or(0);
            if flags & IFF_UP != 0 {
                uses.push(HostUse::InterfaceUp(ifname));
            }
        }
        let blocks = self.block_devices(bdf);
        if blocks.is_empty() {
            return uses;
        }
        let mounts = self.read_attr(&self.path("proc/mounts")).unwrap_or_default();
        for line in mounts.lines() {
            let mut w = line.split_whitespace();
            let (Some(src), Some(mnt)) = (w.next(), w.next()) else {
                continue;
            };
            if let Some(name) = src.strip_prefix("/dev/").filter(|n| blocks.iter().any(|b| b == n)) {
                uses.push(HostUse::Mounted { device: name.to_string(), mountpoint: mnt.to_string() });
            }
        }
        let swaps = self.read_attr(&self.path("proc/swaps")).unwrap_or_default();
        for line in swaps.lines().skip(1) {
            if let Some(name) = line.split_whitespace().next().and_then(|s| s.strip_prefix("/dev/")) {
                if blocks.iter().any(|b| b == name) {
                    uses.push(HostUse::Swap(name.to_string()));
                }
            }
        }
        uses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, testbed_like};

    #[test]
    fn up_interfaces_and_mounted_disks_are_uses() {
        let f = testbed_like(temp_root("usage").unwrap()).unwrap();
        let h = f.host();
        let pf = Bdf::new(0, 1, 0, 0).unwrap();
        let nvme = Bdf::new(0, 2, 0, 0).unwrap();
        assert!(h.host_uses(pf).is_empty());
        fs::write(f.path("sys/class/net/eth0/flags"), "0x1003\n").unwrap();
        assert_eq!(h.host_uses(pf), vec![HostUse::InterfaceUp("eth0".into())]);
        fs::write(f.path("sys/class/net/eth0/flags"), "0x1002\n").unwrap();
        assert!(h.host_uses(pf).is_empty());

        let ns = h.device_dir(nvme).join("nvme/nvme0/nvme0n1");
        fs::create_dir_all(ns.join("nvme0n1p1")).unwrap();
        fs::create_dir_all(f.path("sys/class/block")).unwrap();
        std::os::unix::fs::symlink(&ns, f.path("sys/class/block/nvme0n1")).unwrap();
        std::os::unix::fs::symlink(ns.join("nvme0n1p1"), f.path("sys/class/block/nvme0n1p1")).unwrap();
        assert!(h.host_uses(nvme).is_empty());
        fs::write(f.path("proc/mounts"), "/dev/sda1 / ext4 rw 0 0\n/dev/nvme0n1p1 /data ext4 rw 0 0\n").unwrap();
        fs::write(f.path("proc/swaps"), "Filename Type Size Used Priority\n/dev/nvme0n1 partition 1 0 -2\n").unwrap();
        let uses = h.host_uses(nvme);
        assert_eq!(
            uses,
            vec![
                HostUse::Mounted { device: "nvme0n1p1".into(), mountpoint: "/data".into() },
                HostUse::Swap("nvme0n1".into())
            ]
        );
        assert_eq!(uses[0].to_string(), "/dev/nvme0n1p1 is mounted on /data");
        assert!(h.host_uses(pf).is_empty());
        fs::remove_dir_all(f.root()).unwrap();
    }
}
