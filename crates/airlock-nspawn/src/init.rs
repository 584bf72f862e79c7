//! The container's PID 1: the Airlock binary, bound read-only at /.airlock/airlock and
//! started by systemd-nspawn as its payload. It reads its plan from the launcher, mounts an
//! overlay workspace, reports that the container is ready, and then either starts the command
//! or stays idle for `airlock exec`.
//!
//! Its channels to the launcher come through systemd-nspawn's socket-activation passing
//! (`LISTEN_FDS`): descriptor 3 carries the limit cgroups to join and then the plan,
//! descriptor 4 takes the reports, in the namespace backend's report format, and
//! descriptor 5 reaches end of file when the launcher is gone. systemd-nspawn killed with SIGKILL leaves its container running, so
//! the init ends the container itself when the launcher dies. The plan travels on a pipe rather than on the command
//! line, because `--env` values may be secrets and a command line is readable by every user
//! of the host.
//!
//! The command's process sheds every privilege exactly as the namespace backend's command
//! does, with [`airlock_namespace::workload::run`]: systemd-nspawn leaves the init 27
//! capabilities of its user namespace, which the init itself needs to mount the overlay.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use airlock_namespace::init::FORWARDED_SIGNALS;
use airlock_namespace::report::Report;
use airlock_namespace::workload::{self, Stdio};
use airlock_namespace::{control, seccomp, sys};
use serde::{Deserialize, Serialize};

use crate::command::{AIRLOCK_DIR, OVERLAY_LAYERS, OVERLAY_LOWER};

/// The descriptor the plan arrives on.
pub const PLAN_FD: RawFd = 3;
/// The descriptor the reports leave on.
pub const REPORT_FD: RawFd = 4;
/// Read end of a pipe whose write end only the launcher holds.
pub const LIVENESS_FD: RawFd = 5;
/// The first byte of the message that carries the limit cgroups' `tasks` files, sent before
/// the plan. The second byte is the number of the command's streams (0 or 3) that come
/// before the `tasks` files among the message's descriptors.
pub const CGROUPS_MESSAGE: u8 = b'c';

/// The launcher's instructions to the init.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The command; empty for a held sandbox.
    pub argv: Vec<OsString>,
    /// The command's whole environment.
    pub env: Vec<(String, OsString)>,
    /// Mount an overlay on /workspace from the layers systemd-nspawn bound.
    pub overlay: bool,
    /// Apply Landlock to the command.
    pub landlock: bool,
    /// The process limit, set as RLIMIT_NPROC when `nproc_fallback` is set.
    pub pids: u64,
    pub nproc_fallback: bool,
    /// Stay, after the final report, until the launcher closes the liveness pipe: the
    /// container's cgroup, whose counters the launcher reads last, goes with the init.
    #[serde(default)]
    pub linger: bool,
    /// The command's standard streams are the terminal that systemd-nspawn relays, which
    /// becomes the command's controlling terminal.
    #[serde(default)]
    pub terminal: bool,
}

