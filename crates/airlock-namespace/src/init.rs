//! The sandbox's PID 1. It finishes the sandbox from the inside (file tree, hostname,
//! loopback, cgroup and its namespace), starts the workload, forwards signals to it, reaps
//! orphans, and when the workload exits, kills every process left so nothing outlives the
//! run.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use airlock_core::Spec;

use crate::control::{self, Grant};
use crate::report::Report;
use crate::workload::{self, Stdio};
use crate::workspace::BindSource;
use crate::{rootfs, sys, tty};

/// Signals the launcher forwards to the init, which passes them to the workload.
pub const FORWARDED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The init's half of the launcher's channels, and what it needs to start the workload.
pub struct Plan<'a> {
    pub spec: &'a Spec,
    pub hostname: String,
    pub is_root: bool,
    /// The workspace to bind while building the file tree; `None` when the launcher grants
    /// it as an idmapped mount.
    pub workspace_source: Option<BindSource>,
    /// The directory holding the overlay's upper and work directories, for an overlay
    /// workspace.
    pub layers: Option<&'a std::path::Path>,
    /// Stay as the sandbox's PID 1 without a command, for `airlock exec` to join later.
    pub hold: bool,
    /// Read end of the pipe on which the launcher signals that the ID maps are written.
    pub sync: OwnedFd,
    pub report: OwnedFd,
    /// The control socket, which brings the cgroup grant and takes the pty master out.
    pub control: OwnedFd,
    pub stdio: [RawFd; 3],
    /// The command to start; `None` when the sandbox is held.
    pub workload: Option<&'a workload::Plan>,
}

#[derive(Debug)]
struct StepError {
    step: String,
    source: io::Error,
}

trait Step<T> {
    fn step(self, step: &str) -> Result<T, StepError>;
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, step: &str) -> Result<T, StepError> {
        self.map_err(|source| StepError {
            step: step.to_owned(),
            source,
        })
    }
}

impl From<rootfs::Error> for StepError {
    fn from(error: rootfs::Error) -> Self {
        StepError {
            step: error.step,
            source: error.source,
        }
    }
}

/// The init's state once the sandbox is set up.
struct Ready {
    grant: Grant,
    /// The pty slave, when the spec asks for a terminal.
    terminal: Option<OwnedFd>,
    /// The workspace overlay, whose sources are released when the init exits, after the
    /// command's status is reported.
    overlay: Option<rootfs::Overlay>,
}

/// Runs as PID 1 of the new namespaces; never returns.
pub fn run(plan: Plan<'_>) -> ! {
    let report = plan.report.as_raw_fd();
    match (set_up(&plan), plan.workload) {
        (Ok(ready), Some(workload)) => start_and_supervise(&plan, workload, ready, report),
        (Ok(ready), None) => hold(ready, report, plan.control.as_raw_fd()),
        (Err(error), _) => fail(report, &error.step, error.source),
    }
}

/// Sets up the sandbox from the inside. The file tree is built while the launcher creates
/// the cgroup, which the init joins afterwards.
fn set_up(plan: &Plan<'_>) -> Result<Ready, StepError> {
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .step("ask to be killed with the launcher")?;
    close_launcher_descriptors(plan).step("close the launcher's descriptors")?;
    sys::setsid().step("start a new session")?;
    wait_for_launcher(plan.sync.as_raw_fd())?;
    let layers = plan.layers.map(rootfs::open_layers).transpose()?;
    become_root_inside(plan.is_root)?;
    // With layers, the workspace is an overlay over the project, which a helper mounts while
    // the tree is built. Without, the project is bound as it is.
    let mut overlay = match (layers, &plan.workspace_source) {
        (Some(layers), Some(source)) => Some(rootfs::start_overlay(source, layers)?),
        _ => None,
    };
    let bound = plan.workspace_source.as_ref().filter(|_| overlay.is_none());
    rootfs::build(plan.spec, bound)?;
    sys::sethostname(&plan.hostname).step("set the hostname")?;
    bring_up_loopback().step("bring up the loopback interface")?;
    let control = plan.control.as_raw_fd();
    let Some(grant) = Grant::recv(control).step("receive the cgroup")? else {
        // The launcher closed the socket: it failed after starting the init.
        sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
    };
    if let Some(tree) = &grant.workspace {
        rootfs::attach_workspace(tree)?;
    }
    if let Some(overlay) = &mut overlay {
        overlay.attach()?;
    }
    rootfs::finish_workspace(plan.spec.workspace_mode)?;
    rootfs::enter_workspace()?;
    grant.join().step("join the sandbox's cgroup")?;
    sys::unshare(libc::CLONE_NEWCGROUP).step("create the cgroup namespace")?;
    let terminal = if plan.spec.tty {
        let (master, slave) = tty::open_pty().step("open a pseudo-terminal")?;
        control::send(control, b"t", &[master.as_raw_fd()]).step("pass the pseudo-terminal out")?;
        Some(slave)
    } else {
        None
    };
    Ok(Ready {
        grant,
        terminal,
        overlay,
    })
}

