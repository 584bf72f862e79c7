//! The rlimits of a docker sandbox's processes on open files and processes: the caller's own,
//! which the other backends' commands inherit, capped at the hard limits of the engine's
//! process. The runtime that starts the container descends from the engine and may raise no
//! limit above its own without CAP_SYS_RESOURCE, so a higher value would fail the start.
//! The pids cgroup, not RLIMIT_NPROC, enforces `--pids`.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::config::Rlimits;

/// Returns the rlimits for a container of the engine listening on `socket`.
pub fn for_engine(socket: &Path) -> Rlimits {
    let mut rlimits = Rlimits {
        open_files: own(libc::RLIMIT_NOFILE),
        processes: own(libc::RLIMIT_NPROC),
    };
    let Some(limits) = engine_pid(socket).and_then(read_limits) else {
        return rlimits;
    };
    if let Some(hard) = hard_limit(&limits, "Max open files") {
        rlimits.open_files = cap(rlimits.open_files, hard);
    }
    if let Some(hard) = hard_limit(&limits, "Max processes") {
        rlimits.processes = cap(rlimits.processes, hard);
    }
    rlimits
}

/// Returns this process's soft and hard limit of `resource`.
fn own(resource: airlock_namespace::sys::RlimitResource) -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(resource, &mut limit) } == -1 {
        return (1024, 1024);
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// Returns the pid of the process that listens on `socket`, as its peer credentials name it.
fn engine_pid(socket: &Path) -> Option<libc::pid_t> {
    let stream = UnixStream::connect(socket).ok()?;
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `credentials` is a live ucred and `length` its size, as SO_PEERCRED expects.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    (result == 0 && credentials.pid > 0).then_some(credentials.pid)
}

fn read_limits(pid: libc::pid_t) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()
}

/// Reads the hard limit of the line `name` of a /proc/PID/limits text, whose columns are the
/// name, the soft limit, the hard limit and the unit.
fn hard_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with(name))?;
    let hard = line[name.len()..].split_whitespace().nth(1)?;
    match hard {
        "unlimited" => Some(u64::MAX),
        number => number.parse().ok(),
    }
}

fn cap((soft, hard): (u64, u64), limit: u64) -> (u64, u64) {
    (soft.min(limit), hard.min(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max processes             32768                32768                processes \n\
        Max open files            1024                 unlimited            files     \n";

    #[test]
    fn hard_limits_read_from_proc_limits() {
        assert_eq!(hard_limit(LIMITS, "Max processes"), Some(32768));
        assert_eq!(hard_limit(LIMITS, "Max open files"), Some(u64::MAX));
        assert_eq!(hard_limit(LIMITS, "Max locked memory"), None);
    }

    #[test]
    fn own_limits_are_capped_at_the_engines() {
        assert_eq!(cap((96368, 96368), 32768), (32768, 32768));
        assert_eq!(cap((1024, 4096), u64::MAX), (1024, 4096));
    }
}
