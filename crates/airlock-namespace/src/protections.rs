//! The namespace backend's protections for one spec on this host, rule by rule.

use airlock_core::{Enforcement, Limit, RootFs, Spec, Status};

use crate::cgroup::{Cgroup, Controller};

/// The protections the backend will enforce, and the fallbacks it needs for them.
pub struct Assessment {
    pub enforcement: Enforcement,
    /// RLIMIT_NPROC to set because no pids cgroup is available.
    pub nproc_rlimit: Option<u64>,
}

fn no_cgroup(controller: Controller, is_root: bool) -> String {
    let name = controller.name();
    if is_root {
        format!("the cgroup {name} controller is not available on this host")
    } else {
        format!("no cgroup with the {name} controller is delegated to this user")
    }
}

fn cgroup_limit<T>(
    enforcement: &mut Enforcement,
    rule: &str,
    limit: &Limit<T>,
    controller: Controller,
    cgroup: Option<&Cgroup>,
    is_root: bool,
) {
    let status = if cgroup.is_some_and(|cgroup| cgroup.has(controller)) {
        Status::Enforced
    } else {
        Status::Unsupported(no_cgroup(controller, is_root))
    };
    enforcement.push(rule, status, limit.is_requested());
}

/// Lists the protections of a sandbox for `spec`, given the cgroup this host provided.
pub fn assess(
    spec: &Spec,
    cgroup: Option<&Cgroup>,
    landlock_abi: u32,
    is_root: bool,
) -> Assessment {
    let mut enforcement = Enforcement::default();
    let always = [
        "user, pid, mount, network, ipc, uts and cgroup namespaces",
        "read-only root filesystem, entered with pivot_root",
        "network limited to a private loopback",
        "root inside is an unprivileged user on the host",
        "all capabilities dropped",
        "no_new_privs",
        "seccomp filter",
        "init kills every process when the command exits",
    ];
    for rule in always {
        enforcement.push(rule, Status::Enforced, true);
    }
    if spec.rootfs == RootFs::HostView {
        enforcement.push("host secrets under /etc hidden", Status::Enforced, true);
    }
    let landlock = if landlock_abi > 0 {
        Status::Enforced
    } else {
        Status::Unsupported(
            "this kernel has no Landlock: it needs Linux 5.13 or later with landlock in the \
             lsm= boot parameter"
                .into(),
        )
    };
    enforcement.push("landlock", landlock, false);
    cgroup_limit(
        &mut enforcement,
        "memory limit",
        &spec.limits.memory,
        Controller::Memory,
        cgroup,
        is_root,
    );
    if spec.limits.cpus.value.is_some() {
        cgroup_limit(
            &mut enforcement,
            "cpu limit",
            &spec.limits.cpus,
            Controller::Cpu,
            cgroup,
            is_root,
        );
    }
    let has_pids = cgroup.is_some_and(|cgroup| cgroup.has(Controller::Pids));
    let pids = if has_pids {
        Status::Enforced
    } else {
        Status::Partial(format!(
            "RLIMIT_NPROC only, which does not end the sandbox when hit, because {}",
            no_cgroup(Controller::Pids, is_root)
        ))
    };
    enforcement.push("pids limit", pids, spec.limits.pids.is_requested());
    enforcement.push("tmp size", Status::Enforced, false);
    if spec.limits.timeout.is_some() {
        enforcement.push("timeout", Status::Enforced, true);
    }
    Assessment {
        enforcement,
        nproc_rlimit: (!has_pids).then_some(spec.limits.pids.value),
    }
}
