//! What a kind of thread may call: system calls, allowed outright or only with given
//! arguments (an ioctl request number, a flag), built up by the module that spawns it.

use std::collections::{BTreeMap, BTreeSet};

use libc::c_long;
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ioctls::tty;

/// One argument that must equal a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArgEq {
    pub index: u8,
    pub value: u64,
    /// Compare all 64 bits, not only the low 32 (for pointer- or long-sized arguments).
    pub wide: bool,
}

impl ArgEq {
    /// A 32-bit argument (int, unsigned int: ioctl requests, flags, ids).
    pub const fn int(index: u8, value: u64) -> Self {
        Self { index, value, wide: false }
    }
}

/// The allowed system calls of one thread kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Allowed with any arguments.
    any: BTreeSet<c_long>,
    /// Allowed when every argument of one of the lists matches.
    when: BTreeMap<c_long, BTreeSet<Vec<ArgEq>>>,
}

impl Rules {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows these system calls with any arguments.
    pub fn allow(&mut self, syscalls: &[c_long]) -> &mut Self {
        self.any.extend(syscalls);
        self
    }

    /// Allows `syscall` when all of `args` match (called once per allowed combination).
    pub fn allow_when(&mut self, syscall: c_long, args: &[ArgEq]) -> &mut Self {
        self.when.entry(syscall).or_default().insert(args.to_vec());
        self
    }

    /// Allows `ioctl(fd, request, ...)` for these requests, on any fd (a filter cannot tell
    /// one fd from another; the request number says which device's call it is).
    pub fn allow_ioctls(&mut self, requests: &[u64]) -> &mut Self {
        for &request in requests {
            self.allow_when(libc::SYS_ioctl, &[ArgEq::int(1, request)]);
        }
        self
    }

    /// Everything `other` allows, too.
    #[cfg(test)]
    pub fn merge(&mut self, other: &Rules) -> &mut Self {
        self.any.extend(&other.any);
        for (nr, lists) in &other.when {
            self.when.entry(*nr).or_default().extend(lists.iter().cloned());
        }
        self
    }

    /// Whether `syscall` is allowed in some form (any arguments or some).
    #[cfg(test)]
    pub fn mentions(&self, syscall: c_long) -> bool {
        self.any.contains(&syscall) || self.when.contains_key(&syscall)
    }

    /// Whether `ioctl(_, request)` is allowed.
    #[cfg(test)]
    pub fn allows_ioctl(&self, request: u64) -> bool {
        self.any.contains(&libc::SYS_ioctl)
            || self.when.get(&libc::SYS_ioctl).is_some_and(|l| l.contains(&vec![ArgEq::int(1, request)]))
    }

    /// seccompiler's form: an empty rule list allows the call outright.
    pub fn to_seccompiler(&self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
        let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for &nr in &self.any {
            map.insert(nr, Vec::new());
        }
        for (&nr, lists) in &self.when {
            if self.any.contains(&nr) {
                continue;
            }
            let mut rules = Vec::with_capacity(lists.len());
            for args in lists {
                let conditions = args
                    .iter()
                    .map(|a| {
                        let len = if a.wide { SeccompCmpArgLen::Qword } else { SeccompCmpArgLen::Dword };
                        SeccompCondition::new(a.index, len, SeccompCmpOp::Eq, a.value)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                rules.push(SeccompRule::new(conditions)?);
            }
            map.insert(nr, rules);
        }
        Ok(map)
    }
}

/// What every thread needs, whatever it does: the C library's and Rust's standard library's
/// own calls (memory allocation, locks, thread exit, stack guard, timers where the vDSO falls
/// back to a system call), log lines on stderr, and what the SIGSYS report itself does
/// (write, restore the terminal, exit).
pub fn base(r: &mut Rules) {
    r.allow(&[
        // Allocation: malloc's arenas and large blocks, freeing back to the kernel.
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        // Locks, condition variables, channels, thread joins.
        libc::SYS_futex,
        libc::SYS_sched_yield,
        // Clocks (vDSO fallbacks), sleeps, timed waits.
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        // Signals: the vCPU kick's handler returns; std's stack-overflow guard at thread exit.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        // Thread and process exit (also the SIGSYS report's).
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Log lines; eventfd signals.
        libc::SYS_write,
        // std's per-thread hash keys.
        libc::SYS_getrandom,
        libc::SYS_gettid,
        libc::SYS_getpid,
        // File descriptors a thread drops.
        libc::SYS_close,
    ]);
    // The SIGSYS report restores a terminal left in raw mode.
    r.allow_ioctls(&[tty::TCSETS, tty::TCSETSW, tty::TCSETSF]);
    // std checks that an fd it closes is open (debug builds).
    r.allow_when(libc::SYS_fcntl, &[ArgEq::int(1, libc::F_GETFD as u64)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outright_wins_over_conditions_and_merge_unites() {
        let mut a = Rules::new();
        a.allow_ioctls(&[0xae80]);
        let mut b = Rules::new();
        b.allow(&[libc::SYS_read]).allow_ioctls(&[0xae01]);
        a.merge(&b);
        assert!(a.allows_ioctl(0xae80) && a.allows_ioctl(0xae01) && !a.allows_ioctl(0xae02));
        assert!(a.mentions(libc::SYS_read) && !a.mentions(libc::SYS_write));
        let map = a.to_seccompiler().unwrap();
        assert_eq!(map[&libc::SYS_ioctl].len(), 2);
        assert!(map[&libc::SYS_read].is_empty());
        a.allow(&[libc::SYS_ioctl]);
        assert!(a.to_seccompiler().unwrap()[&libc::SYS_ioctl].is_empty(), "any ioctl");
    }
}
