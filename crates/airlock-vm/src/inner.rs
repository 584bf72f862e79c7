//! `--inner namespace`: each command runs in a namespace sandbox inside the guest, started
//! by the Airlock binary the agent runs from. The guest's kernel then adds namespaces,
//! seccomp, Landlock and dropped capabilities around the command, and the machine boundary
//! stays around all of it.
//!
//! The copy-on-write layer is the guest's own overlay at /workspace, whose upper layer the
//! host reads for `diff` and `apply`, and the inner layer binds that /workspace read-write.
//! The inner layer's own overlay cannot replace it: that overlay takes its upper layer from
//! a detached mount, which the guest's Debian 6.1 cloud kernel rejects ("overlayfs: failed
//! to clone upperpath"). The agent gives /workspace an owner other than root
//! ([`crate::agent::boot`]), and the inner layer maps its root to that owner, so no
//! idmapped mount of the overlay is needed, which 6.1 does not support either.

use airlock_core::size::format_bytes;
use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_core::{Spec, WorkspaceMode};

/// The inner layer's state directory, on the guest's /run (a tmpfs).
const STATE_DIRECTORY: &str = "/run/airlock/inner";

/// The Airlock binary the agent runs from. Exec of the agent's `/proc/1/exe` works in the
/// guest even though the initramfs it came from is no longer reachable by a path.
const AGENT_BINARY: &str = "/proc/1/exe";

/// Returns the argv that runs `command` through an inner `airlock run` in the guest.
pub fn wrap(spec: &Spec, command: Vec<String>) -> Vec<String> {
    let mut argv: Vec<String> = vec![AGENT_BINARY.into(), "--state-dir".into()];
    argv.push(STATE_DIRECTORY.into());
    argv.extend([
        "run".into(),
        "--tmp-size".into(),
        format_bytes(spec.limits.tmp_size),
    ]);
    let inner_mode = match (&spec.workspace, spec.workspace_mode) {
        (None, _) | (_, WorkspaceMode::None) => None,
        (Some(_), WorkspaceMode::Readonly) => Some("readonly"),
        // The guest's /workspace is already the copy-on-write overlay, or the shared
        // project itself.
        (Some(_), WorkspaceMode::Overlay | WorkspaceMode::Bind) => Some("bind"),
    };
    match inner_mode {
        Some(mode) => {
            argv.extend(["--workspace".into(), SANDBOX_WORKSPACE.into()]);
            argv.extend(["--workspace-mode".into(), mode.into()]);
        }
        None => argv.extend(["--workspace-mode".into(), "none".into()]),
    }
    if let Some(user) = spec.user {
        argv.extend(["--user".into(), format!("{}:{}", user.uid, user.gid)]);
    }
    for (key, value) in &spec.env {
        argv.extend(["--env".into(), format!("{key}={}", value.to_string_lossy())]);
    }
    if spec.tty {
        argv.push("--tty".into());
    }
    argv.push("--".into());
    argv.extend(command);
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readonly_command_runs_through_inner_run() {
        let mut spec = Spec::new(vec!["make".into()]);
        spec.workspace = Some("/srv/project".into());
        spec.workspace_mode = WorkspaceMode::Readonly;
        spec.env = vec![("A".into(), "1".into())];
        let line = wrap(&spec, vec!["make".into(), "-j2".into()]).join(" ");
        assert!(
            line.starts_with("/proc/1/exe --state-dir /run/airlock/inner run --tmp-size"),
            "{line}"
        );
        assert!(
            line.contains("--workspace /workspace --workspace-mode readonly"),
            "{line}"
        );
        assert!(line.ends_with("--env A=1 -- make -j2"), "{line}");
    }

    #[test]
    fn overlay_and_bind_bind_guest_workspace() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.workspace = Some("/srv/project".into());
        for mode in [WorkspaceMode::Overlay, WorkspaceMode::Bind] {
            spec.workspace_mode = mode;
            let line = wrap(&spec, vec!["true".into()]).join(" ");
            assert!(
                line.contains("--workspace /workspace --workspace-mode bind --"),
                "{mode:?}: {line}"
            );
        }
    }

    #[test]
    fn no_workspace_runs_inner_without_one() {
        let spec = Spec::new(vec!["true".into()]);
        let line = wrap(&spec, vec!["true".into()]).join(" ");
        assert!(line.contains("--workspace-mode none --"), "{line}");
        let mut none = Spec::new(vec!["true".into()]);
        none.workspace = Some("/srv/project".into());
        none.workspace_mode = WorkspaceMode::None;
        let line = wrap(&none, vec!["true".into()]).join(" ");
        assert!(line.contains("--workspace-mode none --"), "{line}");
        assert!(!line.contains("--workspace /workspace"), "{line}");
    }
}
