//! The launcher: the caller's side of a run. It prepares everything that can fail before the
//! sandbox exists, starts the init in new namespaces, finishes the outside setup (ID maps,
//! cgroup) while the init builds the file tree, then hands over to the [`Monitor`] until the
//! init exits.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_core::state::RootAttributes;
use airlock_core::{Enforcement, Finished, RunOptions, SandboxId, Spec, WorkspaceMode};

use crate::cgroup::{Cgroup, Controller, Layout};
use crate::control::{self, Grant};
use crate::error::Error;
use crate::monitor::{Ended, Monitor};
use crate::outcome;
use crate::userns::Identity;
use crate::workspace::HostWorkspace;
use crate::{init, landlock, protections, rootfs, seccomp, stdio, sys, tty, userns, workload};

const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC;

/// The init process and the sandbox's cgroup. Dropping it before the init has exited kills
/// the init, which takes every process of the sandbox with it, and then removes the cgroup.
pub struct Sandbox {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub status: Option<libc::c_int>,
    pub cgroup: Option<Cgroup>,
    /// Set once the init has killed and reaped every other process of the sandbox and left
    /// its cgroup, so that only the kernel's teardown of its namespaces remains.
    pub finished: bool,
    /// Whether signals go to the process group that `pid` leads rather than to `pid`
    /// alone: true for a command joined to a held sandbox, whose init stays.
    pub group: bool,
    /// The process that signals go to when it is not `pid`: the command a joiner started.
    pub signal_target: Option<libc::pid_t>,
}

impl Sandbox {
    /// Sends `signal` to the init, or to the joined command's process group.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.signal_target.unwrap_or(self.pid);
        let target = if self.group { -pid } else { pid };
        if sys::kill(target, signal).is_err() && self.group {
            let _ = sys::kill(pid, signal);
        }
    }

    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Reaps the init if it has exited; returns its wait status once it has.
    pub fn reap(&mut self) -> Option<libc::c_int> {
        if self.status.is_none() {
            if let Ok(Some((_, status))) = sys::waitpid(self.pid, libc::WNOHANG) {
                self.status = Some(status);
            }
        }
        self.status
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // NOTE: a finished init is left to exit on its own, as bubblewrap leaves its PID 1,
        // because the kernel's teardown of its namespaces takes about half a millisecond. The
        // CLI exits right after, so the init's new parent reaps it. A long-lived caller would
        // have to reap it itself.
        if self.status.is_none() && !self.finished {
            self.kill();
            let _ = sys::waitpid(self.pid, 0);
        }
    }
}

/// The launcher's caller, the host identity of root inside the sandbox, and the workspace.
struct Caller {
    is_root: bool,
    identity: Identity,
    workspace: Option<HostWorkspace>,
}

/// The launcher's ends of the channels to the init.
pub(crate) struct Channels {
    pub sync: OwnedFd,
    pub report: OwnedFd,
    pub control: OwnedFd,
}

/// The init's ends of the channels, moved into it by the clone.
struct InitChannels {
    sync: OwnedFd,
    report: OwnedFd,
    control: OwnedFd,
}

fn channels() -> Result<(Channels, InitChannels), Error> {
    let (sync_read, sync_write) = sys::pipe().map_err(Error::Channel)?;
    let (report_read, report_write) = sys::pipe().map_err(Error::Channel)?;
    let (control_outside, control_inside) = control::socketpair().map_err(Error::Channel)?;
    let launcher = Channels {
        sync: sync_write,
        report: report_read,
        control: control_outside,
    };
    let init = InitChannels {
        sync: sync_read,
        report: report_write,
        control: control_inside,
    };
    Ok((launcher, init))
}

/// Checks that this process has one thread, so that cloning it is safe.
pub fn ensure_single_threaded() -> Result<(), Error> {
    let threads = sys::thread_count().unwrap_or(1);
    if threads > 1 {
        return Err(Error::MultiThreaded { threads });
    }
    Ok(())
}

fn to_cstrings<'a>(values: impl Iterator<Item = &'a OsStr>) -> Result<Vec<CString>, Error> {
    values
        .map(|value| {
            CString::new(value.as_bytes())
                .map_err(|_| Error::NulByte(value.to_string_lossy().into_owned()))
        })
        .collect()
}

