//! User namespaces: the sysctls that restrict them, a real one created in a child process,
//! and an overlayfs mounted inside it, as the namespace backend mounts its workspace.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use airlock_namespace::sys;

use crate::{read_sysctl, Fact};

/// Lists the sysctls, whether this caller can create a user namespace, and whether overlayfs
/// mounts inside one.
pub fn facts(is_root: bool) -> Vec<Fact> {
    let mut facts = sysctl_facts(is_root);
    facts.extend(namespace_facts(is_root));
    facts
}

fn sysctl_facts(is_root: bool) -> Vec<Fact> {
    let max = match read_sysctl("user.max_user_namespaces") {
        Some(0) => Fact::missing(
            "sysctl_max_user_namespaces",
            "sysctl user.max_user_namespaces",
            "0: nobody can create user namespaces",
            "enable them with `sysctl -w user.max_user_namespaces=15000` as root",
        ),
        Some(value) => Fact::ok(
            "sysctl_max_user_namespaces",
            "sysctl user.max_user_namespaces",
            value.to_string(),
        ),
        None => Fact::missing(
            "sysctl_max_user_namespaces",
            "sysctl user.max_user_namespaces",
            "absent: this kernel was built without user namespaces",
            "use a kernel built with CONFIG_USER_NS",
        ),
    };
    let clone = restricting_sysctl(
        "sysctl_unprivileged_userns_clone",
        "kernel.unprivileged_userns_clone",
        0,
        "`sysctl -w kernel.unprivileged_userns_clone=1`",
        is_root,
    );
    let apparmor = restricting_sysctl(
        "sysctl_apparmor_restrict_unprivileged_userns",
        "kernel.apparmor_restrict_unprivileged_userns",
        1,
        "an AppArmor profile for airlock that allows `userns,`, or \
         `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
        is_root,
    );
    vec![max, clone, apparmor]
}

/// Reports a sysctl that, at `blocking_value`, stops unprivileged users from creating user
/// namespaces. Root is not affected, so for root it is only a note.
fn restricting_sysctl(
    id: &'static str,
    name: &str,
    blocking_value: i64,
    remedy: &str,
    is_root: bool,
) -> Fact {
    let label = format!("sysctl {name}");
    match read_sysctl(name) {
        None => Fact::ok(id, label, "absent: this kernel has no such restriction"),
        Some(value) if value != blocking_value => Fact::ok(id, label, value.to_string()),
        Some(value) if is_root => Fact::ok(
            id,
            label,
            format!("{value}: unprivileged users cannot create user namespaces, root can"),
        ),
        Some(value) => Fact::missing(
            id,
            label,
            format!("{value}: unprivileged users cannot create user namespaces"),
            format!("run airlock as root, or ask root to set {remedy}"),
        ),
    }
}

/// Creates a user and mount namespace in a child and mounts an overlayfs there.
fn namespace_facts(is_root: bool) -> Vec<Fact> {
    let outcome = match tempfile::Builder::new().prefix("airlock-doctor-").tempdir() {
        Ok(dir) => {
            let outcome = probe_in_child(dir.path());
            let path = dir.path().to_owned();
            match remove_probe_dir(dir) {
                Ok(()) => outcome,
                Err(error) => Probe::Failed {
                    step: Step::Cleanup,
                    error: format!("{}: {error}", path.display()),
                },
            }
        }
        Err(error) => Probe::Failed {
            step: Step::Prepare,
            error: error.to_string(),
        },
    };
    match outcome {
        Probe::Mounted => vec![
            Fact::ok(
                "user_namespaces",
                "user namespaces",
                "created one with a mount namespace in a child process",
            ),
            overlay_ok(),
        ],
        Probe::Failed {
            step: Step::Prepare,
            error,
        } => vec![
            Fact::broken(
                "user_namespaces",
                "user namespaces",
                format!("not tested: cannot prepare the test: {error}"),
                "check that the temporary directory ($TMPDIR or /tmp) is writable",
            ),
            overlay_untested(),
        ],
        Probe::Failed {
            step: Step::Clone,
            error,
        } => vec![userns_failed(&error, is_root), overlay_untested()],
        Probe::Failed {
            step: Step::Cleanup,
            error,
        } => vec![
            Fact::ok(
                "user_namespaces",
                "user namespaces",
                "created one with a mount namespace in a child process",
            ),
            Fact::broken(
                "overlayfs_in_userns",
                "overlayfs in a user namespace",
                format!("cannot remove the test's temporary directory {error}"),
                "remove that directory by hand",
            ),
        ],
        Probe::Failed { step, error } => vec![
            Fact::ok(
                "user_namespaces",
                "user namespaces",
                "created one with a mount namespace in a child process",
            ),
            overlay_failed(step, &error),
        ],
    }
}

fn userns_failed(error: &str, is_root: bool) -> Fact {
    let disabled = airlock_namespace::userns::diagnose(0, is_root);
    let fix = match &disabled {
        Some(airlock_namespace::userns::Error::Disabled { fix, .. }) => fix.to_string(),
        _ => "check the sysctls above and the seccomp or AppArmor policy that confines airlock"
            .to_owned(),
    };
    Fact::missing(
        "user_namespaces",
        "user namespaces",
        format!("cannot create one: {error}"),
        fix,
    )
}

fn overlay_ok() -> Fact {
    Fact::ok(
        "overlayfs_in_userns",
        "overlayfs in a user namespace",
        "mounted one on a temporary directory",
    )
}

fn overlay_untested() -> Fact {
    Fact::missing(
        "overlayfs_in_userns",
        "overlayfs in a user namespace",
        "not tested: no user namespace",
        "make user namespaces available first",
    )
}

