//! The sandbox's user namespace: its ID maps, and why the host refused to create one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// Chooses the identity: an unprivileged caller's own ids; for root, the owner of the
/// workspace when that is an ordinary user, and otherwise [`UNUSED_HOST_ID`] with an
/// idmapped workspace.
pub fn identity(
    caller_uid: libc::uid_t,
    caller_gid: libc::gid_t,
    workspace: Option<&Path>,
) -> Identity {
    use std::os::unix::fs::MetadataExt;
    if caller_uid != 0 {
        return Identity {
            uid: caller_uid,
            gid: caller_gid,
            idmap_workspace: false,
        };
    }
    let owner = workspace.and_then(|dir| fs::metadata(dir).ok());
    match owner {
        Some(metadata) if metadata.uid() != 0 => Identity {
            uid: metadata.uid(),
            gid: metadata.gid(),
            idmap_workspace: false,
        },
        _ => Identity {
            uid: UNUSED_HOST_ID,
            gid: UNUSED_HOST_ID,
            idmap_workspace: workspace.is_some(),
        },
    }
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
    fs::read_to_string(path).ok()?.trim().parse().ok()
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