pub(crate) fn workload_plan(spec: &Spec, landlock_abi: u32) -> Result<workload::Plan, Error> {
    let env = spec.environment(|name| std::env::var_os(name));
    let path = env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| workload::search_path(value.as_bytes()))
        .unwrap_or_default();
    let env_pairs: Vec<Vec<u8>> = env
        .iter()
        .map(|(key, value)| [key.as_bytes(), b"=", value.as_bytes()].concat())
        .collect();
    Ok(workload::Plan {
        argv: to_cstrings(spec.command.iter().map(|arg| arg.as_os_str()))?,
        env: to_cstrings(env_pairs.iter().map(|pair| OsStr::from_bytes(pair)))?,
        path,
        seccomp: seccomp::build(),
        landlock: landlock_abi > 0,
        pids: spec.limits.pids.value,
    })
}

/// Creates the sandbox's cgroup with the spec's limits, if this host gives the caller one.
fn create_cgroup(
    spec: &Spec,
    id: &SandboxId,
    caller: &Caller,
    layout: Option<&Layout>,
) -> Result<Option<Cgroup>, Error> {
    let Some(layout) = layout else {
        return Ok(None);
    };
    let mut controllers = vec![Controller::Memory, Controller::Pids];
    if spec.limits.cpus.value.is_some() {
        controllers.push(Controller::Cpu);
    }
    let name = format!("airlock-{}", id.short());
    let created = Cgroup::create(layout, &name, caller.is_root, &controllers);
    let Some(cgroup) = created.map_err(Error::Cgroup)? else {
        return Ok(None);
    };
    cgroup
        .set_memory(spec.limits.memory.value)
        .map_err(Error::Cgroup)?;
    cgroup
        .set_pids(spec.limits.pids.value + 1)
        .map_err(Error::Cgroup)?;
    if let Some(cpus) = spec.limits.cpus.value {
        cgroup.set_cpus(cpus).map_err(Error::Cgroup)?;
    }
    Ok(Some(cgroup))
}

fn check_required(enforcement: &Enforcement, allow_weaker: bool) -> Result<(), Error> {
    enforcement
        .check_required(allow_weaker)
        .map_err(|unmet| Error::WeakerThanRequired { unmet })
}

/// The leftovers of a finished sandbox: its init, still tearing down its namespaces, the
/// cgroup it has left, and the launcher's signal mask, which stays blocked until the cgroup
/// is removed. Fields drop in order, so dropping it waits for the init's exit, removes the
/// cgroup, then restores the mask.
struct Leftovers {
    _init: ExitingInit,
    _cgroup: Option<Cgroup>,
    _restore_mask: Option<RestoreMask>,
}

/// An init that has sent its final report and is exiting. Dropping it waits for the exit,
/// at most [`INIT_EXIT_WAIT`]: the exit unmounts the sandbox's overlay, whose layers the
/// caller may hand to the next sandbox once the teardown has run.
struct ExitingInit {
    pidfd: OwnedFd,
}

/// How long the teardown waits for a finished init to exit, which takes about a millisecond.
const INIT_EXIT_WAIT: Duration = Duration::from_secs(10);

impl Drop for ExitingInit {
    fn drop(&mut self) {
        let deadline = Instant::now() + INIT_EXIT_WAIT;
        loop {
            let mut fds = [libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = left.as_millis().min(1000) as libc::c_int;
            match sys::poll(&mut fds, millis) {
                Ok(0) if !left.is_zero() => continue,
                _ => break,
            }
        }
    }
}

/// Restores the launcher's signal mask when dropped.
pub struct RestoreMask(libc::sigset_t);

impl Drop for RestoreMask {
    fn drop(&mut self) {
        let _ = sys::set_signal_mask(libc::SIG_SETMASK, &self.0);
    }
}

/// Blocks the signals the launcher forwards and returns a signalfd that receives them.
pub fn block_forwarded_signals(tty: bool) -> Result<(RestoreMask, OwnedFd), Error> {
    let mut forwarded = init::FORWARDED_SIGNALS.to_vec();
    if tty {
        forwarded.push(libc::SIGWINCH);
    }
    let forwarded = sys::sigset(&forwarded);
    let old_mask = sys::set_signal_mask(libc::SIG_BLOCK, &forwarded).map_err(Error::Signals)?;
    let restore = RestoreMask(old_mask);
    let signals = sys::signalfd(&forwarded).map_err(Error::Signals)?;
    Ok((restore, signals))
}

/// The init's inputs besides the spec.
struct InitStart<'a> {
    layers: Option<&'a Path>,
    hold: bool,
    workload: Option<&'a workload::Plan>,
    stdio: [libc::c_int; 3],
}

