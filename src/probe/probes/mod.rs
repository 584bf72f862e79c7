//! The probes. Each has two sides. On the host, `arm` sets up the probe's canary and returns
//! an [`Armed`] probe, whose `judge` decides the verdict from what the host sees afterwards:
//! a signal pending at its process, a file changed, a connection in its listener's queue.
//! Inside the sandbox, `inside` makes the attempt, run as `airlock __probe NAME ARGS`, and
//! returns a report, which the judge reads as evidence only where the host cannot see for
//! itself (a same-value write to /proc/sys leaves no trace, for example).

mod filesystem;
mod limits;
mod network;
mod privilege;
mod processes;

use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

use super::executor::{Execution, Invocation};
use super::host::{Canary, Host};

pub use privilege::{current_privileges, PRIVILEGES_HELPER};

/// The verdict of one probe in one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The attempt did not reach the host's canary.
    Contained,
    /// The attempt reached the host's canary, or did what the sandbox should prevent.
    Escaped,
    /// The probe does not apply, or produced no result to judge.
    NotApplicable,
}

impl Verdict {
    /// Returns the verdict as the table prints it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Contained => "contained",
            Verdict::Escaped => "ESCAPED",
            Verdict::NotApplicable => "n/a",
        }
    }
}

/// A verdict with its one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub reason: String,
}

impl Finding {
    pub fn contained(reason: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Contained,
            reason: reason.into(),
        }
    }

    pub fn escaped(reason: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::Escaped,
            reason: reason.into(),
        }
    }

    pub fn not_applicable(reason: impl Into<String>) -> Finding {
        Finding {
            verdict: Verdict::NotApplicable,
            reason: reason.into(),
        }
    }

    /// Returns the finding when the probe printed no result and the host saw nothing either.
    pub fn no_result(execution: &Execution) -> Finding {
        Finding::not_applicable(execution.describe_failure())
    }
}

/// One containment probe.
pub trait Probe: Sync {
    /// Returns the probe's name: its row in the matrix and its argument to `airlock __probe`.
    fn name(&self) -> &'static str;

    /// Describes what the probe attempts, in a few words.
    fn attempt(&self) -> &'static str;

    /// Sets up the probe's canary on the host; fails with the reason when the probe does
    /// not apply here.
    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String>;

    /// Makes the attempt, inside the sandbox, with the arguments the host chose; returns
    /// the report.
    fn inside(&self, args: &[String]) -> Value;

    /// Returns whether the verdict waits until the sandbox has been removed.
    fn judged_after_removal(&self) -> bool {
        false
    }
}

/// A probe whose canary is set up. Dropping it removes the canary.
pub trait Armed {
    /// Returns the command that runs the probe's inside.
    fn invocation(&self) -> Invocation<'_>;

    /// Lists the canaries, as the JSON report shows them.
    fn canaries(&self) -> Vec<Canary>;

    /// Decides the verdict from the host's canary and the probe's report.
    fn judge(&mut self, execution: &Execution) -> Finding;
}

/// Every probe, in the order of the matrix. The bombs run late, so that a sandbox they
/// break costs few verdicts, and `survive-sandbox` runs last, when the sandbox is removed.
pub static CATALOG: [&dyn Probe; 19] = [
    &processes::SeeHostProcesses,
    &processes::SignalHostProcess,
    &processes::PtraceHostProcess,
    &processes::ReadHostEnvironment,
    &filesystem::ReadHostFile,
    &filesystem::WriteOutsideWorkspace,
    &filesystem::ChrootEscape,
    &filesystem::MountFilesystem,
    &filesystem::DeviceNode,
    &network::ReachHostLoopback,
    &network::SeeNetworkInterfaces,
    &privilege::CreateUserNamespace,
    &privilege::WriteProcSys,
    &privilege::SetuidBinary,
    &privilege::TiocstiInjection,
    &limits::ForkBomb,
    &limits::FillTmp,
    &limits::MemoryBomb,
    &processes::SurviveSandbox,
];

/// Finds a probe by name.
pub fn find(name: &str) -> Option<&'static dyn Probe> {
    CATALOG.iter().copied().find(|probe| probe.name() == name)
}

/// Parses argument `index` of a probe's inside.
fn argument<T: FromStr>(args: &[String], index: usize) -> Result<T, String> {
    let text = args
        .get(index)
        .ok_or_else(|| format!("argument {index} is missing"))?;
    text.parse()
        .map_err(|_| format!("argument {index} is invalid: {text:?}"))
}

/// Turns a probe's report into the JSON it prints.
fn report<T: Serialize>(report: T) -> Value {
    serde_json::to_value(report).unwrap_or_else(
        |error| serde_json::json!({ "error": format!("cannot encode the report: {error}") }),
    )
}

/// Builds the report of a probe whose arguments could not be parsed.
fn invalid_arguments(message: String) -> Value {
    serde_json::json!({ "error": message })
}

/// Formats a byte count in MiB for reasons, with one decimal unless it is a whole number.
fn mebibytes(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// Helpers for the tests of each probe's verdict: they run a probe's inside in the test
/// process itself, outside any sandbox, where every attempt should reach its canary.
#[cfg(test)]
mod testing {
    use serde_json::json;

    use super::{Armed, Probe};
    use crate::probe::executor::{Ended, Execution};
    use crate::probe::host::{Host, LIMITS};

    /// Returns a host whose canary files go to a private temporary directory.
    pub fn host(dir: &tempfile::TempDir) -> Host {
        Host {
            canary_dir: dir.path().to_owned(),
            setuid_copy: Err("no setuid copy in unit tests".to_owned()),
            limits: LIMITS,
        }
    }

    /// Runs the probe's inside in this process, unconfined, with the armed probe's
    /// arguments.
    pub fn run_unconfined(probe: &dyn Probe, armed: &dyn Armed) -> Execution {
        let result = probe.inside(&armed.invocation().args);
        executed(json!({ "probe": probe.name(), "result": result }))
    }

    /// Returns an execution that printed `line` and exited with status 0.
    pub fn executed(line: serde_json::Value) -> Execution {
        Execution::parse(line.to_string().as_bytes(), b"", Ended::Exited(0))
    }
}
