//! `airlock exec`: runs a command in a held sandbox by joining its namespaces and cgroup, the
//! way nsenter does, so no process inside the sandbox has to relay the request.
//!
//! The steps, in order:
//! 1. Open the sandbox's namespaces through the descriptors its supervisor keeps
//!    (/proc/SUPERVISOR/fd/N), and check that the supervisor and the init are still the
//!    recorded processes. The init is not dumpable, so its own /proc entries are closed to an
//!    unprivileged caller.
//! 2. Clone a joiner process, in the cgroup already where it is a v2 group. The joiner is
//!    made non-dumpable, so no process of the sandbox can read its memory. It joins a v1
//!    cgroup, then the namespaces, the user namespace first because an unprivileged caller
//!    needs it for the others. Last, it becomes root of the sandbox's user namespace. This
//!    process stays outside and keeps its host privileges, for the audit log and the cgroup
//!    counters.
//! 3. The joiner's PID namespace applies to its children only, so it clones the command's
//!    process into the sandbox's PID namespace and stays its parent. It reports the pid,
//!    waits, and exits with the command's status (or dies of the same signal), so this
//!    process reads the command's status as the joiner's. If this process dies first, the
//!    joiner kills and reaps the command: a zombie left to the host's init would keep the
//!    sandbox's init from exiting until the host's init reaped it. The command's process
//!    sheds every privilege exactly as the command of `airlock run` does ([`workload`]).
//! 4. Watch it with the same [`Monitor`] as a run: streams, signals to its process group,
//!    timeout. Processes it leaves in the background keep running in the sandbox.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock_core::{EndReason, ExecCommand, Finished, RunOptions, SandboxId, Spec};

use crate::cgroup::Cgroup;
use crate::control;
use crate::error::Error;
use crate::held::Runtime;
use crate::init::JOINED_NAMESPACES;
use crate::launch::{self, Sandbox};
use crate::monitor::Ended;
use crate::outcome;
pub use crate::pack::{pack_tree, SpecialFile};
use crate::report::Report;
use crate::workload::{self, Stdio};
use crate::{stdio, sys, tty};

/// Builds the spec of the command's process: the sandbox's, with the command's own argv,
/// variables, terminal and timeout.
pub fn command_spec(sandbox: &Spec, command: &ExecCommand) -> Spec {
    let mut spec = sandbox.clone();
    spec.command = command.argv.clone();
    spec.env.extend(command.env.iter().cloned());
    spec.tty = command.tty;
    spec.limits.timeout = command.timeout;
    spec
}