/// Starts the init in new namespaces, in `cgroup` already where it is a v2 group.
fn start_init(
    spec: &Spec,
    id: &SandboxId,
    caller: &Caller,
    cgroup: Option<Cgroup>,
    init_channels: InitChannels,
    start: InitStart<'_>,
) -> Result<Sandbox, Error> {
    let cgroup_dir = match &cgroup {
        Some(cgroup) if cgroup.is_v2() => Some(cgroup.open_dir().map_err(Error::Cgroup)?),
        _ => None,
    };
    // A root caller's launcher mounts the overlay over an idmapped workspace itself
    // (`outside_overlay`), so the init neither binds the project nor opens the layers.
    let outside_overlay = takes_outside_overlay(caller, start.layers);
    let pid = match sys::clone_process(NAMESPACES, cgroup_dir.as_ref().map(AsRawFd::as_raw_fd)) {
        Ok(0) => init::run(init::Plan {
            spec,
            hostname: format!("airlock-{}", id.short()),
            is_root: caller.is_root,
            workspace_source: caller
                .workspace
                .as_ref()
                .filter(|_| !caller.identity.idmap_workspace && !outside_overlay)
                .map(HostWorkspace::bind_source),
            layers: start.layers.filter(|_| !outside_overlay),
            hold: start.hold,
            sync: init_channels.sync,
            report: init_channels.report,
            control: init_channels.control,
            stdio: start.stdio,
            workload: start.workload,
        }),
        Ok(pid) => pid,
        Err(source) => {
            let errno = source.raw_os_error().unwrap_or(0);
            return Err(match userns::diagnose(errno, caller.is_root) {
                Some(disabled) => Error::UserNamespace(disabled),
                None => Error::Clone(source),
            });
        }
    };
    let pidfd = sys::pidfd_of_child(pid).map_err(Error::Wait)?;
    Ok(Sandbox {
        pid,
        pidfd,
        status: None,
        cgroup,
        finished: false,
        group: false,
        signal_target: None,
    })
}

/// Finishes the setup from the outside while the init builds the file tree: the ID maps, the
/// workspace mount, a v1 cgroup, the check of required protections, and the grant of the
/// cgroup to the init. Returns what the sandbox enforces, and whether the process limit
/// falls back to RLIMIT_NPROC.
#[allow(clippy::too_many_arguments)]
fn finish_outside_setup(
    spec: &Spec,
    id: &SandboxId,
    caller: &Caller,
    layers: Option<&Path>,
    layout: Option<&Layout>,
    landlock_abi: u32,
    sandbox: &mut Sandbox,
    channels: &Channels,
) -> Result<(Enforcement, bool), Error> {
    userns::write_maps(sandbox.pid, caller.identity, caller.is_root)
        .map_err(Error::UserNamespace)?;
    sys::write_all(channels.sync.as_raw_fd(), b"1").map_err(Error::Channel)?;
    let workspace = match (&caller.workspace, layers) {
        (Some(workspace), Some(layers)) if takes_outside_overlay(caller, Some(layers)) => {
            Some(outside_overlay(workspace, sandbox.pid, layers)?)
        }
        (Some(workspace), _) if caller.identity.idmap_workspace => {
            Some(idmapped_workspace(workspace, sandbox.pid)?)
        }
        _ => None,
    };
    if !layout.is_some_and(Layout::is_v2) {
        sandbox.cgroup = create_cgroup(spec, id, caller, layout)?;
    }
    let assessment =
        protections::assess(spec, sandbox.cgroup.as_ref(), landlock_abi, caller.is_root);
    check_required(&assessment.enforcement, spec.allow_weaker)?;
    let limits_pids = assessment.nproc_rlimit.is_none();
    let mut grant = match &sandbox.cgroup {
        Some(cgroup) if !cgroup.is_v2() => cgroup.grant(limits_pids).map_err(Error::Cgroup)?,
        _ => Grant {
            limits_pids,
            ..Grant::default()
        },
    };
    grant.workspace = workspace;
    grant
        .send(channels.control.as_raw_fd())
        .map_err(Error::Channel)?;
    Ok((assessment.enforcement, !limits_pids))
}

/// Returns the error an init reported before it exited, for a launcher whose channel to it
/// broke.
fn init_failure(sandbox: &mut Sandbox, channels: &Channels) -> Option<Error> {
    let _ = sys::waitpid(sandbox.pid, 0).map(|reaped| {
        sandbox.status = reaped.map(|(_, status)| status);
    });
    let mut reports = crate::report::ReportReader::new(channels.report.as_raw_fd());
    reports.read_available().ok()?;
    reports.take().into_iter().find_map(|report| match report {
        crate::report::Report::SetupFailed { step, error } => {
            Some(Error::Setup { step, cause: error })
        }
        _ => None,
    })
}

