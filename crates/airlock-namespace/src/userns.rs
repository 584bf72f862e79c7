//! The sandbox's user namespace: its ID maps, and why the host refused to create one.

use std::fs;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path:?}")]
    WriteMap {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("user namespaces are disabled on this host: {reason}; {fix}")]
    Disabled { reason: String, fix: &'static str },
}

/// The host uid and gid of root inside a sandbox that root started on a root-owned
/// workspace: an id no account uses, so that the sandbox owns no host file but its
/// workspace, which it gets as an idmapped mount.
pub const UNUSED_HOST_ID: u32 = 2_147_483_646;

/// The host identity of root inside the sandbox, which is never host root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Whether the workspace needs an idmapped mount to stay writable, because it belongs to
    /// host root while the sandbox runs as [`UNUSED_HOST_ID`].
    pub idmap_workspace: bool,
}

/// Chooses the identity from the workspace's owner (uid, gid). An unprivileged caller keeps
/// its own ids. For root, it is the owner of the workspace when that is an ordinary user.
/// The group is then that user's primary group, or the workspace's group for a user the
/// password database lacks (such as a host user seen inside a vm guest), and the unused id
/// instead of group 0. For a root-owned workspace it is [`UNUSED_HOST_ID`] with an
/// idmapped workspace.
pub fn identity(
    caller_uid: libc::uid_t,
    caller_gid: libc::gid_t,
    workspace_owner: Option<(libc::uid_t, libc::gid_t)>,
) -> Identity {
    if caller_uid != 0 {
        return Identity {
            uid: caller_uid,
            gid: caller_gid,
            idmap_workspace: false,
        };
    }
    match workspace_owner {
        Some((owner, group)) if owner != 0 => {
            let gid = primary_gid(owner).unwrap_or(group);
            Identity {
                uid: owner,
                gid: if gid == 0 { UNUSED_HOST_ID } else { gid },
                idmap_workspace: false,
            }
        }
        _ => Identity {
            uid: UNUSED_HOST_ID,
            gid: UNUSED_HOST_ID,
            idmap_workspace: workspace_owner.is_some(),
        },
    }
}

/// Looks up the primary group of `uid` in the password database.
fn primary_gid(uid: libc::uid_t) -> Option<libc::gid_t> {
    // SAFETY: passwd is plain data, so an all-zero value is valid for getpwuid_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut found = std::ptr::null_mut();
    // SAFETY: `entry` and `buffer` are live for the call, with the buffer's true length, and
    // `found` receives either null or a pointer to `entry`.
    let result = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    (result == 0 && !found.is_null()).then_some(entry.pw_gid)
}

/// Maps uid and gid 0 inside the sandbox to `identity`. An unprivileged caller may only map
/// its own ids, and only after giving up setgroups(2).
pub fn write_maps(pid: libc::pid_t, identity: Identity, is_root: bool) -> Result<(), Error> {
    let (uid, gid) = (identity.uid, identity.gid);
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let write = |name: &str, content: String| {
        let path = proc.join(name);
        fs::write(&path, content).map_err(|source| Error::WriteMap { path, source })
    };
    write("uid_map", format!("0 {uid} 1\n"))?;
    if !is_root {
        write("setgroups", "deny".to_owned())?;
    }
    write("gid_map", format!("0 {gid} 1\n"))
}

fn read_sysctl(path: &str) -> Option<i64> {
    airlock_core::procfs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Explains a failed clone with CLONE_NEWUSER by the sysctl that caused it, if one did.
pub fn diagnose(errno: i32, is_root: bool) -> Option<Error> {
    if read_sysctl("/proc/sys/user/max_user_namespaces") == Some(0) {
        return Some(Error::Disabled {
            reason: "sysctl user.max_user_namespaces is 0".into(),
            fix: "enable them with `sysctl -w user.max_user_namespaces=15000` as root",
        });
    }
    if !is_root && read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        return Some(Error::Disabled {
            reason: "sysctl kernel.unprivileged_userns_clone is 0".into(),
            fix: "enable them with `sysctl -w kernel.unprivileged_userns_clone=1` as root, or run airlock as root",
        });
    }
    if !is_root && read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1)
    {
        return Some(Error::Disabled {
            reason: "AppArmor restricts unprivileged user namespaces (sysctl kernel.apparmor_restrict_unprivileged_userns is 1)".into(),
            fix: "add an AppArmor profile for airlock that allows `userns,`, or set the sysctl to 0 as root",
        });
    }
    if errno == libc::ENOSPC {
        return Some(Error::Disabled {
            reason: "the limit of user namespaces (sysctl user.max_user_namespaces) is reached"
                .into(),
            fix: "raise it with `sysctl -w user.max_user_namespaces=15000` as root",
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_takes_workspace_owner_and_group() {
        // No account has uid 4000000000, so its group comes from the workspace.
        let unknown = identity(0, 0, Some((4_000_000_000, 4_000_000_001)));
        assert_eq!(unknown.uid, 4_000_000_000);
        assert_eq!(unknown.gid, 4_000_000_001);
        assert!(!unknown.idmap_workspace);
        let root_group = identity(0, 0, Some((4_000_000_000, 0)));
        assert_eq!(root_group.gid, UNUSED_HOST_ID);
    }

    #[test]
    fn root_owned_workspace_needs_idmap() {
        let root = identity(0, 0, Some((0, 0)));
        assert_eq!((root.uid, root.gid), (UNUSED_HOST_ID, UNUSED_HOST_ID));
        assert!(root.idmap_workspace);
        let caller = identity(1000, 1000, Some((0, 0)));
        assert_eq!((caller.uid, caller.gid), (1000, 1000));
        assert!(!caller.idmap_workspace);
    }
}
