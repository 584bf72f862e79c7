//! `airlock run --backend vm`: prepare the guest's files, boot it, run the command, and
//! kill the guest.

use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock_core::spec::{SANDBOX_HOME, SANDBOX_PATH, SANDBOX_WORKSPACE};
use airlock_core::{
    EndReason, Enforcement, ExecFailure, Finished, Outcome, RootFs, RunOptions, SandboxId, Spec,
    WorkspaceMode,
};

use airlock_protocol::Message;

use crate::accel;
use crate::agent::boot::{WorkspaceMount, LAYERS, ROOT_SHARE_TAG, WORKSPACE_SHARE_TAG};
use crate::container_image::{self, PinnedImage};
use crate::copy::CopyOutLimit;
use crate::disk::{self, ProgressBar};
use crate::error::Error;
use crate::exec::{self, End};
use crate::guest::{Guest, GuestFiles};
use crate::initramfs;
use crate::interrupt::Interrupts;
use crate::kernel;
use crate::machine::Machine;
use crate::protections;
use crate::share::{Share, ShareSource};
use crate::sizing;

/// The shared files a guest boots from, built or found in the cache.
pub struct Prepared {
    pub qemu: PathBuf,
    pub machine: Machine,
    pub files: GuestFiles,
    /// The engine's image the root disk was built from, for `--image`.
    pub image: Option<PinnedImage>,
}

/// Checks the parts of the spec this backend cannot provide, here or at all.
pub fn check_spec(spec: &Spec) -> Result<(), Error> {
    let root = root_source(spec)?;
    let mount = workspace_mount(spec)?;
    sizing::size(spec)?;
    if matches!(root, RootSource::HostView) || mount == Some(WorkspaceMount::Bind) {
        crate::share::find_virtiofsd()?;
    }
    Ok(())
}

/// The source of the guest's root.
pub enum RootSource<'a> {
    /// A root filesystem directory (`--rootfs`), as a disk image.
    Directory(&'a Path),
    /// A local image of a Docker-compatible engine (`--image`), as a disk image.
    Image(&'a str),
    /// The host view, shared through virtiofs.
    HostView,
}

/// Returns where the guest's root comes from, or an error for a spec that names two
/// sources.
pub fn root_source(spec: &Spec) -> Result<RootSource<'_>, Error> {
    match (&spec.rootfs, spec.image.as_deref()) {
        (RootFs::Directory(root), None) => Ok(RootSource::Directory(root)),
        (RootFs::HostView, Some(image)) => Ok(RootSource::Image(image)),
        (RootFs::Directory(root), Some(image)) => Err(Error::ImageWithRootfs {
            image: image.to_owned(),
            rootfs: root.clone(),
        }),
        (RootFs::HostView, None) => Ok(RootSource::HostView),
    }
}

/// Returns the cached root disk of `spec`, building it with a progress bar when missing,
/// with the engine's image it was built from for `--image`, or `None` for the host view,
/// which needs no disk. `pinned` is the image of the sandbox's earlier start.
fn root_disk(
    spec: &Spec,
    cache: &Path,
    pinned: Option<&PinnedImage>,
) -> Result<Option<(PathBuf, Option<PinnedImage>)>, Error> {
    let mut progress = ProgressBar::new();
    let mut update = |done| progress.update(done);
    let disk = match root_source(spec)? {
        RootSource::Directory(root) => (disk::root_image(root, cache, &mut update)?, None),
        RootSource::Image(image) => {
            let (disk, image) = container_image::root_image(image, pinned, cache, &mut update)?;
            (disk, Some(image))
        }
        RootSource::HostView => return Ok(None),
    };
    Ok(Some(disk))
}

/// Returns how the guest shows the workspace, `None` without one, or an error for a mode
/// the guest cannot provide.
pub fn workspace_mount(spec: &Spec) -> Result<Option<WorkspaceMount>, Error> {
    if spec.workspace.is_none() {
        return Ok(None);
    }
    match (spec.workspace_mode, &spec.workspace) {
        (WorkspaceMode::Overlay, _) => Ok(Some(WorkspaceMount::Overlay)),
        (WorkspaceMode::Readonly, _) => Ok(Some(WorkspaceMount::Readonly)),
        (WorkspaceMode::None, _) | (_, None) => Ok(None),
        (WorkspaceMode::Bind, Some(project)) if spec.inner.is_some() => {
            check_inner_bind(project)?;
            Ok(Some(WorkspaceMount::Bind))
        }
        (WorkspaceMode::Bind, Some(_)) => Ok(Some(WorkspaceMount::Bind)),
    }
}

