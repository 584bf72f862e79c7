//! Wrappers of the system calls this backend needs beyond those of
//! [`airlock_namespace::sys`], each with its one `unsafe` block.

use std::io;
use std::path::Path;

use airlock_core::User;
use airlock_namespace::sys;

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes `path` the root directory of this process.
pub fn chroot(path: &Path) -> io::Result<()> {
    let path = sys::cstring(path)?;
    // SAFETY: `path` is NUL-terminated and alive for the call.
    check(unsafe { libc::chroot(path.as_ptr()) })
}

/// Clears the supplementary groups and sets the real, effective and saved ids to `user`.
/// The group goes first, because after the user id changes from root it can no longer be
/// changed. A user other than root also loses the capability bounding set.
pub fn become_user(user: User) -> io::Result<()> {
    if user.uid != 0 {
        // Root keeps every capability, as documented; anyone else gives up the bounding set
        // while root may still change it.
        airlock_namespace::workload::drop_bounding_set()?;
    }
    sys::setgroups_empty()?;
    // SAFETY: setresgid takes integers only.
    check(unsafe { libc::setresgid(user.gid, user.gid, user.gid) })?;
    // SAFETY: setresuid takes integers only.
    check(unsafe { libc::setresuid(user.uid, user.uid, user.uid) })
}
