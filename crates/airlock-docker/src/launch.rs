//! Starts a docker sandbox and, for `run`, watches its command to the end.
//!
//! The steps, in order:
//! 1. Check the spec (an image, no `--rootfs`) and connect to the engine. Open the
//!    workspace and pick the user. For a user that is root or in root's group, ask the
//!    engine whether it remaps users, and fail before creating anything if it does not and
//!    the spec requires it.
//! 2. Create the run directory, the workspace's overlay volume and the container, each
//!    recorded in [`Resources`], whose drop removes them on every later failure. The image
//!    is looked up while the volume is created.
//! 3. Listen on the init's socket, start the container, and find its init's host pid.
//! 4. Read the protections the container has ([`crate::observe`]), and fail before its
//!    command starts if a required one is missing.
//! 5. Accept the init's connection, hand over the streams and the plan
//!    ([`crate::channel`]), and wait until it reports ready.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock_core::state::ProcessRef;
use airlock_core::{
    Enforcement, Finished, RootFs, RunOptions, SandboxId, Spec, Teardown, User, WorkspaceMode,
};
use airlock_namespace::cgroup::{Cgroup, Description};
use airlock_namespace::launch as shared;
use airlock_namespace::monitor::Ended;
use airlock_namespace::report::Report;
use airlock_namespace::workspace::HostWorkspace;
use airlock_namespace::{outcome, stdio, sys};
use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};
use futures_util::future::join;

use crate::channel::{self, Channel, Plan, RunDir};
use crate::config::{self, Layout, WorkspaceMount};
use crate::engine::Engine;
use crate::error::{is_not_found, Error};
use crate::held::Pinned;
use crate::observe;
use crate::protections::{self, Facts};
use crate::resources::Resources;
use crate::watch::{has_final, setup_failure, Target, Watch};
use crate::{binary, cgroup, rlimits};

/// The name of the run directory, in the sandbox's state directory.
const RUN_DIR_NAME: &str = "docker";

/// A started container whose init is ready. Dropping it ends the container and removes it
/// with its volume and run directory.
pub struct Sandbox {
    /// Dropped first, while the init still runs: a run's init stays after its final report
    /// until the host closes the channel, so the engine removes a running container rather
    /// than one that is stopping on its own.
    pub resources: Resources,
    pub id: SandboxId,
    pub started: Instant,
    /// The container's init, PID 1 of its namespaces.
    pub init: ProcessRef,
    pub init_pidfd: OwnedFd,
    pub channel: Channel,
    /// Reports that arrived before the ready report.
    pub early_reports: Vec<Report>,
    pub streams: stdio::Plan,
    pub terminal: Option<OwnedFd>,
    pub enforcement: Enforcement,
    pub facts: Facts,
    pub user: User,
    /// A view of the container's cgroup, for its counters.
    pub cgroup: Option<Cgroup>,
}

impl Sandbox {
    /// Returns the engine's id of the container.
    pub fn container(&self) -> &str {
        self.resources.container.as_deref().unwrap_or_default()
    }
}

/// Returns the image the spec runs, or the error that explains how to name one.
pub fn image_of(spec: &Spec) -> Result<&str, Error> {
    if let RootFs::Directory(dir) = &spec.rootfs {
        return Err(Error::RootfsNotSupported(dir.clone()));
    }
    let image = spec.image.as_deref().ok_or(Error::NoImage)?;
    // The command line and spec files check the grammar, but a spec built by other means may
    // not have been, and the engine would reject it with a bare status 400.
    crate::image::ImageRef::parse(image).map_err(|rule| Error::InvalidImage {
        image: image.to_owned(),
        rule,
    })?;
    Ok(image)
}

/// Reads what the engine enforces. An engine that does not reply leaves the facts unknown.
pub fn facts(engine: &Engine) -> Facts {
    match engine.block_on(engine.docker().info()) {
        Ok(info) => Facts::from_info(&info),
        Err(error) => Facts::unreachable(error.to_string()),
    }
}

/// The workspace as opened: the directory, its owner and its permission bits.
struct OpenWorkspace {
    workspace: HostWorkspace,
    owner: (u32, u32),
    mode: u32,
}

