//! The launcher: starts systemd-nspawn for one sandbox, waits until the container's init is
//! ready, and for `run` watches the command with the namespace backend's [`Monitor`].
//!
//! The steps, in order:
//! 1. Check the host, assess the spec, and fail before creating anything if a required
//!    protection cannot be enforced.
//! 2. Open the workspace, create the cgroups and the empty staging directory.
//! 3. Fork a child that joins the cgroups, enters a new mount namespace, assembles the
//!    container's root there ([`stage`]), puts its channels at descriptors 3 to 5 and
//!    executes systemd-nspawn, which runs the Airlock binary as the container's init.
//! 4. Send the init its plan, wait for its ready report, find its host pid, which signals,
//!    the timeout and `airlock exec` go to, and only then let it start the command.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_core::state::ProcessRef;
use airlock_core::{
    Enforcement, Finished, RootFs, RunOptions, SandboxId, Spec, Teardown, WorkspaceMode,
};
use airlock_namespace::cgroup::Cgroup;
use airlock_namespace::launch::{self as shared, RestoreMask, Sandbox};
use airlock_namespace::monitor::Monitor;
use airlock_namespace::report::{Report, ReportReader};
use airlock_namespace::workspace::HostWorkspace;
use airlock_namespace::{control, outcome, stdio, sys};

use crate::cgroups::{self, Cgroups};
use crate::command::{self, Invocation};
use crate::error::Error;
use crate::init::{self, LIVENESS_FD, PLAN_FD, REPORT_FD};
use crate::protections::{self, Host};
use crate::{availability, stage};

/// How long the launcher waits for systemd-nspawn to exit after the container's init died.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// How long the launcher waits for systemd-nspawn to exit by itself when the container's
/// init is unknown, before it kills systemd-nspawn.
const UNLED_EXIT_GRACE: Duration = Duration::from_millis(500);

/// How long the launcher relays systemd-nspawn's last messages after it exited early.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// How long the launcher looks for the container's init after it reported ready.
const LEADER_SEARCH: Duration = Duration::from_secs(2);

/// The search path systemd-nspawn itself runs with.
const NSPAWN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A running container and what the launcher set up around it. Dropping it kills the
/// container, waits for systemd-nspawn to exit, and removes the cgroups and directories.
pub struct Container {
    pub id: SandboxId,
    pub started: Instant,
    /// systemd-nspawn, the launcher's child, whose signals go to the container's init.
    pub nspawn: Sandbox,
    /// The container's init, PID 1 of its namespaces.
    pub leader: Option<ProcessRef>,
    pub enforcement: Enforcement,
    pub landlock_abi: u32,
    pub nproc_fallback: bool,
    pub cgroups: Cgroups,
    pub report: OwnedFd,
    /// Reports read while waiting for the ready report, which belong before later ones.
    pub early_reports: Vec<Report>,
    pub streams: stdio::Plan,
    pub signals: OwnedFd,
    pub restore_mask: RestoreMask,
    /// The write end of the init's liveness pipe: closing it ends the container.
    _liveness: OwnedFd,
    /// The launcher, systemd-nspawn's parent, the one process that can reap it.
    launcher: libc::pid_t,
}

/// Returns the machine name systemd-nspawn registers sandbox `id` under, which is also the
/// container's hostname.
pub fn machine(id: &SandboxId) -> String {
    format!("airlock-{}", id.short())
}

/// The inputs of the child that executes systemd-nspawn, prepared before the fork.
struct Child<'a> {
    parent: libc::pid_t,
    binary: CString,
    arguments: Vec<CString>,
    environment: Vec<CString>,
    cgroups: Vec<OwnedFd>,
    stage: &'a Path,
    sources: stage::Sources<'a>,
    /// Sources of descriptors 0 to 5, in order.
    descriptors: [RawFd; 6],
    /// Whether systemd-nspawn leads a process group of its own.
    own_process_group: bool,
    report: RawFd,
}

fn cstring(value: impl Into<OsString>) -> Result<CString, Error> {
    let value = value.into();
    let text = value.to_string_lossy().into_owned();
    CString::new(value.into_vec()).map_err(|_| airlock_namespace::Error::NulByte(text).into())
}

