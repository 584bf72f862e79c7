//! `airlock exec` and `airlock cp` on a held chroot sandbox. A child of the caller joins the
//! holder's mount namespace with setns, chroots into the tree and changes to /workspace.
//! Then it becomes the command (exec) or one side of a tar stream (cp).
//!
//! The steps, in order:
//! 1. Check that the supervisor and the holder are the recorded processes, open the holder's
//!    mount namespace, and check its inode number against the record.
//! 2. Clone a child. It joins the namespace and chroots, then checks that the holder still
//!    runs: a sandbox being stopped kills its holder before it kills the namespace's other
//!    processes, so a child that joined in between is either refused here or killed then.
//! 3. The child runs the command exactly as the holder starts a run's command
//!    ([`command::run`]), and the caller watches it with the same [`Monitor`] as a run:
//!    streams, signals to its process group, timeout. Processes it leaves in the background
//!    keep running in the sandbox until it is stopped.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use airlock_core::state::ProcessRef;
use airlock_core::{ExecCommand, Finished, RunOptions, SandboxId, Spec};
use airlock_namespace::join::{self as shared_join, step, StepResult};
use airlock_namespace::launch::{self as shared, Sandbox};
use airlock_namespace::report::Report;
use airlock_namespace::rootfs::NEW_ROOT;
use airlock_namespace::workload::Stdio;
use airlock_namespace::{control, outcome, stdio, sys};

use crate::error::Error;
use crate::held::Runtime;
use crate::{command, holder, protections, tree};

/// Builds the spec of an exec's command: the sandbox's, with the command's own argv,
/// variables, terminal, timeout and user.
fn command_spec(sandbox: &Spec, runtime: &Runtime, command: &ExecCommand) -> Spec {
    let mut spec = sandbox.clone();
    spec.command = command.argv.clone();
    spec.env.extend(command.env.iter().cloned());
    spec.tty = command.tty;
    spec.limits.timeout = command.timeout;
    // NOTE: an idmapped workspace maps its owner to the sandbox's user only, so a command
    // run as another user cannot create files in a bind-mode workspace (EOVERFLOW). In an
    // overlay workspace its files go to the upper layer, which is not idmapped.
    spec.user = Some(command.user.unwrap_or(runtime.user));
    spec
}

/// Opens the holder's mount namespace after checking that the supervisor and the holder are
/// the recorded processes and that the namespace is the recorded one.
fn open_namespace(runtime: &Runtime) -> Result<OwnedFd, Error> {
    let not_running = || Error::NotRunning {
        pid: runtime.init.pid,
    };
    if !runtime.supervisor.is_alive() || !runtime.init.is_alive() {
        return Err(not_running());
    }
    let path = format!("/proc/{}/ns/mnt", runtime.init.pid);
    let namespace = sys::open(Path::new(&path), libc::O_RDONLY).map_err(|_| not_running())?;
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", namespace.as_raw_fd()))
        .ok()
        .map(|metadata| metadata.ino());
    // A holder still alive after the open is the one that was opened, since its pid cannot
    // have been reused while it ran.
    if inode != Some(runtime.mount_namespace) || !runtime.init.is_alive() {
        return Err(not_running());
    }
    Ok(namespace)
}

/// Moves this freshly cloned process into the sandbox's tree, with /workspace as the working
/// directory, and checks that the holder still runs.
fn enter(namespace: &OwnedFd, holder: &ProcessRef) -> StepResult<()> {
    step(
        sys::setns(namespace.as_raw_fd(), libc::CLONE_NEWNS),
        "join the sandbox's mount namespace",
    )?;
    step(tree::enter(Path::new(NEW_ROOT)), "chroot into the tree")?;
    step(
        sys::chdir(Path::new(airlock_core::spec::SANDBOX_WORKSPACE)),
        "change directory to /workspace",
    )?;
    if !holder.is_alive() {
        let stopped = std::io::Error::other("the sandbox is being stopped");
        return Err(("join the sandbox", stopped));
    }
    Ok(())
}

/// The joining child's inputs, handed over by the clone.
struct Joiner<'a> {
    namespace: &'a OwnedFd,
    holder: &'a ProcessRef,
    plan: &'a command::Plan,
    stdio: [RawFd; 3],
    tty: bool,
    control: RawFd,
    report: RawFd,
}

