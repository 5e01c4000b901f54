//! What else a user needs to run viaduct without root, besides its devices' VFIO nodes
//! (`viaductctl bind --user` hands those over): access to /dev/kvm (and /dev/iommu for
//! iommufd), a memlock limit for the guest RAM DMA mapping pins, taps it may attach to,
//! disk images it may read and write. Said as steps for the administrator.

use std::os::unix::fs::MetadataExt;

use super::{HostUser, PciHost};

/// DMA mapping pins all of guest RAM; the margin covers the VMM's own locked pages.
pub const MEMLOCK_MARGIN: u64 = 64 << 20;

/// Whether `user` may read and write the file `rel` under the host's root (by its mode).
fn can_read_write(host: &PciHost, rel: &str, user: &HostUser) -> Option<bool> {
    let m = std::fs::metadata(host.path(rel)).ok()?;
    let mode = m.mode();
    Some(if m.uid() == user.uid {
        mode & 0o600 == 0o600
    } else if m.gid() == user.gid || user.groups.contains(&m.gid()) {
        mode & 0o060 == 0o060
    } else {
        mode & 0o006 == 0o006
    })
}

fn group_read_write(host: &PciHost, rel: &str) -> bool {
    std::fs::metadata(host.path(rel)).is_ok_and(|m| m.mode() & 0o060 == 0o060)
}

fn describe(host: &PciHost, rel: &str) -> String {
    match std::fs::metadata(host.path(rel)) {
        Ok(m) => format!("mode {:o}, uid {} gid {}", m.mode() & 0o7777, m.uid(), m.gid()),
        Err(_) => "missing".into(),
    }
}

/// The steps still needed for `user` to run viaduct with `ram` bytes of guest RAM (None:
/// the size is not known), one sentence each.
pub fn unprivileged_steps(host: &PciHost, user: &HostUser, ram: Option<u64>) -> Vec<String> {
    let name = &user.name;
    let mut steps = Vec::new();
    match can_read_write(host, "dev/kvm", user) {
        Some(true) => {}
        Some(false) if group_read_write(host, "dev/kvm") => steps.push(format!(
            "/dev/kvm ({}) is not read-write for {name}: add {name} to its group (usermod -aG kvm {name}), or start viaduct as root with --user {name}",
            describe(host, "dev/kvm")
        )),
        Some(false) => steps.push(format!(
            "/dev/kvm ({}) is not read-write for {name}: make it read-write for a group of {name} (chgrp kvm /dev/kvm && chmod 660 /dev/kvm, usermod -aG kvm {name}; a udev rule keeps it), or start viaduct as root with --user {name}",
            describe(host, "dev/kvm")
        )),
        None => steps.push("/dev/kvm is missing: load kvm_intel or kvm_amd".to_string()),
    }
    if can_read_write(host, "dev/iommu", user) == Some(false) {
        steps.push(format!(
            "/dev/iommu ({}) is not read-write for {name}: iommufd needs it (a group of {name}: chgrp GROUP /dev/iommu), or start viaduct as root with --user {name}",
            describe(host, "dev/iommu")
        ));
    }
    let limit = match ram {
        Some(r) => {
            format!("{} KiB (guest RAM {} MiB + {} MiB)", (r + MEMLOCK_MARGIN) >> 10, r >> 20, MEMLOCK_MARGIN >> 20)
        }
        None => format!("guest RAM + {} MiB (in KiB)", MEMLOCK_MARGIN >> 20),
    };
    steps.push(format!(
        "memlock limit: DMA mapping pins all guest RAM, so {name} needs RLIMIT_MEMLOCK of at least {limit}: `{name} hard memlock KIB` and `soft` in /etc/security/limits.conf, LimitMEMLOCK= in a systemd unit, `prlimit --memlock=BYTES --pid PID` on the shell that starts it; or start viaduct as root with --user {name}, which raises it"
    ));
    steps.push(format!(
        "taps for --net: create them for {name}: `ip tuntap add dev tap0 mode tap user {name} vnet_hdr` and `ip link set tap0 up` (or pass an open tap with --net fd=N)"
    ));
    steps.push(format!("disk images for --disk: readable and writable by {name}"));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn steps_follow_the_nodes_modes() {
        let root = crate::fake::temp_root("unpriv").unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/kvm"), "").unwrap();
        let host = PciHost::new(&root);
        let me = {
            let m = std::fs::metadata(root.join("dev/kvm")).unwrap();
            HostUser { name: "u".into(), uid: m.uid().wrapping_add(1), gid: m.gid().wrapping_add(1), groups: vec![] }
        };
        std::fs::set_permissions(root.join("dev/kvm"), std::fs::Permissions::from_mode(0o660)).unwrap();
        let steps = unprivileged_steps(&host, &me, Some(1 << 30));
        assert!(steps[0].starts_with("/dev/kvm (mode 660") && steps[0].contains("usermod -aG kvm u"), "{steps:?}");
        assert!(steps.iter().any(|s| s.contains(&format!("{} KiB", (1u64 << 20) + (64 << 10)))), "{steps:?}");
        std::fs::set_permissions(root.join("dev/kvm"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let steps = unprivileged_steps(&host, &me, None);
        assert!(steps[0].contains("chmod 660 /dev/kvm"), "{steps:?}");
        std::fs::set_permissions(root.join("dev/kvm"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let steps = unprivileged_steps(&host, &me, None);
        assert!(!steps.iter().any(|s| s.contains("/dev/kvm")), "{steps:?}");
        assert!(!steps.iter().any(|s| s.contains("/dev/iommu")), "no iommufd here: {steps:?}");
        // In the node's group: fine at 0660.
        let m = std::fs::metadata(root.join("dev/kvm")).unwrap();
        std::fs::set_permissions(root.join("dev/kvm"), std::fs::Permissions::from_mode(0o660)).unwrap();
        let member = HostUser { groups: vec![m.gid()], ..me };
        assert!(!unprivileged_steps(&host, &member, None).iter().any(|s| s.contains("/dev/kvm")));
    }
}