/// Starts a container for `spec`: with its command, or held for later `exec`s.
pub fn start(spec: &Spec, options: &RunOptions, hold: bool) -> Result<Container, Error> {
    let started = Instant::now();
    shared::ensure_single_threaded()?;
    let binary = availability::check().map_err(Error::Unavailable)?;
    let id = match options.id {
        Some(id) => id,
        None => SandboxId::generate().map_err(Error::Id)?,
    };
    let host = Host::discover();
    let enforcement = protections::assess(spec, &host);
    protections::check_required(&enforcement, spec.allow_weaker)?;
    if let RootFs::Directory(dir) = &spec.rootfs {
        if !dir.join("usr").is_dir() {
            return Err(Error::RootfsWithoutUsr(dir.clone()));
        }
    }
    let (workspace, layers) = open_workspace(spec, options)?;

    // A path rather than /proc/self/exe, which names the file through a mount of this
    // mount namespace, which the child's new namespace cannot bind from.
    let airlock = std::env::current_exe().map_err(Error::Spawn)?;

    // From here on, what is created is removed on failure: the cgroups and the staging
    // directory by their guards, the container by its own drop.
    let cgroups = Cgroups::create(spec, &id)?;
    let nproc_fallback = !cgroups.limits_processes();
    let stage_dir = StageGuard::create(&id)?;
    let plan = init::Plan {
        argv: if hold {
            Vec::new()
        } else {
            spec.command.clone()
        },
        env: spec.environment(|name| std::env::var_os(name)),
        overlay: layers.is_some(),
        landlock: host.landlock_abi > 0,
        pids: spec.limits.pids.value,
        nproc_fallback,
        linger: false,
        terminal: spec.tty && !hold,
    };

    // The child's inputs, prepared before the fork.
    let entry = cgroups.entry()?;
    let root = stage_dir.path.join("root");
    let staged_workspace = stage_dir.path.join("workspace");
    let staged_layers = stage_dir.path.join("layers");
    let invocation = Invocation {
        machine: &machine(&id),
        root: &root,
        workspace: workspace.as_ref().map(|_| staged_workspace.as_path()),
        layers: layers.as_ref().map(|_| staged_layers.as_path()),
        mode: spec.workspace_mode,
        user_namespaces: host.user_namespaces,
        tty: spec.tty && !hold,
        tmp_size: spec.limits.tmp_size,
        nproc: nproc_fallback.then_some(spec.limits.pids.value + 2),
    };
    let mut streams = plan_streams(spec, options, hold)?;
    let null =
        sys::open(Path::new("/dev/null"), libc::O_RDWR | libc::O_CLOEXEC).map_err(Error::Spawn)?;
    let stdio = streams.child_fds.map(|fd| {
        if fd == stdio::SANDBOX_NULL {
            null.as_raw_fd()
        } else {
            fd
        }
    });
    // Without a terminal, the command's streams go to the init over the plan socket.
    // systemd-nspawn keeps the streams it gets until it exits, so it gets /dev/null, and the
    // caller's stderr for its own messages. Otherwise the output would end only at its exit.
    let pass_streams = !spec.tty && !hold;
    let nspawn_stdio = if pass_streams {
        [null.as_raw_fd(), null.as_raw_fd(), libc::STDERR_FILENO]
    } else {
        stdio
    };
    // A socket rather than a pipe, because the first message carries descriptors.
    let (plan_read, plan_write) = control::socketpair().map_err(Error::Spawn)?;
    let (report_read, report_write) = sys::pipe().map_err(Error::Spawn)?;
    let (liveness_read, liveness_write) = sys::pipe().map_err(Error::Spawn)?;
    let (restore_mask, signals) = shared::block_forwarded_signals(false)?;

    let child = Child {
        parent: sys::getpid(),
        binary: cstring(binary.clone())?,
        arguments: nspawn_arguments(&invocation)?,
        environment: nspawn_environment(spec.tty)?,
        cgroups: entry.join,
        stage: &stage_dir.path,
        sources: stage::Sources {
            rootfs: &spec.rootfs,
            workspace: workspace.as_ref().map(HostWorkspace::bind_source),
            layers: layers.as_deref(),
            binary: &airlock,
        },
        descriptors: [
            nspawn_stdio[0],
            nspawn_stdio[1],
            nspawn_stdio[2],
            plan_read.as_raw_fd(),
            report_write.as_raw_fd(),
            liveness_read.as_raw_fd(),
        ],
        report: report_write.as_raw_fd(),
        own_process_group: !spec.tty || hold,
    };
    // The child executes systemd-nspawn; from now on the container's drop cleans up.
    let fork_into = entry.fork_into.as_ref().map(AsRawFd::as_raw_fd);
    let pid = match sys::clone_process(0, fork_into) {
        Ok(0) => exec_nspawn(&child),
        Ok(pid) => pid,
        Err(source) => return Err(Error::Spawn(source)),
    };
    drop((plan_read, report_write, liveness_read, child));
    if !pass_streams {
        streams.child_ends.clear();
    }
    let pidfd = sys::pidfd_of_child(pid).map_err(Error::Spawn)?;
    tracing::info!(sandbox = %id, backend = "nspawn", pid, hold, "sandbox created");
    stage_dir.keep();
    let mut container = Container {
        id,
        started,
        nspawn: Sandbox {
            pid,
            pidfd,
            status: None,
            cgroup: None,
            finished: false,
            group: false,
            signal_target: None,
        },
        leader: None,
        enforcement,
        landlock_abi: host.landlock_abi,
        nproc_fallback,
        cgroups,
        report: report_read,
        early_reports: Vec::new(),
        streams,
        signals,
        restore_mask,
        _liveness: liveness_write,
        launcher: sys::getpid(),
    };
    // These cgroups are created while systemd-nspawn starts the container.
    container.cgroups.create_v1_limits(spec)?;
    container.nspawn.cgroup = container
        .cgroups
        .limits
        .as_ref()
        .map(|limits| Cgroup::view(&limits.describe()));
    // The init joins these cgroups before it starts the command or waits for `exec`.
    let joins = container.cgroups.limit_join_files()?;
    let passed: &[RawFd] = if pass_streams { &stdio } else { &[] };
    let fds: Vec<RawFd> = passed
        .iter()
        .copied()
        .chain(joins.iter().map(AsRawFd::as_raw_fd))
        .collect();
    let header = [init::CGROUPS_MESSAGE, passed.len() as u8];
    control::send(plan_write.as_raw_fd(), &header, &fds).map_err(Error::SendPlan)?;
    // The init has its own copies now, and the launcher's would keep the relays from ending.
    drop(null);
    container.streams.child_ends.clear();
    send_plan(&plan_write, &plan)?;
    drop(plan_write);
    container.wait_until_ready()?;
    Ok(container)
}