/// Checks that the guest sees the shared `project` owned by a user other than root, whom
/// the inner layer then maps its root to. A root-owned one would need an idmapped mount of
/// the virtiofs share, which FUSE in the guest's Debian 6.1 kernel does not offer.
fn check_inner_bind(project: &Path) -> Result<(), Error> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let caller = unsafe { libc::geteuid() };
    if caller != 0 {
        // The daemon of an unprivileged caller serves the project from a user namespace
        // where the caller is root, so the guest sees the caller's files as root's.
        return Err(Error::InnerBind {
            project: project.to_owned(),
            reason: "the guest sees the files of an unprivileged caller as root's, since \
                     their virtiofsd runs as root of its own user namespace",
        });
    }
    let metadata = std::fs::metadata(project).map_err(|source| Error::ProjectOwner {
        path: project.to_owned(),
        source,
    })?;
    if std::os::unix::fs::MetadataExt::uid(&metadata) == 0 {
        return Err(Error::InnerBind {
            project: project.to_owned(),
            reason: "the project belongs to root",
        });
    }
    Ok(())
}

/// Finds the kernel, builds or reuses the initramfs and the root disk image, picks the
/// accelerator, and lays out the guest's files. `pinned` is the image an earlier start of
/// the sandbox built its root disk from.
pub fn prepare(
    spec: &Spec,
    id: &SandboxId,
    qemu: PathBuf,
    pinned: Option<&PinnedImage>,
) -> Result<Prepared, Error> {
    let sizing = sizing::size(spec)?;
    sizing::warn_above_available(&sizing);
    let cache = crate::cache::directory()?;
    let kernel = kernel::find(spec.kernel.as_deref())?;
    // Before the initramfs, so that a missing image fails without building anything.
    let (root_disk, image) = root_disk(spec, &cache, pinned)?.unzip();
    let agent = Path::new("/proc/self/exe");
    let initramfs = initramfs::find_or_build(&kernel, agent, &cache)?;
    let choice = accel::choose(&qemu, &cache);
    if let Some(notice) = &choice.notice {
        eprintln!("airlock: {notice}");
    }
    let files = GuestFiles::create(id)?;
    let workspace = match workspace_disk(spec, &files) {
        Ok(disk) => disk,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&files.directory);
            return Err(error);
        }
    };
    let machine = Machine {
        accel: choice.accel,
        cpus: sizing.cpus,
        memory_mib: sizing.memory_mib,
        kernel: kernel.image,
        initramfs,
        shares: shares(spec, &files, root_disk.is_none()),
        root_disk,
        agent_socket: files.path("agent.sock"),
        console_log: files.path("console.log"),
        tmp_size: spec.limits.tmp_size,
        workspace,
        pids: spec.limits.pids.value,
        memory_limit: sizing.memory_limit,
        tsc_khz: choice.tsc_khz,
        hostname: Some(format!("airlock-{}", id.short())),
        inner: spec.inner.is_some(),
    };
    Ok(Prepared {
        qemu,
        machine,
        files,
        image: image.flatten(),
    })
}

/// Lists the directories the host shares with the guest: the host view as its root
/// without a root disk, and the project for a bind workspace.
fn shares(spec: &Spec, files: &GuestFiles, host_view: bool) -> Vec<Share> {
    let mut shares = Vec::new();
    if host_view {
        shares.push(Share {
            tag: ROOT_SHARE_TAG.to_owned(),
            socket: files.path("root.sock"),
            source: ShareSource::HostView,
        });
    }
    if let (WorkspaceMode::Bind, Some(project)) = (spec.workspace_mode, &spec.workspace) {
        shares.push(Share {
            tag: WORKSPACE_SHARE_TAG.to_owned(),
            socket: files.path("workspace.sock"),
            source: ShareSource::Directory(project.clone()),
        });
    }
    shares
}

/// Builds the guest's copy of the project, with the way the guest shows it; for a bind
/// workspace, the project itself, which a share provides.
fn workspace_disk(
    spec: &Spec,
    files: &GuestFiles,
) -> Result<Option<(PathBuf, WorkspaceMount)>, Error> {
    match (workspace_mount(spec)?, &spec.workspace) {
        (Some(WorkspaceMount::Bind), Some(project)) => {
            Ok(Some((project.clone(), WorkspaceMount::Bind)))
        }
        (Some(mount), Some(project)) => {
            let image = files.path("workspace.ext4");
            disk::workspace_image(project, &image, spec.inner.is_some())?;
            Ok(Some((image, mount)))
        }
        _ => Ok(None),
    }
}

/// Returns how long a guest may stay silent before the host counts it as hung: many
/// heartbeats, more under software emulation, where a loaded host can stall a guest.
pub fn silence_limit(accel: crate::machine::Accel) -> std::time::Duration {
    match accel {
        crate::machine::Accel::Kvm => std::time::Duration::from_secs(20),
        crate::machine::Accel::Tcg => std::time::Duration::from_secs(60),
    }
}

