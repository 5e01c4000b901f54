//! What `vm.info` and `vm.counters` show of each PCI device: its id, kind, guest BDF, and its
//! counters, read on request from where the devices keep them (relaxed atomics bumped on
//! their own paths; nothing here runs per guest access).

use super::{DeviceManager, Entry, PciFunction};

/// One PCI device of the VM.
pub struct DeviceReport {
    pub id: String,
    pub kind: &'static str,
    pub bdf: String,
    /// The host device of an assigned function.
    pub host_bdf: Option<String>,
    /// An assigned function's reset at guest reboot and release (`flr`, `pm`, `bus`,
    /// `hot-reset`, `none`, ...: see `vfio::reset`).
    pub reset_method: Option<String>,
}

impl DeviceManager {
    /// Every PCI device, in attach order.
    pub fn device_reports(&self) -> Vec<DeviceReport> {
        self.pci_entries()
            .map(|(id, function, bdf)| {
                let (kind, host_bdf, reset_method) = match function {
                    PciFunction::Virtio(d) => (d.lock().map_or("virtio", |d| d.kind()), None, None),
                    PciFunction::Assigned(d) => match d.lock() {
                        Ok(d) => ("vfio", Some(d.bdf().to_string()), Some(d.reset_method().name().to_string())),
                        Err(_) => ("vfio", None, None),
                    },
                    PciFunction::Emulated(_) => ("pci-synthetic", None, None),
                };
                DeviceReport { id: id.to_string(), kind, bdf: bdf.to_string(), host_bdf, reset_method }
            })
            .collect()
    }

    /// Every PCI device's counters, by id; `proc_interrupts` is the host's /proc/interrupts
    /// (an assigned device's interrupts go device -> KVM -> guest without viaduct, so the
    /// host kernel's count of its vfio vectors is the one there is).
    pub fn device_counters(&self, proc_interrupts: &str) -> Vec<(String, Vec<(String, u64)>)> {
        self.pci_entries()
            .map(|(id, function, _)| {
                let counters = match function {
                    PciFunction::Virtio(d) => match d.lock() {
                        Ok(d) => d.counters().snapshot().iter().map(|&(n, v)| (n.to_string(), v)).collect(),
                        Err(_) => Vec::new(),
                    },
                    PciFunction::Assigned(d) => match d.lock() {
                        Ok(d) => assigned_counters(&d.trap_counts(), d.msix_trap_count(), d.bdf(), proc_interrupts),
                        Err(_) => Vec::new(),
                    },
                    PciFunction::Emulated(_) => Vec::new(),
                };
                (id.to_string(), counters)
            })
            .collect()
    }

    fn pci_entries(&self) -> impl Iterator<Item = (&super::DeviceId, &PciFunction, ::pci::Bdf)> {
        self.order.iter().filter_map(|id| match self.devices.get(id) {
            Some(Entry::Pci { function, bdf, .. }) => Some((id, function, *bdf)),
            _ => None,
        })
    }
}

fn assigned_counters(traps: &[u64; 7], msix: u64, host_bdf: &str, proc_interrupts: &str) -> Vec<(String, u64)> {
    let mut out = vec![("trapped_accesses".to_string(), traps.iter().sum()), ("msix_table_accesses".to_string(), msix)];
    for (i, n) in traps.iter().enumerate().filter(|(_, n)| **n > 0) {
        let name = if i == 6 { "rom_accesses".to_string() } else { format!("bar{i}_accesses") };
        out.push((name, *n));
    }
    out.push(("host_interrupts".to_string(), host_interrupts(proc_interrupts, host_bdf)));
    out
}

/// Interrupts the host took on `bdf`'s vfio vectors (`vfio-msix[N](BDF)`, `vfio-msi[N](BDF)`,
/// `vfio-intx(BDF)` lines of /proc/interrupts), summed over CPUs.
pub fn host_interrupts(proc_interrupts: &str, bdf: &str) -> u64 {
    let mut lines = proc_interrupts.lines();
    let cpus = lines.next().map_or(0, |header| header.split_whitespace().count());
    let tag = format!("({bdf})");
    lines
        .filter(|l| l.contains("vfio-") && l.trim_end().ends_with(&tag))
        .map(|l| l.split_whitespace().skip(1).take(cpus).filter_map(|n| n.parse::<u64>().ok()).sum::<u64>())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interrupts_of_one_device() {
        let text = "           CPU0       CPU1\n\
           0:         45          0   IO-APIC   2-edge      timer\n\
          40:         10          5  IR-PCI-MSIX-0000:02:00.0    0-edge      vfio-msix[0](0000:02:00.0)\n\
          41:          3          0  IR-PCI-MSIX-0000:02:00.0    1-edge      vfio-msix[1](0000:02:00.0)\n\
          42:          7          7  IR-PCI-MSIX-0000:03:00.1    0-edge      vfio-msix[0](0000:03:00.1)\n\
          43:        100          0  IR-PCI-MSIX-0000:02:00.0    0-edge      nvme0q0\n";
        assert_eq!(host_interrupts(text, "0000:02:00.0"), 18);
        assert_eq!(host_interrupts(text, "0000:03:00.1"), 14);
        assert_eq!(host_interrupts(text, "0000:09:00.0"), 0);
        assert_eq!(host_interrupts("", "0000:02:00.0"), 0);
    }

    #[test]
    fn assigned_counters_name_the_bars_that_trapped() {
        let c = assigned_counters(&[0, 0, 0, 0, 5, 0, 1], 4, "0000:02:00.0", "");
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["trapped_accesses", "msix_table_accesses", "bar4_accesses", "rom_accesses", "host_interrupts"]
        );
        assert_eq!(c[0].1, 6);
    }
}
