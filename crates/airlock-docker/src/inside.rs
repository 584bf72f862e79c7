//! The container's side: the init, PID 1 of every docker sandbox, the wrapper that every
//! exec runs through, and the helper that serves `airlock cp`. All three are the Airlock
//! binary, bound read-only at [`crate::config::BINARY`].
//!
//! Each connects to its socket in the run directory, takes its descriptors and plan from
//! the host (see [`crate::channel`]), and starts the command with the nspawn backend's init
//! code: every capability dropped, no_new_privs, Airlock's seccomp filter and Landlock, on
//! top of the engine's own seccomp profile. A process that `docker exec` starts does not
//! descend from PID 1, so it gets the same treatment through the wrapper.
//!
//! The descriptors are installed as the nspawn backend's init expects them: the
//! connection at [`PLAN_FD`], the report pipe at [`REPORT_FD`] and the liveness pipe at
//! [`LIVENESS_FD`].

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use airlock_namespace::init::FORWARDED_SIGNALS;
use airlock_namespace::report::Report;
use airlock_namespace::workload::{self, Stdio};
use airlock_namespace::{control, join, sys, tty, unpack};
use airlock_nspawn::init::{self as shared, StepResult, LIVENESS_FD, PLAN_FD, REPORT_FD};

use crate::channel::{self, CopyRequest, Plan};

/// The hidden mode of the Airlock binary that runs as the container's PID 1.
pub const INIT_MODE: &str = "__docker-init";
/// The hidden mode that wraps each exec's command.
pub const EXEC_MODE: &str = "__docker-exec";
/// The hidden mode that serves a copy in the container.
pub const COPY_MODE: &str = "__docker-cp";

/// Runs as the container's PID 1; never returns.
pub fn init(socket: &Path) -> ! {
    let (plan, stdio) = connect(socket);
    if let Err((step, source)) = wait_for_go_ahead() {
        shared::fail(step, source);
    }
    // The init takes no signals over the channel: they come through the engine.
    // SAFETY: the channel is this process's own descriptor, and nothing uses it afterwards.
    unsafe { libc::close(PLAN_FD) };
    if plan.command.argv.is_empty() {
        shared::hold()
    }
    shared::start_and_supervise(&plan.command, &stdio)
}

/// Runs an exec's command and stays its parent until it exits; never returns.
pub fn exec(socket: &Path) -> ! {
    let (plan, stdio) = connect(socket);
    if let Err((step, source)) = wait_for_go_ahead() {
        shared::fail(step, source);
    }
    let workload_plan = match shared::workload_plan(&plan.command) {
        Ok(workload_plan) => workload_plan,
        Err((step, source)) => shared::fail(step, source),
    };
    let mut watched = FORWARDED_SIGNALS.to_vec();
    watched.push(libc::SIGCHLD);
    let signals = shared::receive_signals(&watched);
    let command = match sys::fork() {
        Ok(0) => {
            let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            workload::run(&workload_plan, &stdio, REPORT_FD, false)
        }
        Ok(pid) => pid,
        Err(source) => shared::fail("start the command", source),
    };
    release_stdio(&stdio);
    supervise_command(command, &signals)
}

/// Serves one `airlock cp` in the container, as the sandbox's user: unpacks the tar stream
/// from the host's data pipe at the requested path, or packs the path into it. Reports on
/// the report pipe how it ended, and exits; never returns.
pub fn copy(socket: &Path) -> ! {
    // The data pipe leads to the host, so no process of the sandbox may take it through
    // /proc or read this process's memory.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    let (request, data, report) = match receive_copy_request(socket) {
        Ok(received) => received,
        Err((step, source)) => {
            // Nothing reads this output, but the host finds that the helper ended without a
            // report.
            eprintln!("airlock: cannot {step}: {source}");
            sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into());
        }
    };
    let path = Path::new(OsStr::from_bytes(&request.path));
    let data = std::fs::File::from(data);
    let result = if request.remove_staging {
        let removed = unpack::remove_staging(path, &request.token);
        step(removed, "remove the partial copy")
    } else if request.into_sandbox {
        let unpacked = unpack::unpack_staged(data, path, &request.token);
        step(unpacked, "write in the sandbox")
    } else {
        let name = OsStr::from_bytes(&request.name);
        // A broken pipe means that the host's side failed first, and it reports why.
        let packed = match join::pack_tree(data, path, name) {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(None),
            packed => packed.map(Some),
        };
        step(packed, "read from the sandbox").map(|packed| {
            // This process's stderr reaches no one, so the host prints the warnings.
            if let Some(packed) = packed.filter(|packed| !packed.skipped.is_empty()) {
                packed.skipped.to_report().send(report.as_raw_fd());
            }
        })
    };
    match result {
        Ok(()) => {
            Report::Exited { code: 0 }.send(report.as_raw_fd());
            sys::exit_now(0)
        }
        Err((step, source)) => {
            Report::SetupFailed {
                step: step.to_owned(),
                error: airlock_namespace::error_chain(&source),
            }
            .send(report.as_raw_fd());
            sys::exit_now(1)
        }
    }
}

