//! The protections of a docker sandbox for one spec, rule by rule, from what its container
//! shows ([`crate::observe`]) or the engine reports about itself (`GET /info`), and what
//! the host's kernel offers.
//!
//! The engine provides the namespaces (mount, PID, network `none` with only `lo`, IPC, UTS),
//! the read-only root, `no-new-privileges`, the empty capability sets, its default seccomp
//! profile and the cgroup limits. Airlock adds its own seccomp filter and Landlock in every
//! command it starts, in the init's child for `run` and in the exec wrapper's child for
//! `exec`, so the engine's profile is tightened with Airlock's denials.
//!
//! The engine maps the container's users to the host's one to one unless it remaps them
//! (`userns-remap` in Docker Engine, or a rootless engine). Without remapping, a command that
//! runs as uid 0 inside is uid 0 on the host, without capabilities.

use airlock_core::enforcement::rule;
use airlock_core::{Enforcement, Limit, Spec, Status, User};
use bollard::models::SystemInfo;

/// The engine's and the host's features that a sandbox's protections depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The reason the engine's facts are unknown, when it did not reply.
    pub unreachable: Option<String>,
    /// The engine runs containers in user namespaces of their own: `userns-remap`, or a
    /// rootless engine.
    pub user_namespaces: bool,
    pub memory: bool,
    pub swap: bool,
    pub cpu: bool,
    pub pids: bool,
    /// The engine's cgroup setup, as in "cgroup v1 through the cgroupfs driver".
    pub cgroups: String,
    pub landlock_abi: u32,
    /// Whether the host has swap space, which a memory limit without a swap limit lets the
    /// sandbox use.
    pub host_swap: bool,
}

impl Facts {
    /// Reads the facts from the engine's `info` and this host.
    pub fn from_info(info: &SystemInfo) -> Facts {
        let options = info.security_options.clone().unwrap_or_default();
        let has_option = |name: &str| {
            options.iter().any(|option| {
                option
                    .split(',')
                    .any(|field| field == format!("name={name}"))
            })
        };
        let version = info
            .cgroup_version
            .map_or_else(|| "unknown".to_owned(), |version| version.to_string());
        let driver = info
            .cgroup_driver
            .map_or_else(|| "an unknown".to_owned(), |driver| driver.to_string());
        Facts {
            unreachable: None,
            user_namespaces: has_option("userns") || has_option("rootless"),
            memory: info.memory_limit.unwrap_or(false),
            swap: info.swap_limit.unwrap_or(false),
            cpu: info.cpu_cfs_quota.unwrap_or(false),
            pids: info.pids_limit.unwrap_or(false),
            cgroups: format!("cgroup v{version} through the {driver} driver"),
            landlock_abi: airlock_namespace::landlock::effective_abi(),
            host_swap: host_has_swap(),
        }
    }

    /// Describes an engine that did not reply: every engine-dependent rule is then unknown.
    pub fn unreachable(reason: String) -> Facts {
        Facts {
            unreachable: Some(reason),
            ..Facts::host()
        }
    }

    /// Reads the host's facts; the engine's are all false until something confirms them.
    pub fn host() -> Facts {
        Facts {
            unreachable: None,
            user_namespaces: false,
            memory: false,
            swap: false,
            cpu: false,
            pids: false,
            cgroups: String::new(),
            landlock_abi: airlock_namespace::landlock::effective_abi(),
            host_swap: host_has_swap(),
        }
    }
}