/// The joiner's inputs, handed over by the clone.
struct Joiner<'a> {
    namespaces: &'a [(libc::c_int, OwnedFd)],
    is_root: bool,
    /// v1 `tasks` files to write "0" to.
    tasks: &'a [OwnedFd],
    plan: &'a workload::Plan,
    stdio: [RawFd; 3],
    report: RawFd,
    control: RawFd,
    /// The pipe that receives the pid of the command's process.
    pid_pipe: RawFd,
    /// Read end of a pipe whose write end only the caller holds: end of file means the
    /// caller is gone.
    caller_alive: RawFd,
    tty: bool,
    nproc_fallback: bool,
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
    launch::ensure_single_threaded()?;
    let spec = command_spec(sandbox, command);
    let namespaces = open_namespaces(runtime)?;
    let joined = JoinedCgroup::open(runtime)?;
    let (cgroup, tasks, cgroup_dir) = (&joined.cgroup, joined.tasks(), joined.dir());
    let counters_before = cgroup.as_ref().map(Cgroup::limit_counters);
    let plan = launch::workload_plan(&spec, runtime.landlock_abi)?;
    let mut streams =
        stdio::Plan::new(spec.tty, options.track_stderr_line).map_err(Error::Stdio)?;
    let (report_read, report_write) = sys::pipe().map_err(Error::Channel)?;
    let (control_outside, control_inside) = control::socketpair().map_err(Error::Channel)?;
    let (restore_mask, signals) = launch::block_forwarded_signals(spec.tty)?;

    let (pid_read, pid_write) = sys::pipe().map_err(Error::Channel)?;
    let (alive_read, alive_write) = sys::pipe().map_err(Error::Channel)?;
    let joiner = Joiner {
        namespaces: &namespaces,
        is_root: runtime.is_root,
        tasks,
        plan: &plan,
        stdio: streams.child_fds,
        report: report_write.as_raw_fd(),
        control: control_inside.as_raw_fd(),
        pid_pipe: pid_write.as_raw_fd(),
        caller_alive: alive_read.as_raw_fd(),
        tty: spec.tty,
        nproc_fallback: runtime.nproc_fallback,
    };
    let joiner_pid = match sys::clone_process(0, cgroup_dir) {
        Ok(0) => join_and_run(&joiner),
        Ok(pid) => pid,
        Err(source) => return Err(Error::Clone(source)),
    };
    drop((report_write, control_inside, pid_write, alive_read));
    streams.child_ends.clear();
    let joiner_pidfd = sys::pidfd_of_child(joiner_pid).map_err(Error::Wait)?;
    let mut process = Sandbox {
        pid: joiner_pid,
        pidfd: joiner_pidfd,
        status: None,
        cgroup: None,
        finished: false,
        group: true,
        signal_target: None,
    };
    let command = command_pid(&mut process, &pid_read, &report_read).map_err(|error| {
        // A sandbox being stopped has no init to take new processes, so report that instead.
        if runtime.init.is_alive() {
            error
        } else {
            Error::NotRunning {
                pid: runtime.init.pid,
            }
        }
    })?;
    process.signal_target = Some(command);
    tracing::info!(sandbox = %id, pid = command, "command joined the sandbox");

    let watched = watch_command(
        &spec,
        &mut process,
        &signals,
        &mut streams,
        &control_outside,
        &report_read,
    );
    drop((restore_mask, alive_write));
    let (mut ended, stderr_ends_line) = watched?;

    if let Some(status) = ended.status {
        let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
        let hit = match (&cgroup, counters_before) {
            (Some(cgroup), Some(before)) if ended.reason == EndReason::Exited => {
                cgroup.limit_hit_since(before)
            }
            _ => None,
        };
        // A refused fork shows in the command's own status rather than as a kill, so the
        // process limit counts whenever it was hit during the command.
        match hit {
            Some(EndReason::PidsLimit) => ended.reason = EndReason::PidsLimit,
            Some(reason) if killed => ended.reason = reason,
            _ => {}
        }
    }
    ended.peak_memory = None;
    let outcome = outcome::build(&spec, id, runtime.enforcement.clone(), ended, started)?;
    Ok(Finished {
        outcome,
        stderr_ends_line,
        teardown: airlock_core::Teardown::none(),
    })
}

/// Watches a command that joined a running sandbox until it ends: takes its pseudo-terminal
/// when it has one, relays its streams and signals, and enforces the spec's timeout. Returns
/// how it ended, with its exit status as the last report, and whether its stderr ended a
/// line. The backends whose `exec` joins a sandbox from the host share it.
pub fn watch_command(
    spec: &Spec,
    process: &mut Sandbox,
    signals: &OwnedFd,
    streams: &mut stdio::Plan,
    control: &OwnedFd,
    reports: &OwnedFd,
) -> Result<(Ended, bool), Error> {
    let (mut ended, stderr_ends_line) =
        launch::watch(spec, process, signals, streams, control, reports, true)?;
    if let Some(status) = ended.status {
        ended.reports.push(if libc::WIFSIGNALED(status) {
            Report::Signaled {
                signal: libc::WTERMSIG(status),
            }
        } else {
            Report::Exited {
                code: libc::WEXITSTATUS(status),
            }
        });
    }
    Ok((ended, stderr_ends_line))
}

/// The sandbox's cgroup and what a process needs to join it: the v1 `tasks` files it writes
/// "0" to, or the v2 directory it is cloned into.
struct JoinedCgroup {
    cgroup: Option<Cgroup>,
    files: Vec<OwnedFd>,
}

impl JoinedCgroup {
    fn open(runtime: &Runtime) -> Result<JoinedCgroup, Error> {
        let cgroup = runtime.cgroup.as_ref().map(Cgroup::view);
        let files = match &cgroup {
            Some(cgroup) => cgroup.join_files().map_err(Error::Cgroup)?,
            None => Vec::new(),
        };
        Ok(JoinedCgroup { cgroup, files })
    }

    fn is_v2(&self) -> bool {
        self.cgroup.as_ref().is_some_and(Cgroup::is_v2)
    }

    fn tasks(&self) -> &[OwnedFd] {
        if self.is_v2() {
            &[]
        } else {
            &self.files
        }
    }