/// Opens the workspace, for every mode but `none`, refusing symlinks on its path as root.
fn open_workspace(spec: &Spec) -> Result<Option<OpenWorkspace>, Error> {
    let Some(path) = spec
        .workspace
        .as_deref()
        .filter(|_| spec.workspace_mode != WorkspaceMode::None)
    else {
        return Ok(None);
    };
    let workspace = HostWorkspace::open(path, sys::geteuid() == 0)
        .map_err(airlock_namespace::Error::Workspace)?;
    let metadata = std::fs::metadata(format!("/proc/self/fd/{}", workspace.fd.as_raw_fd()))
        .map_err(|source| Error::Layers {
            path: path.to_owned(),
            source,
        })?;
    Ok(Some(OpenWorkspace {
        workspace,
        owner: (metadata.uid(), metadata.gid()),
        mode: metadata.mode() & 0o7777,
    }))
}

/// The findings of the checks before creation.
struct Checked<'a> {
    image: &'a str,
    id: SandboxId,
    workspace: Option<OpenWorkspace>,
    user: User,
    /// The running Airlock binary, which becomes the container's init.
    binary: PathBuf,
}

/// Starts a container for `spec`: with its command, or held for later `exec`s.
pub fn start(spec: &Spec, options: &RunOptions, hold: bool) -> Result<Sandbox, Error> {
    let started = Instant::now();
    let (engine, checked) = check(spec, options)?;
    let (resources, run_dir) = create(spec, options, engine, &checked)?;

    let listener = run_dir.listen(config::INIT_SOCKET)?;
    let mut streams = plan_streams(spec, options, hold)?;
    start_container(&resources, &checked)?;
    let (init, init_pidfd) = find_init(&resources)?;
    let id = checked.id;
    let (cgroup, facts, enforcement) = check_protections(&resources, spec, &checked, init.pid)?;
    tracing::info!(sandbox = %id, backend = "docker", pid = init.pid, hold, "sandbox created");

    let connection = listener
        .accept(init.pid, init_pidfd.as_raw_fd())
        .map_err(|error| with_logs(error, &resources))?;
    drop(listener);

    let plan = plan(spec, &facts, hold);
    let stdio = if plan.tty {
        [stdio::SANDBOX_NULL; 3]
    } else {
        streams.child_fds
    };
    let channel = channel::hand_over(connection, stdio, &plan)?;
    streams.child_ends.clear();
    let terminal = plan.tty.then(|| channel.receive_terminal()).transpose()?;
    let early_reports = channel
        .wait_until_ready(init_pidfd.as_raw_fd())
        .map_err(|error| with_logs(error, &resources))?;
    channel.go_ahead()?;
    Ok(Sandbox {
        resources,
        id,
        started,
        init,
        init_pidfd,
        channel,
        early_reports,
        streams,
        terminal,
        enforcement,
        facts,
        user: checked.user,
        cgroup: cgroup.as_ref().map(Cgroup::view),
    })
}

/// Reads the protections of the started container whose init is host process `init`, and
/// fails, before its command starts, when one that the spec requires is missing. Returns
/// the container's cgroup with the facts and the protections.
fn check_protections(
    resources: &Resources,
    spec: &Spec,
    checked: &Checked<'_>,
    init: libc::pid_t,
) -> Result<(Option<Description>, Facts, Enforcement), Error> {
    let cgroup = cgroup::of_process(init);
    tracing::debug!(sandbox = %checked.id, cgroup = ?cgroup, "found the container's cgroup");
    let facts = observe::facts(&resources.engine, spec, init, cgroup.as_ref());
    let enforcement = protections::assess(spec, checked.user, &facts);
    enforcement
        .check_required(spec.allow_weaker)
        .map_err(|unmet| Error::WeakerThanRequired { unmet })?;
    Ok((cgroup, facts, enforcement))
}

