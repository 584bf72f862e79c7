//! The holder: a root process in the sandbox's new mount namespace. It builds the tree and
//! keeps the namespace alive, and watches a pipe whose other end only its launcher holds.
//!
//! In a run it starts the command and is the subreaper of the command's orphans. When the
//! command exits, it kills every process left in the namespace, reports how the command
//! ended, and exits. Held, it waits until its launcher (the supervisor) ends it. Either way,
//! when the launcher dies first, the pipe reaches end of file and the holder kills every
//! process of the namespace before it exits, so a killed `airlock` leaves nothing running.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use airlock_core::Spec;
use airlock_namespace::report::Report;
use airlock_namespace::workload::Stdio;
use airlock_namespace::{control, sys, tty};

use crate::members::{self, Sandbox};
use crate::{command, tree};

/// The holder's ends of the launcher's channels, as raw descriptors that the clone copied.
#[derive(Debug, Clone, Copy)]
pub struct Channels {
    /// Write end of the report pipe.
    pub report: RawFd,
    /// The control socket, which takes the pty master out.
    pub control: RawFd,
    /// Write end of the pipe that takes the command's pid out.
    pub pid: RawFd,
    /// Read end of the pipe whose write end only the launcher holds.
    pub launcher_alive: RawFd,
}

/// Everything the holder needs, in the launcher's memory that the clone copied.
pub struct Plan<'a> {
    pub spec: &'a Spec,
    pub marker: &'a str,
    pub workspace: &'a tree::Workspace,
    /// Whether the launcher sends the workspace's copy-on-write overlay over the control
    /// socket.
    pub overlay: bool,
    /// The command to start and watch; `None` for a held sandbox.
    pub command: Option<&'a command::Plan>,
    pub channels: Channels,
    /// The descriptors that become the command's 0, 1 and 2.
    pub stdio: [RawFd; 3],
}

/// Runs as the holder; never returns.
pub fn run(plan: Plan<'_>) -> ! {
    let report = plan.channels.report;
    if let Err((step, source)) = set_up(&plan) {
        fail(report, &step, source)
    }
    match plan.command {
        Some(command) => start_and_watch(&plan, command),
        None => hold(plan.channels, plan.marker),
    }
}

fn set_up(plan: &Plan<'_>) -> Result<(), (String, io::Error)> {
    let step = |name: &str| {
        let name = name.to_owned();
        move |source| (name, source)
    };
    close_launcher_descriptors(plan).map_err(step("close the launcher's descriptors"))?;
    sys::setsid().map_err(step("start a new session"))?;
    let overlay_from = plan.overlay.then_some(plan.channels.control);
    tree::build(plan.spec, plan.marker, plan.workspace, overlay_from)
        .map_err(|error| (error.step, error.source))
}

/// Closes the descriptors the clone copied from the launcher, except the holder's channels,
/// the command's streams and the workspace's mount. A lock file left open here would keep
/// the sandbox's lock, and a stream left open would keep its reader from seeing end of file.
fn close_launcher_descriptors(plan: &Plan<'_>) -> io::Result<()> {
    let channels = plan.channels;
    let workspace = match plan.workspace {
        tree::Workspace::Idmapped(tree, _) => tree.as_raw_fd(),
        tree::Workspace::None | tree::Workspace::Bind(_) => -1,
    };
    let keep: Vec<RawFd> = [0, 1, 2, workspace]
        .into_iter()
        .chain([
            channels.report,
            channels.control,
            channels.pid,
            channels.launcher_alive,
        ])
        .chain(plan.stdio)
        .collect();
    sys::close_all_except(&keep)
}

/// Starts the command, reports its pid, and watches it and the launcher.
fn start_and_watch(plan: &Plan<'_>, command: &command::Plan) -> ! {
    let channels = plan.channels;
    let (stdio, children) = match prepare_watch(plan, command) {
        Ok(prepared) => prepared,
        Err((step, source)) => fail(channels.report, step, source),
    };
    let pid = match sys::clone_process(0, None) {
        Ok(0) => command::run(command, &stdio, channels.report),
        Ok(pid) => pid,
        Err(source) => fail(channels.report, "start the command", source),
    };
    if let Err(source) = sys::write_all(channels.pid, &pid.to_ne_bytes()) {
        let _ = sys::kill(pid, libc::SIGKILL);
        fail(channels.report, "report the command's pid", source)
    }
    release_stdio();
    let keep = [
        0,
        1,
        2,
        channels.report,
        channels.launcher_alive,
        children.as_raw_fd(),
    ];
    let _ = sys::close_all_except(&keep);
    watch(pid, &children, plan.marker, channels)
}