/// Builds the command's environment: the defaults every backend sets, then the spec's.
pub fn environment(spec: &Spec) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), SANDBOX_PATH.to_owned()),
        ("HOME".to_owned(), SANDBOX_HOME.to_owned()),
    ];
    for name in airlock_core::spec::PASSED_HOST_VARIABLES {
        if let Ok(value) = std::env::var(name) {
            env.push((name.to_owned(), value));
        }
    }
    for (key, value) in &spec.env {
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.to_string_lossy().into_owned()));
    }
    env
}

/// Runs the spec's command in a new guest and kills the guest afterwards. A forwarded
/// signal that arrives before the command starts ends the run as if it had killed the
/// command, with nothing left of the guest.
pub fn run(spec: &Spec, options: RunOptions, qemu: PathBuf) -> Result<Finished, Error> {
    let started = Instant::now();
    let mut interrupts = Interrupts::catch().map_err(Error::CatchSignals)?;
    let enforcement = check(spec)?;
    let id = match options.id {
        Some(id) => id,
        None => SandboxId::generate().map_err(Error::Id)?,
    };
    let interrupted = |signal| Ok(interrupted_run(signal, &id, started, &enforcement));

    // Ctrl-C at a terminal also reaches a mkfs.ext4 that builds the root image, which then
    // fails: the signal, not the failure, is what ended the run.
    // The build of an image's disk blocks the signals and takes them itself.
    let prepared = match prepare(spec, &id, qemu, None) {
        Ok(prepared) => prepared,
        Err(Error::BuildInterrupted(airlock_namespace::interrupt::Interrupted(signal))) => {
            eprintln!("airlock: the build of the guest's root disk was interrupted; its temporary files were removed");
            return interrupted(signal);
        }
        Err(error) => return interrupts.pending().map_or(Err(error), interrupted),
    };
    if let Some(signal) = interrupts.pending() {
        let _ = std::fs::remove_dir_all(&prepared.files.directory);
        return interrupted(signal);
    }
    let booted = Guest::boot(&prepared.qemu, prepared.machine, prepared.files, &|| {
        interrupts.pending()
    });
    let mut guest = match booted {
        Ok(guest) => guest,
        Err(Error::Interrupted { signal }) => return interrupted(signal),
        Err(error) => return Err(error),
    };
    tracing::info!(sandbox = %id, qemu = guest.qemu_pid(), "vm sandbox started");

    let request = command_request(spec, guest.machine.accel);
    let finish = exec::run(&mut guest.connection, request, &mut interrupts);
    // From here on, a signal ends Airlock as it did before the run.
    drop(interrupts);
    let command = spec.command[0].to_string_lossy();
    let ended = to_outcome(finish.end, &command, &id, started, &enforcement);
    let outcome = ended.map_err(|unfinished| guest_failure(&mut guest, unfinished))?;
    tracing::debug!(sandbox = %id, reason = ?outcome.reason, "vm command ended");
    // The run ends with its command, as in the other backends: what the command left in
    // the background gets no time to change the workspace while its changes are copied.
    let kill = Message::Signal {
        signal: libc::SIGKILL,
    };
    let _ = guest.connection.send(finish.channel, &kill);

    // After a timeout the guest ends at once; otherwise it still runs, with the changes.
    if outcome.reason != EndReason::TimedOut {
        if let Some(layers) = options.layers.as_deref().filter(|_| has_overlay(&guest)) {
            export_changes(&mut guest, layers)?;
        }
    }
    // Nothing in the guest needs a clean power-off: its disks are attached read-only, and
    // the changes were copied out. The removal of its directory is left to the caller.
    guest.kill();
    tracing::info!(sandbox = %id, "vm sandbox ended");
    Ok(Finished {
        outcome,
        stderr_ends_line: finish.stderr_ends_line,
        teardown: airlock_core::Teardown::later(guest),
    })
}

/// Builds the result of a run that `signal` ended before its command started. The guest,
/// if it was started, is already killed and its directory removed.
fn interrupted_run(
    signal: i32,
    id: &SandboxId,
    started: Instant,
    enforcement: &Enforcement,
) -> Finished {
    tracing::info!(sandbox = %id, signal, "vm sandbox interrupted before its command started");
    eprintln!("airlock: signal {signal} ended the run before the command started in the guest");
    let end = End::Exited {
        code: None,
        signal: Some(signal),
        reason: EndReason::Exited,
    };
    let outcome = to_outcome(end, "", id, started, enforcement)
        .unwrap_or_else(|_| unreachable!("an exit always has an outcome"));
    Finished {
        outcome,
        stderr_ends_line: true,
        teardown: airlock_core::Teardown::none(),
    }
}

/// Checks what the spec asks against what a guest provides, and returns the protections.
pub fn check(spec: &Spec) -> Result<Enforcement, Error> {
    check_spec(spec)?;
    let enforcement = protections::assess(spec);
    enforcement
        .check_required(spec.allow_weaker)
        .map_err(|unmet| Error::WeakerThanRequired { unmet })?;
    Ok(enforcement)
}