/// Checks, before creating anything, that the spec names an image, that the binary can be
/// the init, and for a privileged user that the engine remaps users or the spec accepts
/// that it does not. Returns the connected engine, the one an earlier start pinned or else
/// the one DOCKER_HOST or the default sockets name, with the findings.
fn check<'a>(spec: &'a Spec, options: &RunOptions) -> Result<(Engine, Checked<'a>), Error> {
    let image = image_of(spec)?;
    let engine = match Pinned::of(options).socket {
        Some(socket) => Engine::connect_to(&socket)?,
        None => Engine::connect()?,
    };
    let id = match options.id {
        Some(id) => id,
        None => SandboxId::generate().map_err(Error::Id)?,
    };
    let workspace = open_workspace(spec)?;
    let user = config::sandbox_user(spec, workspace.as_ref().map(|open| open.owner));
    check_privileged_user(&engine, spec, user)?;
    if let Some(open) = &workspace {
        warn_if_workspace_unwritable(spec, open, user);
    }
    let binary = binary::running()?;
    let checked = Checked {
        image,
        id,
        workspace,
        user,
        binary,
    };
    Ok((engine, checked))
}

/// Warns when the command gets a writable workspace that belongs to root but runs as
/// another user, and the top level of the project contains an entry of root's that others
/// cannot write. The command can change neither that entry nor anything below it.
fn warn_if_workspace_unwritable(spec: &Spec, open: &OpenWorkspace, user: User) {
    let writable = matches!(
        spec.workspace_mode,
        WorkspaceMode::Overlay | WorkspaceMode::Bind
    );
    if !writable || open.owner.0 != 0 || user.uid == 0 {
        return;
    }
    let path = format!("/proc/self/fd/{}", open.workspace.fd.as_raw_fd());
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    let locked = entries.flatten().find(|entry| {
        entry.metadata().is_ok_and(|metadata| {
            metadata.uid() == 0 && metadata.mode() & 0o002 == 0 && !metadata.is_symlink()
        })
    });
    if let Some(entry) = locked {
        eprintln!(
            "airlock: warning: the workspace belongs to root, and the command runs as {}:{}, so it cannot change {:?} or other entries of root's that others cannot write; give the project to an ordinary user (chown -R), or pass --user 0 --allow-weaker to run as root",
            user.uid,
            user.gid,
            entry.file_name()
        );
    }
}

/// Fails when `user` is root or in root's group, the engine reports that it does not remap
/// users, and the spec does not accept that. The engine is asked only for such a user,
/// because for any other its report changes nothing before the container exists.
fn check_privileged_user(engine: &Engine, spec: &Spec, user: User) -> Result<(), Error> {
    if !protections::is_privileged(user) || spec.allow_weaker {
        return Ok(());
    }
    protections::assess(spec, user, &facts(engine))
        .check_required(false)
        .map_err(|unmet| Error::WeakerThanRequired { unmet })
}

/// Creates the run directory, the workspace's volume and the container, recorded in the
/// returned [`Resources`] as each is made.
fn create(
    spec: &Spec,
    options: &RunOptions,
    engine: Engine,
    checked: &Checked<'_>,
) -> Result<(Resources, RunDir), Error> {
    let mut resources = Resources::new(engine);
    let sandbox_dir = options.layers.as_deref().and_then(Path::parent);
    let run_dir = RunDir::create(&run_dir_path(sandbox_dir, &checked.id))?;
    resources.run_dir = Some(run_dir.path.clone());

    // The sandbox's directory is STATE/sandboxes/ID.
    let state_dir = sandbox_dir.and_then(Path::parent).and_then(Path::parent);
    let labels = config::labels(&checked.id, state_dir);
    let owner = Owner {
        id: &checked.id,
        user: checked.user,
        labels: &labels,
    };
    let workspace = checked.workspace.as_ref();
    let (workspace_mount, volume) = mount_workspace(spec, options, workspace, &owner)?;
    create_volume_and_check_image(&mut resources, volume, checked.image)?;
    let layout = Layout {
        id: &checked.id,
        image: checked.image,
        user: checked.user,
        binary: &checked.binary,
        run_dir: &run_dir.path,
        workspace: workspace_mount,
        labels,
        rlimits: rlimits::for_engine(resources.engine.socket()),
    };
    create_container(&mut resources, spec, &layout)?;
    Ok((resources, run_dir))
}