/// Connects to `socket`, receives the data and report pipes, acknowledges them, and reads
/// the request that follows.
fn receive_copy_request(socket: &Path) -> EarlyResult<(CopyRequest, OwnedFd, OwnedFd)> {
    let connection = early(UnixStream::connect(socket), "connect to the host")?;
    let received = "receive the copy's pipes";
    let message = early(control::recv(connection.as_raw_fd()), received)?;
    let Some((payload, fds)) = message else {
        return Err((received.into(), io::ErrorKind::UnexpectedEof.into()));
    };
    let Ok([data, report]) = <[OwnedFd; 2]>::try_from(fds) else {
        return Err((received.into(), io::ErrorKind::InvalidData.into()));
    };
    if payload != channel::TAG_COPY {
        return Err((received.into(), io::ErrorKind::InvalidData.into()));
    }
    early(
        sys::write_all(connection.as_raw_fd(), &[channel::ACK]),
        "acknowledge the copy's pipes",
    )?;
    let mut line = String::new();
    let read = "read the copy request";
    early(BufReader::new(connection).read_line(&mut line), read)?;
    let request = serde_json::from_str(&line).map_err(|error| (read.to_owned(), error.into()))?;
    Ok((request, data, report))
}

/// Connects to the host, installs the descriptors it sends, reads the plan, prepares the
/// command's streams and reports ready. Failures before the report pipe is in place can
/// only be written to the container's log, which the host reads when this process exits.
fn connect(socket: &Path) -> (Plan, Stdio) {
    // This process has the host's descriptors, so no process of the sandbox may read its
    // memory or take them through /proc.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    if let Err((step, source)) = receive_channels(socket) {
        eprintln!("airlock: cannot {step}: {source}");
        sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into());
    }
    match prepare() {
        Ok(prepared) => prepared,
        Err((step, source)) => shared::fail(step, source),
    }
}

fn step<T>(result: io::Result<T>, name: &'static str) -> StepResult<T> {
    result.map_err(|source| (name, source))
}

/// A failed step before the report pipe is in place: the step's name with its error.
type EarlyResult<T> = Result<T, (String, io::Error)>;

fn early<T>(result: io::Result<T>, name: &str) -> EarlyResult<T> {
    result.map_err(|source| (name.to_owned(), source))
}

/// Connects to `socket`, receives the descriptors and installs them, then acknowledges.
fn receive_channels(socket: &Path) -> EarlyResult<()> {
    let connection = early(UnixStream::connect(socket), "connect to the host")?;
    let connection = OwnedFd::from(connection);

    let received = "receive the channels";
    let message = early(control::recv(connection.as_raw_fd()), received)?;
    let Some((payload, fds)) = message else {
        return Err((received.into(), io::ErrorKind::UnexpectedEof.into()));
    };
    let mask = match payload.as_slice() {
        [channel::TAG_CHANNELS, mask] => *mask,
        _ => return Err((received.into(), io::ErrorKind::InvalidData.into())),
    };
    let streams = (0..3).filter(|index| mask & (1 << index) != 0).count();
    if fds.len() != streams + 2 {
        return Err((received.into(), io::ErrorKind::InvalidData.into()));
    }

    let null = early(
        sys::open(Path::new("/dev/null"), libc::O_RDWR),
        "open /dev/null",
    )?;
    // From here on the descriptors are raw: installing them closes every other one.
    let null = null.into_raw_fd();
    let mut fds = fds.into_iter().map(IntoRawFd::into_raw_fd);
    let mut sources = [null; 6];
    for (index, source) in sources.iter_mut().take(3).enumerate() {
        if mask & (1 << index) != 0 {
            *source = fds.next().unwrap_or(null);
        }
    }
    sources[PLAN_FD as usize] = connection.into_raw_fd();
    sources[REPORT_FD as usize] = fds.next().unwrap_or(null);
    sources[LIVENESS_FD as usize] = fds.next().unwrap_or(null);
    airlock_nspawn::launch::install_descriptors(&sources)?;
    early(
        sys::write_all(PLAN_FD, &[channel::ACK]),
        "acknowledge the channels",
    )
}

