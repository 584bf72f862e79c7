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
pub mod init;
pub mod landlock;
pub mod launch;
pub mod monitor;
pub mod outcome;
pub mod protections;
pub mod relay;
pub mod report;
pub mod rootfs;
pub mod seccomp;
pub mod stdio;
pub mod sys;
pub mod tty;
pub mod userns;
pub mod workload;
pub mod workspace;

use airlock_core::{Backend, BackendError, Finished, RunOptions, Spec};

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

    fn run(&self, spec: &Spec, options: RunOptions) -> Result<Finished, BackendError> {
        Ok(launch::run(spec, options)?)
    }
}