/// Opens the workspace, for every mode but `none`, and prepares the overlay's layers.
fn open_workspace(
    spec: &Spec,
    options: &RunOptions,
) -> Result<(Option<HostWorkspace>, Option<PathBuf>), Error> {
    let workspace = spec
        .workspace
        .as_deref()
        .filter(|_| spec.workspace_mode != WorkspaceMode::None)
        .map(|path| HostWorkspace::open(path, true))
        .transpose()
        .map_err(airlock_namespace::Error::Workspace)?;
    let layers = match (spec.workspace_mode, &options.layers, &workspace) {
        (WorkspaceMode::Overlay, Some(layers), Some(_)) => Some(prepare_layers(layers)?),
        (WorkspaceMode::Overlay, None, Some(_)) => return Err(Error::NoLayers),
        _ => None,
    };
    Ok((workspace, layers))
}

/// Plans the streams systemd-nspawn passes to the container: none for a held container, the
/// caller's terminal with `-t`, which systemd-nspawn relays through a pseudo-terminal of the
/// container, and otherwise the namespace backend's plan.
fn plan_streams(spec: &Spec, options: &RunOptions, hold: bool) -> Result<stdio::Plan, Error> {
    if hold {
        return Ok(stdio::Plan::detached());
    }
    if spec.tty {
        return Ok(stdio::Plan {
            child_fds: [0, 1, 2],
            child_ends: Vec::new(),
            pumps: Vec::new(),
            stderr_pump: None,
        });
    }
    let plan = stdio::Plan::new(false, options.track_stderr_line)
        .map_err(airlock_namespace::Error::Stdio)?;
    Ok(plan)
}

/// Builds systemd-nspawn's whole argument list, its name first.
fn nspawn_arguments(invocation: &Invocation<'_>) -> Result<Vec<CString>, Error> {
    std::iter::once(OsString::from("systemd-nspawn"))
        .chain(command::arguments(invocation))
        .map(cstring)
        .collect()
}

