//! The actions a front end can ask of Airlock. The CLI parses its arguments into an
//! [`Action`]; the HTTP API and MCP server are meant to parse their requests into the same
//! enum, so every front end drives the core the same way.

use std::path::PathBuf;

use crate::backend::ExecCommand;
use crate::spec::Spec;

/// A sandbox named by its id, a unique prefix of the id, or its name.
pub type SandboxRef = String;

#[derive(Debug, Clone)]
pub enum Action {
    /// Run one command in a fresh sandbox and remove the sandbox afterwards, unless its
    /// overlay workspace holds changes to review.
    Run { backend: BackendKind, spec: Spec },
    /// Create a sandbox that keeps running without a command.
    Create { backend: BackendKind, spec: Spec },
    /// Run a command in a running sandbox.
    Exec {
        sandbox: SandboxRef,
        command: ExecCommand,
    },
    /// List the sandboxes.
    List,
    /// End every process of a sandbox, keeping its files.
    Stop { sandbox: SandboxRef },
    /// Start a stopped sandbox again.
    Start { sandbox: SandboxRef },
    /// Remove sandboxes; `force` stops running ones first.
    Remove {
        sandboxes: Vec<SandboxRef>,
        force: bool,
    },
    /// Copy between the host and a running sandbox.
    Copy {
        sandbox: SandboxRef,
        source: PathBuf,
        target: PathBuf,
        into_sandbox: bool,
    },
    /// Read what a running sandbox uses.
    Stats { sandbox: SandboxRef },
    /// List the workspace changes, or print them as a patch.
    Diff { sandbox: SandboxRef, patch: bool },
    /// Copy workspace changes to the host; all non-sensitive ones when `paths` is empty.
    /// `running` accepts a running sandbox, whose files may change after they were reviewed.
    Apply {
        sandbox: SandboxRef,
        paths: Vec<PathBuf>,
        running: bool,
    },
    /// Drop every workspace change.
    Discard { sandbox: SandboxRef },
    /// Print the audit log.
    AuditShow { sandbox: SandboxRef },
    /// Check the audit log's hash chain.
    AuditVerify { sandbox: SandboxRef },
    /// Remove what killed commands left behind.
    Gc,
}

/// The isolation levels this build of Airlock provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Linux namespaces, cgroups, seccomp and Landlock, started by Airlock itself.
    #[default]
    Namespace,
    /// A systemd-nspawn container, started without systemd as PID 1.
    Nspawn,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Namespace, BackendKind::Nspawn];

    /// The name users pass to `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Namespace => "namespace",
            BackendKind::Nspawn => "nspawn",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
                format!(
                    "unknown backend {name:?}: expected one of {}",
                    known.join(", ")
                )
            })
    }
}
