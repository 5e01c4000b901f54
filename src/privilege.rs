//! `--user NAME`: started as root, viaduct does its privileged set-up (opening /dev/kvm, VFIO
//! devices, taps, disks, sockets; binding `managed=on`... is refused, see below) and then
//! becomes that user for good, before the guest runs: supplementary groups, group and user
//! switched (all threads: the C library's setxid broadcast), no capabilities left,
//! no_new_privs set. The memlock limit is raised first (only root can), because DMA mapping
//! pins all guest RAM and counts against it.

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("--user {0}: no such user")]
    UnknownUser(String),
    #[error("--user {name}: viaduct must be started as root to switch to another user (it runs as uid {uid})")]
    NotRoot { name: String, uid: u32 },
    #[error("--user {name}: {op} failed")]
    Switch {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--user {name}: still has capabilities after switching (effective {effective:#x}, permitted {permitted:#x})"
    )]
    CapabilitiesLeft { name: String, effective: u64, permitted: u64 },
}

/// Who viaduct becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchUser {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

impl SwitchUser {
    /// Looks `spec` up: a user name (its primary and supplementary groups from the user
    /// database), or a numeric `UID` or `UID:GID` (no supplementary groups).
    pub fn lookup(spec: &str) -> Result<Self, PrivilegeError> {
        let u = hostadmin::HostUser::lookup(spec).ok_or_else(|| PrivilegeError::UnknownUser(spec.to_string()))?;
        Ok(Self { name: u.name, uid: u.uid, gid: u.gid, groups: u.groups })
    }

    /// Refuses a switch that cannot work, before anything is opened.
    pub fn check_startable(&self) -> Result<(), PrivilegeError> {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 && euid != self.uid {
            return Err(PrivilegeError::NotRoot { name: self.name.clone(), uid: euid });
        }
        Ok(())
    }

    /// Becomes this user for good. `memlock`: the locked-memory limit to set first (bytes;
    /// guest RAM plus a margin), never lowered.
    pub fn apply(&self, memlock: u64) -> Result<(), PrivilegeError> {
        let fail = |op| {
            let name = self.name.clone();
            move |source| PrivilegeError::Switch { name, op, source }
        };
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            raise_memlock(memlock).map_err(fail("raising the memlock limit (RLIMIT_MEMLOCK)"))?;
            // SAFETY: setgroups reads `groups.len()` gids from the pointer.
            check(unsafe { libc::setgroups(self.groups.len(), self.groups.as_ptr()) }).map_err(fail("setgroups"))?;
            // SAFETY: plain syscalls on ids.
            check(unsafe { libc::setresgid(self.gid, self.gid, self.gid) }).map_err(fail("setresgid"))?;
            // SAFETY: as above; from root to another uid the kernel clears the capability sets.
            check(unsafe { libc::setresuid(self.uid, self.uid, self.uid) }).map_err(fail("setresuid"))?;
        }
        // SAFETY: sets this thread's no_new_privs flag, inherited by threads started later.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map_err(fail("PR_SET_NO_NEW_PRIVS"))?;
        let (effective, permitted) = capabilities().map_err(fail("reading the capabilities left (capget)"))?;
        if effective != 0 || permitted != 0 {
            return Err(PrivilegeError::CapabilitiesLeft { name: self.name.clone(), effective, permitted });
        }
        log::info!("running as {} (uid {}, gid {}), no capabilities", self.name, self.uid, self.gid);
        Ok(())
    }
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises RLIMIT_MEMLOCK to `bytes` (never lowers it). Without CAP_SYS_RESOURCE the hard
/// limit stays: the soft one goes as high as it allows, with a warning.
fn raise_memlock(bytes: u64) -> std::io::Result<()> {
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills `cur`.
    check(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) })?;
    if cur.rlim_cur >= bytes {
        return Ok(());
    }
    let want = libc::rlimit { rlim_cur: bytes, rlim_max: cur.rlim_max.max(bytes) };
    // SAFETY: setrlimit reads `want`.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let capped = libc::rlimit { rlim_cur: cur.rlim_max, rlim_max: cur.rlim_max };
    // SAFETY: setrlimit reads `capped`.
    check(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &capped) })?;
    log::warn!(
        "the memlock limit could not be raised to {} MiB (hard limit {} MiB, no CAP_SYS_RESOURCE): DMA mapping guest RAM may fail",
        bytes >> 20,
        cur.rlim_max >> 20
    );
    Ok(())
}

/// The calling thread's effective and permitted capability sets (capget, version 3).
fn capabilities() -> std::io::Result<(u64, u64)> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget v3 writes two Data structs, which `data` has room for.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((join(data[0].effective, data[1].effective), join(data[0].permitted, data[1].permitted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_by_name_or_number() {
        assert_eq!(SwitchUser::lookup("0:0").unwrap().uid, 0);
        assert!(matches!(SwitchUser::lookup("no-such-user-here"), Err(PrivilegeError::UnknownUser(_))));
    }

    #[test]
    fn a_switch_as_another_user_is_refused_up_front() {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let other = SwitchUser { name: "x".into(), uid: me.wrapping_add(1), gid: 1, groups: vec![] };
        let same = SwitchUser { name: "me".into(), uid: me, gid: 1, groups: vec![] };
        assert!(same.check_startable().is_ok());
        assert_eq!(other.check_startable().is_ok(), me == 0);
    }

    #[test]
    fn capabilities_are_read() {
        let (eff, perm) = capabilities().unwrap();
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_ne!(perm, 0, "root without capabilities?");
        }
        assert_eq!(eff & !perm, 0);
    }

    /// The switch itself, in a child process (it cannot be undone): uid, gid, groups and
    /// capabilities after it. Needs root.
    #[test]
    fn the_switch_leaves_no_capabilities() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        // SAFETY: fork in a test process; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let u = SwitchUser { name: "nobody-ish".into(), uid: 65534, gid: 65534, groups: vec![65534] };
            let code = match u.apply(64 << 20) {
                Ok(()) => {
                    let (mut r, mut e, mut s) = (0, 0, 0);
                    // SAFETY: getresuid fills the three ids.
                    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
                    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    // SAFETY: getrlimit fills `lim`.
                    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
                    // SAFETY: PR_GET_NO_NEW_PRIVS only reads.
                    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
                    // The limit is raised as far as this process may (a sandbox without
                    // CAP_SYS_RESOURCE keeps its hard limit).
                    if (r, e, s) == (65534, 65534, 65534) && lim.rlim_cur >= (64 << 20).min(lim.rlim_max) && nnp == 1 {
                        0
                    } else {
                        2
                    }
                }
                Err(e) => {
                    eprintln!("switch failed: {e:?}");
                    3
                }
            };
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }
}