/// Joins the sandbox and becomes the command; never returns.
fn join_and_run(joiner: &Joiner<'_>) -> ! {
    let dies_with_caller = step(
        sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
        "ask to be killed with the caller",
    );
    let joined = dies_with_caller
        .and_then(|()| enter(joiner.namespace, joiner.holder))
        .and_then(|()| {
            if !joiner.tty {
                return Ok(Stdio::Fds(joiner.stdio));
            }
            let slave = step(
                holder::open_terminal(joiner.control, joiner.plan.user),
                "open a pseudo-terminal",
            )?;
            let slave_fd = slave.as_raw_fd();
            // The command's process keeps the slave as its streams until it executes.
            std::mem::forget(slave);
            Ok(Stdio::Terminal(slave_fd))
        });
    match joined {
        Ok(stdio) => command::run(joiner.plan, &stdio, joiner.report),
        Err((step, source)) => {
            let error = source.to_string();
            let step = step.to_owned();
            Report::SetupFailed { step, error }.send(joiner.report);
            sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
        }
    }
}

/// Runs `command` in the held sandbox described by `runtime` and waits for it to end.
pub fn exec(
    id: &SandboxId,
    sandbox: &Spec,
    runtime: &Runtime,
    command: &ExecCommand,
    options: &RunOptions,
) -> Result<Finished, Error> {
    let started = Instant::now();
    crate::require_root()?;
    shared::ensure_single_threaded()?;
    let spec = command_spec(sandbox, runtime, command);
    let user = protections::sandbox_user(&spec);
    let enforcement = protections::assess(&spec);
    let plan = command::plan(&spec, user)?;
    let namespace = open_namespace(runtime)?;
    let mut streams =
        stdio::Plan::new(spec.tty, options.track_stderr_line).map_err(Error::Stdio)?;
    let (report_read, report_write) = sys::pipe().map_err(Error::Channel)?;
    let (control_outside, control_inside) = control::socketpair().map_err(Error::Channel)?;
    let (restore_mask, signals) = shared::block_forwarded_signals(spec.tty)?;
    let joiner = Joiner {
        namespace: &namespace,
        holder: &runtime.init,
        plan: &plan,
        stdio: streams.child_fds,
        tty: spec.tty,
        control: control_inside.as_raw_fd(),
        report: report_write.as_raw_fd(),
    };
    let pid = match sys::clone_process(0, None) {
        Ok(0) => join_and_run(&joiner),
        Ok(pid) => pid,
        Err(source) => return Err(Error::Join(source)),
    };
    drop((report_write, control_inside, namespace));
    streams.child_ends.clear();
    let pidfd = sys::pidfd_of_child(pid).map_err(Error::Wait)?;
    // The child becomes the command and leads its own process group, which signals reach
    // as a whole.
    let mut process = Sandbox {
        pid,
        pidfd,
        status: None,
        cgroup: None,
        finished: false,
        group: true,
        signal_target: None,
    };
    tracing::info!(sandbox = %id, pid, "command joined the sandbox");

    let watched = shared_join::watch_command(
        &spec,
        &mut process,
        &signals,
        &mut streams,
        &control_outside,
        &report_read,
    );
    drop(restore_mask);
    let (mut ended, stderr_ends_line) = watched?;
    ended.peak_memory = None;
    let mut outcome = outcome::build(&spec, id, enforcement, ended, started)?;
    outcome.backend = crate::NAME;
    Ok(Finished {
        outcome,
        stderr_ends_line,
        teardown: airlock_core::Teardown::none(),
    })
}

/// Copies `source` into or out of the running sandbox through a tar stream, with the
/// namespace backend's copy. The side in the sandbox runs as the sandbox's user, so it
/// reads and writes only what the sandbox's commands could.
pub fn copy(
    runtime: &Runtime,
    source: &Path,
    target: &Path,
    into_sandbox: bool,
) -> Result<(), Error> {
    crate::require_root()?;
    shared::ensure_single_threaded()?;
    let namespace = open_namespace(runtime)?;
    let enter_as_user = || {
        enter(&namespace, &runtime.init)?;
        step(
            crate::sys::become_user(runtime.user),
            "change to the sandbox's user",
        )?;
        // Changing ids cleared the parent-death signal that the copy set.
        step(
            sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
            "ask to be killed with the caller",
        )
    };
    shared_join::transfer(None, &enter_as_user, source, target, into_sandbox)?;
    Ok(())
}