/// Builds systemd-nspawn's environment: a search path, and `TERM` for a terminal it relays.
fn nspawn_environment(tty: bool) -> Result<Vec<CString>, Error> {
    let mut environment = vec![cstring(format!("PATH={NSPAWN_PATH}"))?];
    if let Some(term) = std::env::var_os("TERM").filter(|_| tty) {
        let mut assignment = OsString::from("TERM=");
        assignment.push(term);
        environment.push(cstring(assignment)?);
    }
    Ok(environment)
}

/// Creates the overlay's `upper` and `work` directories, owned by root, so that root inside
/// the container is root for them through the `rootidmap` bind.
fn prepare_layers(layers: &Path) -> Result<PathBuf, Error> {
    let failed = |source| Error::Layers {
        path: layers.to_owned(),
        source,
    };
    for dir in [layers.to_owned(), layers.join("upper"), layers.join("work")] {
        match std::fs::symlink_metadata(&dir) {
            Ok(metadata) if metadata.is_dir() && metadata.uid() == 0 => {}
            Ok(metadata) if metadata.is_dir() => {
                std::os::unix::fs::lchown(&dir, Some(0), Some(0)).map_err(failed)?;
            }
            Ok(_) => return Err(failed(io::Error::from_raw_os_error(libc::ENOTDIR))),
            Err(_) => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(failed)?,
        }
    }
    Ok(layers.to_owned())
}

fn send_plan(pipe: &OwnedFd, plan: &init::Plan) -> Result<(), Error> {
    let mut bytes = serde_json::to_vec(plan).expect("plans always serialize");
    bytes.push(b'\n');
    sys::write_all(pipe.as_raw_fd(), &bytes).map_err(Error::SendPlan)
}

type StepResult<T> = Result<T, (String, io::Error)>;

fn step<T>(result: io::Result<T>, name: &str) -> StepResult<T> {
    result.map_err(|source| (name.to_owned(), source))
}

/// Runs as the child: joins the cgroups, assembles the root in a new mount namespace, and
/// executes systemd-nspawn. Never returns, and reports a failed step as an init does.
fn exec_nspawn(child: &Child<'_>) -> ! {
    let mut installed = false;
    let error = match prepare_child(child, &mut installed) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    let report = if installed { REPORT_FD } else { child.report };
    Report::SetupFailed {
        step: error.0,
        error: error.1.to_string(),
    }
    .send(report);
    sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into())
}

/// Prepares the child and executes systemd-nspawn; returns only on failure. Sets
/// `installed` once the report channel is at [`REPORT_FD`].
fn prepare_child(child: &Child<'_>, installed: &mut bool) -> StepResult<std::convert::Infallible> {
    step(
        sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
        "ask to be killed with the launcher",
    )?;
    if sys::getppid() != child.parent {
        sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into());
    }
    step(cgroups::join(&child.cgroups), "join the sandbox's cgroups")?;
    if child.own_process_group {
        // A signal from the terminal, such as SIGINT from Ctrl-C, reaches the launcher's
        // process group, and the launcher forwards it to the container's init. Received by
        // systemd-nspawn itself, it would kill the container instead. With `-t`,
        // systemd-nspawn reads the terminal, so it stays in the terminal's foreground group,
        // and Ctrl-C reaches the container as a byte of its pseudo-terminal.
        // SAFETY: setpgid takes integers only.
        let result = unsafe { libc::setpgid(0, 0) };
        if result == -1 {
            return Err(("start a process group".into(), io::Error::last_os_error()));
        }
    }
    step(sys::unshare(libc::CLONE_NEWNS), "create a mount namespace")?;
    stage::build(child.stage, &child.sources).map_err(|error| (error.step, error.source))?;
    install_descriptors(&child.descriptors)?;
    *installed = true;
    // The variables of socket activation make systemd-nspawn pass descriptors 3 to 5 on to
    // the container's init. LISTEN_PID is this process's pid, which execve keeps.
    let mut environment = child.environment.clone();
    environment.push(CString::new("LISTEN_FDS=3").expect("no NUL byte"));
    environment.push(CString::new(format!("LISTEN_PID={}", sys::getpid())).expect("no NUL byte"));
    let error = sys::execve(&child.binary, &child.arguments, &environment);
    Err(("execute systemd-nspawn".to_owned(), error))
}

// The init finds its channels at these numbers, the order of `Child::descriptors`.
const _: () = assert!(PLAN_FD == 3 && REPORT_FD == 4 && LIVENESS_FD == 5);