    fn dir(&self) -> Option<RawFd> {
        self.files
            .first()
            .filter(|_| self.is_v2())
            .map(AsRawFd::as_raw_fd)
    }
}

/// Opens the sandbox's namespaces through the descriptors its supervisor holds, and checks
/// that neither the supervisor's nor the init's pid was reused since the runtime was
/// recorded.
fn open_namespaces(runtime: &Runtime) -> Result<Vec<(libc::c_int, OwnedFd)>, Error> {
    let not_running = || Error::NotRunning {
        pid: runtime.init.pid,
    };
    if runtime.namespace_fds.len() != JOINED_NAMESPACES.len() {
        return Err(Error::Runtime("the namespaces are missing".into()));
    }
    let mut namespaces = Vec::new();
    for (&fd, (_, nstype)) in runtime.namespace_fds.iter().zip(JOINED_NAMESPACES) {
        let path = format!("/proc/{}/fd/{fd}", runtime.supervisor.pid);
        let opened = sys::open(Path::new(&path), libc::O_RDONLY).map_err(|_| not_running())?;
        namespaces.push((nstype, opened));
    }
    if !runtime.supervisor.is_alive() || !runtime.init.is_alive() {
        return Err(not_running());
    }
    Ok(namespaces)
}

/// Reads the pid of the command's process from the joiner; a failed join becomes the error
/// of the step that failed.
fn command_pid(
    joiner: &mut Sandbox,
    pid_pipe: &OwnedFd,
    report: &OwnedFd,
) -> Result<libc::pid_t, Error> {
    let mut bytes = [0u8; 4];
    let read = sys::read(pid_pipe.as_raw_fd(), &mut bytes);
    if matches!(read, Ok(4)) {
        return Ok(i32::from_ne_bytes(bytes));
    }
    if let Ok(Some((_, status))) = sys::waitpid(joiner.pid, 0) {
        joiner.status = Some(status);
    }
    let mut reports = crate::report::ReportReader::new(report.as_raw_fd());
    reports.read_available().map_err(Error::Wait)?;
    for report in reports.take() {
        if let Report::SetupFailed { step, error } = report {
            return Err(Error::Setup { step, cause: error });
        }
    }
    Err(Error::Setup {
        step: "join the sandbox".into(),
        cause: "the joining process exited without a report".into(),
    })
}

/// The joiner, a child of the caller that enters the sandbox, starts the command's process
/// in it, and stays its parent; never returns.
fn join_and_run(joiner: &Joiner<'_>) -> ! {
    let joined = join(joiner).and_then(|stdio| {
        let pid = step(sys::clone_process(0, None), "start the command's process")?;
        if pid == 0 {
            let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            workload::run(joiner.plan, &stdio, joiner.report, joiner.nproc_fallback)
        }
        step(
            sys::write_all(joiner.pid_pipe, &pid.to_ne_bytes()),
            "report the command's process",
        )?;
        Ok(pid)
    });
    match joined {
        Ok(command) => {
            // Only the liveness pipe stays: the command's streams must reach end of file
            // when the command's processes close them.
            let _ = sys::close_all_except(&[joiner.caller_alive]);
            wait_for_command(command, joiner.caller_alive)
        }
        Err((step, source)) => {
            let error = source.to_string();
            Report::SetupFailed {
                step: step.to_owned(),
                error,
            }
            .send(joiner.report);
            sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
        }
    }
}

/// Waits for the command and ends the same way: with its exit code, or by its signal. If
/// the caller goes first, kills the command's process group and reaps the command.
fn wait_for_command(command: libc::pid_t, caller_alive: RawFd) -> ! {
    let watch = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let pidfd = sys::pidfd_open(command).ok();
    loop {
        if let Ok(Some((_, status))) = sys::waitpid(command, libc::WNOHANG) {
            mirror_status(status)
        }
        let pidfd_raw = pidfd.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let mut fds = [watch(pidfd_raw), watch(caller_alive)];
        // Without a pidfd, poll only the caller and check the command every 100 ms.
        let timeout = if pidfd.is_some() { -1 } else { 100 };
        if sys::poll(&mut fds, timeout).is_err() {
            continue;
        }
        if fds[1].revents != 0 {
            let _ = sys::kill(-command, libc::SIGKILL);
            let _ = sys::kill(command, libc::SIGKILL);
            let _ = sys::waitpid(command, 0);
            sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
        }
    }
}

