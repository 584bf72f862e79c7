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

/// Maps uid and gid 0 inside the sandbox to the caller's effective ids, the one mapping an
/// unprivileged process may write. Root inside holds capabilities only over the sandbox's
/// own namespaces.
pub fn write_maps(
    pid: libc::pid_t,
    uid: libc::uid_t,
    gid: libc::gid_t,
    is_root: bool,
) -> Result<(), Error> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let write = |name: &str, content: String| {
        let path = proc.join(name);
        fs::write(&path, content).map_err(|source| Error::WriteMap { path, source })
    };
    write("uid_map", format!("0 {uid} 1\n"))?;
    if !is_root {
        // An unprivileged process may map its gid only after giving up setgroups(2).
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