/// The result of a setup step: the step's name with its error.
pub type StepResult<T> = Result<T, (&'static str, io::Error)>;

fn step<T>(result: io::Result<T>, name: &'static str) -> StepResult<T> {
    result.map_err(|source| (name, source))
}

/// Runs as the container's PID 1; never returns.
pub fn run() -> ! {
    if !sys::fd_is_open(PLAN_FD) || !sys::fd_is_open(REPORT_FD) {
        eprintln!(
            "airlock: {} is the init that `airlock run --backend nspawn` starts in its container, with the plan on descriptor {PLAN_FD} and the report on {REPORT_FD}; it is not a command to run by hand",
            crate::command::INIT_SUBCOMMAND
        );
        sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
    }
    match set_up() {
        Ok(plan) if plan.argv.is_empty() => hold(),
        Ok(plan) if plan.terminal => {
            // systemd-nspawn made the console the controlling terminal of this process's
            // session; giving it up lets the command's new session take it.
            let _ = sys::ioctl_int(0, libc::TIOCNOTTY, 0);
            start_and_supervise(&plan, &Stdio::Terminal(0))
        }
        Ok(plan) => start_and_supervise(&plan, &Stdio::Fds([0, 1, 2])),
        Err((step, source)) => fail(step, source),
    }
}

fn set_up() -> StepResult<Plan> {
    let (streams, joins, start) = receive_descriptors()?;
    install_streams(streams)?;
    let plan: Plan = read_plan(start)?;
    join_cgroups(&joins)?;
    // SAFETY: the plan descriptor is this process's own, and nothing uses it afterwards.
    unsafe { libc::close(PLAN_FD) };
    if plan.overlay {
        mount_overlay()?;
    }
    hide_airlock_dir()?;
    step(
        sys::chdir(Path::new(airlock_core::spec::SANDBOX_WORKSPACE)),
        "change directory to /workspace",
    )?;
    Report::Ready.send(REPORT_FD);
    Ok(plan)
}

/// Receives the command's streams, when the launcher passes them here rather than through
/// systemd-nspawn, and the `tasks` files of the sandbox's v1 limit cgroups. They come first
/// on the plan socket, in a message of their own. Returns them with whatever bytes of the
/// plan came in the same read.
fn receive_descriptors() -> StepResult<(Vec<OwnedFd>, Vec<OwnedFd>, Vec<u8>)> {
    let received = step(control::recv(PLAN_FD), "receive the streams and cgroups")?;
    let Some((bytes, mut joins)) = received else {
        exit_without_launcher()
    };
    let invalid = || {
        (
            "receive the streams and cgroups",
            io::Error::from_raw_os_error(libc::EPROTO),
        )
    };
    let streams = match bytes.as_slice() {
        [CGROUPS_MESSAGE, count, ..] if matches!(*count, 0 | 3) => usize::from(*count),
        _ => return Err(invalid()),
    };
    if joins.len() < streams {
        return Err(invalid());
    }
    let rest = joins.split_off(streams);
    Ok((joins, rest, bytes[2..].to_vec()))
}

/// Installs the command's streams at descriptors 0, 1 and 2, in place of those that
/// systemd-nspawn passed. systemd-nspawn keeps its copies of what it passes until it exits,
/// so a stream that came through it would reach end of file only then.
fn install_streams(streams: Vec<OwnedFd>) -> StepResult<()> {
    for (target, stream) in streams.iter().enumerate() {
        step(
            sys::dup2(stream.as_raw_fd(), target as RawFd),
            "install the command's streams",
        )?;
    }
    Ok(())
}

/// Joins the limit cgroups by writing "0" to their `tasks` files, before the command
/// exists, so that the command and everything it starts stay in them.
fn join_cgroups(joins: &[OwnedFd]) -> StepResult<()> {
    for join in joins {
        step(
            sys::write_all(join.as_raw_fd(), b"0"),
            "join the sandbox's limit cgroups",
        )?;
    }
    Ok(())
}

/// Reads the plan, one line of JSON from [`PLAN_FD`] that follows `start`, the bytes of it
/// already read.
pub fn read_plan<T: serde::de::DeserializeOwned>(start: Vec<u8>) -> StepResult<T> {
    let mut bytes = start;
    let mut chunk = [0u8; 4096];
    while !bytes.ends_with(b"\n") {
        match step(sys::read(PLAN_FD, &mut chunk), "read the plan")? {
            0 => exit_without_launcher(),
            read => bytes.extend_from_slice(&chunk[..read]),
        }
    }
    serde_json::from_slice(&bytes)
        .map_err(io::Error::other)
        .map_err(|source| ("parse the plan", source))
}

/// Ends the container when the launcher closed the plan pipe early: it is gone, or it
/// gave up on the container.
fn exit_without_launcher() -> ! {
    sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
}

/// Mounts the copy-on-write workspace. Root of the container's user namespace may mount an
/// overlay in the mount namespace it owns. Its layers are ID-mapped binds, so what the
/// command writes belongs to the owner of the layers directory on the host, root. In a user
/// namespace overlayfs cannot set its trusted.* markers (of an opaque or renamed directory),
/// so `userxattr` keeps them in user.* xattrs, which is also where `airlock diff` reads them.
fn mount_overlay() -> StepResult<()> {
    let options = format!(
        "lowerdir={OVERLAY_LOWER},upperdir={OVERLAY_LAYERS}/upper,workdir={OVERLAY_LAYERS}/work,\
         userxattr"
    );
    let workspace = Path::new(airlock_core::spec::SANDBOX_WORKSPACE);
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    step(
        sys::mount(
            Some(Path::new("overlay")),
            workspace,
            Some("overlay"),
            flags,
            Some(&options),
        ),
        "mount the workspace overlay",
    )
}

/// Covers /.airlock, the Airlock binary and the overlay's layers, with an empty read-only
/// tmpfs. Their mounts are locked, because systemd-nspawn made them, so they cannot be
/// unmounted. This process keeps running from the covered binary.
fn hide_airlock_dir() -> StepResult<()> {
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    step(
        sys::mount(
            Some(Path::new("tmpfs")),
            Path::new(AIRLOCK_DIR),
            Some("tmpfs"),
            flags,
            Some("mode=0555,size=4k"),
        ),
        "hide /.airlock",
    )
}

fn to_cstring(bytes: &[u8]) -> StepResult<CString> {
    CString::new(bytes).map_err(|_| ("read the plan", io::Error::from_raw_os_error(libc::EINVAL)))
}

/// Builds the command's process plan from the launcher's plan.
pub fn workload_plan(plan: &Plan) -> StepResult<workload::Plan> {
    let argv = plan
        .argv
        .iter()
        .map(|arg| to_cstring(arg.as_bytes()))
        .collect::<StepResult<Vec<_>>>()?;
    let env = plan
        .env
        .iter()
        .map(|(key, value)| to_cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat()))
        .collect::<StepResult<Vec<_>>>()?;
    let path = plan
        .env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| workload::search_path(value.as_bytes()))
        .unwrap_or_default();
    Ok(workload::Plan {
        argv,
        env,
        path,
        seccomp: seccomp::build(),
        landlock: plan.landlock,
        pids: plan.pids,
    })
}