/// Closes the launcher's descriptors, which the clone copied: the caller's end of a relay
/// pipe held open here would keep its reader in the sandbox from ever seeing end of file.
fn close_launcher_descriptors(plan: &Plan<'_>) -> io::Result<()> {
    let channels = [&plan.sync, &plan.report, &plan.control].map(AsRawFd::as_raw_fd);
    let keep: Vec<RawFd> = [0, 1, 2]
        .into_iter()
        .chain(channels)
        .chain(plan.stdio)
        .collect();
    sys::close_all_except(&keep)
}

/// Takes uid and gid 0 of the sandbox's user namespace, which the launcher mapped to an
/// unprivileged host identity. The clone kept the caller's host ids, which for root are
/// unmapped here. Changing ids clears the parent-death signal, so it is set again.
fn become_root_inside(is_root: bool) -> Result<(), StepError> {
    if is_root {
        sys::setgroups_empty().step("clear supplementary groups")?;
    }
    sys::become_id(0).step("become root in the user namespace")?;
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .step("ask to be killed with the launcher")
}

/// Blocks until the launcher has written the ID maps.
/// End of file means the launcher is gone, so the sandbox ends before it starts.
fn wait_for_launcher(sync: RawFd) -> Result<(), StepError> {
    let mut byte = [0u8; 1];
    match sys::read(sync, &mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into()),
        Err(error) => Err(error).step("wait for the launcher"),
    }
}