/// Ends this process the way the command ended: with its exit code, or killed by the same
/// signal, so the caller reads the command's wait status as the joiner's.
fn mirror_status(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
        let _ = sys::setrlimit(libc::RLIMIT_CORE, 0);
        sys::reset_signal_dispositions(&[signal]);
        let _ = sys::set_signal_mask(libc::SIG_SETMASK, &sys::sigset(&[]));
        let _ = sys::kill(sys::getpid(), signal);
        // A signal whose default action does not end the process lands here.
        sys::exit_now(128 + signal)
    }
    sys::exit_now(libc::WEXITSTATUS(status))
}

/// The result of a step in a child process: the step's name with its error.
pub type StepResult<T> = Result<T, (&'static str, std::io::Error)>;

/// Names the step whose `result` this is.
pub fn step<T>(result: std::io::Result<T>, name: &'static str) -> StepResult<T> {
    result.map_err(|source| (name, source))
}

fn join(joiner: &Joiner<'_>) -> StepResult<Stdio> {
    enter(joiner.namespaces, joiner.tasks, joiner.is_root)?;
    if !joiner.tty {
        return Ok(Stdio::Fds(joiner.stdio));
    }
    let (master, slave) = step(tty::open_pty(), "open a pseudo-terminal")?;
    step(
        control::send(joiner.control, b"t", &[master.as_raw_fd()]),
        "pass the pseudo-terminal out",
    )?;
    drop(master);
    let slave_fd = slave.as_raw_fd();
    std::mem::forget(slave);
    Ok(Stdio::Terminal(slave_fd))
}

/// Moves this freshly cloned process into the sandbox: its cgroup, its namespaces, and
/// root of its user namespace, with /workspace as the working directory.
fn enter(
    namespaces: &[(libc::c_int, OwnedFd)],
    tasks: &[OwnedFd],
    is_root: bool,
) -> StepResult<()> {
    // Until it executes the command, this process has the caller's descriptors and memory,
    // which the sandbox's processes, root in its user namespace, must not read.
    step(
        sys::prctl(libc::PR_SET_DUMPABLE, 0),
        "make the process non-dumpable",
    )?;
    for tasks in tasks {
        step(
            sys::write_all(tasks.as_raw_fd(), b"0"),
            "join the sandbox's cgroup",
        )?;
    }
    for (nstype, fd) in namespaces {
        step(
            sys::setns(fd.as_raw_fd(), *nstype),
            "join the sandbox's namespaces",
        )?;
    }
    if is_root {
        step(sys::setgroups_empty(), "clear supplementary groups")?;
    }
    step(sys::become_id(0), "become root in the user namespace")?;
    step(
        sys::chdir(Path::new(airlock_core::spec::SANDBOX_WORKSPACE)),
        "change directory to /workspace",
    )
}

/// Copies `source` into or out of the running sandbox. The bytes travel as a tar stream
/// between this process, which reads or writes the host side, and a process joined to the
/// sandbox, which reads or writes the sandbox side. Each side only ever writes below its own
/// target, and the host side never creates device nodes or setuid files.
pub fn copy(
    runtime: &Runtime,
    source: &Path,
    target: &Path,
    into_sandbox: bool,
) -> Result<(), Error> {
    launch::ensure_single_threaded()?;
    let namespaces = open_namespaces(runtime)?;
    let joined = JoinedCgroup::open(runtime)?;
    let (tasks, cgroup_dir) = (joined.tasks(), joined.dir());
    let enter_sandbox = || enter(&namespaces, tasks, runtime.is_root);
    transfer(cgroup_dir, &enter_sandbox, source, target, into_sandbox)
}

/// Copies `source` into or out of a running sandbox as [`copy`] does, through a child that
/// `enter` moves into the sandbox. The child is cloned into the v2 cgroup `cgroup_dir`, when
/// given, and dies with this process. A copy into the sandbox that fails leaves nothing at
/// `target`, also when the child is killed.
pub fn transfer(
    cgroup_dir: Option<RawFd>,
    enter: &dyn Fn() -> StepResult<()>,
    source: &Path,
    target: &Path,
    into_sandbox: bool,
) -> Result<(), Error> {
    // Out of the sandbox, the host decides the name. Into it, the joined process does,
    // because only it can find out whether the target is a directory.
    let (host_dir, name) = if into_sandbox {
        (PathBuf::new(), file_name(source)?)
    } else {
        copy_destination(target, source, |path| path.is_dir())?
    };
    let token = crate::unpack::new_token();
    let (data_read, data_write) = sys::pipe().map_err(Error::Channel)?;
    let (report_read, report_write) = sys::pipe().map_err(Error::Channel)?;

    let copy_inside = || {
        if into_sandbox {
            drop_in_child(&data_write);
            let data = data_read.try_clone().map(std::fs::File::from);
            let unpacked = data.and_then(|data| crate::unpack::unpack_staged(data, target, &token));
            step(unpacked, "write in the sandbox")
        } else {
            drop_in_child(&data_read);
            // A broken pipe means that the host's side failed first, and it reports why.
            let packed = pack(&data_write, source, &name);
            let packed = packed.or_else(|error| match error.kind() {
                std::io::ErrorKind::BrokenPipe => Ok(()),
                _ => Err(error),
            });
            step(packed, "read from the sandbox")
        }
    };
    let pid = in_sandbox(cgroup_dir, enter, report_write.as_raw_fd(), &copy_inside)?;
    drop(report_write);
    // Each side keeps only its own end of the data pipe, so a side that fails ends the
    // other's: a write fails with EPIPE, a read reaches end of file.
    let host_result = if into_sandbox {
        drop(data_read);
        let packed = pack(&data_write, source, &name);
        drop(data_write);
        packed
    } else {
        drop(data_write);
        unpack_on_host(std::fs::File::from(data_read), &host_dir, None)
    };
    let inside_error = wait_for_inside(pid, &report_read)?;
    if inside_error.is_some() && into_sandbox {
        // A child that was killed could not remove its staging directory.
        remove_staging(cgroup_dir, enter, target, &token);
    }
    let host_broke_pipe = host_result
        .as_ref()
        .is_err_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe);
    let host_error = host_result.err().map(|source| Error::Copy {
        step: if into_sandbox {
            "read from the host".into()
        } else {
            "write to the host".into()
        },
        cause: crate::error_chain(&source),
    });
    // The side that writes the stream fails first. Its failure cuts the stream short for
    // the other side, which then fails too, except that a broken pipe on the host means
    // that the sandbox's side failed first.
    let first = if into_sandbox && !host_broke_pipe {
        host_error.or(inside_error)
    } else {
        inside_error.or(host_error)
    };
    first.map_or(Ok(()), Err)
}