/// Builds the init's plan: the command, or none for a held sandbox.
fn plan(spec: &Spec, facts: &Facts, hold: bool) -> Plan {
    let argv = if hold {
        Vec::new()
    } else {
        spec.command.clone()
    };
    Plan {
        command: airlock_nspawn::init::Plan {
            argv,
            env: spec.environment(|name| std::env::var_os(name)),
            overlay: false,
            landlock: facts.landlock_abi > 0,
            pids: spec.limits.pids.value,
            nproc_fallback: false,
            linger: true,
            terminal: false,
        },
        tty: spec.tty && !hold,
    }
}

/// Returns the run directory: `docker` in the sandbox's state directory, or a private
/// directory below the temporary directory for a caller that gave none.
fn run_dir_path(sandbox_dir: Option<&Path>, id: &SandboxId) -> PathBuf {
    match sandbox_dir {
        Some(dir) => dir.join(RUN_DIR_NAME),
        None => std::env::temp_dir().join(format!("airlock-docker-{id}")),
    }
}

/// Creates the workspace's overlay volume, when there is one, while it looks `image` up in
/// the engine, and records the volume in `resources` before it reports either failure.
fn create_volume_and_check_image(
    resources: &mut Resources,
    volume: Option<VolumeCreateRequest>,
    image: &str,
) -> Result<(), Error> {
    let engine = &resources.engine;
    let docker = engine.docker();
    let name = volume.as_ref().and_then(|request| request.name.clone());
    let create_volume = async {
        match volume {
            Some(request) => docker.create_volume(request).await.map(drop),
            None => Ok(()),
        }
    };
    let (found, created) = engine.block_on(join(docker.inspect_image(image), create_volume));
    if created.is_ok() {
        resources.volume = name;
    }
    match found {
        Ok(_) => {}
        Err(error) if is_not_found(&error) => {
            return Err(Error::ImageNotFound {
                image: image.to_owned(),
                socket: resources.engine.socket().to_owned(),
            })
        }
        Err(error) => return Err(Error::request("look up the image")(error)),
    }
    created.map_err(Error::request("create the workspace's overlay volume"))
}

/// The sandbox that a workspace is mounted for, and its user.
struct Owner<'a> {
    id: &'a SandboxId,
    user: User,
    labels: &'a std::collections::HashMap<String, String>,
}

/// Prepares what /workspace is in the container: for an overlay, the layers, and the
/// request for the engine's volume.
fn mount_workspace(
    spec: &Spec,
    options: &RunOptions,
    workspace: Option<&OpenWorkspace>,
    owner: &Owner<'_>,
) -> Result<(WorkspaceMount, Option<VolumeCreateRequest>), Error> {
    let Some(open) = workspace else {
        return Ok((WorkspaceMount::Empty, None));
    };
    let path = open.workspace.path.clone();
    let bind = |read_only| {
        Ok((
            WorkspaceMount::Bind {
                path: path.clone(),
                read_only,
            },
            None,
        ))
    };
    match spec.workspace_mode {
        WorkspaceMode::Bind => bind(false),
        WorkspaceMode::Readonly => bind(true),
        WorkspaceMode::None => Ok((WorkspaceMount::Empty, None)),
        WorkspaceMode::Overlay => {
            let layers = options.layers.as_deref().ok_or(Error::NoLayers)?;
            prepare_layers(layers, owner.user, open.mode)?;
            let name = config::volume_name(owner.id);
            let request = config::overlay_volume(&name, &path, layers, owner.labels)?;
            Ok((WorkspaceMount::Overlay { volume: name }, Some(request)))
        }
    }
}

