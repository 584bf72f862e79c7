//! The `vm` backend: each sandbox is a QEMU guest with its own kernel, driven by Airlock's
//! agent inside it.
//!
//! A run goes through these parts, in order:
//! - [`kernel`], [`modules`]: the guest kernel and the modules it needs;
//! - [`cpio`], [`initramfs`]: the initramfs with the agent as `/init`, cached by content;
//! - [`accel`]: KVM when a test guest runs under it, software emulation (TCG) otherwise;
//! - [`disk`]: the root disk image, built once per root filesystem, and a copy-on-write
//!   layer per sandbox;
//! - [`machine`]: the QEMU command line; [`guest`]: the QEMU process and its clean-up;
//! - [`client`], [`exec`]: the host's side of the protocol ([`airlock_protocol`]);
//! - [`export`]: the workspace changes, copied out of the guest for `diff` and `apply`;
//! - [`agent`]: the agent, PID 1 in the guest.

pub mod accel;
pub mod agent;
pub mod availability;
pub mod cache;
pub mod client;
pub mod cpio;
pub mod disk;
pub mod error;
pub mod exec;
pub mod export;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod launch;
pub mod machine;
pub mod modules;
pub mod protections;

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
        _spec: &Spec,
        _options: &RunOptions,
    ) -> Result<Box<dyn HeldSandbox>, BackendError> {
        // TODO: a supervisor that keeps QEMU and the agent's connection for create and exec.
        Err(Error::NotSupported {
            action: "create persistent sandboxes",
        }
        .into())
    }

    fn exec(
        &self,
        _id: &SandboxId,
        _spec: &Spec,
        _runtime: &serde_json::Value,
        _command: &ExecCommand,
        _options: &RunOptions,
    ) -> Result<Finished, BackendError> {
        Err(Error::NotSupported {
            action: "run commands in a created sandbox",
        }
        .into())
    }

    fn is_running(&self, _runtime: &serde_json::Value) -> bool {
        false
    }

    fn stats(&self, _runtime: &serde_json::Value) -> Result<Stats, BackendError> {
        Err(Error::NotSupported {
            action: "report statistics",
        }
        .into())
    }

    fn copy(
        &self,
        _runtime: &serde_json::Value,
        _source: &Path,
        _target: &Path,
        _into_sandbox: bool,
    ) -> Result<(), BackendError> {
        Err(Error::NotSupported {
            action: "copy files",
        }
        .into())
    }

    fn clean_up(&self, _id: &SandboxId, _runtime: Option<&serde_json::Value>) {
        // A run's guest ends with the run, and its QEMU with Airlock (PR_SET_PDEATHSIG).
    }
}