/// Blocks `signals` and returns a signalfd that receives them.
pub fn receive_signals(signals: &[libc::c_int]) -> OwnedFd {
    let set = sys::sigset(signals);
    if let Err(source) = sys::set_signal_mask(libc::SIG_BLOCK, &set) {
        fail("block signals", source);
    }
    match sys::signalfd(&set) {
        Ok(fd) => fd,
        Err(source) => fail("create a signalfd", source),
    }
}

/// Waits until a signal arrives or the launcher is gone; in that case, kills every process
/// of the container and exits, which ends the container.
fn wait_for_signal(signals: &OwnedFd) -> Option<libc::c_int> {
    let watch = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [watch(signals.as_raw_fd()), watch(LIVENESS_FD)];
    if sys::poll(&mut fds, -1).is_err() {
        return None;
    }
    if fds[1].revents != 0 {
        let _ = sys::kill(-1, libc::SIGKILL);
        sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
    }
    sys::read_signalfd(signals).ok().flatten()
}

/// Starts the command with the standard streams `stdio`, then supervises it as the
/// container's PID 1 until it exits; never returns.
pub fn start_and_supervise(plan: &Plan, stdio: &Stdio) -> ! {
    let workload_plan = match workload_plan(plan) {
        Ok(workload_plan) => workload_plan,
        Err((step, source)) => fail(step, source),
    };
    let mut watched = FORWARDED_SIGNALS.to_vec();
    watched.push(libc::SIGCHLD);
    let signals = receive_signals(&watched);
    let workload_pid = match sys::fork() {
        Ok(0) => workload::run(&workload_plan, stdio, REPORT_FD, plan.nproc_fallback),
        Ok(pid) => pid,
        Err(source) => fail("start the command", source),
    };
    release_stdio();
    if let Stdio::Terminal(slave) = *stdio {
        // The terminal's hangup reaches the relay only once no process holds the slave.
        // SAFETY: the slave is this process's own descriptor, and nothing uses it afterwards.
        unsafe { libc::close(slave) };
    }
    // The init keeps no privilege the command could borrow: not dumpable, so ptrace and
    // /proc/1/mem are closed to it, and no capabilities.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    let _ = sys::clear_capabilities();
    supervise(workload_pid, &signals, plan.linger)
}

/// Forwards signals to the command's process group and reaps orphans. When the command
/// exits, kills every process left in the container and reports how the command ended.
fn supervise(workload: libc::pid_t, signals: &OwnedFd, linger: bool) -> ! {
    loop {
        let Some(signal) = wait_for_signal(signals) else {
            continue;
        };
        if signal != libc::SIGCHLD {
            if sys::kill(-workload, signal).is_err() {
                let _ = sys::kill(workload, signal);
            }
            continue;
        }
        while let Ok(Some((pid, status))) = sys::waitpid(-1, libc::WNOHANG) {
            if pid == workload {
                finish(status, linger);
            }
        }
    }
}

fn finish(status: libc::c_int, linger: bool) -> ! {
    let _ = sys::kill(-1, libc::SIGKILL);
    while sys::waitpid(-1, 0).is_ok() {}
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
    if linger {
        let mut fds = [libc::pollfd {
            fd: LIVENESS_FD,
            events: libc::POLLIN,
            revents: 0,
        }];
        while !matches!(sys::poll(&mut fds, -1), Ok(1..)) {}
    }
    sys::exit_now(0)
}

/// Keeps the container alive without a command and reaps the processes that `airlock exec`
/// leaves behind. The supervisor ends it with SIGKILL, which ends the container.
pub fn hold() -> ! {
    let signals = receive_signals(&[libc::SIGCHLD]);
    release_stdio();
    // SAFETY: the report descriptor is this process's own, and nothing uses it afterwards.
    unsafe { libc::close(REPORT_FD) };
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    let _ = sys::clear_capabilities();
    loop {
        wait_for_signal(&signals);
        while let Ok(Some(_)) = sys::waitpid(-1, libc::WNOHANG) {}
    }
}

/// Reports the failed setup `step` to the launcher and exits.
pub fn fail(step: &str, source: io::Error) -> ! {
    Report::SetupFailed {
        step: step.to_owned(),
        error: source.to_string(),
    }
    .send(REPORT_FD);
    sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
}

/// Points 0, 1 and 2 at /dev/null, so the init keeps no end of the command's streams open.
fn release_stdio() {
    if let Ok(null) = sys::open(Path::new("/dev/null"), libc::O_RDWR) {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
}