/// Creates the overlay's `upper` and `work` directories in `layers`. The upper directory is
/// the top of /workspace, so it gets the workspace's mode and belongs to the sandbox's
/// user, who can then create files at the top of /workspace as in the project itself.
fn prepare_layers(layers: &Path, user: User, mode: u32) -> Result<(), Error> {
    let failed = |source| Error::Layers {
        path: layers.to_owned(),
        source,
    };
    for dir in [layers.to_owned(), layers.join("upper"), layers.join("work")] {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(failed(error)),
        }
    }
    let upper = layers.join("upper");
    let metadata = std::fs::symlink_metadata(&upper).map_err(failed)?;
    if !metadata.is_dir() {
        return Err(failed(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    if (metadata.uid(), metadata.gid()) != (user.uid, user.gid) && sys::geteuid() == 0 {
        std::os::unix::fs::lchown(&upper, Some(user.uid), Some(user.gid)).map_err(failed)?;
    }
    std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(mode)).map_err(failed)
}

fn create_container(
    resources: &mut Resources,
    spec: &Spec,
    layout: &Layout<'_>,
) -> Result<(), Error> {
    let body = config::container(spec, layout);
    let options = CreateContainerOptionsBuilder::new()
        .name(&config::container_name(layout.id))
        .build();
    let engine = &resources.engine;
    let created = engine
        .block_on(engine.docker().create_container(Some(options), body))
        .map_err(Error::request("create the container"))?;
    for warning in &created.warnings {
        tracing::warn!(container = %created.id, warning, "the engine warns about the container");
    }
    resources.container = Some(created.id);
    Ok(())
}

/// Starts the container, whose first step is to execute the Airlock binary as its user.
fn start_container(resources: &Resources, checked: &Checked<'_>) -> Result<(), Error> {
    let engine = &resources.engine;
    let container = resources.container.as_deref().unwrap_or_default();
    let started = engine.block_on(
        engine
            .docker()
            .start_container(container, None::<StartContainerOptions>),
    );
    match started {
        Ok(()) => Ok(()),
        Err(source)
            if source
                .to_string()
                .contains(&format!("exec {}", config::BINARY)) =>
        {
            Err(Error::BinaryNotExecutable {
                binary: checked.binary.clone(),
                uid: checked.user.uid,
                gid: checked.user.gid,
                source,
            })
        }
        Err(source) => Err(Error::request("start the container")(source)),
    }
}

/// Finds the host pid of the container's init and opens a pidfd of it.
fn find_init(resources: &Resources) -> Result<(ProcessRef, OwnedFd), Error> {
    let engine = &resources.engine;
    let container = resources.container.as_deref().unwrap_or_default();
    let inspected = engine
        .block_on(engine.docker().inspect_container(container, None))
        .map_err(Error::request("inspect the container"))?;
    let state = inspected.state.unwrap_or_default();
    let no_pid = || Error::NoInitPid {
        container: container.to_owned(),
        state: state
            .status
            .map_or_else(|| "unknown".to_owned(), |status| status.to_string()),
        logs: resources.logs(),
    };
    let pid = state
        .pid
        .and_then(|pid| libc::pid_t::try_from(pid).ok())
        .filter(|&pid| pid > 0)
        .ok_or_else(no_pid)?;
    let pidfd = sys::pidfd_open(pid).map_err(|_| no_pid())?;
    let init = ProcessRef::of(pid).ok_or_else(no_pid)?;
    Ok((init, pidfd))
}

/// Adds the container's log to an error of its init, which usually explains why it failed.
fn with_logs(error: Error, resources: &Resources) -> Error {
    match error {
        Error::InitExited { .. } => Error::InitExited {
            logs: resources.logs(),
        },
        Error::InitSilent { seconds, .. } => Error::InitSilent {
            seconds,
            logs: resources.logs(),
        },
        other => other,
    }
}

/// Plans the streams the init gets: none for a held sandbox, none with `-t` (the init opens
/// a pseudo-terminal of its own), and otherwise the namespace backend's plan.
fn plan_streams(spec: &Spec, options: &RunOptions, hold: bool) -> Result<stdio::Plan, Error> {
    if hold {
        return Ok(stdio::Plan::detached());
    }
    stdio::Plan::new(spec.tty, options.track_stderr_line)
        .map_err(|error| airlock_namespace::Error::Stdio(error).into())
}

/// Runs `spec` in a new container and waits for it to end.
pub fn run(spec: &Spec, options: RunOptions) -> Result<Finished, Error> {
    let (restore_mask, signals) = shared::block_forwarded_signals(spec.tty)?;
    let mut sandbox = start(spec, &options, false)?;
    let raw_mode = match &sandbox.terminal {
        Some(master) => shared::attach_terminal(master, &mut sandbox.streams)?,
        None => None,
    };

    let deadline = spec.limits.timeout.map(|timeout| Instant::now() + timeout);
    let container = sandbox.container().to_owned();
    let watched = Watch {
        process: sandbox.init_pidfd.as_raw_fd(),
        signals: &signals,
        pumps: &mut sandbox.streams.pumps,
        reports: sandbox.channel.reports.as_raw_fd(),
        deadline,
        terminal: sandbox.terminal.as_ref().map(AsRawFd::as_raw_fd),
        cgroup: sandbox.cgroup.as_ref(),
        kill_on_limit: true,
        target: Target::Container {
            engine: &sandbox.resources.engine,
            container: &container,
        },
    }
    .run()
    .map_err(Error::Wait);
    drop((raw_mode, restore_mask));
    let mut ended = watched?;

    let stderr_ends_line = sandbox
        .streams
        .stderr_pump
        .is_none_or(|index| sandbox.streams.pumps[index].ends_line());
    if ended.reason == airlock_core::EndReason::Exited && killed_for_memory(&sandbox) {
        ended.reason = airlock_core::EndReason::OutOfMemory;
    }
    let mut reports = std::mem::take(&mut sandbox.early_reports);
    reports.append(&mut ended.reports);
    ended.reports = reports;
    check_final(&ended, &sandbox)?;

    let enforcement = sandbox.enforcement.clone();
    let mut outcome = outcome::build(spec, &sandbox.id, enforcement, ended, sandbox.started)?;
    outcome.backend = "docker";
    tracing::info!(
        sandbox = %sandbox.id,
        reason = ?outcome.reason,
        code = ?outcome.exit_code,
        signal = ?outcome.signal,
        "sandbox ended"
    );
    let Sandbox {
        resources, channel, ..
    } = sandbox;
    Ok(Finished {
        outcome,
        stderr_ends_line,
        teardown: Teardown::later(Leftovers {
            resources,
            _channel: channel,
        }),
    })
}

/// What a finished run leaves to remove: the container with its volume and run directory,
/// and the init's channel, whose end lets the lingering init exit.
struct Leftovers {
    resources: Resources,
    /// Kept open until the container is removed, and dropped after `resources` for that.
    _channel: Channel,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        // The removal may run in a child forked after the command ended, which must not
        // drive the runtime it copied from its parent, so it connects anew.
        let socket = self.resources.engine.socket().to_owned();
        match Engine::connect_to(&socket) {
            Ok(engine) => drop(std::mem::replace(&mut self.resources.engine, engine)),
            Err(error) => {
                tracing::warn!(%error, "cannot reconnect to the engine to remove the container")
            }
        }
    }
}

/// Returns whether the engine saw the kernel kill a process of the container for memory.
/// Where the container's cgroup counts such kills, the wait has read them there already,
/// so the engine is not asked.
fn killed_for_memory(sandbox: &Sandbox) -> bool {
    let counted = sandbox
        .cgroup
        .as_ref()
        .is_some_and(|cgroup| cgroup::counts_oom_kills(&cgroup.describe()));
    if counted {
        return false;
    }
    let engine = &sandbox.resources.engine;
    engine
        .block_on(engine.docker().inspect_container(sandbox.container(), None))
        .ok()
        .and_then(|inspected| inspected.state?.oom_killed)
        .unwrap_or(false)
}

/// Fails when the init ended without a report of how the command ended and no limit
/// explains it: its setup failed, the container was killed from outside, or the init died.
fn check_final(ended: &Ended, sandbox: &Sandbox) -> Result<(), Error> {
    if has_final(&ended.reports) || ended.reason != airlock_core::EndReason::Exited {
        return Ok(());
    }
    Err(
        setup_failure(&ended.reports).unwrap_or_else(|| Error::InitExited {
            logs: sandbox.resources.logs(),
        }),
    )
}
