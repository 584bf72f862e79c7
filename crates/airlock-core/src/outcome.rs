//! The result of running a command in a sandbox.

use std::time::Duration;

use serde::Serialize;

use crate::enforcement::Enforcement;
use crate::exit;

/// The reason a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The command exited or was killed by a signal that Airlock did not send.
    Exited,
    TimedOut,
    OutOfMemory,
    PidsLimit,
}

impl EndReason {
    /// Describes the reason for a person, or `None` for a normal exit.
    pub fn message(self) -> Option<&'static str> {
        match self {
            EndReason::Exited => None,
            EndReason::TimedOut => Some("timed out: the sandbox was killed"),
            EndReason::OutOfMemory => {
                Some("out of memory: the sandbox hit its memory limit and was killed")
            }
            EndReason::PidsLimit => {
                Some("pids limit reached: the sandbox hit its process limit and was killed")
            }
        }
    }
}

impl EndReason {
    /// Describes the reason for a person after `airlock exec`, where a limit ends the
    /// command and the sandbox keeps running; `None` for a normal exit.
    pub fn exec_message(self) -> Option<&'static str> {
        match self {
            EndReason::Exited => None,
            EndReason::TimedOut => {
                Some("timed out: the command's process group was killed; the sandbox still runs")
            }
            EndReason::OutOfMemory => Some(
                "out of memory: the sandbox hit its memory limit and the kernel killed the command; the sandbox still runs",
            ),
            EndReason::PidsLimit => Some(
                "pids limit reached: the sandbox hit its process limit; processes left running in it count too (see airlock stats)",
            ),
        }
    }
}

/// The reason the command could not be started inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecFailure {
    NotFound { command: String },
    NotExecutable { command: String, error: String },
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub sandbox_id: String,
    pub backend: &'static str,
    pub reason: EndReason,
    /// The command's exit code, when it exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that killed the command, when one did.
    pub signal: Option<i32>,
    #[serde(serialize_with = "as_seconds")]
    pub duration: Duration,
    /// Peak memory of the whole sandbox in bytes, where the backend could measure it.
    pub peak_memory: Option<u64>,
    pub exec_failure: Option<ExecFailure>,
    /// The Landlock ABI the command was confined at, or `None` where Landlock was not used.
    pub landlock_abi: Option<u32>,
    pub enforcement: Enforcement,
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

impl Outcome {
    /// Computes the exit status of `airlock run` for this outcome.
    pub fn exit_status(&self) -> u8 {
        match self.reason {
            EndReason::TimedOut => return exit::TIMED_OUT,
            EndReason::OutOfMemory => return exit::OUT_OF_MEMORY,
            EndReason::PidsLimit => return exit::PIDS_LIMIT,
            EndReason::Exited => {}
        }
        match &self.exec_failure {
            Some(ExecFailure::NotFound { .. }) => return exit::COMMAND_NOT_FOUND,
            Some(ExecFailure::NotExecutable { .. }) => return exit::COMMAND_NOT_EXECUTABLE,
            None => {}
        }
        if let Some(signal) = self.signal {
            return exit::SIGNAL_BASE.saturating_add(signal as u8);
        }
        // Exit codes are 8 bits on Linux, so the truncation keeps the whole value.
        self.exit_code
            .map_or(exit::AIRLOCK_FAILED, |code| code as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reason: EndReason, exit_code: Option<i32>, signal: Option<i32>) -> Outcome {
        Outcome {
            sandbox_id: "0".repeat(32),
            backend: "namespace",
            reason,
            exit_code,
            signal,
            duration: Duration::from_millis(1500),
            peak_memory: None,
            exec_failure: None,
            landlock_abi: Some(7),
            enforcement: Enforcement::default(),
        }
    }

    #[test]
    fn exit_status_passes_command_code() {
        assert_eq!(outcome(EndReason::Exited, Some(3), None).exit_status(), 3);
        assert_eq!(outcome(EndReason::Exited, Some(0), None).exit_status(), 0);
    }

    #[test]
    fn exit_status_adds_128_to_signal() {
        assert_eq!(
            outcome(EndReason::Exited, None, Some(15)).exit_status(),
            143
        );
    }

    #[test]
    fn exit_status_distinguishes_limits() {
        assert_eq!(
            outcome(EndReason::TimedOut, None, Some(9)).exit_status(),
            124
        );
        assert_eq!(
            outcome(EndReason::OutOfMemory, None, Some(9)).exit_status(),
            123
        );
        assert_eq!(
            outcome(EndReason::PidsLimit, None, Some(9)).exit_status(),
            122
        );
    }

    #[test]
    fn json_record_names_reason_and_duration() {
        let json = serde_json::to_value(outcome(EndReason::TimedOut, None, Some(9))).unwrap();
        assert_eq!(json["reason"], "timed_out");
        assert_eq!(json["duration"], 1.5);
        assert_eq!(json["signal"], 9);
    }
}
