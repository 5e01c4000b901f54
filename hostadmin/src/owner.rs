//! Who holds a binding, and whether a VMM that holds one is still running.
//!
//! A VMM's `managed=on` devices are recorded as `viaduct[PID]`. While that process runs, its
//! guest may be using the device: `viaductctl restore` then leaves it alone unless forced.
//! A pid alone proves nothing (pids are recycled), so the process must also be viaduct: its
//! `/proc/PID/exe` names the viaduct binary, or, when that link cannot be read, its `comm` is
//! `viaduct`. A zombie has closed its files and counts as gone.

use std::fmt;
use std::str::FromStr;

use super::PciHost;

/// The VMM binary's name, as `/proc/PID/exe` and `/proc/PID/comm` show it.
const VMM_NAME: &str = "viaduct";

/// Who holds a binding in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// `viaductctl bind`: held until `viaductctl unbind` or `restore`.
    Viaductctl,
    /// A VMM's `managed=on` device: `viaduct[PID]`, given back when that process ends.
    Vmm { pid: u32 },
}

impl Owner {
    /// This process as a VMM.
    pub fn this_vmm() -> Self {
        Owner::Vmm { pid: std::process::id() }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Viaductctl => f.write_str("viaductctl"),
            Owner::Vmm { pid } => write!(f, "{VMM_NAME}[{pid}]"),
        }
    }
}

impl FromStr for Owner {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "viaductctl" {
            return Ok(Owner::Viaductctl);
        }
        let pid = s
            .strip_prefix("viaduct[")
            .and_then(|r| r.strip_suffix(']'))
            .ok_or_else(|| format!("owner '{s}' is neither viaductctl nor viaduct[PID]"))?;
        // Only the canonical decimal form we write: no sign, no spaces, no leading zeros.
        match pid.parse::<u32>() {
            Ok(n) if n > 0 && n.to_string() == pid => Ok(Owner::Vmm { pid: n }),
            _ => Err(format!("owner '{s}': '{pid}' is not a process id")),
        }
    }
}

impl PciHost {
    /// Whether `pid` is a running viaduct process (see the module documentation).
    pub fn vmm_running(&self, pid: u32) -> bool {
        let dir = self.path("proc").join(pid.to_string());
        // /proc/PID/stat: "PID (comm) STATE ..."; comm may hold spaces and parentheses.
        let Ok(stat) = self.read_attr(&dir.join("stat")) else {
            return false;
        };
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z") | Some("X") | Some("x")) {
            return false;
        }
        match std::fs::read_link(dir.join("exe")) {
            Ok(exe) => exe.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                // A binary replaced on disk while running reads "viaduct (deleted)".
                n.strip_suffix(" (deleted)").unwrap_or(n) == VMM_NAME
            }),
            Err(_) => self.read_attr(&dir.join("comm")).is_ok_and(|c| c == VMM_NAME),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{temp_root, FakeSysfs};

    #[test]
    fn owners_parse_and_print() {
        assert_eq!("viaductctl".parse(), Ok(Owner::Viaductctl));
        assert_eq!("viaduct[4242]".parse(), Ok(Owner::Vmm { pid: 4242 }));
        assert_eq!(Owner::Vmm { pid: 7 }.to_string(), "viaduct[7]");
        for bad in [
            "",
            "viaduct",
            "viaduct[]",
            "viaduct[0]",
            "viaduct[-1]",
            "viaduct[+1]",
            "viaduct[12x]",
            "viaduct[ 1]",
            "viaduct[01]",
            "root",
        ] {
            assert!(bad.parse::<Owner>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_running_vmm_is_told_from_a_recycled_pid_and_a_zombie() {
        let f = FakeSysfs::new(temp_root("owner").unwrap()).unwrap();
        let h = f.host();
        assert!(!h.vmm_running(100), "no such process");
        f.add_process(100, "viaduct", Some("/usr/bin/viaduct"), 'S').unwrap();
        assert!(h.vmm_running(100));
        // The pid went to another program, which even calls itself viaduct.
        f.add_process(101, "viaduct", Some("/usr/bin/sleep"), 'S').unwrap();
        assert!(!h.vmm_running(101));
        // exe unreadable: comm decides.
        f.add_process(102, "viaduct", None, 'R').unwrap();
        assert!(h.vmm_running(102));
        f.add_process(103, "bash", None, 'S').unwrap();
        assert!(!h.vmm_running(103));
        f.add_process(104, "viaduct", Some("/usr/bin/viaduct (deleted)"), 'S').unwrap();
        assert!(h.vmm_running(104));
        f.add_process(105, "viaduct", Some("/usr/bin/viaduct"), 'Z').unwrap();
        assert!(!h.vmm_running(105), "a zombie holds no device");
        std::fs::remove_dir_all(f.root()).unwrap();
    }
}