/// Closes `fd` in a cloned child, which has a copy of the parent's descriptor.
fn drop_in_child(fd: &OwnedFd) {
    // SAFETY: the child owns its copy of the descriptor and uses it no more.
    unsafe { libc::close(fd.as_raw_fd()) };
}

/// Clones a child that dies with this process, moves it into the sandbox with `enter`, and
/// runs `work` in it. The child sends a failure as a report on `report`. Returns its pid.
fn in_sandbox(
    cgroup_dir: Option<RawFd>,
    enter: &dyn Fn() -> StepResult<()>,
    report: RawFd,
    work: &dyn Fn() -> StepResult<()>,
) -> Result<libc::pid_t, Error> {
    match sys::clone_process(0, cgroup_dir) {
        Ok(0) => {
            let dies_with_caller = step(
                sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
                "ask to be killed with the caller",
            );
            let result = dies_with_caller
                .and_then(|()| enter())
                .and_then(|()| work());
            if let Err((step, source)) = result {
                Report::SetupFailed {
                    step: step.to_owned(),
                    error: crate::error_chain(&source),
                }
                .send(report);
                sys::exit_now(1);
            }
            sys::exit_now(0)
        }
        Ok(pid) => Ok(pid),
        Err(source) => Err(Error::Clone(source)),
    }
}

