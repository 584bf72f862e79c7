//! The `chroot` backend, the lightest isolation level. The command gets a read-only file tree
//! with its workspace, entered with chroot(2), and runs as an unprivileged user under rlimits.
//! Processes, network, IPC and the hostname are the host's, and a root process can leave the
//! tree. It needs root.
//!
//! Three processes take part:
//! - the launcher ([`launch`]), the caller of a run or the supervisor of a held sandbox
//!   ([`held`]), which prepares, watches and cleans up;
//! - the holder ([`holder`]), a root process in a new private mount namespace. It builds the
//!   tree ([`tree`]) and keeps the namespace alive. In a run it also starts the command and
//!   kills what the command leaves behind;
//! - the command ([`command`]), which takes its rlimits and user and executes. `exec` and
//!   `cp` join the holder's namespace from outside ([`join`]).
//!
//! The sandbox's processes are found by their mount namespace ([`members`]). The tree
//! builder, stream relays, monitor, reports and copy are the namespace backend's.

pub mod command;
pub mod error;
pub mod held;
pub mod holder;
pub mod join;
pub mod launch;
pub mod members;
pub mod protections;
pub mod sys;
pub mod tree;

use std::path::Path;

use airlock_core::{
    Backend, BackendError, Enforcement, ExecCommand, Finished, HeldSandbox, IsolationClass,
    RunOptions, SandboxId, Spec, Stats, Unavailable,
};

pub use error::Error;

/// The name users pass to `--backend`.
pub const NAME: &str = "chroot";

/// The line front ends print each time they create a chroot sandbox.
pub const WARNING: &str = "the chroot backend isolates only the file tree: processes, network \
    and IPC are shared with the host, and a root process can leave the chroot";

/// Fails unless Airlock runs as root: chroot(2), a new mount namespace and the mounts of the
/// tree need CAP_SYS_CHROOT and CAP_SYS_ADMIN on the host.
pub fn require_root() -> Result<(), Error> {
    if airlock_namespace::sys::geteuid() == 0 {
        return Ok(());
    }
    Err(Error::Unavailable(Unavailable {
        reason: "the chroot backend needs root, because chroot(2) and the mounts of its file \
                 tree need CAP_SYS_CHROOT and CAP_SYS_ADMIN on the host"
            .into(),
        fix: "run airlock as root, or use --backend namespace, which works without root".into(),
    }))
}

/// The chroot backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChrootBackend;

impl Backend for ChrootBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn class(&self) -> IsolationClass {
        IsolationClass::Chroot
    }

    fn availability(&self) -> Result<(), Unavailable> {
        match require_root() {
            Err(Error::Unavailable(unavailable)) => Err(unavailable),
            _ => Ok(()),
        }
    }

    fn warning(&self) -> Option<&'static str> {
        Some(WARNING)
    }

    fn assess(&self, spec: &Spec) -> Enforcement {
        protections::assess(spec)
    }

    fn run(&self, spec: &Spec, options: RunOptions) -> Result<Finished, BackendError> {
        Ok(launch::run(spec, options)?)
    }

    fn hold(
        &self,
        spec: &Spec,
        options: &RunOptions,
    ) -> Result<Box<dyn HeldSandbox>, BackendError> {
        Ok(Box::new(held::start(spec, options)?))
    }

    fn exec(
        &self,
        id: &SandboxId,
        spec: &Spec,
        runtime: &serde_json::Value,
        command: &ExecCommand,
        options: &RunOptions,
    ) -> Result<Finished, BackendError> {
        // Creating a sandbox with --user root needs --allow-weaker, and so does an exec as root.
        let privileged = |user: airlock_core::User| user.uid == 0 || user.gid == 0;
        if command.user.is_some_and(privileged) && !spec.allow_weaker {
            return Err(Error::RootExecNotAccepted.into());
        }
        let runtime = runtime_of(runtime)?;
        Ok(join::exec(id, spec, &runtime, command, options)?)
    }

    fn is_running(&self, runtime: &serde_json::Value) -> bool {
        runtime_of(runtime).is_ok_and(|runtime| runtime.init.is_alive())
    }

    fn stats(&self, runtime: &serde_json::Value) -> Result<Stats, BackendError> {
        Ok(held::stats(&runtime_of(runtime)?)?)
    }

    fn copy(
        &self,
        runtime: &serde_json::Value,
        source: &Path,
        target: &Path,
        into_sandbox: bool,
    ) -> Result<(), BackendError> {
        let runtime = runtime_of(runtime)?;
        Ok(join::copy(&runtime, source, target, into_sandbox)?)
    }

    fn clean_up(&self, id: &SandboxId, runtime: Option<&serde_json::Value>) {
        let runtime = runtime.and_then(|runtime| runtime_of(runtime).ok());
        held::clean_up(id, runtime.as_ref());
    }
}

/// Reads the runtime a held sandbox recorded.
fn runtime_of(value: &serde_json::Value) -> Result<held::Runtime, Error> {
    serde_json::from_value(value.clone()).map_err(|error| Error::Runtime(error.to_string()))
}
