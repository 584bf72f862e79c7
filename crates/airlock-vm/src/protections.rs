//! The protections of a vm sandbox for one spec, rule by rule.
//!
//! The guest has its own kernel, so its processes, network (no device at all, `-nic none`),
//! IPC and users are its own, and its root is a read-only disk, or the host view that a
//! virtiofs daemon serves from read-only mounts ([`crate::share`]). Inside it, the command runs
//! as the guest's root with every capability and no syscall filter: the machine boundary,
//! QEMU, is what contains it.

use airlock_core::enforcement::rule;
use airlock_core::{Enforcement, Spec, Status};

use crate::launch::RootSource;

/// The reason the rules that confine a process inside the guest are not applied.
const GUEST_ROOT: &str =
    "the command runs as root of the guest's own kernel; the virtual machine contains it";

/// The rule that reports an inner layer, with NAME replaced by its backend.
const INNER_LAYER_RULE: &str = "inner layer: NAME sandbox around each command in the guest";

/// Lists the protections of a vm sandbox for `spec`.
pub fn assess(spec: &Spec) -> Enforcement {
    let mut enforcement = Enforcement::default();
    let root = crate::launch::root_source(spec);
    let file_tree = match &root {
        Ok(_) => Status::Enforced,
        Err(error) => Status::Unsupported(error.to_string()),
    };
    enforcement.push(rule::FILE_TREE, file_tree, true);
    enforcement.push(rule::ROOT_READ_ONLY, Status::Enforced, true);
    if matches!(root, Ok(RootSource::HostView)) {
        enforcement.push(rule::SECRETS_HIDDEN, Status::Enforced, true);
    }
    let workspace = match crate::launch::workspace_mount(spec) {
        Ok(_) => Status::Enforced,
        Err(error) => Status::Unsupported(error.to_string()),
    };
    enforcement.push(rule::WORKSPACE, workspace, true);
    for always in [rule::PROCESSES, rule::NETWORK, rule::IPC, rule::USER] {
        enforcement.push(always, Status::Enforced, true);
    }
    for inside in [
        rule::CAPABILITIES,
        rule::NO_NEW_PRIVS,
        rule::SECCOMP,
        rule::LANDLOCK,
    ] {
        let status = match spec.inner {
            // NOTE: true of the guest kernels Airlock finds by default, Debian's cloud
            // kernels, which have seccomp and Landlock. A --kernel without them weakens the
            // inner layer, whose own report is not passed up yet.
            Some(_) => Status::Enforced,
            None => Status::Unsupported(GUEST_ROOT.into()),
        };
        enforcement.push(inside, status, false);
    }
    let memory = &spec.limits.memory;
    enforcement.push(rule::MEMORY, Status::Enforced, memory.is_requested());
    let cpus = &spec.limits.cpus;
    let cpu_status = match cpus.value {
        Some(count) if count.fract() != 0.0 => Status::Partial(format!(
            "{count} CPUs rounded up to {} whole virtual CPUs",
            vcpus(count)
        )),
        _ => Status::Enforced,
    };
    enforcement.push(rule::CPU, cpu_status, cpus.is_requested());
    let pids = &spec.limits.pids;
    enforcement.push(rule::PIDS, Status::Enforced, pids.is_requested());
    enforcement.push(rule::TMP_SIZE, Status::Enforced, false);
    if spec.limits.timeout.is_some() {
        enforcement.push(rule::TIMEOUT, Status::Enforced, true);
    }
    enforcement.push(rule::CLEANUP, Status::Enforced, true);
    if let Some(inner) = spec.inner {
        // The layers, outermost first: the rules above hold for the machine as a whole,
        // and capabilities, no_new_privs, seccomp and Landlock come from the inner layer.
        enforcement.push(
            INNER_LAYER_RULE.replace("NAME", inner.name()),
            Status::Enforced,
            true,
        );
    }
    enforcement
}

/// Returns the virtual CPUs for a `--cpus` value: whole CPUs, at least one.
pub fn vcpus(cpus: f64) -> u32 {
    (cpus.ceil() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::{Limit, RootFs, WorkspaceMode};

    #[test]
    fn host_view_and_bind_enforced() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.limits.pids = Limit::requested(10);
        spec.workspace = Some("/srv/project".into());
        spec.workspace_mode = WorkspaceMode::Bind;
        let enforcement = assess(&spec);
        assert_eq!(enforcement.unmet().count(), 0);
        let secrets = enforcement.get(rule::SECRETS_HIDDEN).unwrap();
        assert_eq!(secrets.status, Status::Enforced);
        spec.rootfs = RootFs::Directory("/srv/tree".into());
        assert!(assess(&spec).get(rule::SECRETS_HIDDEN).is_none());
    }

    #[test]
    fn inner_overlay_enforced() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.workspace = Some("/srv/project".into());
        spec.inner = Some(airlock_core::InnerBackend::Namespace);
        for mode in [WorkspaceMode::Overlay, WorkspaceMode::Readonly] {
            spec.workspace_mode = mode;
            assert_eq!(assess(&spec).unmet().count(), 0, "{mode:?}");
        }
    }

    #[test]
    fn inner_bind_of_own_project_unmet() {
        // The caller's own project: root's for root, and seen as root's in the guest for
        // any other caller.
        let project = tempfile::tempdir().unwrap();
        let mut spec = Spec::new(vec!["true".into()]);
        spec.workspace = Some(project.path().to_owned());
        spec.workspace_mode = WorkspaceMode::Bind;
        spec.inner = Some(airlock_core::InnerBackend::Namespace);
        let enforcement = assess(&spec);
        let unmet: Vec<&str> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, [rule::WORKSPACE]);
        let workspace = enforcement.get(rule::WORKSPACE).unwrap();
        assert!(
            matches!(&workspace.status, Status::Unsupported(detail) if detail.contains("--workspace-mode overlay")),
            "{:?}",
            workspace.status
        );
    }

    #[test]
    fn image_is_a_root_but_not_with_rootfs() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.image = Some("debian:bookworm".into());
        assert_eq!(assess(&spec).unmet().count(), 0);
        assert!(assess(&spec).get(rule::SECRETS_HIDDEN).is_none());
        spec.rootfs = RootFs::Directory("/srv/tree".into());
        let enforcement = assess(&spec);
        let unmet: Vec<&str> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, [rule::FILE_TREE]);
    }

    #[test]
    fn fractional_cpus_partial() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.limits.cpus = Limit::requested(Some(1.5));
        let enforcement = assess(&spec);
        let cpu = enforcement.get(rule::CPU).unwrap();
        assert!(matches!(&cpu.status, Status::Partial(detail) if detail.contains("2 whole")));
        assert_eq!(vcpus(0.5), 1);
    }
}