/// Reads the plan, enters the workspace, opens the command's terminal when it gets one, and
/// reports ready.
fn prepare() -> StepResult<(Plan, Stdio)> {
    let plan: Plan = shared::read_plan(Vec::new())?;
    step(
        sys::chdir(Path::new(airlock_core::spec::SANDBOX_WORKSPACE)),
        "change directory to /workspace",
    )?;
    let stdio = if plan.tty {
        let (master, slave) = step(tty::open_pty(), "open a pseudo-terminal")?;
        step(
            control::send(PLAN_FD, channel::TAG_TERMINAL, &[master.as_raw_fd()]),
            "pass the pseudo-terminal out",
        )?;
        let slave_fd = slave.as_raw_fd();
        std::mem::forget(slave);
        Stdio::Terminal(slave_fd)
    } else {
        Stdio::Fds([0, 1, 2])
    };
    Report::Ready.send(REPORT_FD);
    Ok((plan, stdio))
}

/// Waits for the host's go-ahead, which comes once the host watches the command.
fn wait_for_go_ahead() -> StepResult<()> {
    match step(control::recv(PLAN_FD), "wait for the host")? {
        Some((payload, _)) if payload == channel::GO_AHEAD => Ok(()),
        _ => sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into()),
    }
}

/// Points 0, 1 and 2 at /dev/null and closes the terminal's slave, so that this process
/// keeps no end of the command's streams open.
fn release_stdio(stdio: &Stdio) {
    if let Ok(null) = sys::open(Path::new("/dev/null"), libc::O_RDWR) {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    if let Stdio::Terminal(slave) = *stdio {
        // SAFETY: the slave is this process's own descriptor, and nothing uses it afterwards.
        unsafe { libc::close(slave) };
    }
}

/// Relays the host's signals to the command's process group until the command exits, then
/// reports how it ended and exits. If the host goes first, kills the command's process
/// group. Processes the command leaves in the background keep running, as with the other
/// backends' exec.
fn supervise_command(command: libc::pid_t, signals: &OwnedFd) -> ! {
    let watch = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        let mut fds = [
            watch(signals.as_raw_fd()),
            watch(PLAN_FD),
            watch(LIVENESS_FD),
        ];
        if sys::poll(&mut fds, -1).is_err() {
            continue;
        }
        if fds[0].revents != 0 {
            match sys::read_signalfd(signals) {
                Ok(Some(libc::SIGCHLD)) => reap(command),
                Ok(Some(signal)) => signal_group(command, signal),
                _ => {}
            }
        }
        if fds[1].revents != 0 {
            match control::recv(PLAN_FD) {
                Ok(Some((payload, _))) => {
                    if let [channel::TAG_SIGNAL, signal] = payload.as_slice() {
                        signal_group(command, libc::c_int::from(*signal));
                    }
                }
                _ => abandon(command),
            }
        }
        if fds[2].revents != 0 {
            abandon(command);
        }
    }
}

/// Sends `signal` to the command's process group, or to the command alone when it left
/// the group.
fn signal_group(command: libc::pid_t, signal: libc::c_int) {
    if sys::kill(-command, signal).is_err() {
        let _ = sys::kill(command, signal);
    }
}

/// Reports how the command ended and exits, once it has.
fn reap(command: libc::pid_t) {
    let Ok(Some((_, status))) = sys::waitpid(command, libc::WNOHANG) else {
        return;
    };
    Report::Usage {
        max_rss: sys::children_max_rss(),
    }
    .send(REPORT_FD);
    let report = if libc::WIFSIGNALED(status) {
        Report::Signaled {
            signal: libc::WTERMSIG(status),
        }
    } else {
        Report::Exited {
            code: libc::WEXITSTATUS(status),
        }
    };
    report.send(REPORT_FD);
    sys::exit_now(0)
}

/// Kills the command's process group and exits, for a host that is gone.
fn abandon(command: libc::pid_t) -> ! {
    signal_group(command, libc::SIGKILL);
    let _ = sys::waitpid(command, 0);
    sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
}
