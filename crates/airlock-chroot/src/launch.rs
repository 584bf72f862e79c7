//! The launcher: the caller's side of a run, and the supervisor's side of a held sandbox. It
//! checks and prepares everything that can fail before the sandbox exists, starts the holder
//! in a new mount namespace, and for a run hands over to the namespace backend's [`Monitor`]
//! until the holder reports how the command ended.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock_core::{Enforcement, Finished, RunOptions, SandboxId, Spec, User, WorkspaceMode};
use airlock_namespace::launch::{self as shared, Sandbox};
use airlock_namespace::report::{Report, ReportReader};
use airlock_namespace::{control, outcome, stdio, sys};

use crate::error::Error;
use crate::members::{self, Sandbox as Members};
use crate::{command, holder, protections, tree};

/// Everything the launcher prepares before the holder exists.
pub struct Prepared {
    pub id: SandboxId,
    pub user: User,
    pub marker: String,
    pub workspace: tree::Workspace,
    pub layers: Option<PathBuf>,
    pub enforcement: Enforcement,
}

/// Checks the caller and the spec, and prepares the workspace and its layers.
pub fn prepare(spec: &Spec, options: &RunOptions) -> Result<Prepared, Error> {
    crate::require_root()?;
    shared::ensure_single_threaded()?;
    let id = match options.id {
        Some(id) => id,
        None => SandboxId::generate().map_err(Error::Id)?,
    };
    let enforcement = protections::assess(spec);
    protections::check_required(&enforcement, spec.allow_weaker)?;
    let user = protections::sandbox_user(spec);
    let (workspace, permissions) = tree::prepare_workspace(spec, user)?;
    let has_workspace = !matches!(workspace, tree::Workspace::None);
    let layers = match (spec.workspace_mode, &options.layers) {
        (WorkspaceMode::Overlay, Some(layers)) if has_workspace => Some(layers.clone()),
        (WorkspaceMode::Overlay, None) if has_workspace => return Err(Error::NoLayers),
        _ => None,
    };
    if let Some(layers) = &layers {
        tree::prepare_layers(layers, user, permissions)?;
    }
    Ok(Prepared {
        marker: members::marker(&id),
        id,
        user,
        workspace,
        layers,
        enforcement,
    })
}

/// The launcher's ends of the channels to the holder.
pub struct Channels {
    pub report: OwnedFd,
    pub control: OwnedFd,
    /// Read end of the pipe that brings the command's pid.
    pub pid: OwnedFd,
    /// Write end of the pipe that reaches end of file in the holder once the launcher is gone.
    pub alive: OwnedFd,
}

/// A holder that has started.
pub struct Holder {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub channels: Channels,
}

/// Starts the holder in a new mount namespace, with `command` for a run or without one for
/// a held sandbox.
pub fn start_holder(
    spec: &Spec,
    prepared: &Prepared,
    command: Option<&command::Plan>,
    stdio: [libc::c_int; 3],
) -> Result<Holder, Error> {
    let (report_read, report_write) = sys::pipe().map_err(Error::Channel)?;
    let (control_outside, control_inside) = control::socketpair().map_err(Error::Channel)?;
    let (pid_read, pid_write) = sys::pipe().map_err(Error::Channel)?;
    let (alive_read, alive_write) = sys::pipe().map_err(Error::Channel)?;
    let plan = holder::Plan {
        spec,
        marker: &prepared.marker,
        workspace: &prepared.workspace,
        overlay: prepared.layers.is_some(),
        command,
        channels: holder::Channels {
            report: report_write.as_raw_fd(),
            control: control_inside.as_raw_fd(),
            pid: pid_write.as_raw_fd(),
            launcher_alive: alive_read.as_raw_fd(),
        },
        stdio,
    };
    let pid = match sys::clone_process(libc::CLONE_NEWNS, None) {
        Ok(0) => holder::run(plan),
        Ok(pid) => pid,
        Err(source) => return Err(Error::Clone(source)),
    };
    drop((report_write, control_inside, pid_write, alive_read));
    let pidfd = sys::pidfd_of_child(pid).map_err(Error::Wait)?;
    if let Some(layers) = &prepared.layers {
        send_overlay(&prepared.workspace, layers, &control_outside).inspect_err(|_| {
            let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
            let _ = sys::waitpid(pid, 0);
        })?;
    }
    tracing::info!(sandbox = %prepared.id, backend = "chroot", pid, hold = command.is_none(), "sandbox created");
    let channels = Channels {
        report: report_read,
        control: control_outside,
        pid: pid_read,
        alive: alive_write,
    };
    Ok(Holder {
        pid,
        pidfd,
        channels,
    })
}

