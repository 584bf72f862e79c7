//! Exit statuses of `airlock run`, chosen to match docker, podman and timeout(1) where they
//! overlap. The command's own status passes through unchanged; `--json` tells the cases apart
//! when a command uses one of these numbers itself.

/// Airlock itself failed: invalid input, or the sandbox could not be set up.
pub const AIRLOCK_FAILED: u8 = 125;
/// The command was found but could not be executed.
pub const COMMAND_NOT_EXECUTABLE: u8 = 126;
/// The command was not found in the sandbox.
pub const COMMAND_NOT_FOUND: u8 = 127;
/// The timeout expired and the sandbox was killed, as GNU timeout(1) reports it.
pub const TIMED_OUT: u8 = 124;
/// The memory limit was hit and the sandbox was killed.
pub const OUT_OF_MEMORY: u8 = 123;
/// The process limit was hit and the sandbox was killed.
pub const PIDS_LIMIT: u8 = 122;
/// Added to a signal number when the command was killed by that signal.
pub const SIGNAL_BASE: u8 = 128;
