//! The trait every isolation level implements.

use crate::outcome::Outcome;
use crate::spec::Spec;

/// Any failure of a backend to create or run a sandbox. Backends keep their own error enums
/// and box them here, so the front end prints one chain of causes.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Options of one run that concern the caller's streams rather than the sandbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Relay stderr so that [`Finished::stderr_ends_line`] is known, for a front end that
    /// prints a record on its own line after the command's output.
    pub track_stderr_line: bool,
}

/// The outcome of a run, with what the front end needs to print after it.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    /// Whether the command's stderr ended with a newline or was empty; always true unless
    /// [`RunOptions::track_stderr_line`] was set.
    pub stderr_ends_line: bool,
}

/// An isolation level that can run a command under a [`Spec`].
pub trait Backend {
    /// The name users pass to `--backend`.
    fn name(&self) -> &'static str;

    /// Creates a sandbox from `spec`, runs its command with the caller's standard streams,
    /// waits for it to end, and removes the sandbox.
    fn run(&self, spec: &Spec, options: RunOptions) -> Result<Finished, BackendError>;
}