/// Returns whether /proc/meminfo reports any swap space.
fn host_has_swap() -> bool {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("SwapTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .is_some_and(|kib| kib > 0)
}

/// Returns whether `user` is root or in root's group, which the host shares with the sandbox
/// unless the engine remaps users.
pub fn is_privileged(user: User) -> bool {
    user.uid == 0 || user.gid == 0
}

/// Lists the protections of a docker sandbox for `spec`, whose commands run as `user`, with
/// the engine and host of `facts`.
pub fn assess(spec: &Spec, user: User, facts: &Facts) -> Enforcement {
    let mut enforcement = Enforcement::default();
    for always in [rule::FILE_TREE, rule::ROOT_READ_ONLY, rule::WORKSPACE] {
        enforcement.push(always, Status::Enforced, true);
    }
    for always in [rule::PROCESSES, rule::NETWORK, rule::IPC] {
        enforcement.push(always, Status::Enforced, true);
    }
    enforcement.push(rule::USER, user_status(user, facts), true);
    for always in [rule::CAPABILITIES, rule::NO_NEW_PRIVS, rule::SECCOMP] {
        enforcement.push(always, Status::Enforced, true);
    }
    let landlock = if facts.landlock_abi > 0 {
        Status::Enforced
    } else {
        Status::Unsupported(
            "this kernel has no Landlock: it needs Linux 5.13 or later with landlock in the lsm= boot parameter".into(),
        )
    };
    enforcement.push(rule::LANDLOCK, landlock, false);
    push_limits(&mut enforcement, spec, facts);
    enforcement.push(rule::CLEANUP, Status::Enforced, true);
    enforcement
}

fn user_status(user: User, facts: &Facts) -> Status {
    if facts.user_namespaces {
        return Status::Enforced;
    }
    if user.uid == 0 {
        return Status::Unsupported(
            "the command runs as uid 0, which is uid 0 on the host because the engine does not remap users: without capabilities, but the owner of every root-owned file the sandbox reaches; omit --user, or run the engine with userns-remap or rootless".into(),
        );
    }
    if user.gid == 0 {
        return Status::Partial(
            "group 0 is the host's root group, which owns and may write host files".into(),
        );
    }
    Status::Enforced
}

fn push_limits(enforcement: &mut Enforcement, spec: &Spec, facts: &Facts) {
    let memory = match (facts.memory, facts.swap || !facts.host_swap) {
        (true, true) => Status::Enforced,
        (true, false) => Status::Partial(
            "the engine cannot limit swap, so the sandbox may use the host's swap space beyond the limit".into(),
        ),
        (false, _) => Status::Unsupported(missing(facts, "memory")),
    };
    enforcement.push(rule::MEMORY, memory, spec.limits.memory.is_requested());
    if spec.limits.cpus.value.is_some() {
        limit(enforcement, rule::CPU, &spec.limits.cpus, facts.cpu, facts);
    }
    limit(
        enforcement,
        rule::PIDS,
        &spec.limits.pids,
        facts.pids,
        facts,
    );
    enforcement.push(rule::TMP_SIZE, Status::Enforced, false);
    if spec.limits.timeout.is_some() {
        enforcement.push(rule::TIMEOUT, Status::Enforced, true);
    }
}

fn limit<T>(enforcement: &mut Enforcement, rule: &str, limit: &Limit<T>, has: bool, facts: &Facts) {
    let name = if rule == rule::CPU { "cpu" } else { "pids" };
    let status = if has {
        Status::Enforced
    } else {
        Status::Unsupported(missing(facts, name))
    };
    enforcement.push(rule, status, limit.is_requested());
}

/// Says why the engine cannot enforce a limit of `controller`.
fn missing(facts: &Facts, controller: &str) -> String {
    match &facts.unreachable {
        Some(reason) => format!("unknown, because the engine does not answer: {reason}"),
        None => format!(
            "the engine reports no {controller} limit support on {}",
            facts.cgroups
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: User = User {
        uid: 65534,
        gid: 65534,
    };

    fn engine(options: &[&str]) -> Facts {
        let info = SystemInfo {
            security_options: Some(options.iter().map(|option| option.to_string()).collect()),
            memory_limit: Some(true),
            swap_limit: Some(true),
            cpu_cfs_quota: Some(true),
            pids_limit: Some(true),
            ..SystemInfo::default()
        };
        Facts {
            landlock_abi: 6,
            ..Facts::from_info(&info)
        }
    }

    #[test]
    fn default_engine_enforces_every_rule() {
        let spec = Spec::new(vec!["true".into()]);
        let enforcement = assess(&spec, NOBODY, &engine(&["name=seccomp,profile=default"]));
        assert_eq!(enforcement.unmet().count(), 0, "{enforcement:?}");
        assert!(enforcement.get(rule::SECRETS_HIDDEN).is_none());
    }

    #[test]
    fn root_without_user_namespaces_is_unmet() {
        let spec = Spec::new(vec!["true".into()]);
        let enforcement = assess(&spec, User::ROOT, &engine(&["name=seccomp"]));
        let unmet: Vec<&str> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, [rule::USER]);
        let group_zero = User { uid: 1000, gid: 0 };
        let enforcement = assess(&spec, group_zero, &engine(&["name=seccomp"]));
        let status = &enforcement.get(rule::USER).unwrap().status;
        assert!(matches!(status, Status::Partial(_)), "{status:?}");
    }

    #[test]
    fn root_enforced_only_with_remapping() {
        let spec = Spec::new(vec!["true".into()]);
        for options in [["name=userns"], ["name=rootless"]] {
            let enforcement = assess(&spec, User::ROOT, &engine(&options));
            assert_eq!(
                enforcement.get(rule::USER).unwrap().status,
                Status::Enforced,
                "{options:?}"
            );
        }
    }

    #[test]
    fn requested_limit_without_engine_support_is_unmet() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.limits.pids = Limit::requested(64);
        let facts = Facts {
            pids: false,
            ..engine(&[])
        };
        let enforcement = assess(&spec, NOBODY, &facts);
        let unmet: Vec<&str> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, [rule::PIDS]);
    }

    #[test]
    fn unreachable_engine_says_why_limits_are_unknown() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.limits.memory = Limit::requested(1 << 30);
        let facts = Facts::unreachable("no socket".into());
        let enforcement = assess(&spec, NOBODY, &facts);
        let memory = enforcement.get(rule::MEMORY).unwrap();
        assert!(
            matches!(&memory.status, Status::Unsupported(detail) if detail.contains("no socket")),
            "{memory:?}"
        );
    }
}
