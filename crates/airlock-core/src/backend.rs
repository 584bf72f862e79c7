//! The trait every isolation level implements.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::enforcement::Enforcement;
use crate::id::SandboxId;
use crate::outcome::EndReason;
use crate::outcome::Outcome;
use crate::spec::Spec;

/// Any failure of a backend to create or run a sandbox. Backends keep their own error enums
/// and box them here, so the front end prints one chain of causes.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Options of one run that concern the caller's streams and the sandbox's place on the
/// host rather than what the sandbox is.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Relay stderr so that [`Finished::stderr_ends_line`] is known, for a front end that
    /// prints a record on its own line after the command's output.
    pub track_stderr_line: bool,
    /// The sandbox's id, when the front end has already given it one in the state directory.
    pub id: Option<SandboxId>,
    /// The directory that contains the workspace overlay's `upper` and `work` directories,
    /// required for [`crate::WorkspaceMode::Overlay`].
    pub layers: Option<PathBuf>,
    /// The `pinned` field of the runtime that the sandbox's first start reported, which a
    /// later start reuses, such as the vm backend's image id and engine socket.
    pub pinned: Option<serde_json::Value>,
}

/// The outcome of a run, with what the front end needs to print after it.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// Whether the command's stderr ended with a newline or was empty; always true unless
    /// [`RunOptions::track_stderr_line`] was set.
    pub stderr_ends_line: bool,
    /// The backend's remaining clean-up after the command ended.
    pub teardown: Teardown,
}

/// A backend's remaining clean-up once its command ended, such as cgroups and staging
/// directories, which dropping it removes. A front end can report the command's status
/// first and drop this afterwards in a child process, so the caller does not wait for the
/// removal. Dropped right away, it removes everything at once.
#[derive(Default)]
pub struct Teardown(Option<Box<dyn std::any::Any>>);

impl Teardown {
    /// Nothing left to remove.
    pub fn none() -> Teardown {
        Teardown(None)
    }

    /// `leftovers` removes what is left when it is dropped.
    pub fn later(leftovers: impl std::any::Any) -> Teardown {
        Teardown(Some(Box::new(leftovers)))
    }

    /// Removes what is left, now.
    pub fn run(self) {
        drop(self);
    }

    /// Leaves the removal to another process with a copy of this one's state, as a forked
    /// child has. Nothing is removed here, and descriptors close when this process exits.
    /// Signals that the teardown keeps blocked stay blocked here, so the caller should exit.
    pub fn hand_over(self) {
        std::mem::forget(self);
    }
}

impl std::fmt::Debug for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Teardown(pending)"
        } else {
            "Teardown(none)"
        })
    }
}

/// One command for a running sandbox.
#[derive(Debug, Clone, Default)]
pub struct ExecCommand {
    pub argv: Vec<OsString>,
    /// Variables set besides the sandbox's own; later ones win.
    pub env: Vec<(String, OsString)>,
    /// Give the command a new pseudo-terminal.
    pub tty: bool,
    /// Kill the command after this long.
    pub timeout: Option<Duration>,
    /// The user the command runs as; `None` for the sandbox's own.
    pub user: Option<crate::spec::User>,
}

/// The reason a held sandbox's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldEnd {
    /// The supervisor received this signal, a request to stop the sandbox.
    Signal(i32),
    /// The deadline passed.
    Expired,
    /// The sandbox ended by itself.
    Exited,
}

/// The resources a running sandbox uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Memory in use, in bytes.
    pub memory: Option<u64>,
    /// CPU time of the processes alive now, in seconds.
    pub cpu_seconds: f64,
    /// Processes in the sandbox, its init included.
    pub processes: u64,
}

/// A sandbox held without a command, owned by the process that started it (its supervisor).
/// Dropping it ends the sandbox and removes what the backend made for it.
pub trait HeldSandbox {
    /// Backend-specific facts that [`Backend::exec`], [`Backend::stats`] and
    /// [`Backend::clean_up`] need, stored in the sandbox's record.
    fn runtime(&self) -> serde_json::Value;

    /// Waits until a signal requests a stop, `deadline` passes or the sandbox ends, calling
    /// `limit_hit` for each limit its processes run into meanwhile.
    fn wait(
        &mut self,
        deadline: Option<Instant>,
        limit_hit: &mut dyn FnMut(EndReason),
    ) -> std::io::Result<HeldEnd>;
}