/// Mounts the workspace's overlay and sends it to the holder, which builds the rest of the
/// tree meanwhile. A holder that failed first finds nothing to receive, and its own report
/// gives the reason.
fn send_overlay(
    workspace: &tree::Workspace,
    layers: &Path,
    control: &OwnedFd,
) -> Result<(), Error> {
    let overlay = tree::overlay(workspace, layers)?;
    let _ = control::send(control.as_raw_fd(), b"o", &[overlay.as_raw_fd()]);
    Ok(())
}

/// Returns the error a holder reported before it exited, after waiting for its exit.
pub fn holder_failure(holder: &mut Sandbox, report: &OwnedFd) -> Error {
    if holder.status.is_none() {
        if let Ok(Some((_, status))) = sys::waitpid(holder.pid, 0) {
            holder.status = Some(status);
        }
    }
    let mut reports = ReportReader::new(report.as_raw_fd());
    let _ = reports.read_available();
    let reported = reports.take().into_iter().find_map(|report| match report {
        Report::SetupFailed { step, error } => Some(Error::Setup { step, cause: error }),
        _ => None,
    });
    reported.unwrap_or(Error::HolderDied {
        status: holder.status.unwrap_or(0),
    })
}

/// Reads the command's pid from the holder, or `None` when the holder failed first.
fn command_pid(pid_pipe: &OwnedFd) -> Option<libc::pid_t> {
    let mut bytes = [0u8; 4];
    match sys::read(pid_pipe.as_raw_fd(), &mut bytes) {
        Ok(4) => Some(i32::from_ne_bytes(bytes)),
        _ => None,
    }
}

/// Runs `spec` in a new chroot sandbox and waits for it to end.
pub fn run(spec: &Spec, options: RunOptions) -> Result<Finished, Error> {
    let started = Instant::now();
    let prepared = prepare(spec, &options)?;
    let command = command::plan(spec, prepared.user)?;
    let mut streams =
        stdio::Plan::new(spec.tty, options.track_stderr_line).map_err(Error::Stdio)?;
    let (restore_mask, signals) = shared::block_forwarded_signals(spec.tty)?;
    let Holder {
        pid,
        pidfd,
        channels,
    } = start_holder(spec, &prepared, Some(&command), streams.child_fds)?;
    streams.child_ends.clear();
    // Signals go to the command's process group rather than to the holder, which needs no
    // signal to end: it ends once the command has.
    let mut sandbox = Sandbox {
        pid,
        pidfd,
        status: None,
        cgroup: None,
        finished: false,
        group: true,
        signal_target: None,
    };
    let Some(command_pid) = command_pid(&channels.pid) else {
        return Err(holder_failure(&mut sandbox, &channels.report));
    };
    sandbox.signal_target = Some(command_pid);

    let watched = shared::watch(
        spec,
        &mut sandbox,
        &signals,
        &mut streams,
        &channels.control,
        &channels.report,
        false,
    );
    drop(restore_mask);
    let (ended, stderr_ends_line) = watched?;
    let reported = ended
        .reports
        .iter()
        .any(|report| matches!(report, Report::Exited { .. } | Report::Signaled { .. }));
    if !reported {
        // The holder died before it could clean up, so its processes are found by the marker.
        let left = Members {
            namespace: None,
            marker: &prepared.marker,
        };
        left.kill_all(None);
    }

    let mut outcome = outcome::build(spec, &prepared.id, prepared.enforcement, ended, started)?;
    outcome.backend = crate::NAME;
    tracing::info!(
        sandbox = %prepared.id,
        reason = ?outcome.reason,
        code = ?outcome.exit_code,
        signal = ?outcome.signal,
        "sandbox ended"
    );
    drop(sandbox);
    Ok(Finished {
        outcome,
        stderr_ends_line,
        teardown: airlock_core::Teardown::none(),
    })
}
