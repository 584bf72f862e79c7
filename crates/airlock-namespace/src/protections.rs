//! The namespace backend's protections for one spec on this host, rule by rule.

use airlock_core::enforcement::rule;
use airlock_core::{Enforcement, Limit, RootFs, Spec, Status};

use crate::cgroup::{Cgroup, Controller, Layout};

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
    has: &dyn Fn(Controller) -> bool,
    is_root: bool,
) {
    let status = if has(controller) {
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
    let has = |controller| cgroup.is_some_and(|cgroup| cgroup.has(controller));
    assess_with(spec, &has, landlock_abi, is_root)
}

/// Predicts the protections of a sandbox for `spec` without creating it, from the cgroup
/// controllers this host would give the caller.
pub fn predict(spec: &Spec) -> Enforcement {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let layout = Layout::discover(is_root);
    let has = |controller| {
        layout
            .as_ref()
            .is_some_and(|layout| layout.check(controller).is_ok())
    };
    assess_with(spec, &has, crate::landlock::effective_abi(), is_root).enforcement
}

fn assess_with(
    spec: &Spec,
    has: &dyn Fn(Controller) -> bool,
    landlock_abi: u32,
    is_root: bool,
) -> Assessment {
    let mut enforcement = Enforcement::default();
    enforcement.push(rule::FILE_TREE, Status::Enforced, true);
    enforcement.push(rule::ROOT_READ_ONLY, Status::Enforced, true);
    if spec.rootfs == RootFs::HostView {
        enforcement.push(rule::SECRETS_HIDDEN, Status::Enforced, true);
    }
    enforcement.push(rule::WORKSPACE, Status::Enforced, true);
    for always in [
        rule::PROCESSES,
        rule::NETWORK,
        rule::IPC,
        rule::USER,
        rule::CAPABILITIES,
        rule::NO_NEW_PRIVS,
        rule::SECCOMP,
    ] {
        enforcement.push(always, Status::Enforced, true);
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
    enforcement.push(rule::LANDLOCK, landlock, false);
    cgroup_limit(
        &mut enforcement,
        rule::MEMORY,
        &spec.limits.memory,
        Controller::Memory,
        has,
        is_root,
    );
    if spec.limits.cpus.value.is_some() {
        cgroup_limit(
            &mut enforcement,
            rule::CPU,
            &spec.limits.cpus,
            Controller::Cpu,
            has,
            is_root,
        );
    }
    let has_pids = has(Controller::Pids);
    let pids = if has_pids {
        Status::Enforced
    } else {
        Status::Partial(format!(
            "RLIMIT_NPROC only, which does not end the sandbox when hit, because {}",
            no_cgroup(Controller::Pids, is_root)
        ))
    };
    enforcement.push(rule::PIDS, pids, spec.limits.pids.is_requested());
    enforcement.push(rule::TMP_SIZE, Status::Enforced, false);
    if spec.limits.timeout.is_some() {
        enforcement.push(rule::TIMEOUT, Status::Enforced, true);
    }
    enforcement.push(rule::CLEANUP, Status::Enforced, true);
    Assessment {
        enforcement,
        nproc_rlimit: (!has_pids).then_some(spec.limits.pids.value),
    }
}
