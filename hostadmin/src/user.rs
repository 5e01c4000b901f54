//! Users that VFIO device nodes are handed to (`viaductctl bind --user`) and that viaduct
//! switches to (`--user`): looked up in the user database by name, or given as numbers.

use std::ffi::CString;

/// A user: name (as given), uid, primary gid, and the groups the user is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostUser {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups, the primary one included; empty for a numeric `UID[:GID]`.
    pub groups: Vec<libc::gid_t>,
}

impl HostUser {
    /// `spec`: a user name, `UID` (its primary group from the user database if it has an
    /// entry, else GID = UID), or `UID:GID`. None when the name is unknown or a number is bad.
    pub fn lookup(spec: &str) -> Option<Self> {
        if let Some((u, g)) = spec.split_once(':') {
            return Some(Self {
                name: spec.to_string(),
                uid: u.parse().ok()?,
                gid: g.parse().ok()?,
                groups: Vec::new(),
            });
        }
        if let Ok(uid) = spec.parse::<libc::uid_t>() {
            let gid = passwd_by_uid(uid).map_or(uid, |(_, g)| g);
            return Some(Self { name: spec.to_string(), uid, gid, groups: Vec::new() });
        }
        let (uid, gid) = passwd_by_name(spec)?;
        Some(Self { name: spec.to_string(), uid, gid, groups: group_list(spec, gid) })
    }
}

fn passwd_by_name(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let c = CString::new(name).ok()?;
    lookup_passwd(|pw, buf, res| {
        // SAFETY: getpwnam_r writes into `pw` and `buf` (sizes given) and sets `res`.
        unsafe { libc::getpwnam_r(c.as_ptr(), pw, buf.as_mut_ptr(), buf.len(), res) }
    })
}

fn passwd_by_uid(uid: libc::uid_t) -> Option<(libc::uid_t, libc::gid_t)> {
    lookup_passwd(|pw, buf, res| {
        // SAFETY: getpwuid_r writes into `pw` and `buf` (sizes given) and sets `res`.
        unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr(), buf.len(), res) }
    })
}

fn lookup_passwd(
    call: impl Fn(*mut libc::passwd, &mut [libc::c_char], *mut *mut libc::passwd) -> libc::c_int,
) -> Option<(libc::uid_t, libc::gid_t)> {
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: passwd is plain data filled by the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    if call(&mut pw, &mut buf, &mut res) != 0 || res.is_null() {
        return None;
    }
    Some((pw.pw_uid, pw.pw_gid))
}

/// The user's groups from the group database, the primary one included.
fn group_list(name: &str, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let Ok(c) = CString::new(name) else { return vec![gid] };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: getgrouplist writes at most `count` gids into `groups` and updates `count`.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || n > 65536 {
            return vec![gid];
        }
        n = count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_name_or_number() {
        let root = HostUser::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert_eq!(
            HostUser::lookup("1234:567").unwrap(),
            HostUser { name: "1234:567".into(), uid: 1234, gid: 567, groups: vec![] }
        );
        assert_eq!(HostUser::lookup("0").unwrap().gid, 0);
        for bad in ["no-such-user-here", "1:x", "x:1", "", "a\0b"] {
            assert_eq!(HostUser::lookup(bad), None, "{bad}");
        }
    }
}
