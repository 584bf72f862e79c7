//! The native `namespace` backend: each sandbox is a set of new Linux namespaces with a
//! read-only root entered by pivot_root, a cgroup for limits, and a command stripped of
//! capabilities and confined by seccomp and Landlock.
//!
//! Three processes take part in a run:
//! - the launcher ([`launch`]), the caller's process, which prepares, watches and cleans up;
//! - the init ([`init`]), PID 1 of the sandbox, which builds the file tree ([`rootfs`]) and
//!   reaps everything;
//! - the workload ([`workload`]), which sheds its privileges and executes the command.

pub mod cgroup;
pub mod control;
pub mod error;
pub mod fsmount;
pub mod held;
pub mod init;
pub mod interrupt;
pub mod join;
pub mod landlock;
pub mod launch;
pub mod monitor;
pub mod outcome;
pub mod pack;
pub mod protections;
pub mod relay;
pub mod report;
pub mod rootfs;
pub mod seccomp;
pub mod stdio;
pub mod sys;
pub mod tty;
pub mod unpack;
pub mod userns;
pub mod workload;
pub mod workspace;

use std::path::Path;

use airlock_core::{
    Backend, BackendError, Enforcement, ExecCommand, Finished, HeldSandbox, IsolationClass,
    RunOptions, SandboxId, Spec, Stats, Unavailable, User,
};

pub use error::Error;

/// Formats an error and its sources as one line, each cause once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// The native namespace backend.
#[derive(Debug, Default, Clone, Copy)]
pub struct NamespaceBackend;

impl Backend for NamespaceBackend {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn class(&self) -> IsolationClass {
        IsolationClass::Container
    }

    fn availability(&self) -> Result<(), Unavailable> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        match userns::diagnose(0, is_root) {
            Some(userns::Error::Disabled { reason, fix }) => Err(Unavailable {
                reason: format!("user namespaces are disabled: {reason}"),
                fix: fix.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    fn assess(&self, spec: &Spec) -> Enforcement {
        protections::predict(spec)
    }

    fn run(&self, spec: &Spec, options: RunOptions) -> Result<Finished, BackendError> {
        check_user(spec.user)?;
        Ok(launch::run(spec, options)?)
    }

    fn hold(
        &self,
        spec: &Spec,
        options: &RunOptions,
    ) -> Result<Box<dyn HeldSandbox>, BackendError> {
        check_user(spec.user)?;
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
        check_user(command.user)?;
        Ok(join::exec(
            id,
            spec,
            &runtime_of(runtime)?,
            command,
            options,
        )?)
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
        Ok(join::copy(
            &runtime_of(runtime)?,
            source,
            target,
            into_sandbox,
        )?)
    }

    fn clean_up(&self, id: &SandboxId, runtime: Option<&serde_json::Value>) {
        let runtime = runtime.and_then(|runtime| runtime_of(runtime).ok());
        held::clean_up(id, runtime.as_ref());
    }
}

/// Accepts only root inside: the user namespace maps no other id.
fn check_user(user: Option<User>) -> Result<(), Error> {
    match user {
        Some(user) if user != User::ROOT => Err(Error::UserNotMapped { uid: user.uid }),
        _ => Ok(()),
    }
}

/// Reads the runtime a held sandbox recorded.
fn runtime_of(value: &serde_json::Value) -> Result<held::Runtime, Error> {
    serde_json::from_value(value.clone()).map_err(|error| Error::Runtime(error.to_string()))
}