/// Makes the workspace a detached mount whose owners are mapped through the sandbox's user
/// namespace: host root's files belong to root inside, and what root inside writes belongs
/// to host root, while the sandbox's processes run as [`userns::UNUSED_HOST_ID`].
fn idmapped_workspace(workspace: &HostWorkspace, init: libc::pid_t) -> Result<OwnedFd, Error> {
    let failed = |source| Error::IdmapWorkspace {
        path: workspace.path.clone(),
        source,
    };
    let tree = sys::open_tree_clone(workspace.fd.as_raw_fd()).map_err(failed)?;
    let userns_path = PathBuf::from(format!("/proc/{init}/ns/user"));
    let userns = sys::open(&userns_path, libc::O_RDONLY).map_err(failed)?;
    let attributes = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    sys::mount_setattr_tree(tree.as_raw_fd(), attributes, Some(userns.as_raw_fd()))
        .map_err(failed)?;
    Ok(tree)
}

/// Returns whether the launcher mounts the workspace overlay itself: for a root caller
/// whose workspace is idmapped. Overlayfs copies a file up with its mounter's credentials.
/// So a mount by host root over a plain workspace would copy files that the sandbox may not
/// read (another user's, mode 0600) into the upper layer, and `apply` would hand them to
/// the project's owner. Through the idmapped workspace, a file whose owner the sandbox's
/// user namespace does not map cannot be copied up (EOVERFLOW), whoever mounts.
fn takes_outside_overlay(caller: &Caller, layers: Option<&Path>) -> bool {
    caller.is_root && caller.identity.idmap_workspace && layers.is_some()
}

/// Mounts the workspace's copy-on-write overlay over the idmapped workspace, while the init
/// builds the rest of the tree. Files in the upper layer keep the owners that a mount inside
/// would give them, and the markers stay user.* attributes. Only the whiteouts belong to
/// host root, which the diff ignores.
fn outside_overlay(
    workspace: &HostWorkspace,
    init: libc::pid_t,
    layers: &Path,
) -> Result<OwnedFd, Error> {
    let through = |fd: &OwnedFd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let lower = idmapped_workspace(workspace, init)?;
    let failed = |source| Error::Overlay {
        path: layers.to_owned(),
        source,
    };
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let layers_dir = sys::open(layers, flags).map_err(failed)?;
    rootfs::detached_overlay(&through(&lower), &through(&layers_dir)).map_err(failed)
}

/// A sandbox whose init has started, with what the launcher set up around it.
pub(crate) struct Launched {
    pub id: SandboxId,
    pub started: Instant,
    pub sandbox: Sandbox,
    pub enforcement: Enforcement,
    pub channels: Channels,
    pub streams: stdio::Plan,
    pub signals: OwnedFd,
    pub restore_mask: RestoreMask,
    pub is_root: bool,
    pub landlock_abi: u32,
    /// Whether the process limit falls back to RLIMIT_NPROC, for lack of a pids cgroup.
    pub nproc_fallback: bool,
    /// Inode of the sandbox's PID namespace, read before the init changes its ids and
    /// stops being inspectable.
    pub pid_namespace: Option<u64>,
}

/// Creates the overlay's upper and work directories in `layers`, owned by the host user that
/// root inside the sandbox maps to, so the init can mount the overlay in its namespace.
fn prepare_layers(layers: &Path, caller: &Caller) -> Result<(), Error> {
    let failed = |source| Error::Layers {
        path: layers.to_owned(),
        source,
    };
    let Identity { uid, gid, .. } = caller.identity;
    let upper = layers.join("upper");
    for dir in [layers.to_owned(), upper.clone(), layers.join("work")] {
        // A reused directory usually has the right owner already, and a chown to the same
        // owner would still cost a journaled metadata change.
        let metadata = match std::fs::symlink_metadata(&dir) {
            Ok(metadata) if metadata.is_dir() => Some(metadata),
            Ok(_) => return Err(failed(std::io::Error::from_raw_os_error(libc::ENOTDIR))),
            Err(_) => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(failed)?;
                None
            }
        };
        let owner = metadata
            .as_ref()
            .map(|metadata| (metadata.uid(), metadata.gid()));
        if caller.is_root && owner != Some((uid, gid)) {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(gid)).map_err(failed)?;
        }
        // The upper layer's root is /workspace in the sandbox, which shows its attributes
        // rather than the project's. A spare directory usually has the project's already,
        // from the clean-up after the last run of the same project.
        if let (true, Some(project)) = (dir == upper, &caller.workspace) {
            let current = metadata.as_ref().map(RootAttributes::of);
            project.attributes.apply_to(&dir, current).map_err(failed)?;
        }
    }
    clear_kernel_work_dir(&layers.join("work").join("work")).map_err(failed)
}