fn overlay_failed(step: Step, error: &str) -> Fact {
    Fact::broken(
        "overlayfs_in_userns",
        "overlayfs in a user namespace",
        format!("{} failed: {error}", step.describe()),
        "use Linux 5.11 or later, whose overlayfs mounts in user namespaces, and a temporary \
         directory on a file system that supports it (ext4, xfs, btrfs, or tmpfs since 6.6); \
         until then use --workspace-mode bind, readonly or none",
    )
}

/// Removes the probe's directory. overlayfs creates `work/work` with mode 0, which its owner
/// cannot list, so an unprivileged caller could not remove it without the chmod.
fn remove_probe_dir(dir: tempfile::TempDir) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let inner_work = dir.path().join("work/work");
    if inner_work.exists() {
        std::fs::set_permissions(&inner_work, std::fs::Permissions::from_mode(0o700))?;
    }
    dir.close()
}

/// A step of the child's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Prepare,
    Clone,
    Maps,
    Private,
    Mount,
    Cleanup,
}

impl Step {
    fn describe(self) -> &'static str {
        match self {
            Step::Prepare => "preparing the directories",
            Step::Clone => "creating the namespaces",
            Step::Maps => "writing the user namespace's id maps",
            Step::Private => "making the mounts private",
            Step::Mount => "mounting overlayfs",
            Step::Cleanup => "removing the temporary directory",
        }
    }

    fn code(self) -> u8 {
        match self {
            Step::Prepare => 1,
            Step::Clone => 2,
            Step::Maps => 3,
            Step::Private => 4,
            Step::Mount => 5,
            Step::Cleanup => 6,
        }
    }

    fn from_code(code: u8) -> Step {
        [
            Step::Prepare,
            Step::Clone,
            Step::Maps,
            Step::Private,
            Step::Cleanup,
        ]
        .into_iter()
        .find(|step| step.code() == code)
        .unwrap_or(Step::Mount)
    }
}

enum Probe {
    Mounted,
    Failed { step: Step, error: String },
}

/// Forks a child into a new user and mount namespace that maps the caller to root and mounts
/// an overlayfs below `dir`. The mount goes with the child's mount namespace when it exits.
fn probe_in_child(dir: &Path) -> Probe {
    let failed = |step, error: io::Error| Probe::Failed {
        step,
        error: error.to_string(),
    };
    let layers = ["lower", "upper", "work", "merged"].map(|name| dir.join(name));
    for layer in &layers {
        if let Err(error) = std::fs::create_dir(layer) {
            return failed(Step::Prepare, error);
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        layers[0].display(),
        layers[1].display(),
        layers[2].display()
    );
    let (read_end, write_end) = match sys::pipe() {
        Ok(pipe) => pipe,
        Err(error) => return failed(Step::Prepare, error),
    };
    let (uid, gid) = (sys::geteuid(), sys::getegid());
    match sys::clone_process(libc::CLONE_NEWUSER | libc::CLONE_NEWNS, None) {
        Ok(0) => {
            drop(read_end);
            let code = match child_steps(uid, gid, &layers[3], &options) {
                Ok(()) => 0,
                Err((step, error)) => {
                    let mut pipe = std::fs::File::from(write_end);
                    let _ = write!(pipe, "{}{error}", step.code() as char);
                    step.code() as i32
                }
            };
            sys::exit_now(code)
        }
        Ok(pid) => {
            drop(write_end);
            collect_child(pid, read_end)
        }
        Err(error) => failed(Step::Clone, error),
    }
}

/// Runs the child's steps: the id maps, private mounts, then the overlay mount.
fn child_steps(
    uid: libc::uid_t,
    gid: libc::gid_t,
    merged: &Path,
    options: &str,
) -> Result<(), (Step, io::Error)> {
    let write_map = |name: &str, content: String| {
        std::fs::write(format!("/proc/self/{name}"), content).map_err(|error| (Step::Maps, error))
    };
    write_map("setgroups", "deny".to_owned())?;
    write_map("uid_map", format!("0 {uid} 1\n"))?;
    write_map("gid_map", format!("0 {gid} 1\n"))?;
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|error| (Step::Private, error))?;
    sys::mount(
        Some(Path::new("overlay")),
        merged,
        Some("overlay"),
        0,
        Some(options),
    )
    .map_err(|error| (Step::Mount, error))
}

/// Waits for the child and reads which step failed, if one did.
fn collect_child(pid: libc::pid_t, read_end: OwnedFd) -> Probe {
    let mut message = Vec::new();
    let _ = std::fs::File::from(read_end).read_to_end(&mut message);
    let status = loop {
        match sys::waitpid(pid, 0) {
            Ok(Some((_, status))) => break Some(status),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            _ => break None,
        }
    };
    let exited_cleanly = status.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0);
    if exited_cleanly {
        return Probe::Mounted;
    }
    match message.split_first() {
        Some((&code, error)) => Probe::Failed {
            step: Step::from_code(code),
            error: String::from_utf8_lossy(error).into_owned(),
        },
        None => Probe::Failed {
            step: Step::Mount,
            error: format!("the child process ended with wait status {status:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricting_sysctl_spares_root() {
        let fact = restricting_sysctl("id", "no.such.sysctl", 0, "x", false);
        assert_eq!(fact.status, crate::Status::Ok);
        assert!(fact.detail.starts_with("absent"), "{}", fact.detail);
    }

    #[test]
    fn step_codes_round_trip() {
        for step in [
            Step::Prepare,
            Step::Clone,
            Step::Maps,
            Step::Private,
            Step::Mount,
            Step::Cleanup,
        ] {
            assert_eq!(Step::from_code(step.code()), step);
        }
    }
}