/// Puts `sources[n]` at descriptor n for n from 0 to 5 and closes every other descriptor.
/// Each source is first copied above 5, so that no target overwrites a later source.
pub fn install_descriptors(sources: &[RawFd; 6]) -> Result<(), (String, io::Error)> {
    let mut copies = [0; 6];
    for (copy, &source) in copies.iter_mut().zip(sources) {
        // SAFETY: F_DUPFD_CLOEXEC only adds a descriptor to the table.
        let duplicate = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, 10) };
        if duplicate == -1 {
            return Err((
                "copy the container's descriptors".into(),
                io::Error::last_os_error(),
            ));
        }
        *copy = duplicate;
    }
    for (target, &copy) in copies.iter().enumerate() {
        step(
            sys::dup2(copy, target as RawFd),
            "install the container's descriptors",
        )?;
    }
    step(
        sys::close_all_except(&[0, 1, 2, 3, 4, 5]),
        "close inherited descriptors",
    )
}

impl Container {
    /// Waits for the init's ready report and finds the init's host pid.
    fn wait_until_ready(&mut self) -> Result<(), Error> {
        let mut reports = ReportReader::new(self.report.as_raw_fd());
        loop {
            reports.read_available().map_err(Error::Wait)?;
            let mut ready = false;
            for report in reports.take() {
                match report {
                    Report::Ready => ready = true,
                    Report::SetupFailed { step, error } => {
                        self.relay_output(Duration::ZERO);
                        return Err(airlock_namespace::Error::Setup { step, cause: error }.into());
                    }
                    other => self.early_reports.push(other),
                }
            }
            if ready {
                return self.find_leader();
            }
            if let Some(status) = self.nspawn.reap() {
                // systemd-nspawn's messages say why; its streams close once it is gone.
                self.relay_output(OUTPUT_GRACE);
                let status = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                return Err(Error::NspawnExited { status });
            }
            let watch = |fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let mut fds = [watch(reports.fd()), watch(self.nspawn.pidfd.as_raw_fd())];
            // Output waiting in a relay wakes the next round of relaying at once.
            let timeout = if self.relay_output(Duration::ZERO) {
                0
            } else {
                100
            };
            sys::poll(&mut fds, timeout).map_err(Error::Wait)?;
        }
    }

