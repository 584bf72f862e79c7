//! The `vm` backend: each sandbox is a QEMU guest with its own kernel, driven by Airlock's
//! agent inside it.
//!
//! A run goes through these parts, in order:
//! - [`kernel`], [`modules`]: the guest kernel and the modules it needs;
//! - [`cpio`], [`initramfs`]: the initramfs with the agent as `/init`, cached by content;
//! - [`sizing`]: the guest's memory and virtual CPUs, checked against the host;
//! - [`accel`]: KVM when a test guest runs under it, software emulation (TCG) otherwise;
//!   [`clock`]: the TSC frequency a guest under TCG keeps time with;
//! - [`disk`]: the root disk image, built once per root filesystem, and a copy-on-write
//!   layer per sandbox; [`container_image`], [`owners`]: the same from a container image;
//! - [`machine`]: the QEMU command line; [`guest`]: the QEMU process and its clean-up;
//! - [`share`]: the virtiofs daemons that share the host view and a bind workspace;
//! - [`client`], [`exec`]: the host's side of the protocol ([`airlock_protocol`]);
//! - [`interrupt`]: SIGINT, SIGTERM and the like, which end a boot or reach the command;
//! - [`export`]: the workspace changes, copied out of the guest for `diff` and `apply`;
//! - [`held`], [`proxy`], [`remote`]: persistent sandboxes, whose supervisor keeps QEMU and
//!   relays the agent to `exec` and `cp` ([`copy`]);
//! - [`inner`]: `--inner namespace`, a namespace sandbox around each command in the guest;
//! - [`agent`]: the agent, PID 1 in the guest.

pub mod accel;
pub mod agent;
pub mod availability;
pub mod cache;
pub mod client;
pub mod clock;
pub mod container_image;
pub mod copy;
pub mod cpio;
pub mod disk;
pub mod error;
pub mod exec;
pub mod export;
pub mod guest;
pub mod held;
pub mod initramfs;
pub mod inner;
pub mod interrupt;
pub mod kernel;
pub mod launch;
pub mod machine;
pub mod modules;
pub mod owners;
pub mod protections;
pub mod proxy;
pub mod remote;
pub mod share;
pub mod sizing;

use std::path::Path;

use airlock_core::{
    Backend, BackendError, Enforcement, ExecCommand, Finished, HeldSandbox, IsolationClass,
    RunOptions, SandboxId, Spec, Stats, Unavailable,
};

pub use error::Error;

/// The backend that runs sandboxes as QEMU guests.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmBackend;

impl Backend for VmBackend {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn class(&self) -> IsolationClass {
        IsolationClass::VirtualMachine
    }

    fn availability(&self) -> Result<(), Unavailable> {
        availability::check().map(drop)
    }

    fn assess(&self, spec: &Spec) -> Enforcement {
        protections::assess(spec)
    }

    fn run(&self, spec: &Spec, options: RunOptions) -> Result<Finished, BackendError> {
        let qemu = availability::check().map_err(Error::Unavailable)?;
        Ok(launch::run(spec, options, qemu)?)
    }

    fn hold(
        &self,
        spec: &Spec,
        options: &RunOptions,
    ) -> Result<Box<dyn HeldSandbox>, BackendError> {
        let qemu = availability::check().map_err(Error::Unavailable)?;
        Ok(Box::new(held::start(spec, options, qemu)?))
    }

    fn exec(
        &self,
        id: &SandboxId,
        spec: &Spec,
        runtime: &serde_json::Value,
        command: &ExecCommand,
        _options: &RunOptions,
    ) -> Result<Finished, BackendError> {
        let runtime = runtime_of(runtime)?;
        Ok(remote::exec(id, spec, &runtime, command)?)
    }

    fn is_running(&self, runtime: &serde_json::Value) -> bool {
        runtime_of(runtime).is_ok_and(|runtime| runtime.is_running())
    }

    fn stats(&self, runtime: &serde_json::Value) -> Result<Stats, BackendError> {
        let runtime = runtime_of(runtime)?;
        Ok(remote::stats(&runtime))
    }

    fn copy(
        &self,
        runtime: &serde_json::Value,
        source: &Path,
        target: &Path,
        into_sandbox: bool,
    ) -> Result<(), BackendError> {
        let runtime = runtime_of(runtime)?;
        Ok(copy::copy(&runtime, source, target, into_sandbox)?)
    }

    fn sync_changes(&self, runtime: &serde_json::Value, layers: &Path) -> Result<(), BackendError> {
        let runtime = runtime_of(runtime)?;
        Ok(held::export_through(&runtime, layers)?)
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
