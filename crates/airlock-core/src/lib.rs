//! The core of Airlock: the sandbox spec, the backend trait every isolation level implements,
//! and the outcome of a run with its exit status.
//!
//! Front ends (the CLI now; the HTTP API and MCP server later) build a [`Spec`], hand it to a
//! [`Backend`], and turn the returned [`Outcome`] into their own reply.

pub mod action;
pub mod audit;
pub mod backend;
pub mod enforcement;
pub mod exit;
pub mod id;
pub mod image_ref;
pub mod outcome;
pub mod procfs;
pub mod risk;
pub mod size;
pub mod spec;
pub mod specfile;
pub mod state;

pub use action::{Action, BackendKind, BackendRequest, ImageAction, ProbeTargets};
pub use backend::{
    Backend, BackendError, ExecCommand, Finished, HeldEnd, HeldSandbox, IsolationClass, RunOptions,
    Stats, Teardown, Unavailable,
};
pub use enforcement::{Enforcement, Protection, Status};
pub use id::SandboxId;
pub use outcome::{EndReason, ExecFailure, Outcome};
pub use risk::RiskLevel;
pub use spec::{InnerBackend, Limit, Limits, Origin, RootFs, Spec, User, WorkspaceMode};
