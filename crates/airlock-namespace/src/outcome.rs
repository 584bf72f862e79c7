//! Turns what the launcher learned about a run into its [`Outcome`].

use std::io;
use std::time::Instant;

use airlock_core::{EndReason, Enforcement, ExecFailure, Outcome, SandboxId, Spec, Status};

use crate::error::Error;
use crate::monitor::Ended;
use crate::report::Report;

/// Builds the outcome of a run, or the error that kept the command from starting.
pub fn build(
    spec: &Spec,
    id: &SandboxId,
    mut enforcement: Enforcement,
    ended: Ended,
    started: Instant,
) -> Result<Outcome, Error> {
    let mut exit_code = None;
    let mut signal = None;
    let mut exec_failure = None;
    let mut landlock_abi = None;
    let mut peak_rss = None;
    for report in ended.reports {
        match report {
            Report::SetupFailed { step, error } => {
                return Err(Error::Setup { step, cause: error });
            }
            Report::Landlock {
                abi,
                fully_enforced,
            } => {
                landlock_abi = Some(abi);
                if !fully_enforced {
                    mark_landlock_partial(&mut enforcement, abi);
                }
            }
            Report::ExecFailed { errno } => exec_failure = Some(exec_failure_of(spec, errno)),
            Report::Exited { code } => exit_code = Some(code),
            Report::Signaled { signal: number } => signal = Some(number),
            Report::Usage { max_rss } => peak_rss = Some(max_rss),
            Report::Ready => {}
            // Sent by a copy's packer, never by a command's processes.
            Report::Skipped { .. } => {}
        }
    }
    let reason = ended.reason;
    if exit_code.is_none() && signal.is_none() && reason == EndReason::Exited {
        // The init died without a report, which only an outside kill causes.
        return Err(Error::InitDied {
            status: ended.status.unwrap_or(0),
        });
    }
    if reason != EndReason::Exited && exit_code.is_none() {
        signal = signal.or(Some(libc::SIGKILL));
    }
    Ok(Outcome {
        sandbox_id: id.to_string(),
        backend: "namespace",
        reason,
        exit_code,
        signal,
        duration: started.elapsed(),
        peak_memory: ended.peak_memory.or(peak_rss),
        exec_failure,
        landlock_abi,
        enforcement,
    })
}

fn mark_landlock_partial(enforcement: &mut Enforcement, abi: u32) {
    if let Some(protection) = enforcement.0.iter_mut().find(|p| p.rule == "landlock") {
        protection.status = Status::Partial(format!(
            "the kernel enforced part of the rules at ABI {abi}"
        ));
    }
}

fn exec_failure_of(spec: &Spec, errno: i32) -> ExecFailure {
    let command = spec
        .command
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    match errno {
        libc::ENOENT | libc::ENOTDIR => ExecFailure::NotFound { command },
        _ => ExecFailure::NotExecutable {
            command,
            error: io::Error::from_raw_os_error(errno).to_string(),
        },
    }
}