/// Removes the directory overlayfs keeps its temporary files in, left by an earlier mount of
/// the same layers. A volatile mount leaves a marker there (`incompat/volatile`) that makes
/// the next mount fail, and the kernel recreates the directory anyway. The kernel makes its
/// directories with mode 000, so each is opened up before it is emptied.
fn clear_kernel_work_dir(dir: &Path) -> std::io::Result<()> {
    let metadata = match std::fs::symlink_metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.is_dir() {
        return std::fs::remove_file(dir);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        clear_kernel_work_dir(&entry?.path())?;
    }
    std::fs::remove_dir(dir)
}

/// Starts a sandbox for `spec`: with its command, or held empty for later `exec`s.
pub(crate) fn launch(spec: &Spec, options: &RunOptions, hold: bool) -> Result<Launched, Error> {
    let started = Instant::now();
    ensure_single_threaded()?;
    let id = match options.id {
        Some(id) => id,
        None => SandboxId::generate().map_err(Error::Id)?,
    };
    let (uid, gid) = (sys::geteuid(), sys::getegid());
    let workspace = spec
        .workspace
        .as_deref()
        .filter(|_| spec.workspace_mode != WorkspaceMode::None)
        .map(|path| HostWorkspace::open(path, uid == 0))
        .transpose()
        .map_err(Error::Workspace)?;
    let owner = workspace
        .as_ref()
        .map(|workspace| (workspace.owner_uid, workspace.owner_gid));
    let caller = Caller {
        is_root: uid == 0,
        identity: userns::identity(uid, gid, owner),
        workspace,
    };
    let layers = match (spec.workspace_mode, &options.layers) {
        (WorkspaceMode::Overlay, Some(layers)) if caller.workspace.is_some() => {
            Some(layers.as_path())
        }
        (WorkspaceMode::Overlay, None) if caller.workspace.is_some() => {
            return Err(Error::NoLayers)
        }
        _ => None,
    };
    let landlock_abi = landlock::effective_abi();
    let workload = if hold {
        None
    } else {
        Some(workload_plan(spec, landlock_abi)?)
    };
    let mut streams = if hold {
        stdio::Plan::detached()
    } else {
        stdio::Plan::new(spec.tty, options.track_stderr_line).map_err(Error::Stdio)?
    };
    let (channels, init_channels) = channels()?;
    let (restore_mask, signals) = block_forwarded_signals(spec.tty && !hold)?;

    // NOTE: the init dies with the launcher (PR_SET_PDEATHSIG), so a killed launcher leaves no
    // process behind, but its empty cgroup directory stays until a later run, a minute on,
    // removes it.
    // A v2 group must exist before the clone, which starts the init inside it. A v1 group is
    // created after it, while the init builds the file tree.
    let layout = Layout::discover(caller.is_root);
    let cgroup_v2 = layout.as_ref().is_some_and(Layout::is_v2);
    let early_cgroup = if cgroup_v2 {
        create_cgroup(spec, &id, &caller, layout.as_ref())?
    } else {
        None
    };
    let init_plan = InitStart {
        layers,
        hold,
        workload: workload.as_ref(),
        stdio: streams.child_fds,
    };
    let mut sandbox = start_init(spec, &id, &caller, early_cgroup, init_channels, init_plan)?;
    streams.child_ends.clear();
    tracing::info!(sandbox = %id, backend = "namespace", pid = sandbox.pid, hold, "sandbox created");
    // The init waits for the ID maps before it changes ids, so it can still be inspected.
    let pid_namespace = hold
        .then(|| std::fs::metadata(format!("/proc/{}/ns/pid", sandbox.pid)).ok())
        .flatten()
        .map(|metadata| std::os::unix::fs::MetadataExt::ino(&metadata));

    // The init opens the layers only after the ID maps are written, so they are made here,
    // once the clone has shown that user namespaces work.
    if let Some(layers) = layers {
        prepare_layers(layers, &caller)?;
    }
    let (enforcement, nproc_fallback) = finish_outside_setup(
        spec,
        &id,
        &caller,
        layers,
        layout.as_ref(),
        landlock_abi,
        &mut sandbox,
        &channels,
    )
    .map_err(|error| match error {
        Error::Channel(_) => init_failure(&mut sandbox, &channels).unwrap_or(error),
        error => error,
    })?;
    Ok(Launched {
        id,
        started,
        sandbox,
        enforcement,
        channels,
        streams,
        signals,
        restore_mask,
        is_root: caller.is_root,
        landlock_abi,
        nproc_fallback,
        pid_namespace,
    })
}

