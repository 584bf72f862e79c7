//! The protections a chroot sandbox enforces for one spec, rule by rule. The result depends
//! only on the spec, because the backend uses nothing that differs between hosts (no cgroups,
//! no Landlock), so the prediction and what creation gets are the same.

use airlock_core::enforcement::rule;
use airlock_core::{Enforcement, RootFs, Spec, Status, User};

use crate::error::Error;

/// The user a command runs as when neither the spec nor the exec names one: nobody.
pub const NOBODY: User = User {
    uid: 65534,
    gid: 65534,
};

/// Returns the user the sandbox's commands run as by default.
pub fn sandbox_user(spec: &Spec) -> User {
    spec.user.unwrap_or(NOBODY)
}

const ROOT_ESCAPES: &str = "the command runs as root, which can leave a chroot";
const USE_NAMESPACE: &str = "use --backend namespace";

/// Lists the protections of a chroot sandbox for `spec`. Only the limits the caller
/// requested, and the timeout, are required: choosing this backend accepts its weaker
/// isolation.
pub fn assess(spec: &Spec) -> Enforcement {
    let user = sandbox_user(spec);
    let root = user.uid == 0;
    let mut enforcement = Enforcement::default();
    push_file_tree(&mut enforcement, spec, user);
    push_host_sharing(&mut enforcement, user);
    push_privileges(&mut enforcement, root, user.gid == 0);
    push_limits(&mut enforcement, spec, user);
    let cleanup = if root {
        Status::Partial(format!(
            "{CLEANUP_DETAIL}, and a root process can leave the mount namespace and outlive it"
        ))
    } else {
        Status::Partial(CLEANUP_DETAIL.into())
    };
    enforcement.push(rule::CLEANUP, cleanup, false);
    enforcement
}

const CLEANUP_DETAIL: &str = "the processes in the sandbox's mount namespace are killed when \
    the command ends, at stop and at rm; if the holder process itself is killed, they keep \
    running until `airlock rm` or `airlock gc`";

fn push_file_tree(enforcement: &mut Enforcement, spec: &Spec, user: User) {
    let root = user.uid == 0;
    let file_tree = if root {
        Status::Unsupported(ROOT_ESCAPES.into())
    } else {
        Status::Partial(format!(
            "the PID namespace is shared, so the command reaches the file trees of host \
             processes of uid {} through /proc/PID/root, those of other chroot sandboxes \
             included",
            user.uid
        ))
    };
    enforcement.push(rule::FILE_TREE, file_tree, false);
    let root_can = |what: &str| {
        if root {
            Status::Partial(format!("root can {what}"))
        } else {
            Status::Enforced
        }
    };
    enforcement.push(
        rule::ROOT_READ_ONLY,
        root_can("remount it read-write"),
        false,
    );
    if spec.rootfs == RootFs::HostView {
        let secrets = root_can("unmount the masks or leave the chroot to read them");
        enforcement.push(rule::SECRETS_HIDDEN, secrets, false);
    }
    enforcement.push(rule::WORKSPACE, Status::Enforced, false);
}

fn push_host_sharing(enforcement: &mut Enforcement, user: User) {
    let processes = if user.uid == 0 {
        Status::Unsupported(format!(
            "the host's PID namespace is shared, and root sees and signals every host \
             process; {USE_NAMESPACE}"
        ))
    } else {
        Status::Partial(format!(
            "/proc hides the processes of other users (hidepid=invisible), but the host's \
             PID namespace is shared: the command sees, signals and can ptrace every \
             process of uid {}, those of other chroot sandboxes included",
            user.uid
        ))
    };
    enforcement.push(rule::PROCESSES, processes, false);
    let network = Status::Unsupported(format!(
        "the host's network namespace is shared: the command reaches every address the host \
         reaches, loopback services included; {USE_NAMESPACE}"
    ));
    enforcement.push(rule::NETWORK, network, false);
    let ipc = Status::Unsupported(format!(
        "System V IPC, POSIX message queues and the hostname are the host's; {USE_NAMESPACE}"
    ));
    enforcement.push(rule::IPC, ipc, false);
}

fn push_privileges(enforcement: &mut Enforcement, root: bool, root_group: bool) {
    let (user, capabilities) = if root {
        (
            Status::Unsupported("--user root runs the command as root on the host".into()),
            Status::Unsupported("root keeps every capability".into()),
        )
    } else if root_group {
        (
            Status::Unsupported(
                "group 0 is the host's root group, which owns and may write host files".into(),
            ),
            Status::Enforced,
        )
    } else {
        // Every mount of the tree is nosuid and no_new_privs is set, so no setuid program or
        // file capability gives the command root or a capability back.
        (Status::Enforced, Status::Enforced)
    };
    // Root inside a chroot is root on the host: the caller must accept that explicitly.
    enforcement.push(rule::USER, user, root || root_group);
    enforcement.push(rule::CAPABILITIES, capabilities, false);
    enforcement.push(rule::NO_NEW_PRIVS, Status::Enforced, false);
    let seccomp = format!(
        "the filter only keeps setuid and setgid bits off files and denies io_uring; mount, \
         chroot, ptrace and new namespaces are allowed as on the host; {USE_NAMESPACE}"
    );
    enforcement.push(rule::SECCOMP, Status::Partial(seccomp), false);
    let landlock = format!("this backend applies no Landlock rules; {USE_NAMESPACE}");
    enforcement.push(rule::LANDLOCK, Status::Unsupported(landlock), false);
}