    /// Copies what systemd-nspawn wrote to the relayed output streams before the command
    /// started, which the [`Monitor`] relays afterwards. Waits up to `grace` for writers
    /// to close them. Returns whether anything was copied.
    fn relay_output(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let mut copied = false;
        loop {
            let mut fds = Vec::new();
            let mut owners = Vec::new();
            for (index, pump) in self.streams.pumps.iter().enumerate() {
                if let Some(interest) = pump.interest().filter(|_| !pump.is_input) {
                    fds.push(interest);
                    owners.push(index);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = left.as_millis().min(100) as libc::c_int;
            if fds.is_empty() || !matches!(sys::poll(&mut fds, millis), Ok(1..)) {
                return copied;
            }
            for (pollfd, &index) in fds.iter().zip(&owners) {
                copied |= pollfd.revents != 0;
                self.streams.pumps[index].service(pollfd.revents);
            }
        }
    }

    /// Finds the container's init, which starts the command without waiting for this, so
    /// that a short command may be over, and systemd-nspawn with it, before the search ends:
    /// then there is no init left to find.
    fn find_leader(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + LEADER_SEARCH;
        loop {
            if let Some(leader) = find_leader(self.nspawn.pid) {
                self.leader = Some(leader);
                self.nspawn.signal_target = Some(leader.pid);
                return Ok(());
            }
            if self.nspawn.reap().is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader {
                    nspawn: self.nspawn.pid,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits up to [`EXIT_GRACE`] for systemd-nspawn to exit, then kills it.
    pub fn wait_for_nspawn(&mut self) {
        if !self.nspawn_exits_within(EXIT_GRACE) {
            tracing::warn!(sandbox = %self.id, pid = self.nspawn.pid, "systemd-nspawn did not exit; killing it");
            let _ = sys::kill(self.nspawn.pid, libc::SIGKILL);
            let _ = sys::waitpid(self.nspawn.pid, 0).map(|reaped| {
                self.nspawn.status = reaped.map(|(_, status)| status);
            });
        }
        self.nspawn.status.get_or_insert(0);
    }

    /// Waits up to `grace` for systemd-nspawn to exit and reaps it; returns whether it did.
    /// A copy of the launcher, such as the process that tears the sandbox down after `run`
    /// returned, cannot reap systemd-nspawn, because it is not its parent. There the pidfd
    /// turning readable, which happens at the exit, counts as the end.
    fn nspawn_exits_within(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while self.nspawn.reap().is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [libc::pollfd {
                fd: self.nspawn.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let millis = left.as_millis().clamp(1, 100) as libc::c_int;
            let exited = matches!(sys::poll(&mut fds, millis), Ok(1..));
            if exited && sys::getpid() != self.launcher {
                self.nspawn.status = Some(0);
            }
        }
        true
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // After its final report the init exits by itself, and systemd-nspawn with it.
        let ending = self.nspawn.finished && self.nspawn_exits_within(EXIT_GRACE);
        if self.nspawn.status.is_none() && !ending {
            match self.leader.filter(ProcessRef::is_alive) {
                // Killing the container's PID 1 ends the container, and systemd-nspawn then
                // removes its own cgroups and directories before it exits.
                Some(leader) => {
                    let _ = sys::kill(leader.pid, libc::SIGKILL);
                }
                // Without a known init, as when the init failed, systemd-nspawn exits by
                // itself and is killed only if it does not.
                None if self.nspawn_exits_within(UNLED_EXIT_GRACE) => {}
                None => {
                    let _ = sys::kill(self.nspawn.pid, libc::SIGKILL);
                }
            }
            self.wait_for_nspawn();
        }
        remove_host_leftovers(&self.id);
        tracing::info!(sandbox = %self.id, "sandbox removed");
    }
}

/// Finds the container's init: the process whose pid in its own namespace is 1 and whose
/// parent is systemd-nspawn or a child of it, which clones the container. It looks at those
/// children through the kernel's lists of each thread's children, and searches every process
/// only where the kernel keeps no such list.
fn find_leader(nspawn: libc::pid_t) -> Option<ProcessRef> {
    let Some(children) = children_of(nspawn) else {
        return search_leader(nspawn);
    };
    let grandchildren = children
        .iter()
        .flat_map(|&child| children_of(child).unwrap_or_default());
    children
        .iter()
        .copied()
        .chain(grandchildren)
        .find(|&pid| is_namespace_init(pid))
        .and_then(ProcessRef::of)
}

/// Returns the children of every thread of process `pid`, or `None` where the kernel has no
/// `children` files.
fn children_of(pid: libc::pid_t) -> Option<Vec<libc::pid_t>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        let listed = match std::fs::read_to_string(&path) {
            Ok(listed) => listed,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(_) => continue,
        };
        children.extend(
            listed
                .split_whitespace()
                .filter_map(|pid| pid.parse::<libc::pid_t>().ok()),
        );
    }
    Some(children)
}

/// Returns whether process `pid` is PID 1 of a PID namespace below this one.
fn is_namespace_init(pid: libc::pid_t) -> bool {
    status_field(pid, "NSpid:").is_some_and(|nspid| {
        let levels: Vec<&str> = nspid.split_whitespace().collect();
        levels.len() >= 2 && levels.last() == Some(&"1")
    })
}

/// Finds the container's init by reading the status of every process.
fn search_leader(nspawn: libc::pid_t) -> Option<ProcessRef> {
    let parent_of = |pid: i32| status_field(pid, "PPid:")?.parse::<i32>().ok();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_namespace_init(pid) {
            continue;
        }
        let parent = parent_of(pid);
        if parent == Some(nspawn) || parent.and_then(parent_of) == Some(nspawn) {
            return ProcessRef::of(pid);
        }
    }
    None
}

fn status_field(pid: i32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(name))?;
    Some(line[name.len()..].trim().to_owned())
}

/// Removes what systemd-nspawn of sandbox `id` leaves on the host when it is killed: its
/// mount propagation directory and UID range lock below /run/systemd, and the staging
/// directory. Call only once that systemd-nspawn has exited.
pub fn remove_host_leftovers(id: &SandboxId) {
    let state = Path::new(availability::STATE_DIR);
    for kind in ["propagate", "unix-export"] {
        let dir = state.join(kind).join(machine(id));
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    remove_stale_locks();
    stage::remove(id);
}

/// The directory of systemd-nspawn's UID range locks, one file per range's first UID.
const UID_LOCK_DIR: &str = "/run/systemd/nspawn-uid";

/// Removes the lock files that systemd-nspawn leaves when it is killed and that no process
/// holds: the UID range locks (one file per range's first UID), and the image locks
/// (`inode-DEV:INO`, one per container root, which is a new staging tmpfs for each sandbox).
/// systemd-nspawn holds an open-file-description lock on each while it runs and removes the
/// file at exit. systemd removes its lock files the same way, under the lock, and its lockers
/// check after locking that the file was not removed meanwhile.
fn remove_stale_locks() {
    let image_locks = Path::new(availability::STATE_DIR).join("locks");
    remove_unheld_locks(Path::new(UID_LOCK_DIR), |name| {
        name.iter().all(u8::is_ascii_digit)
    });
    remove_unheld_locks(&image_locks, |name| name.starts_with(b"inode-"));
}

/// Removes the files in `dir` whose names `matches` accepts and on which no process holds a
/// lock.
fn remove_unheld_locks(dir: &Path, matches: impl Fn(&[u8]) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !matches(entry.file_name().as_encoded_bytes()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
            continue;
        };
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        // SAFETY: `lock` is a live flock structure and the descriptor is open for the call.
        let locked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0;
        if locked {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Removes the staging directory unless [`StageGuard::keep`] handed it to a container.
struct StageGuard {
    id: SandboxId,
    path: PathBuf,
    kept: std::cell::Cell<bool>,
}

impl StageGuard {
    fn create(id: &SandboxId) -> Result<StageGuard, Error> {
        let path = stage::create(id).map_err(|source| Error::Stage {
            path: stage::path(id),
            source,
        })?;
        Ok(StageGuard {
            id: *id,
            path,
            kept: std::cell::Cell::new(false),
        })
    }

    fn keep(&self) {
        self.kept.set(true);
    }
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        if !self.kept.get() {
            stage::remove(&self.id);
        }
    }
}

/// Runs `spec` in a new container and waits for it to end.
pub fn run(spec: &Spec, options: RunOptions) -> Result<Finished, Error> {
    let mut container = start(spec, &options, false)?;
    let deadline = spec.limits.timeout.map(|timeout| Instant::now() + timeout);
    let Container {
        nspawn,
        signals,
        streams,
        report,
        ..
    } = &mut container;
    let mut monitor = Monitor::new(
        nspawn,
        signals,
        &mut streams.pumps,
        report.as_raw_fd(),
        deadline,
        None,
    )
    .stop_at_exit();
    let mut ended = monitor.run().map_err(Error::Wait)?;
    // systemd-nspawn killed from outside leaves its container running, with no one to
    // enforce the timeout or relay its output: end it now. While systemd-nspawn runs, the
    // init is exiting on its own after its final report, and killing it would make
    // systemd-nspawn print that the container was terminated by SIGKILL.
    let nspawn_gone = container.nspawn.status.is_some();
    if let Some(leader) = container
        .leader
        .filter(|leader| nspawn_gone && leader.is_alive())
    {
        let _ = sys::kill(leader.pid, libc::SIGKILL);
        let status = container.nspawn.status.unwrap_or(0);
        if libc::WIFSIGNALED(status) {
            return Err(Error::NspawnKilled {
                pid: container.nspawn.pid,
                signal: libc::WTERMSIG(status),
            });
        }
    }
    let stderr_ends_line = container
        .streams
        .stderr_pump
        .is_none_or(|index| container.streams.pumps[index].ends_line());

    // systemd-nspawn removes its own directories and cgroups after the container's init
    // exited, before the rest is removed. Once the init has sent its final report, the
    // teardown waits for that instead, unless systemd-nspawn relays a terminal, whose last
    // output it writes before it exits.
    if !container.nspawn.finished || spec.tty {
        container.wait_for_nspawn();
    }
    let mut reports = std::mem::take(&mut container.early_reports);
    reports.append(&mut ended.reports);
    ended.reports = reports;
    let enforcement = container.enforcement.clone();
    let mut outcome = outcome::build(spec, &container.id, enforcement, ended, container.started)?;
    outcome.backend = "nspawn";
    tracing::info!(
        sandbox = %container.id,
        reason = ?outcome.reason,
        code = ?outcome.exit_code,
        signal = ?outcome.signal,
        "sandbox ended"
    );
    // The cgroups, the staging directory and what systemd-nspawn leaves are removed by
    // whoever drops the container, which need not keep the caller waiting.
    Ok(Finished {
        outcome,
        stderr_ends_line,
        teardown: Teardown::later(container),
    })
}