/// Waits for the copy's child in the sandbox, and returns its failure: the one it reported,
/// or how it ended when it did not exit with 0.
fn wait_for_inside(pid: libc::pid_t, reports: &OwnedFd) -> Result<Option<Error>, Error> {
    let status = sys::waitpid(pid, 0)
        .map_err(Error::Wait)?
        .map_or(0, |(_, status)| status);
    let mut reader = crate::report::ReportReader::new(reports.as_raw_fd());
    reader.read_available().map_err(Error::Wait)?;
    for report in reader.take() {
        if let Report::SetupFailed { step, error } = report {
            return Ok(Some(Error::Copy { step, cause: error }));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(None);
    }
    let ended = if libc::WIFSIGNALED(status) {
        format!(
            "the copying process in the sandbox was killed by signal {}",
            libc::WTERMSIG(status)
        )
    } else {
        format!(
            "the copying process in the sandbox exited with status {} without a report",
            libc::WEXITSTATUS(status)
        )
    };
    Ok(Some(Error::Copy {
        step: "copy".into(),
        cause: ended,
    }))
}

/// Removes the staging directory of a copy into the sandbox whose child failed, from a
/// fresh child. A failure here is logged only: the copy's own error is the one to report.
fn remove_staging(
    cgroup_dir: Option<RawFd>,
    enter: &dyn Fn() -> StepResult<()>,
    target: &Path,
    token: &str,
) {
    let remove = || {
        step(
            crate::unpack::remove_staging(target, token),
            "remove the partial copy",
        )
    };
    let removed = in_sandbox(cgroup_dir, enter, -1, &remove).and_then(|pid| {
        let status = sys::waitpid(pid, 0).map_err(Error::Wait)?;
        Ok(status
            .is_some_and(|(_, status)| libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0))
    });
    if !matches!(removed, Ok(true)) {
        tracing::warn!(target = %target.display(), token, "cannot remove the partial copy in the sandbox");
    }
}

/// Returns the last component of `path`, the name its copy gets.
pub fn file_name(path: &Path) -> Result<OsString, Error> {
    path.file_name()
        .map(OsStr::to_os_string)
        .ok_or_else(|| Error::Copy {
            step: "name the copy".into(),
            cause: format!(
                "{path:?} names no file; give a path that ends in a file or directory name"
            ),
        })
}

/// Decides where a copy of `source` lands for `target`, the way cp(1) does: inside `target` when
/// it is a directory, else at `target` itself. Returns the directory and the name.
pub fn copy_destination(
    target: &Path,
    source: &Path,
    is_dir: impl Fn(&Path) -> bool,
) -> Result<(PathBuf, OsString), Error> {
    if is_dir(target) {
        return Ok((target.to_owned(), file_name(source)?));
    }
    if crate::unpack::names_directory(target) {
        return Err(Error::Copy {
            step: "name the copy".into(),
            cause: format!(
                "{target:?} ends with '/' but is no directory; create the directory first, or leave out the '/' to give the copy that name"
            ),
        });
    }
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((parent, file_name(target)?))
}

/// Writes `source` as a tar stream to `fd`, under the top-level `name`. Symlinks are stored
/// as symlinks, never followed. Device nodes, FIFOs and sockets below `source` are left out
/// with a warning on stderr.
fn pack(fd: &OwnedFd, source: &Path, name: &OsStr) -> std::io::Result<()> {
    let sink = std::fs::File::from(fd.try_clone()?);
    let packed = pack_tree(sink, source, name)?;
    packed.skipped.warn();
    packed.sink.sync_all().or(Ok(()))
}

/// Unpacks a tar stream made by [`pack_tree`] inside a sandbox, into `target` when it is a
/// directory, else as `target` itself, staged so that a failure leaves `target` as it was
/// ([`crate::unpack::unpack_staged`]).
pub fn unpack_tree(source: impl std::io::Read, target: &Path) -> std::io::Result<()> {
    crate::unpack::unpack_staged(source, target, &crate::unpack::new_token())
}

/// Returns whether a symlink target is absolute or climbs with `..`, so that it may name a
/// path outside the copied tree.
fn leaves_copy(target: &Path) -> bool {
    target.is_absolute()
        || target
            .components()
            .any(|part| part == std::path::Component::ParentDir)
}

/// Returns the kind of special file a tar entry of type `kind` is: a device node or FIFO.
fn special_entry(kind: tar::EntryType) -> Option<SpecialFile> {
    if kind.is_block_special() || kind.is_character_special() {
        Some(SpecialFile::DeviceNode)
    } else if kind.is_fifo() {
        Some(SpecialFile::Fifo)
    } else {
        None
    }
}

/// The failure of [`unpack_on_host`] on a stream longer than its maximum.
#[derive(Debug, thiserror::Error)]
#[error("the tar stream exceeds its maximum of {max_bytes} bytes")]
pub struct StreamTooLarge {
    pub max_bytes: u64,
}

/// Unpacks a tar stream from the sandbox into `dir` on the host. The tar reader refuses
/// paths that leave `dir`, also through symlinks; device nodes and FIFOs are skipped, and
/// permissions lose their setuid, setgid and sticky bits. When the copy fails, what it
/// created at its top-level name is removed.
///
/// With `max_bytes`, a stream longer than that fails with [`StreamTooLarge`] as the error's
/// inner error. An entry whose header announces data past the maximum fails before any of
/// its data is written, so a sparse file of a terabyte fails at once.
pub fn unpack_on_host(
    source: impl std::io::Read,
    dir: &Path,
    max_bytes: Option<u64>,
) -> std::io::Result<()> {
    let max_bytes = max_bytes.unwrap_or(u64::MAX);
    let exceeded = std::cell::Cell::new(false);
    let source = Bounded {
        inner: source,
        remaining: max_bytes,
        exceeded: &exceeded,
    };
    let mut created = None;
    let mut result = unpack_entries(source, dir, max_bytes, &mut created);
    if exceeded.get() {
        // The tar crate wraps the reader's error in its own, so the failure is named here.
        result = Err(std::io::Error::other(StreamTooLarge { max_bytes }));
    }
    if let (Err(_), Some(top)) = (&result, created) {
        remove_partial_copy(&top);
    }
    result
}

/// Removes `top`, the top-level entry that a failed copy created on the host.
// NOTE: a failed copy onto an existing file or directory leaves the entries written so far.
fn remove_partial_copy(top: &Path) {
    let removed = match std::fs::symlink_metadata(top) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(top),
        Ok(_) => std::fs::remove_file(top),
        Err(_) => Ok(()),
    };
    if let Err(error) = removed {
        eprintln!(
            "airlock: warning: cannot remove the partial copy {}: {error}",
            top.display()
        );
    }
}