fn push_limits(enforcement: &mut Enforcement, spec: &Spec, user: User) {
    let limits = &spec.limits;
    let raise = if user.uid == 0 {
        ", and root can raise it"
    } else {
        ""
    };
    let memory = Status::Partial(format!(
        "RLIMIT_AS caps each process's address space, not the sandbox's memory: N processes \
         may use N times the limit, /tmp counts against none, and programs that reserve \
         large address ranges (JVMs, V8, Go) may fail under it{raise}"
    ));
    enforcement.push(rule::MEMORY, memory, limits.memory.is_requested());
    if limits.cpus.value.is_some() {
        let cpu = Status::Unsupported(format!(
            "no rlimit shares out CPU time (RLIMIT_CPU caps the CPU seconds of each process); \
             {USE_NAMESPACE}, whose cgroup enforces --cpus"
        ));
        enforcement.push(rule::CPU, cpu, limits.cpus.is_requested());
    }
    let pids = if user.uid == 0 {
        Status::Unsupported("root is exempt from RLIMIT_NPROC".into())
    } else {
        Status::Partial(format!(
            "RLIMIT_NPROC counts every process and thread of uid {} on the host, those of \
             other chroot sandboxes included, and a command that hits it is not ended",
            user.uid
        ))
    };
    enforcement.push(rule::PIDS, pids, limits.pids.is_requested());
    enforcement.push(rule::TMP_SIZE, Status::Enforced, false);
    if limits.timeout.is_some() {
        enforcement.push(rule::TIMEOUT, Status::Enforced, true);
    }
}

/// Fails when a required protection is not fully enforced, unless the spec accepts weaker
/// isolation.
pub fn check_required(enforcement: &Enforcement, allow_weaker: bool) -> Result<(), Error> {
    enforcement
        .check_required(allow_weaker)
        .map_err(|unmet| Error::WeakerThanRequired { unmet })
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::Limit;

    fn spec() -> Spec {
        Spec::new(vec!["true".into()])
    }

    #[test]
    fn defaults_require_nothing() {
        let enforcement = assess(&spec());
        assert_eq!(enforcement.unmet().count(), 0, "{enforcement:?}");
        for name in rule::ALL {
            let present = enforcement.get(name).is_some();
            let expected = ![rule::CPU, rule::TIMEOUT].contains(&name);
            assert_eq!(present, expected, "{name}");
        }
    }

    #[test]
    fn requested_cpus_are_unmet() {
        let mut spec = spec();
        spec.limits.cpus = Limit::requested(Some(1.0));
        let enforcement = assess(&spec);
        let unmet: Vec<&str> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, [rule::CPU]);
        assert!(check_required(&enforcement, false).is_err());
        assert!(check_required(&enforcement, true).is_ok());
    }

    #[test]
    fn requested_memory_and_pids_are_unmet() {
        let mut spec = spec();
        spec.limits.memory = Limit::requested(1 << 30);
        spec.limits.pids = Limit::requested(64);
        let enforcement = assess(&spec);
        let unmet: Vec<&str> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, [rule::MEMORY, rule::PIDS]);
        let error = check_required(&enforcement, false).unwrap_err().to_string();
        assert!(
            error.contains("memory limit: partial (RLIMIT_AS"),
            "{error}"
        );
        assert!(error.contains("--allow-weaker"), "{error}");
    }

    #[test]
    fn root_user_weakens_file_tree_and_capabilities() {
        let mut spec = spec();
        spec.user = Some(User::ROOT);
        let enforcement = assess(&spec);
        for name in [rule::FILE_TREE, rule::USER, rule::CAPABILITIES, rule::PIDS] {
            let status = &enforcement.get(name).expect(name).status;
            assert!(
                matches!(status, Status::Unsupported(_)),
                "{name}: {status:?}"
            );
        }
        let nobody = assess(&self::spec());
        let status = &nobody.get(rule::CAPABILITIES).expect("capabilities").status;
        assert_eq!(status, &Status::Enforced);
    }

    #[test]
    fn secrets_rule_only_for_host_view() {
        let mut spec = spec();
        spec.rootfs = RootFs::Directory("/srv/tree".into());
        assert!(assess(&spec).get(rule::SECRETS_HIDDEN).is_none());
        assert!(assess(&self::spec()).get(rule::SECRETS_HIDDEN).is_some());
    }
}