/// Becomes the subreaper of the command's orphans, blocks SIGCHLD for a signalfd, and opens
/// the command's terminal. Returns the command's streams and the signalfd.
fn prepare_watch(
    plan: &Plan<'_>,
    command: &command::Plan,
) -> Result<(Stdio, OwnedFd), (&'static str, io::Error)> {
    sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1).map_err(|e| ("become a subreaper", e))?;
    let children = sys::sigset(&[libc::SIGCHLD]);
    sys::set_signal_mask(libc::SIG_BLOCK, &children).map_err(|e| ("block SIGCHLD", e))?;
    let signals = sys::signalfd(&children).map_err(|e| ("watch SIGCHLD", e))?;
    if !plan.spec.tty {
        return Ok((Stdio::Fds(plan.stdio), signals));
    }
    let slave = open_terminal(plan.channels.control, command.user)
        .map_err(|e| ("open a pseudo-terminal", e))?;
    // The slave stays open in the holder until the command has it, then
    // `close_all_except` closes it.
    let slave_fd = slave.as_raw_fd();
    std::mem::forget(slave);
    Ok((Stdio::Terminal(slave_fd), signals))
}

/// Opens a pseudo-terminal in the tree's /dev/pts, gives its slave to `user`, and sends the
/// master to the launcher over `control`. Returns the slave.
pub fn open_terminal(control: RawFd, user: airlock_core::User) -> io::Result<OwnedFd> {
    let (master, slave) = tty::open_pty()?;
    std::os::unix::fs::fchown(&slave, Some(user.uid), Some(user.gid))?;
    control::send(control, b"t", &[master.as_raw_fd()])?;
    Ok(slave)
}

/// Waits for the command's exit or the launcher's, reaping orphans meanwhile.
fn watch(command: libc::pid_t, children: &OwnedFd, marker: &str, channels: Channels) -> ! {
    let watch = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        let mut fds = [watch(children.as_raw_fd()), watch(channels.launcher_alive)];
        if sys::poll(&mut fds, -1).is_err() {
            continue;
        }
        if fds[1].revents != 0 {
            abandon(marker)
        }
        while let Ok(Some(_)) = sys::read_signalfd(children) {}
        while let Ok(Some((pid, status))) = sys::waitpid(-1, libc::WNOHANG) {
            if pid == command {
                finish(status, marker, channels.report)
            }
        }
    }
}

/// Returns the holder's view of its own sandbox.
fn own_sandbox(marker: &str) -> Sandbox<'_> {
    Sandbox {
        namespace: members::mount_namespace(sys::getpid()),
        marker,
    }
}

/// Kills every other process of the sandbox, reaps what it can, and reports the command's
/// wait `status` with the largest resident set of the sandbox's processes.
fn finish(status: libc::c_int, marker: &str, report: RawFd) -> ! {
    // Orphans that died are this subreaper's to reap; waiting for more could block on a
    // process that left the namespace.
    while let Ok(Some(_)) = sys::waitpid(-1, libc::WNOHANG) {}
    // Every process a run's command starts is a descendant of this subreaper, so without a
    // child none is left, and the search of every host process can be skipped.
    if has_children().unwrap_or(true) {
        own_sandbox(marker).kill_all(Some(sys::getpid()));
        while let Ok(Some(_)) = sys::waitpid(-1, libc::WNOHANG) {}
    }
    Report::Usage {
        max_rss: sys::children_max_rss(),
    }
    .send(report);
    let message = if libc::WIFSIGNALED(status) {
        Report::Signaled {
            signal: libc::WTERMSIG(status),
        }
    } else {
        Report::Exited {
            code: libc::WEXITSTATUS(status),
        }
    };
    message.send(report);
    sys::exit_now(0)
}

/// Returns whether this single-threaded process has a child, from the kernel's list of its
/// thread's children. Fails where the kernel does not provide that list.
fn has_children() -> io::Result<bool> {
    let children = std::fs::read_to_string("/proc/thread-self/children")?;
    Ok(!children.trim().is_empty())
}

/// Keeps the sandbox without a command: reports that it is ready, then waits for the
/// launcher's end.
fn hold(channels: Channels, marker: &str) -> ! {
    release_stdio();
    let keep = [0, 1, 2, channels.report, channels.launcher_alive];
    let _ = sys::close_all_except(&keep);
    Report::Ready.send(channels.report);
    // SAFETY: `report` is the holder's end of the report pipe, which nothing else closes.
    unsafe { libc::close(channels.report) };
    sys::release_code_pages();
    let mut fds = [libc::pollfd {
        fd: channels.launcher_alive,
        events: libc::POLLIN,
        revents: 0,
    }];
    while !matches!(sys::poll(&mut fds, -1), Ok(ready) if ready > 0) {}
    abandon(marker)
}

/// Ends a sandbox whose launcher died: kills every other process of the sandbox, then exits.
fn abandon(marker: &str) -> ! {
    own_sandbox(marker).kill_all(Some(sys::getpid()));
    sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
}

fn fail(report: RawFd, step: &str, source: io::Error) -> ! {
    let (step, error) = (step.to_owned(), source.to_string());
    Report::SetupFailed { step, error }.send(report);
    sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
}

/// Points 0, 1 and 2 at the tree's /dev/null, so the holder keeps no end of the caller's
/// streams and the launcher sees end of file once the command's processes are gone.
fn release_stdio() {
    if let Ok(null) = sys::open(Path::new("/dev/null"), libc::O_RDWR) {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
}
