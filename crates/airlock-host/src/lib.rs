//! Facts about this host that decide which backends can run on it, for `airlock doctor`.
//!
//! Each module checks one area and returns [`Fact`]s with a status, the detail behind it and
//! the fix. The checks create nothing that outlives them: the namespace and QEMU checks run
//! child processes that end before the check returns, and temporary files are removed.
//!
//! - [`userns`]: user namespaces, their sysctls, and overlayfs inside one;
//! - [`cgroups`]: the cgroup version and the controllers the caller can use;
//! - [`kernel`]: Landlock, seccomp and overlayfs;
//! - [`nspawn`]: systemd-nspawn and its runtime directory;
//! - [`docker`]: a Docker-compatible API socket;
//! - [`qemu`] and [`guest`]: QEMU, and a test guest under KVM and under software emulation;
//! - [`cloud`]: cloud credentials, checked for presence only.

pub mod cgroups;
pub mod cloud;
pub mod docker;
pub mod guest;
pub mod kernel;
pub mod nspawn;
pub mod qemu;
pub mod userns;

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Whether a host feature is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and working.
    Ok,
    /// Absent, disabled or out of the caller's reach.
    Missing,
    /// Present but failing when used.
    Broken,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Broken => "broken",
        }
    }
}

/// One checked feature of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    /// Stable key for scripts, such as `kvm` or `cgroup_memory`.
    pub id: &'static str,
    /// Readable name, such as "KVM".
    pub name: String,
    pub status: Status,
    /// The values found, which explain the status.
    pub detail: String,
    /// The change that would make the feature usable; `None` when it is.
    pub fix: Option<String>,
}

impl Fact {
    pub fn ok(id: &'static str, name: impl Into<String>, detail: impl Into<String>) -> Fact {
        Fact {
            id,
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn missing(
        id: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Fact {
        Fact {
            status: Status::Missing,
            fix: Some(fix.into()),
            ..Fact::ok(id, name, detail)
        }
    }

    pub fn broken(
        id: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Fact {
        Fact {
            status: Status::Broken,
            ..Fact::missing(id, name, detail, fix)
        }
    }
}

/// Checks everything, in the order `airlock doctor` lists it. Only the QEMU guests take more
/// than milliseconds: up to [`guest::KVM_TIME_LIMIT`], during which both guests run at once.
///
/// The caller must be single-threaded, because the user namespace check forks.
pub fn examine() -> Vec<Fact> {
    let is_root = airlock_namespace::sys::geteuid() == 0;
    let mut facts = userns::facts(is_root);
    facts.extend(cgroups::facts(is_root));
    facts.extend(kernel::facts());
    facts.extend(nspawn::facts());
    facts.push(docker::fact(&|name| std::env::var_os(name), is_root));
    facts.extend(qemu::facts());
    facts.push(cloud::aws_fact(
        &|name| std::env::var_os(name),
        home_directory().as_deref(),
    ));
    facts
}

/// Finds an executable named `name` in `$PATH`, or in /usr/bin and /bin when PATH is unset.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

fn home_directory() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

/// Returns the file system magic number of `path`, from statfs(2).
fn filesystem_type(path: &Path) -> Option<i64> {
    let path = airlock_namespace::sys::cstring(path).ok()?;
    // SAFETY: statfs is plain data, so an all-zero value is valid for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a live statfs for the call.
    let result = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    (result == 0).then(|| airlock_namespace::sys::fs_type(&stat))
}

/// Reads a numeric sysctl from /proc/sys; `None` when the kernel does not have it.
fn read_sysctl(name: &str) -> Option<i64> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
