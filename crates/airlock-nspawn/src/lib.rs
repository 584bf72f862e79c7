//! The `nspawn` backend: each sandbox is a systemd-nspawn container started without
//! systemd as PID 1 (`--register=no --keep-unit`), with a read-only root, a private network
//! with only `lo`, and a user namespace of its own.
//!
//! Three processes take part in a run:
//! - the launcher ([`launch`]), the caller's process, which assembles the root in a private
//!   mount namespace ([`stage`]), starts systemd-nspawn there, and watches the command;
//! - systemd-nspawn, which builds the container;
//! - the init ([`init`]), the Airlock binary as the container's PID 1, which starts the
//!   command with every privilege shed, as the namespace backend does.
//!
//! Commands started later by `airlock exec` join the container's namespaces with the
//! namespace backend's joiner ([`airlock_namespace::join`]).

pub mod availability;
pub mod cgroups;
pub mod command;
pub mod error;
pub mod held;
pub mod init;
pub mod launch;
pub mod protections;
pub mod stage;

use std::path::Path;

use airlock_core::{
    Backend, BackendError, Enforcement, ExecCommand, Finished, HeldSandbox, IsolationClass,
    RunOptions, SandboxId, Spec, Stats, Unavailable, User,
};
use airlock_namespace::join;

pub use error::Error;

/// The backend that runs sandboxes as systemd-nspawn containers.
#[derive(Debug, Default, Clone, Copy)]
pub struct NspawnBackend;

impl Backend for NspawnBackend {
    fn name(&self) -> &'static str {
        "nspawn"
    }

    fn class(&self) -> IsolationClass {
        IsolationClass::Container
    }

    fn availability(&self) -> Result<(), Unavailable> {
        availability::check().map(drop)
    }

    fn assess(&self, spec: &Spec) -> Enforcement {
        protections::assess(spec, &protections::Host::discover())
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
        let runtime = runtime_of(runtime)?;
        let mut finished = join::exec(id, spec, &runtime.container, command, options)?;
        finished.outcome.backend = "nspawn";
        Ok(finished)
    }

    fn is_running(&self, runtime: &serde_json::Value) -> bool {
        runtime_of(runtime).is_ok_and(|runtime| runtime.container.init.is_alive())
    }

    fn stats(&self, runtime: &serde_json::Value) -> Result<Stats, BackendError> {
        let runtime = runtime_of(runtime)?;
        Ok(airlock_namespace::held::stats(&runtime.container)?)
    }

    fn copy(
        &self,
        runtime: &serde_json::Value,
        source: &Path,
        target: &Path,
        into_sandbox: bool,
    ) -> Result<(), BackendError> {
        let runtime = runtime_of(runtime)?;
        Ok(join::copy(
            &runtime.container,
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

/// Accepts only root inside, the one user the joiner becomes.
fn check_user(user: Option<User>) -> Result<(), Error> {
    match user {
        Some(user) if user != User::ROOT => Err(Error::UserNotMapped { uid: user.uid }),
        _ => Ok(()),
    }
}

/// Reads the runtime a held container recorded.
fn runtime_of(value: &serde_json::Value) -> Result<held::Runtime, Error> {
    serde_json::from_value(value.clone()).map_err(|error| Error::Runtime(error.to_string()))
}