/// Runs `spec` in a new namespace sandbox and waits for it to end.
pub fn run(spec: &Spec, options: RunOptions) -> Result<Finished, Error> {
    let Launched {
        id,
        started,
        mut sandbox,
        enforcement,
        channels,
        mut streams,
        signals,
        restore_mask,
        ..
    } = launch(spec, &options, false)?;

    let watched = watch(
        spec,
        &mut sandbox,
        &signals,
        &mut streams,
        &channels.control,
        &channels.report,
        false,
    );
    let (mut ended, stderr_ends_line) = watched?;
    // The caller can report the status before the cgroup's removal, which waits for the
    // host's cgroup lock. Signals stay blocked until then, so that one arriving now cannot
    // end this process with the cgroup still there.
    let cgroup = ended.cgroup_to_remove.take();
    let restore_mask = match cgroup {
        Some(_) => Some(restore_mask),
        None => {
            drop(restore_mask);
            None
        }
    };
    let teardown = airlock_core::Teardown::later(Leftovers {
        _init: ExitingInit {
            pidfd: sandbox.pidfd.try_clone().map_err(Error::Wait)?,
        },
        _cgroup: cgroup,
        _restore_mask: restore_mask,
    });

    let outcome = outcome::build(spec, &id, enforcement, ended, started)?;
    tracing::info!(
        sandbox = %id,
        reason = ?outcome.reason,
        code = ?outcome.exit_code,
        signal = ?outcome.signal,
        "sandbox ended"
    );
    drop(sandbox);
    Ok(Finished {
        outcome,
        stderr_ends_line,
        teardown,
    })
}

/// Watches the sandbox's command until it ends: takes its pseudo-terminal when it has one,
/// relays its streams and signals, and enforces the spec's timeout. With `stop_at_exit` the
/// watch ends when `process` exits, for a command that joined a running sandbox. Returns how
/// it ended and whether its stderr ended a line.
pub fn watch(
    spec: &Spec,
    process: &mut Sandbox,
    signals: &OwnedFd,
    streams: &mut stdio::Plan,
    control: &OwnedFd,
    reports: &OwnedFd,
    stop_at_exit: bool,
) -> Result<(Ended, bool), Error> {
    let master = receive_terminal(spec, control)?;
    let _raw_mode = match &master {
        Some(master) => attach_terminal(master, streams)?,
        None => None,
    };
    let deadline = spec.limits.timeout.map(|timeout| Instant::now() + timeout);
    let mut monitor = Monitor::new(
        process,
        signals,
        &mut streams.pumps,
        reports.as_raw_fd(),
        deadline,
        master.as_ref().map(AsRawFd::as_raw_fd),
    );
    if stop_at_exit {
        monitor = monitor.stop_at_exit();
    }
    let ended = monitor.run().map_err(Error::Wait)?;
    let stderr_ends_line = streams
        .stderr_pump
        .is_none_or(|index| streams.pumps[index].ends_line());
    Ok((ended, stderr_ends_line))
}

/// Receives the pty master from the init, when the spec asks for a terminal.
pub fn receive_terminal(spec: &Spec, control: &OwnedFd) -> Result<Option<OwnedFd>, Error> {
    if !spec.tty {
        return Ok(None);
    }
    let message = control::recv(control.as_raw_fd()).map_err(Error::Terminal)?;
    Ok(message.and_then(|(_, fds)| fds.into_iter().next()))
}

/// Puts the caller's terminal in raw mode, until the returned guard is dropped, and relays it
/// to the pseudo-terminal `master`.
pub fn attach_terminal(
    master: &OwnedFd,
    streams: &mut stdio::Plan,
) -> Result<Option<tty::RawMode>, Error> {
    let raw_mode = tty::RawMode::enter(0).map_err(Error::Terminal)?;
    tty::copy_window_size(master.as_raw_fd());
    streams.attach_terminal(master).map_err(Error::Terminal)?;
    Ok(raw_mode)
}