/// Builds the request for the spec's command.
fn command_request(spec: &Spec, accel: crate::machine::Accel) -> exec::Request {
    let command: Vec<String> = spec
        .command
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    if spec.inner.is_some() {
        return inner_request(spec, command, spec.limits.timeout, accel);
    }
    let user = spec.user.unwrap_or(airlock_core::User::ROOT);
    exec::Request {
        argv: command,
        env: environment(spec),
        cwd: SANDBOX_WORKSPACE.to_owned(),
        tty: spec.tty,
        uid: user.uid,
        gid: user.gid,
        timeout: spec.limits.timeout,
        silence_limit: silence_limit(accel),
    }
}

/// Builds the request that runs `command` through the inner layer of `spec`, which sets up
/// the command's user, environment and terminal itself.
pub fn inner_request(
    spec: &Spec,
    command: Vec<String>,
    timeout: Option<std::time::Duration>,
    accel: crate::machine::Accel,
) -> exec::Request {
    exec::Request {
        argv: crate::inner::wrap(spec, command),
        env: environment(&Spec::new(Vec::new())),
        cwd: "/".to_owned(),
        tty: spec.tty,
        uid: 0,
        gid: 0,
        timeout,
        silence_limit: silence_limit(accel),
    }
}

/// Builds the error for a command that did not end, killing a guest that hangs.
fn guest_failure(guest: &mut Guest, unfinished: Unfinished) -> Error {
    match unfinished {
        Unfinished::GuestStopped => {
            let reason =
                "the guest stopped while the command ran (its kernel panicked or powered off)";
            guest.stopped(reason.to_owned())
        }
        Unfinished::GuestSilent => {
            let limit = silence_limit(guest.machine.accel).as_secs();
            guest.kill();
            guest.stopped(format!(
                "the guest sent nothing for {limit} s, not even its heartbeat, and was killed \
                 (its kernel or agent hangs)"
            ))
        }
        Unfinished::Broken(message) => Error::AgentFailed { message },
    }
}

/// Returns whether the guest shows the workspace under an overlay, whose changes the host
/// copies out.
pub fn has_overlay(guest: &Guest) -> bool {
    let mount = guest.machine.workspace.as_ref().map(|(_, mount)| *mount);
    mount == Some(WorkspaceMount::Overlay)
}

/// A command that did not end with an outcome.
pub enum Unfinished {
    GuestStopped,
    GuestSilent,
    Broken(String),
}

/// Builds the outcome of a command that ended as `end`.
pub fn to_outcome(
    end: End,
    command: &str,
    id: &SandboxId,
    started: Instant,
    enforcement: &Enforcement,
) -> Result<Outcome, Unfinished> {
    let outcome = |exit_code, signal, reason, exec_failure| Outcome {
        sandbox_id: id.to_string(),
        backend: "vm",
        reason,
        exit_code,
        signal,
        duration: started.elapsed(),
        peak_memory: None,
        exec_failure,
        landlock_abi: None,
        enforcement: enforcement.clone(),
    };
    Ok(match end {
        End::Exited {
            code,
            signal,
            reason,
        } => outcome(code, signal, reason, None),
        End::Failed { error, not_found } => {
            let command = command.to_owned();
            let failure = if not_found {
                ExecFailure::NotFound { command }
            } else {
                ExecFailure::NotExecutable { command, error }
            };
            outcome(None, None, EndReason::Exited, Some(failure))
        }
        End::TimedOut => outcome(None, Some(libc::SIGKILL), EndReason::TimedOut, None),
        End::GuestStopped => return Err(Unfinished::GuestStopped),
        End::GuestSilent => return Err(Unfinished::GuestSilent),
        End::Broken(message) => return Err(Unfinished::Broken(message)),
    })
}

/// Copies the workspace changes out of the guest into `layers/upper`, where `airlock diff`
/// and `apply` read them.
fn export_changes(guest: &mut Guest, layers: &Path) -> Result<(), Error> {
    // `discard` and `gc` expect the overlay's work directory next to the upper layer.
    let upper = layers.join("upper");
    for layer in [&upper, &layers.join("work")] {
        std::fs::create_dir_all(layer).map_err(|source| Error::Layers {
            path: layer.to_path_buf(),
            source,
        })?;
    }
    let guest_upper = format!("{LAYERS}/upper");
    let limit = CopyOutLimit::of(&guest.machine);
    crate::export::upper_layer(&mut guest.connection, &guest_upper, &upper, limit)
        .map_err(Error::Export)
}

/// Returns the protections for a report, without the enforcement check.
pub fn assess(spec: &Spec) -> Enforcement {
    protections::assess(spec)
}