/// Brings the network namespace's `lo` up, the only interface a sandbox has.
pub fn bring_up_loopback() -> io::Result<()> {
    #[repr(C)]
    struct InterfaceFlags {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        padding: [u8; 22],
    }
    // SAFETY: socket takes integers and returns a new descriptor or -1.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is fresh, so this is its only owner.
    let socket: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(socket) };
    let mut request = InterfaceFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        padding: [0; 22],
    };
    request.name[..2].copy_from_slice(b"lo");
    request.flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`, whose layout InterfaceFlags matches: a
    // 16-byte name, then the flags at the start of a 24-byte union.
    let result = unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS as libc::Ioctl,
            &request,
        )
    };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn start_and_supervise(
    plan: &Plan<'_>,
    workload: &workload::Plan,
    ready: Ready,
    report: RawFd,
) -> ! {
    let stdio = match &ready.terminal {
        Some(slave) => Stdio::Terminal(slave.as_raw_fd()),
        None => Stdio::Fds(plan.stdio),
    };
    let mut supervised = sys::sigset(&FORWARDED_SIGNALS);
    // SAFETY: `supervised` is an initialized signal set.
    unsafe { libc::sigaddset(&mut supervised, libc::SIGCHLD) };
    if let Err(source) = sys::set_signal_mask(libc::SIG_BLOCK, &supervised) {
        fail(report, "block signals", source);
    }
    let start = WorkloadStart {
        plan: workload,
        stdio: &stdio,
        report,
        nproc_fallback: !ready.grant.limits_pids,
    };
    let mut stack = match sys::Stack::new(WORKLOAD_STACK_SIZE) {
        Ok(stack) => stack,
        Err(source) => fail(report, "map the workload's stack", source),
    };
    let arg = &start as *const WorkloadStart<'_> as *mut libc::c_void;
    // SAFETY: the init is single-threaded; `workload_entry` ends in execve or exit_now; and
    // `start` and `stack` outlive the child, because this call returns only once the child
    // has executed the command or exited.
    let spawned = unsafe { sys::spawn_shared(workload_entry, &mut stack, arg) };
    let workload_pid = match spawned {
        Ok(pid) => pid,
        Err(source) => fail(report, "start the workload", source),
    };
    // The workload has its own copies now. Closing the init's copies, and the terminal's
    // slave, lets the launcher see end of file once the workload's processes are gone,
    // without waiting for the kernel to tear down the init's namespaces.
    release_stdio(&plan.stdio);
    drop(ready.terminal);
    let _released_at_exit = ready.overlay;
    // The init keeps no privilege the workload could borrow: no capabilities, and not
    // dumpable, so /proc/1/mem and ptrace are closed to it.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    let _ = sys::clear_capabilities();
    supervise(workload_pid, &supervised, report, &ready.grant)
}

/// Keeps the sandbox alive without a command: reports that it is ready, then reaps the
/// processes that `airlock exec` starts in it once they are orphaned. Its parent ends it
/// with SIGKILL, which takes every process of the sandbox with it.
fn hold(ready: Ready, report: RawFd, control: RawFd) -> ! {
    let children = sys::sigset(&[libc::SIGCHLD]);
    if let Err(source) = sys::set_signal_mask(libc::SIG_BLOCK, &children) {
        fail(report, "block signals", source);
    }
    drop(ready.terminal);
    drop(ready.overlay);
    release_stdio(&[]);
    if let Err(source) = send_namespaces(control) {
        fail(report, "pass the sandbox's namespaces out", source);
    }
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    let _ = sys::clear_capabilities();
    Report::Ready.send(report);
    // SAFETY: `report` is the init's end of the report pipe, which nothing else closes.
    unsafe { libc::close(report) };
    drop(ready.grant);
    sys::release_code_pages();
    loop {
        if sys::sigwait(&children).is_err() {
            continue;
        }
        while let Ok(Some(_)) = sys::waitpid(-1, libc::WNOHANG) {}
    }
}

/// The namespaces a joining process enters, in the order it enters them: the user namespace
/// first, which gives it the capabilities the others need.
pub const JOINED_NAMESPACES: [(&str, libc::c_int); 7] = [
    ("user", libc::CLONE_NEWUSER),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("cgroup", libc::CLONE_NEWCGROUP),
];

/// Sends descriptors of this process's namespaces to the launcher, which keeps them for
/// `airlock exec`: once the init is not dumpable, an unprivileged caller could not open them
/// through /proc.
fn send_namespaces(control: RawFd) -> io::Result<()> {
    let mut fds = Vec::new();
    for (name, _) in JOINED_NAMESPACES {
        let path = format!("/proc/self/ns/{name}");
        fds.push(sys::open(std::path::Path::new(&path), libc::O_RDONLY)?);
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    control::send(control, b"n", &raw)
}

/// Stack of the workload until it executes the command: its setup needs far less.
const WORKLOAD_STACK_SIZE: usize = 1 << 20;

/// The arguments the workload process starts with.
struct WorkloadStart<'a> {
    plan: &'a workload::Plan,
    stdio: &'a Stdio,
    report: RawFd,
    nproc_fallback: bool,
}

extern "C" fn workload_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the WorkloadStart on the init's stack, which stays in place
    // while the init is suspended for this child.
    let start = unsafe { &*(arg as *const WorkloadStart<'_>) };
    workload::run(start.plan, start.stdio, start.report, start.nproc_fallback)
}

fn fail(report: RawFd, step: &str, source: io::Error) -> ! {
    let (step, error) = (step.to_owned(), source.to_string());
    Report::SetupFailed { step, error }.send(report);
    sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
}

/// Points 0, 1 and 2 at /dev/null and closes `streams` above them, so the init keeps no end
/// of the caller's streams and the launcher reads end of file once the workload's processes
/// are gone.
fn release_stdio(streams: &[RawFd]) {
    if let Ok(null) = sys::open(std::path::Path::new("/dev/null"), libc::O_RDWR) {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    for (index, &fd) in streams.iter().enumerate() {
        // The same descriptor may stand for two streams, as when stdout and stderr share a
        // pipe, and it is closed once.
        if fd > 2 && !streams[..index].contains(&fd) {
            // SAFETY: the init owns these inherited descriptors and uses them only to start
            // the workload, which has already executed or exited.
            unsafe { libc::close(fd) };
        }
    }
}

fn supervise(workload: libc::pid_t, signals: &libc::sigset_t, report: RawFd, grant: &Grant) -> ! {
    loop {
        let signal = match sys::sigwait(signals) {
            Ok(signal) => signal,
            Err(_) => continue,
        };
        if signal != libc::SIGCHLD {
            // The workload leads its own process group, which a signal from a terminal would
            // reach as a whole, as in `sh -c 'sleep 8'`.
            if sys::kill(-workload, signal).is_err() {
                let _ = sys::kill(workload, signal);
            }
            continue;
        }
        while let Ok(Some((pid, status))) = sys::waitpid(-1, libc::WNOHANG) {
            if pid == workload {
                finish(status, report, grant);
            }
        }
    }
}

/// Kills everything left in the sandbox, reaps it, leaves the cgroup so the launcher can
/// remove it at once, and reports the workload's peak memory and status.
fn finish(status: libc::c_int, report: RawFd, grant: &Grant) -> ! {
    let _ = sys::kill(-1, libc::SIGKILL);
    while sys::waitpid(-1, 0).is_ok() {}
    let usage = Report::Usage {
        max_rss: sys::children_max_rss(),
    };
    // A failure only delays the removal: the launcher then waits for this process to exit.
    let _ = grant.leave();
    let status = if libc::WIFSIGNALED(status) {
        Report::Signaled {
            signal: libc::WTERMSIG(status),
        }
    } else {
        Report::Exited {
            code: libc::WEXITSTATUS(status),
        }
    };
    Report::send_all(&[usage, status], report);
    sys::exit_now(0)
}