/// Unpacks the entries of [`unpack_on_host`]. Sets `created` to the top-level path when
/// nothing was there before the copy.
fn unpack_entries(
    source: impl std::io::Read,
    dir: &Path,
    max_bytes: u64,
    created: &mut Option<PathBuf>,
) -> std::io::Result<()> {
    let mut source = crate::unpack::EndWatch::new(source);
    let mut archive = tar::Archive::new(&mut source);
    // Without preserved permissions the reader keeps only the rwx bits of each mode.
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut first = true;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if std::mem::take(&mut first) {
            *created = new_top_level(&entry, dir);
        }
        if entry.raw_file_position().saturating_add(entry.size()) > max_bytes {
            return Err(std::io::Error::other(StreamTooLarge { max_bytes }));
        }
        let kind = entry.header().entry_type();
        // Names and link targets come from the sandbox, so they are printed quoted, with
        // control characters escaped: raw, they could move the terminal's cursor and hide
        // the warning itself.
        let path = entry.path().map(|path| format!("{path:?}"));
        let path = path.unwrap_or_else(|_| "an entry with an unreadable name".into());
        if let Some(special) = special_entry(kind) {
            eprintln!(
                "airlock: warning: skipped {path}: {}; cp copies files, directories and symlinks only",
                special.described()
            );
            continue;
        }
        if kind.is_symlink() {
            // The link is copied as a link. One that points outside the copy names a host
            // path, which whatever follows it later on the host would read or write.
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|target| target.into_owned());
            if let Some(target) = target.filter(|target| leaves_copy(target)) {
                eprintln!(
                    "airlock: warning: copied {path} as a symlink to {target:?}, a path outside the copy"
                );
            }
        }
        entry.unpack_in(dir)?;
    }
    source.check_marker()
}

/// Returns the path in `dir` of the top-level name of `entry`, the first entry of a copy,
/// when nothing is there yet.
fn new_top_level<R: std::io::Read>(entry: &tar::Entry<'_, R>, dir: &Path) -> Option<PathBuf> {
    let path = entry.path().ok()?;
    let top = match path.components().next()? {
        std::path::Component::Normal(top) => dir.join(top),
        _ => return None,
    };
    let exists = std::fs::symlink_metadata(&top).is_ok();
    (!exists).then_some(top)
}

/// A reader that fails once more than `remaining` bytes were read through it, and then
/// sets `exceeded`.
struct Bounded<'a, R> {
    inner: R,
    remaining: u64,
    exceeded: &'a std::cell::Cell<bool>,
}

impl<R: std::io::Read> std::io::Read for Bounded<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buffer)?;
        match self.remaining.checked_sub(count as u64) {
            Some(remaining) => {
                self.remaining = remaining;
                Ok(count)
            }
            None => {
                self.exceeded.set(true);
                Err(std::io::Error::other("the tar stream exceeds its maximum"))
            }
        }
    }
}
