//! The actions a front end can ask of Airlock. The CLI parses its arguments into an
//! [`Action`]; the HTTP API and MCP server are meant to parse their requests into the same
//! enum, so every front end drives the core the same way.

use std::path::PathBuf;

use crate::backend::ExecCommand;
use crate::risk::RiskLevel;
use crate::spec::Spec;

/// A sandbox named by its id, a unique prefix of the id, or its name.
pub type SandboxRef = String;

#[derive(Debug, Clone)]
pub enum Action {
    /// Run one command in a fresh sandbox and remove the sandbox afterwards, unless its
    /// overlay workspace holds changes to review.
    Run { backend: BackendRequest, spec: Spec },
    /// Create a sandbox that keeps running without a command.
    Create { backend: BackendRequest, spec: Spec },
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
    /// Report what this host can run, backend by backend, and the host facts behind it.
    Doctor,
    /// Report, rule by rule, what each backend would enforce for `spec`.
    PolicyCheck { backend: BackendRequest, spec: Spec },
    /// Run the containment probes in a sandbox of each backend that `targets` selects, the
    /// docker backend's from `image` and the others' from `rootfs` or the host view. With
    /// `unconfined`, run them on the host too, outside any sandbox, as a control group.
    Probe {
        targets: ProbeTargets,
        image: Option<String>,
        rootfs: Option<PathBuf>,
        unconfined: bool,
    },
    /// Manage the container engine's images, which the docker backend runs.
    Image(ImageAction),
}

/// An action on the images of the container engine (Docker Engine or Podman's API service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageAction {
    /// Import a root filesystem, a directory or a tarball, as the image `name`
    /// (`NAME[:TAG]`).
    Import { source: PathBuf, name: String },
    /// Pull `reference` (`[HOST[:PORT]/]NAME[:TAG][@DIGEST]`) from its registry.
    Pull { reference: String },
    /// List the engine's images.
    List,
    /// Remove images by name or id; `force` removes one that a container uses.
    Remove { names: Vec<String>, force: bool },
}

/// The backends that `airlock probe` runs its probes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeTargets {
    /// Every backend that this host and caller can run.
    Available,
    /// Every backend; those that cannot run here are listed with the reason.
    All,
    /// One backend, which must be able to run here.
    One(BackendKind),
}

/// The caller's choice of a sandbox's backend: by name, by risk level, both (the named
/// backend must then meet the level), or neither for the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendRequest {
    pub backend: Option<BackendKind>,
    pub risk: Option<RiskLevel>,
}

/// The isolation levels this build of Airlock provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Linux namespaces, cgroups, seccomp and Landlock, started by Airlock itself.
    #[default]
    Namespace,
    /// A chroot in a private mount namespace, with rlimits: root only, and the file tree is
    /// all it isolates.
    Chroot,
    /// A systemd-nspawn container, started without systemd as PID 1.
    Nspawn,
    /// A container of a Docker-compatible engine (Docker Engine, or Podman's API service),
    /// run from an image of that engine.
    Docker,
    /// A QEMU guest with its own kernel, driven by Airlock's agent inside it.
    Vm,
}

impl BackendKind {
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Namespace,
        BackendKind::Chroot,
        BackendKind::Nspawn,
        BackendKind::Docker,
        BackendKind::Vm,
    ];

    /// The name users pass to `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Namespace => "namespace",
            BackendKind::Chroot => "chroot",
            BackendKind::Nspawn => "nspawn",
            BackendKind::Docker => "docker",
            BackendKind::Vm => "vm",
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