/// The strength of a backend's isolation, weakest first. A risk level requires a minimum
/// class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationClass {
    /// Only the file tree differs from the host's; a root process can leave it.
    Chroot,
    /// Namespaces, cgroups and syscall filters on the host's kernel.
    Container,
    /// A guest kernel on this host.
    VirtualMachine,
    /// A separate machine.
    CloudMachine,
}

impl IsolationClass {
    pub fn describe(self) -> &'static str {
        match self {
            IsolationClass::Chroot => "a chroot",
            IsolationClass::Container => "a container on the host's kernel",
            IsolationClass::VirtualMachine => "a virtual machine",
            IsolationClass::CloudMachine => "a cloud machine",
        }
    }
}

/// The reason a backend cannot run on this host for this caller, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{reason}; {fix}")]
pub struct Unavailable {
    pub reason: String,
    pub fix: String,
}

/// An isolation level that can run a command under a [`Spec`].
pub trait Backend {
    /// The name users pass to `--backend`.
    fn name(&self) -> &'static str;

    /// Returns how strongly this backend isolates.
    fn class(&self) -> IsolationClass;

    /// Checks, without creating anything, whether this host and caller can run the backend.
    fn availability(&self) -> Result<(), Unavailable>;

    /// Returns a warning that front ends show each time they create a sandbox of this
    /// backend, for a backend that leaves out protections callers may take for granted.
    fn warning(&self) -> Option<&'static str> {
        None
    }

    /// Returns what a sandbox of `spec` would enforce on this host, rule by rule, without
    /// creating it. Creation repeats the check against what it really got.
    fn assess(&self, spec: &Spec) -> Enforcement;

    /// Creates a sandbox from `spec`, runs its command with the caller's standard streams,
    /// waits for it to end, and removes the sandbox.
    fn run(&self, spec: &Spec, options: RunOptions) -> Result<Finished, BackendError>;

    /// Creates a sandbox from `spec` without a command and returns once it is ready. The
    /// calling process becomes its supervisor and must stay single-threaded.
    fn hold(&self, spec: &Spec, options: &RunOptions)
        -> Result<Box<dyn HeldSandbox>, BackendError>;

    /// Runs `command` in the running sandbox `id` whose [`HeldSandbox::runtime`] is
    /// `runtime`, with the caller's standard streams, and waits for it to end.
    fn exec(
        &self,
        id: &SandboxId,
        spec: &Spec,
        runtime: &serde_json::Value,
        command: &ExecCommand,
        options: &RunOptions,
    ) -> Result<Finished, BackendError>;

    /// Returns whether the sandbox that `runtime` describes still runs: false once it ended, also
    /// while its supervisor is still cleaning up.
    fn is_running(&self, runtime: &serde_json::Value) -> bool;

    /// Reads what the running sandbox uses now.
    fn stats(&self, runtime: &serde_json::Value) -> Result<Stats, BackendError>;

    /// Copies `source` on the host into the running sandbox at `target`, or the other way
    /// round when `into_sandbox` is false. Paths in the sandbox are absolute.
    fn copy(
        &self,
        runtime: &serde_json::Value,
        source: &std::path::Path,
        target: &std::path::Path,
        into_sandbox: bool,
    ) -> Result<(), BackendError>;

    /// Brings the workspace changes of the running sandbox that `runtime` describes into
    /// `layers/upper` on the host, where `diff` and `apply` read them. Backends whose
    /// overlay writes to that directory itself have nothing to do.
    fn sync_changes(
        &self,
        _runtime: &serde_json::Value,
        _layers: &std::path::Path,
    ) -> Result<(), BackendError> {
        Ok(())
    }

    /// Removes what sandbox `id`, whose supervisor is gone, may have left: processes and
    /// cgroups, also when the supervisor died before it could record its `runtime`.
    fn clean_up(&self, id: &SandboxId, runtime: Option<&serde_json::Value>);

    /// Removes what sandbox `id` may have left when its record has no runtime, as after a
    /// supervisor killed during a start. `pinned` is the record's [`RunOptions::pinned`],
    /// which names where an earlier start ran it, such as the docker backend's engine socket.
    fn clean_up_without_runtime(&self, id: &SandboxId, pinned: Option<&serde_json::Value>) {
        let _ = pinned;
        self.clean_up(id, None);
    }
}
