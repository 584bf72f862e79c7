//! The protections of a systemd-nspawn sandbox for one spec on this host, rule by rule.
//!
//! systemd-nspawn provides the namespaces (mount, PID, network with only `lo`, IPC, UTS,
//! user, cgroup), the read-only root, no_new_privs, its own seccomp allow-list, and a
//! capability bounding set that still keeps 27 capabilities for the container's init
//! (systemd 252 with `--private-network`). It has no Landlock, and without systemd as PID 1
//! no cgroup limits, because `--property=` needs a service manager.
//!
//! The backend adds the rest itself: cgroup limits, and the namespace backend's privilege
//! shedding (no capabilities, no_new_privs, Airlock's seccomp filter, Landlock) in every
//! command it starts, in the init's child for `run` and in the joining process for `exec`.
//! A command started by `exec` joins from outside, so nspawn's own seccomp filter does not
//! apply to it; Airlock's does.

use airlock_core::enforcement::rule;
use airlock_core::{Enforcement, Limit, RootFs, Spec, Status};
use airlock_namespace::cgroup::{Controller, Layout};

/// The host facts the assessment depends on.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub user_namespaces: bool,
    pub landlock_abi: u32,
    pub memory: bool,
    pub pids: bool,
    pub cpu: bool,
}

impl Host {
    /// Reads the facts from this host, as root.
    pub fn discover() -> Host {
        let layout = Layout::discover(true);
        let has = |controller| layout.as_ref().is_some_and(|l| l.check(controller).is_ok());
        Host {
            user_namespaces: crate::availability::user_namespaces(),
            landlock_abi: airlock_namespace::landlock::effective_abi(),
            memory: has(Controller::Memory),
            pids: has(Controller::Pids),
            cpu: has(Controller::Cpu),
        }
    }
}

fn no_controller(name: &str) -> String {
    format!("the cgroup {name} controller is not available on this host, and systemd-nspawn's --property= limits need systemd as PID 1")
}

fn cgroup_limit<T>(
    enforcement: &mut Enforcement,
    rule: &str,
    limit: &Limit<T>,
    has: bool,
    name: &str,
) {
    let status = if has {
        Status::Enforced
    } else {
        Status::Unsupported(no_controller(name))
    };
    enforcement.push(rule, status, limit.is_requested());
}

/// Lists the protections of an nspawn sandbox for `spec` on `host`.
pub fn assess(spec: &Spec, host: &Host) -> Enforcement {
    let mut enforcement = Enforcement::default();
    enforcement.push(rule::FILE_TREE, Status::Enforced, true);
    let root = if host.landlock_abi > 0 {
        Status::Enforced
    } else {
        Status::Partial(
            "systemd-nspawn mounts a writable tmpfs on /run, and without Landlock nothing keeps the command from writing there".into(),
        )
    };
    enforcement.push(rule::ROOT_READ_ONLY, root, true);
    if spec.rootfs == RootFs::HostView {
        enforcement.push(rule::SECRETS_HIDDEN, Status::Enforced, true);
    }
    enforcement.push(rule::WORKSPACE, Status::Enforced, true);

    for always in [rule::PROCESSES, rule::NETWORK, rule::IPC] {
        enforcement.push(always, Status::Enforced, true);
    }
    let user = if host.user_namespaces {
        Status::Enforced
    } else {
        Status::Unsupported(
            "user namespaces are disabled (user.max_user_namespaces is 0), so root inside is root on the host with a reduced capability set; enable them with `sysctl user.max_user_namespaces=15000`".into(),
        )
    };
    enforcement.push(rule::USER, user, true);

    for always in [rule::CAPABILITIES, rule::NO_NEW_PRIVS, rule::SECCOMP] {
        enforcement.push(always, Status::Enforced, true);
    }
    let landlock = if host.landlock_abi > 0 {
        Status::Enforced
    } else {
        Status::Unsupported(
            "systemd-nspawn has no Landlock support, and this kernel has no Landlock for Airlock to apply: it needs Linux 5.13 or later with landlock in the lsm= boot parameter".into(),
        )
    };
    enforcement.push(rule::LANDLOCK, landlock, false);

    cgroup_limit(
        &mut enforcement,
        rule::MEMORY,
        &spec.limits.memory,
        host.memory,
        "memory",
    );
    if spec.limits.cpus.value.is_some() {
        cgroup_limit(
            &mut enforcement,
            rule::CPU,
            &spec.limits.cpus,
            host.cpu,
            "cpu",
        );
    }
    let pids = if host.pids {
        Status::Enforced
    } else {
        Status::Partial(format!(
            "RLIMIT_NPROC only, which does not end the sandbox when hit, because {}",
            no_controller("pids")
        ))
    };
    enforcement.push(rule::PIDS, pids, spec.limits.pids.is_requested());
    enforcement.push(rule::TMP_SIZE, Status::Enforced, false);
    if spec.limits.timeout.is_some() {
        enforcement.push(rule::TIMEOUT, Status::Enforced, true);
    }
    enforcement.push(rule::CLEANUP, Status::Enforced, true);
    enforcement
}

/// Fails unless every required protection is enforced or the caller accepted weaker ones.
pub fn check_required(enforcement: &Enforcement, allow_weaker: bool) -> Result<(), crate::Error> {
    enforcement
        .check_required(allow_weaker)
        .map_err(|unmet| crate::Error::WeakerThanRequired { unmet })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_host() -> Host {
        Host {
            user_namespaces: true,
            landlock_abi: 7,
            memory: true,
            pids: true,
            cpu: true,
        }
    }

    #[test]
    fn full_host_enforces_every_rule() {
        let spec = Spec::new(vec!["true".into()]);
        let enforcement = assess(&spec, &full_host());
        assert_eq!(enforcement.unmet().count(), 0, "{enforcement:?}");
        assert!(enforcement.get(rule::SECRETS_HIDDEN).is_some());
        assert!(enforcement.get(rule::CPU).is_none(), "no cpu limit was set");
    }

    #[test]
    fn requested_memory_without_controller_is_unmet() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.limits.memory = Limit::requested(64 << 20);
        let host = Host {
            memory: false,
            ..full_host()
        };
        let enforcement = assess(&spec, &host);
        let unmet: Vec<&str> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, [rule::MEMORY]);
        assert!(check_required(&enforcement, false).is_err());
        assert!(check_required(&enforcement, true).is_ok());
    }

    #[test]
    fn missing_user_namespaces_fail_the_user_rule() {
        let spec = Spec::new(vec!["true".into()]);
        let host = Host {
            user_namespaces: false,
            ..full_host()
        };
        let unmet: Vec<String> = assess(&spec, &host)
            .unmet()
            .map(|p| p.rule.clone())
            .collect();
        assert_eq!(unmet, [rule::USER]);
    }
}
