//! The life of a sandbox across commands: its record in the state directory, the supervisor
//! that keeps it alive while it runs, and the audit log entry of every action.
//!
//! Each action that changes a sandbox takes its lock, moves its record forward atomically,
//! and only then reports success, so that a command killed at any point leaves either a
//! usable sandbox or one that `airlock gc` removes:
//! - create: the record is written in phase `creating` before anything starts, and becomes
//!   `ready` only after the supervisor reports the sandbox ready. Until it receives the
//!   acknowledgement of that write, the supervisor dies with the command that started it.
//! - stop: a signal tells the supervisor to end the sandbox, and its exit makes the sandbox
//!   stopped.
//! - rm: the record moves to phase `removing` before anything is deleted.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use airlock_chroot::ChrootBackend;
use airlock_core::audit::{self, AuditLog};
use airlock_core::state::{self, Phase, ProcessRef, Record, SandboxDir, StateDir};
use airlock_core::{
    Backend, BackendError, BackendKind, EndReason, ExecCommand, Finished, HeldEnd, Outcome,
    RunOptions, SandboxId, Spec, Stats, Teardown, WorkspaceMode,
};
use airlock_docker::DockerBackend;
use airlock_namespace::{error_chain, sys, NamespaceBackend};
use airlock_nspawn::NspawnBackend;
use serde_json::{json, Map, Value};

use crate::selection::Selected;

/// Environment variable that gives the supervisor the pid of the command that started it.
pub const SUPERVISOR_PARENT_VARIABLE: &str = "AIRLOCK_SUPERVISOR_PARENT";

/// How long `stop` waits for the supervisor to end the sandbox before killing it.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("sandbox {id} is not running: start it with `airlock start {id}`")]
    NotRunning { id: String },
    #[error("sandbox {id} is past its --ttl: copy what you need with `airlock diff` and `airlock apply`, then remove it with `airlock rm {id}` or `airlock gc`")]
    Expired { id: String },
    #[error("the root filesystem {root:?} is no longer that directory (a symlink on its path, or it is gone): restore it, or remove the sandbox with `airlock rm`")]
    RootfsChanged { root: PathBuf },
    #[error("sandbox {id} is already running")]
    AlreadyRunning { id: String },
    #[error("sandbox {id} is running: stop it first, or pass --force to stop and remove it")]
    Running { id: String },
    #[error("sandbox {id} is being {phase}; wait for that command, or run `airlock gc` if it was killed")]
    Busy { id: String, phase: &'static str },
    #[error("cannot start the supervisor of sandbox {id}")]
    SpawnSupervisor {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox {id} did not start: {message}")]
    SupervisorFailed { id: String, message: String },
    #[error("cannot stop the supervisor of sandbox {id}")]
    StopSupervisor {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the project {path:?} of sandbox {id} was moved, removed or replaced by a symlink since the sandbox was created: put the project back at that path, or remove the sandbox with `airlock rm {id}`")]
    ProjectMoved { id: String, path: PathBuf },
    #[error("unknown backend {name:?} in the record of sandbox {id}")]
    UnknownBackend { id: String, name: String },
    #[error("workspace {workspace:?} overlaps Airlock's state directory {state:?}, whose records a sandbox must not read or write: pass a project directory with --workspace, or another --state-dir")]
    WorkspaceOverlapsState { workspace: PathBuf, state: PathBuf },
    #[error("no command given: pass one after `--`, for example `airlock exec {id} -- ls`")]
    NoCommand { id: String },
    #[error("--image needs --backend docker or vm: the {backend} backend runs the host's files or a --rootfs directory, not an image")]
    ImageNeedsDocker { backend: &'static str },
    #[error("--inner runs a backend inside a machine, which the {backend} backend is not: use --backend vm, or drop --inner")]
    InnerWithoutMachine { backend: &'static str },
}

/// Rejects `--inner` for a backend that provides no machine to run it in.
fn check_inner(kind: BackendKind, spec: &Spec) -> Result<(), LifecycleError> {
    match (kind, spec.inner) {
        (BackendKind::Vm, _) | (_, None) => Ok(()),
        (kind, Some(_)) => Err(LifecycleError::InnerWithoutMachine {
            backend: kind.name(),
        }),
    }
}

/// Returns the backend that a record or a command line names.
pub fn backend(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Namespace => Box::new(NamespaceBackend),
        BackendKind::Chroot => Box::new(ChrootBackend),
        BackendKind::Nspawn => Box::new(NspawnBackend),
        BackendKind::Docker => Box::new(DockerBackend),
        BackendKind::Vm => Box::new(airlock_vm::VmBackend),
    }
}

fn backend_of(record: &Record) -> Result<Box<dyn Backend>, LifecycleError> {
    let kind: BackendKind = record
        .backend
        .parse()
        .map_err(|_| LifecycleError::UnknownBackend {
            id: record.id.clone(),
            name: record.backend.clone(),
        })?;
    Ok(backend(kind))
}

/// Asks `backend` to remove what sandbox `id` of `record` may have left: with the runtime it
/// recorded, or else with the facts that an earlier start pinned.
fn clean_up(backend: Box<dyn Backend>, id: &SandboxId, runtime: Option<&Value>, record: &Record) {
    match runtime {
        Some(runtime) => backend.clean_up(id, Some(runtime)),
        None => backend.clean_up_without_runtime(id, record.pinned.as_ref()),
    }
}

fn id_of(record: &Record) -> Option<SandboxId> {
    SandboxId::parse(&record.id)
}

/// Turns a `json!({...})` object into the fields of an audit entry.
fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Describes a spec for the audit log, without the values of its variables.
fn spec_fields(spec: &Spec) -> Value {
    let mut fields = json!({
        "workspace": spec.workspace,
        "workspace_mode": spec.workspace_mode.name(),
        "rootfs": match &spec.rootfs {
            airlock_core::RootFs::HostView => Value::from("host"),
            airlock_core::RootFs::Directory(dir) => json!(dir),
        },
        "limits": spec.limits.summary(),
        "env_keys": spec.env.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>(),
        "ttl_seconds": spec.ttl.map(|ttl| ttl.as_secs()),
    });
    if let Some(image) = &spec.image {
        fields["image"] = json!(image);
    }
    fields
}

fn lossy(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect()
}

/// Builds the audit fields of a finished command.
fn exec_fields(
    argv: &[OsString],
    started: SystemTime,
    ended: SystemTime,
    outcome: &Outcome,
) -> Value {
    json!({
        "argv": lossy(argv),
        "start": audit::format_rfc3339(started),
        "end": audit::format_rfc3339(ended),
        "exit_code": outcome.exit_code,
        "signal": outcome.signal,
        "reason": outcome.reason,
        "duration_ms": outcome.duration.as_millis() as u64,
    })
}

/// The result of `run` once the command has ended.
pub struct RunResult {
    pub finished: Finished,
    /// The id of the sandbox, when it is kept because its workspace changed.
    pub kept: Option<String>,
    /// The removal of a sandbox that is not kept, still to be done.
    pub cleanup: Option<RunCleanup>,
}

/// The audit entries of one run, made only when they are written.
struct RunEntries {
    spec: Spec,
    backend: Selected,
    created: SystemTime,
    ended: SystemTime,
    /// The outcome, or the error that ended the run.
    result: Result<Outcome, String>,
    sandbox_kept: bool,
}

impl RunEntries {
    fn into_entries(self) -> Vec<audit::Pending> {
        let mut created = spec_fields(&self.spec);
        self.backend.record(&mut created);
        let mut entries = Vec::with_capacity(4);
        match &self.result {
            Ok(outcome) => {
                created["enforcement"] = json!(outcome.enforcement);
                created["landlock_abi"] = json!(outcome.landlock_abi);
                entries.push(audit::Pending::at(self.created, "created", fields(created)));
                let exec = exec_fields(&self.spec.command, self.created, self.ended, outcome);
                entries.push(audit::Pending::at(self.ended, "exec", fields(exec)));
                if outcome.reason != EndReason::Exited {
                    let limit = json!({ "limit": outcome.reason });
                    entries.push(audit::Pending::at(self.ended, "limit_hit", fields(limit)));
                }
            }
            Err(error) => {
                entries.push(audit::Pending::at(self.created, "created", fields(created)));
                let failed = json!({ "error": error });
                entries.push(audit::Pending::at(self.ended, "failed", fields(failed)));
            }
        }
        if self.sandbox_kept {
            let kept = json!({ "reason": "the workspace changed" });
            entries.push(audit::Pending::at(self.ended, "kept", fields(kept)));
        } else {
            entries.push(audit::Pending::at(self.ended, "removed", Map::new()));
        }
        entries
    }
}

/// The rest of a run once its command has ended: the backend's teardown, the audit
/// entries, and the removal or recycling of the sandbox's directory, which stays locked until
/// then so that `gc` leaves it alone.
pub struct RunCleanup {
    state: StateDir,
    sandbox: SandboxDir,
    _lock: state::SandboxLock,
    entries: RunEntries,
    teardown: Teardown,
}

impl RunCleanup {
    /// Runs the clean-up in this process.
    fn run(self) -> Result<(), BackendError> {
        let sandbox_kept = self.entries.sandbox_kept;
        let project = self
            .entries
            .spec
            .workspace
            .as_ref()
            .and_then(|project| std::fs::metadata(project).ok())
            .map(|metadata| state::RootAttributes::of(&metadata));
        self.teardown.run();
        let id = &self.sandbox.id;
        AuditLog::open(&self.state.audit_path(id), id)?.append_all(self.entries.into_entries())?;
        if !sandbox_kept {
            self.state.recycle(&self.sandbox, project)?;
        }
        Ok(())
    }

    /// Finishes the clean-up, in most cases in a child after this process exits with `code`.
    /// The caller then gets the command's status without waiting for the removal of cgroups
    /// and staging directories, the disk sync and the directory operations: about 1 ms on
    /// ext4, more when the disk was idle. The child takes over this process's memory rather
    /// than a copy of it, which spares the copy of the page tables and the faults that
    /// follow a fork.
    ///
    /// Call it last, once every output is written: nothing else runs in this process unless
    /// the clean-up runs here. That happens for the PID 1 of a PID namespace, whose exit
    /// would end the child, and for a process with other threads, which its exit would end
    /// wherever they are, such as inside the allocator. Then this returns once it is done.
    pub fn finish(self, code: u8) -> Result<(), BackendError> {
        let alone = std::process::id() != 1 && sys::thread_count() == Some(1);
        if !alone {
            return self.run();
        }
        let _ = std::io::stdout().flush();
        sys::exit_leaving(
            code.into(),
            Box::new(move || {
                // Detached from the caller's session and streams, so that neither a signal
                // for the caller's process group nor a reader waiting for end of file on its
                // output involves the child.
                let _ = sys::setsid();
                release_stdio();
                if let Ok(null) = sys::open(Path::new("/dev/null"), libc::O_RDWR) {
                    let _ = sys::dup2(null.as_raw_fd(), 2);
                }
                if self.run().is_ok() {
                    0
                } else {
                    1
                }
            }),
        )
    }
}

/// One sandbox as `airlock ls` shows it.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    pub backend: String,
    pub workspace: Option<PathBuf>,
    pub workspace_mode: String,
    pub created: String,
    pub expires: Option<String>,
    pub supervisor_pid: Option<i32>,
    pub init_pid: Option<i64>,
}

/// One action of `airlock gc` on one sandbox.
#[derive(Debug, serde::Serialize)]
pub struct Collected {
    pub id: String,
    pub action: String,
}

pub struct Engine {
    state: StateDir,
}

impl Engine {
    pub fn new(state_dir: Option<&Path>) -> Result<Engine, BackendError> {
        let state = StateDir::locate(state_dir, sys::geteuid() == 0)?;
        Ok(Engine { state })
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    fn log(&self, id: &str, event: &str, value: Value) -> Result<(), BackendError> {
        let mut log = AuditLog::open(&self.state.audit_path(id), id)?;
        log.append(event, fields(value))?;
        Ok(())
    }

    /// Runs one command in a new sandbox. The sandbox is removed afterwards unless its
    /// overlay workspace contains changes, which stay for `diff` and `apply`.
    ///
    /// Its audit entries are written together once the command has ended, with one sync.
    /// Its record is not synced at all unless the sandbox is kept. A run that a crash
    /// interrupts leaves no audit entry, and a directory that `airlock gc` removes.
    ///
    /// The removal of a sandbox that is not kept, with the writing of its audit entries, is
    /// left in [`RunResult::cleanup`], for the caller to finish after printing the result.
    pub fn run(
        &self,
        selected: &Selected,
        mut spec: Spec,
        track_stderr_line: bool,
    ) -> Result<RunResult, BackendError> {
        let kind = selected.kind;
        check_image(kind, &spec)?;
        check_inner(kind, &spec)?;
        backend(kind).availability()?;
        spec.validate()?;
        self.check_workspace(&spec)?;
        let id = SandboxId::generate()?;
        let mut record = Record::new(id.to_string(), kind.name(), spec.clone());
        record.ephemeral = true;
        record.phase = Phase::Ready;
        record.supervisor = ProcessRef::of(std::process::id() as i32);
        let (sandbox, lock) = self.state.allocate_volatile(&record)?;
        let created = SystemTime::now();
        let options = RunOptions {
            track_stderr_line,
            id: Some(id),
            layers: Some(sandbox.layers()),
            pinned: None,
        };
        let mut result = backend(kind).run(&spec, options);
        let ended = SystemTime::now();
        // The command has ended, and a signal for the caller's process group must no longer
        // end this process or the clean-up child before the audit entries are written. Such
        // signals are a Ctrl-C that a terminal sends to the whole group, and the SIGHUP that
        // the kernel sends to the terminal's foreground group when this process leads the
        // session and exits. The child is in that group until its setsid.
        sys::ignore_interruptions();
        let teardown = result
            .as_mut()
            .map(|finished| std::mem::take(&mut finished.teardown))
            .unwrap_or_default();
        let may_have_changed =
            spec.workspace_mode == WorkspaceMode::Overlay && upper_has_entries(&sandbox.upper());
        // The teardown may keep signals blocked until it runs. An upper layer with entries may
        // be kept, which needs no background work, so the teardown runs now, before a diff
        // that can take a while.
        let teardown = if may_have_changed {
            teardown.run();
            Teardown::none()
        } else {
            teardown
        };
        // A copy-up that changed nothing (a file touched, or written back as it was) leaves
        // entries in the upper layer but no change to review.
        let changed = may_have_changed
            && spec.workspace.as_ref().is_none_or(|workspace| {
                airlock_workspace::diff(workspace, &sandbox.upper())
                    .map_or(true, |changes| !changes.is_empty())
            });
        if changed {
            record.ephemeral = false;
            record.supervisor = None;
            sandbox.write_record(&record)?;
        }
        let cleanup = RunCleanup {
            state: self.state.clone(),
            sandbox,
            _lock: lock,
            entries: RunEntries {
                spec,
                backend: selected.clone(),
                created,
                ended,
                result: match &result {
                    Ok(finished) => Ok(finished.outcome.clone()),
                    Err(error) => Err(error_chain(error.as_ref())),
                },
                sandbox_kept: changed,
            },
            teardown,
        };
        let finished = match result {
            Ok(finished) => finished,
            Err(error) => {
                cleanup.run()?;
                return Err(error);
            }
        };
        if changed {
            cleanup.run()?;
            return Ok(RunResult {
                finished,
                kept: Some(record.id),
                cleanup: None,
            });
        }
        Ok(RunResult {
            finished,
            kept: None,
            cleanup: Some(cleanup),
        })
    }

    /// Rejects a workspace that is, contains or lies inside the state directory.
    fn check_workspace(&self, spec: &Spec) -> Result<(), LifecycleError> {
        let Some(workspace) = &spec.workspace else {
            return Ok(());
        };
        let canonical = workspace
            .canonicalize()
            .unwrap_or_else(|_| workspace.clone());
        if spec.workspace_mode != WorkspaceMode::None && self.state.overlaps(&canonical) {
            return Err(LifecycleError::WorkspaceOverlapsState {
                workspace: canonical,
                state: self.state.root().to_owned(),
            });
        }
        Ok(())
    }

    fn log_exec(
        &self,
        id: &str,
        argv: &[OsString],
        started: SystemTime,
        finished: &Finished,
    ) -> Result<(), BackendError> {
        let ended = SystemTime::now();
        self.log(
            id,
            "exec",
            exec_fields(argv, started, ended, &finished.outcome),
        )?;
        if finished.outcome.reason != EndReason::Exited {
            self.log(id, "limit_hit", json!({ "limit": finished.outcome.reason }))?;
        }
        Ok(())
    }

    /// Creates a sandbox that keeps running under its supervisor.
    pub fn create(&self, selected: &Selected, mut spec: Spec) -> Result<Record, BackendError> {
        let kind = selected.kind;
        check_image(kind, &spec)?;
        check_inner(kind, &spec)?;
        backend(kind).availability()?;
        spec.validate_sandbox()?;
        self.check_workspace(&spec)?;
        let id = SandboxId::generate()?;
        let mut record = Record::new(id.to_string(), kind.name(), spec.clone());
        let (sandbox, _lock) = self.state.allocate(&record)?;
        let mut created = spec_fields(&spec);
        selected.record(&mut created);
        created["name"] = json!(spec.name);
        self.log(&record.id, "created", created)?;
        if let Err(error) = self.spawn_supervisor(&sandbox, &mut record) {
            let message = error_chain(error.as_ref());
            self.log(&record.id, "failed", json!({ "error": message }))?;
            sandbox.remove()?;
            return Err(error);
        }
        Ok(record)
    }

    /// Starts a stopped sandbox again.
    pub fn start(&self, reference: &str) -> Result<Record, BackendError> {
        let (sandbox, _) = self.state.resolve(reference)?;
        let _lock = sandbox.lock()?;
        let mut record = sandbox.read_record()?;
        self.check_settled(&record)?;
        if record.is_running() {
            return Err(LifecycleError::AlreadyRunning { id: record.id }.into());
        }
        if record
            .expires
            .is_some_and(|expires| expires <= state::nanos_since_epoch(SystemTime::now()))
        {
            return Err(LifecycleError::Expired { id: record.id }.into());
        }
        self.check_workspace(&record.spec)?;
        check_project_in_place(&record)?;
        check_rootfs(&record.spec)?;
        self.clean_up_runtime(&sandbox, &mut record)?;
        self.spawn_supervisor(&sandbox, &mut record)?;
        Ok(record)
    }

    fn check_settled(&self, record: &Record) -> Result<(), LifecycleError> {
        let phase = match record.phase {
            Phase::Ready => return Ok(()),
            Phase::Creating => "created",
            Phase::Removing => "removed",
        };
        Err(LifecycleError::Busy {
            id: record.id.clone(),
            phase,
        })
    }

    /// Starts the supervisor, waits until it reports the sandbox ready, and records it.
    /// Called with the sandbox's lock held.
    fn spawn_supervisor(
        &self,
        sandbox: &SandboxDir,
        record: &mut Record,
    ) -> Result<(), BackendError> {
        let id = record.id.clone();
        let spawn_failed = |source| LifecycleError::SpawnSupervisor {
            id: id.clone(),
            source,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(sandbox.path.join("supervisor.log"))
            .map_err(spawn_failed)?;
        // The state directory and the parent travel in the environment: the sandbox's init
        // is a copy of the supervisor, and its command line is readable inside the sandbox.
        let mut child = Command::new("/proc/self/exe");
        child.env_clear();
        // The log filter, the variables through which the docker backend finds its engine's
        // socket as Docker clients do, and those through which the vm backend finds its
        // cache and the place for a guest's files, as `run` finds them. None of them reaches
        // a command: each backend builds the command's environment from the spec.
        for name in [
            "AIRLOCK_LOG",
            "DOCKER_HOST",
            "XDG_RUNTIME_DIR",
            "HOME",
            "XDG_CACHE_HOME",
            airlock_vm::cache::CACHE_DIR_VARIABLE,
            "TMPDIR",
        ] {
            if let Some(value) = std::env::var_os(name) {
                child.env(name, value);
            }
        }
        let mut child = child
            .arg("__supervise")
            .arg(&id)
            .env(state::STATE_DIR_VARIABLE, self.state.root())
            .env(SUPERVISOR_PARENT_VARIABLE, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(spawn_failed)?;
        record.supervisor = ProcessRef::of(child.id() as i32);
        sandbox.write_record(record)?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let read = stdout.read_line(&mut line);
        let line = line.trim_end();
        let Some(runtime) = line.strip_prefix("ready ").filter(|_| read.is_ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            record.supervisor = None;
            sandbox.write_record(record)?;
            let message = line
                .strip_prefix("error ")
                .map_or_else(
                    || "the supervisor exited before the sandbox was ready; see supervisor.log in the sandbox's state directory".to_owned(),
                    str::to_owned,
                );
            return Err(LifecycleError::SupervisorFailed { id, message }.into());
        };
        let runtime: Value = serde_json::from_str(runtime)?;
        record.phase = Phase::Ready;
        record.runtime = Some(runtime.clone());
        if record.pinned.is_none() {
            record.pinned = runtime
                .get("pinned")
                .filter(|pinned| !pinned.is_null())
                .cloned();
        }
        sandbox.write_record(record)?;
        let enforcement = runtime.get("enforcement").cloned().unwrap_or(Value::Null);
        let landlock_abi = runtime.get("landlock_abi").cloned().unwrap_or(Value::Null);
        let started = json!({ "enforcement": enforcement, "landlock_abi": landlock_abi });
        self.log(&id, "started", started)?;
        // The supervisor dies with this process until it has read the acknowledgement and
        // replied that it no longer does.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut held = String::new();
        stdin
            .write_all(b"ack\n")
            .and_then(|()| stdout.read_line(&mut held))
            .map_err(|source| LifecycleError::SpawnSupervisor {
                id: id.clone(),
                source,
            })?;
        if held.trim_end() != "held" {
            let message = "the supervisor exited after the sandbox was ready; see supervisor.log in the sandbox's state directory".to_owned();
            return Err(LifecycleError::SupervisorFailed { id, message }.into());
        }
        Ok(())
    }

    /// Stops a running sandbox; its files stay.
    pub fn stop(&self, reference: &str) -> Result<Record, BackendError> {
        let (sandbox, _) = self.state.resolve(reference)?;
        let _lock = sandbox.lock()?;
        let mut record = sandbox.read_record()?;
        self.check_settled(&record)?;
        if !record.is_running() {
            return Err(LifecycleError::NotRunning { id: record.id }.into());
        }
        self.stop_supervisor(&record)?;
        self.clean_up_runtime(&sandbox, &mut record)?;
        self.log(&record.id, "stopped", json!({}))?;
        Ok(record)
    }

    /// Asks the supervisor to end the sandbox and waits for it to exit, killing it after
    /// [`STOP_GRACE`].
    fn stop_supervisor(&self, record: &Record) -> Result<(), LifecycleError> {
        let Some(supervisor) = record.supervisor else {
            return Ok(());
        };
        let failed = |source| LifecycleError::StopSupervisor {
            id: record.id.clone(),
            source,
        };
        let Ok(pidfd) = sys::pidfd_open(supervisor.pid) else {
            return Ok(());
        };
        if !supervisor.is_alive() {
            return Ok(());
        }
        sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGTERM).map_err(failed)?;
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL).map_err(failed)?;
                break;
            }
            let mut fds = [libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let millis = left.as_millis().clamp(1, 1000) as libc::c_int;
            if sys::poll(&mut fds, millis).map_err(failed)? > 0 {
                break;
            }
        }
        // The pidfd is readable once the supervisor exited; wait until /proc agrees.
        while supervisor.is_alive() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Removes what a stopped sandbox's backend may have left (a cgroup, or processes of a
    /// supervisor that was killed) and clears its runtime.
    fn clean_up_runtime(
        &self,
        sandbox: &SandboxDir,
        record: &mut Record,
    ) -> Result<(), BackendError> {
        let runtime = record.runtime.take();
        if let Some(id) = id_of(record) {
            clean_up(backend_of(record)?, &id, runtime.as_ref(), record);
        }
        record.supervisor = None;
        sandbox.write_record(record)?;
        Ok(())
    }

    /// Removes a sandbox; a running one only with `force`.
    pub fn remove(&self, reference: &str, force: bool) -> Result<String, BackendError> {
        let (sandbox, _) = self.state.resolve(reference)?;
        let _lock = sandbox.lock()?;
        let mut record = sandbox.read_record()?;
        if record.is_running() {
            if !force && record.phase == Phase::Ready {
                return Err(LifecycleError::Running { id: record.id }.into());
            }
            self.stop_supervisor(&record)?;
        }
        self.remove_locked(&sandbox, &mut record, "rm")?;
        Ok(record.id)
    }

    /// Removes a sandbox whose lock the caller holds and whose supervisor is gone.
    fn remove_locked(
        &self,
        sandbox: &SandboxDir,
        record: &mut Record,
        by: &str,
    ) -> Result<(), BackendError> {
        // A ready sandbox without a runtime was stopped, and the stop cleaned up after it. A
        // second clean-up would have no runtime to say where the sandbox ran, such as the
        // engine socket of a docker sandbox. The record of a killed `airlock run` is ready
        // and without a runtime too, but nothing cleaned up after it, such as its vm guest's
        // directory.
        let cleaned_up =
            !record.ephemeral && record.phase == Phase::Ready && record.runtime.is_none();
        record.phase = Phase::Removing;
        sandbox.write_record(record)?;
        let runtime = record.runtime.take();
        if let Some(id) = id_of(record).filter(|_| !cleaned_up) {
            clean_up(backend_of(record)?, &id, runtime.as_ref(), record);
        }
        crate::changes::recover(sandbox)?;
        empty_layers(sandbox);
        sandbox.remove()?;
        self.log(&record.id, "removed", json!({ "by": by }))?;
        Ok(())
    }

    /// Returns the record and runtime of a running sandbox.
    fn running(&self, reference: &str) -> Result<(SandboxDir, Record, Value), BackendError> {
        let (sandbox, record) = self.state.resolve(reference)?;
        match (&record.runtime, record.is_running()) {
            (Some(runtime), true) => {
                let runtime = runtime.clone();
                Ok((sandbox, record, runtime))
            }
            _ => Err(LifecycleError::NotRunning { id: record.id }.into()),
        }
    }

    /// Runs a command in a running sandbox.
    pub fn exec(
        &self,
        reference: &str,
        mut command: ExecCommand,
        track_stderr_line: bool,
    ) -> Result<Finished, BackendError> {
        let (_, record, runtime) = self.running(reference)?;
        if command.argv.is_empty() {
            return Err(LifecycleError::NoCommand { id: record.id }.into());
        }
        command.timeout = command.timeout.or(record.spec.limits.timeout);
        let id = id_of(&record).ok_or_else(|| LifecycleError::NotRunning {
            id: record.id.clone(),
        })?;
        let options = RunOptions {
            track_stderr_line,
            ..RunOptions::default()
        };
        // The start entry is not synced: the final entry's sync makes both durable, and a
        // killed `exec` still leaves it in the page cache, so the log shows the attempt.
        let mut log = AuditLog::open(&self.state.audit_path(&record.id), &record.id)?;
        let start = json!({ "argv": lossy(&command.argv) });
        log.append_unsynced(vec![audit::Pending::now("exec_started", fields(start))])?;
        let started = SystemTime::now();
        let result = backend_of(&record)?.exec(&id, &record.spec, &runtime, &command, &options);
        match &result {
            Ok(finished) => self.log_exec(&record.id, &command.argv, started, finished)?,
            Err(error) => self.log(
                &record.id,
                "exec_failed",
                json!({ "argv": lossy(&command.argv), "error": error_chain(error.as_ref()) }),
            )?,
        }
        result
    }

    /// Lists the sandboxes, oldest first.
    pub fn list(&self) -> Result<Vec<Listed>, BackendError> {
        let mut listed = Vec::new();
        for (sandbox, record) in self.state.list()? {
            let Ok(record) = record else {
                listed.push(Listed {
                    id: sandbox.id,
                    name: None,
                    status: "damaged".into(),
                    backend: String::new(),
                    workspace: None,
                    workspace_mode: String::new(),
                    created: String::new(),
                    expires: None,
                    supervisor_pid: None,
                    init_pid: None,
                });
                continue;
            };
            let running = record.is_running();
            let mut status = record.status().to_owned();
            if record.ephemeral && !running {
                // The run ended. While the child that finishes its bookkeeping has the lock,
                // the directory is about to be recycled, so it is not shown. Without that
                // child, the run was killed, and `gc` removes what is left.
                if matches!(sandbox.try_lock(), Ok(None)) {
                    continue;
                }
                status = "abandoned".to_owned();
            }
            let nanos = |value: u64| {
                audit::format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_nanos(value))
            };
            listed.push(Listed {
                status,
                name: record.name.clone(),
                backend: record.backend.clone(),
                workspace: record.spec.workspace.clone(),
                workspace_mode: record.spec.workspace_mode.name().into(),
                created: nanos(record.created),
                expires: record.expires.map(nanos),
                supervisor_pid: record.supervisor.filter(|_| running).map(|s| s.pid),
                init_pid: record
                    .runtime
                    .as_ref()
                    .filter(|_| running)
                    .and_then(|runtime| runtime.pointer("/init/pid"))
                    .and_then(Value::as_i64),
                id: record.id,
            });
        }
        Ok(listed)
    }

    pub fn stats(&self, reference: &str) -> Result<(String, Stats), BackendError> {
        let (_, record, runtime) = self.running(reference)?;
        let stats = backend_of(&record)?.stats(&runtime)?;
        Ok((record.id, stats))
    }

    pub fn copy(
        &self,
        reference: &str,
        source: &Path,
        target: &Path,
        into_sandbox: bool,
    ) -> Result<(), BackendError> {
        let (_, record, runtime) = self.running(reference)?;
        backend_of(&record)?.copy(&runtime, source, target, into_sandbox)?;
        let (host, inside) = if into_sandbox {
            (source, target)
        } else {
            (target, source)
        };
        self.log(
            &record.id,
            "copy",
            json!({ "direction": if into_sandbox { "in" } else { "out" },
                    "host_path": host, "sandbox_path": inside }),
        )
    }

    /// Brings the workspace changes of a running sandbox into its upper layer on the host,
    /// for a backend whose overlay lives elsewhere, such as in a guest.
    pub fn sync_changes(&self, sandbox: &SandboxDir, record: &Record) -> Result<(), BackendError> {
        match (&record.runtime, record.is_running()) {
            (Some(runtime), true) => backend_of(record)?.sync_changes(runtime, &sandbox.layers()),
            _ => Ok(()),
        }
    }

    /// Removes what killed commands left behind, and returns what it did.
    pub fn gc(&self) -> Result<Vec<Collected>, BackendError> {
        let mut collected: Vec<Collected> = self
            .state
            .remove_abandoned_allocations()
            .into_iter()
            .map(|id| Collected {
                id,
                action: "removed a directory whose creation was interrupted".into(),
            })
            .collect();
        for (sandbox, record) in self.state.list()? {
            // One sandbox that cannot be collected must not keep gc from the others.
            if let Err(error) = self.collect(&sandbox, record, &mut collected) {
                collected.push(Collected {
                    id: sandbox.id.clone(),
                    action: format!("not collected: {}", error_chain(error.as_ref())),
                });
            }
        }
        let is_known =
            |id: &str| SandboxId::parse(id).is_some() && self.state.sandbox(id).path.exists();
        let sockets = self.docker_sockets()?;
        let root = self.state.root();
        for id in airlock_docker::resources::remove_orphans(root, &sockets, &is_known) {
            collected.push(Collected {
                id,
                action: "removed a docker container or volume whose sandbox is gone".into(),
            });
        }
        Ok(collected)
    }

    /// Returns the engine sockets that this state directory's docker sandboxes name.
    fn docker_sockets(&self) -> Result<Vec<PathBuf>, BackendError> {
        let mut sockets = Vec::new();
        for (_, record) in self.state.list()? {
            let Ok(record) = record else { continue };
            if record.backend != "docker" {
                continue;
            }
            let runtime = record.runtime.as_ref();
            let socket = airlock_docker::held::Pinned::socket_of(record.pinned.as_ref(), runtime);
            if let Some(socket) = socket.filter(|socket| !sockets.contains(socket)) {
                sockets.push(socket);
            }
        }
        Ok(sockets)
    }

    /// Collects one sandbox, unless a command holds its lock.
    fn collect(
        &self,
        sandbox: &SandboxDir,
        record: Result<Record, state::StateError>,
        collected: &mut Vec<Collected>,
    ) -> Result<(), BackendError> {
        let Some(_lock) = sandbox.try_lock()? else {
            return Ok(());
        };
        let mut record = match record {
            Ok(record) => record,
            Err(_) => {
                empty_layers(sandbox);
                sandbox.remove()?;
                collected.push(Collected {
                    id: sandbox.id.clone(),
                    action: "removed a damaged record and its workspace changes".into(),
                });
                return Ok(());
            }
        };
        let mut running = record.is_running();
        if running && !self.backend_runs(&record) {
            // The supervisor outlives its sandbox while it cleans up; wait for it.
            running = self.wait_for_supervisor(&record);
        }
        let expired = record
            .expires
            .is_some_and(|expires| expires <= state::nanos_since_epoch(SystemTime::now()));
        let unfinished = match record.phase {
            Phase::Creating | Phase::Removing => !running,
            Phase::Ready => (record.ephemeral || expired) && !running,
        };
        if unfinished {
            if let Some(supervisor) = record.supervisor.filter(ProcessRef::is_alive) {
                let _ = sys::kill(supervisor.pid, libc::SIGKILL);
            }
            let by = if expired { "ttl" } else { "gc" };
            self.remove_locked(sandbox, &mut record, by)?;
            collected.push(Collected {
                id: record.id,
                action: "removed".into(),
            });
            return Ok(());
        }
        if !running && record.runtime.is_some() {
            self.clean_up_runtime(sandbox, &mut record)?;
            collected.push(Collected {
                id: record.id.clone(),
                action: "cleaned up after a dead supervisor".into(),
            });
        }
        if crate::changes::recover(sandbox)? {
            collected.push(Collected {
                id: record.id.clone(),
                action: "removed the temporary files of an interrupted apply".into(),
            });
        }
        Ok(())
    }

    /// Returns whether the backend's sandbox of a running record still runs.
    fn backend_runs(&self, record: &Record) -> bool {
        let Some(runtime) = &record.runtime else {
            return false;
        };
        backend_of(record).is_ok_and(|backend| backend.is_running(runtime))
    }

    /// Waits up to [`STOP_GRACE`] for the supervisor of a sandbox that ended to exit;
    /// returns whether it still runs.
    fn wait_for_supervisor(&self, record: &Record) -> bool {
        let deadline = Instant::now() + STOP_GRACE;
        while record.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        record.is_running()
    }

    pub fn audit_path(&self, reference: &str) -> Result<(String, PathBuf), BackendError> {
        match self.state.resolve(reference) {
            Ok((sandbox, _)) => Ok((sandbox.id.clone(), self.state.audit_path(&sandbox.id))),
            // The audit log outlives its sandbox, so a whole id still finds it.
            Err(error) => {
                let path = self.state.audit_path(reference);
                if SandboxId::parse(reference).is_some() && path.exists() {
                    Ok((reference.to_owned(), path))
                } else {
                    Err(error.into())
                }
            }
        }
    }

    pub fn log_event(&self, id: &str, event: &str, value: Value) -> Result<(), BackendError> {
        self.log(id, event, value)
    }
}

/// Rejects an image for every backend but those that take one: docker, which runs it, and
/// vm, which builds its guest's root disk from it.
pub fn check_image(kind: BackendKind, spec: &Spec) -> Result<(), LifecycleError> {
    if spec.image.is_some() && !matches!(kind, BackendKind::Docker | BackendKind::Vm) {
        return Err(LifecycleError::ImageNeedsDocker {
            backend: kind.name(),
        });
    }
    Ok(())
}

/// Checks that a `--rootfs` directory is still the directory the spec names, with no symlink
/// on its path: its owner could otherwise point a stopped sandbox's root anywhere, `/` too.
fn check_rootfs(spec: &Spec) -> Result<(), LifecycleError> {
    let airlock_core::RootFs::Directory(root) = &spec.rootfs else {
        return Ok(());
    };
    let resolved = root.canonicalize().ok();
    if resolved.as_deref() == Some(root.as_path()) && root != Path::new("/") {
        return Ok(());
    }
    Err(LifecycleError::RootfsChanged { root: root.clone() })
}

/// Empties the overlay's layers with the workspace crate's remover, which works through
/// descriptors at a bounded depth and fixes permissions on the way: a sandbox may have left
/// a tree deeper than a path can name, or directories without permissions.
pub fn empty_layers(sandbox: &SandboxDir) {
    if sandbox.layers().is_dir() {
        let _ = airlock_workspace::discard(&sandbox.upper(), &sandbox.work());
    }
}

/// Returns whether the overlay's upper layer `upper` has entries, once its owner has
/// permission to read it. An upper layer that exists but still cannot be read counts as
/// changed, so that it is kept rather than removed unseen.
fn upper_has_entries(upper: &Path) -> bool {
    state::reopen_upper(upper).unwrap_or_else(|| upper.exists())
}

/// Runs as the supervisor process of one sandbox. It starts the sandbox, reports it ready to
/// the command that started it, then keeps it until it is stopped, its time is up, or it ends.
pub fn supervise(state_dir: Option<&Path>, id: &str, parent: i32) -> Result<(), BackendError> {
    // Until the handshake, the supervisor dies with the command that started it, so a
    // killed `create` leaves no sandbox running behind a record that does not name it.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    if sys::getppid() != parent {
        return Ok(());
    }
    // Descriptors the caller leaked to `create` (a make jobserver, a pipe someone waits on
    // for end of file) must not live as long as the sandbox.
    sys::close_all_except(&[0, 1, 2])?;
    sys::setsid()?;
    let engine = Engine::new(state_dir)?;
    let sandbox = engine.state.sandbox(id);
    let record = sandbox.read_record()?;
    let options = RunOptions {
        track_stderr_line: false,
        id: id_of(&record),
        layers: Some(sandbox.layers()),
        pinned: record.pinned.clone(),
    };
    let mut stdout = std::io::stdout();
    let mut held = match backend_of(&record)?.hold(&record.spec, &options) {
        Ok(held) => held,
        Err(error) => {
            let _ = writeln!(stdout, "error {}", error_chain(error.as_ref()));
            return Err(error);
        }
    };
    writeln!(stdout, "ready {}", held.runtime())?;
    stdout.flush()?;
    let mut ack = String::new();
    std::io::stdin().read_line(&mut ack)?;
    if ack.trim_end() != "ack" {
        return Ok(());
    }
    sys::prctl(libc::PR_SET_PDEATHSIG, 0)?;
    writeln!(stdout, "held")?;
    stdout.flush()?;
    release_stdio();
    let deadline = record.expires.map(|expires| {
        let now = state::nanos_since_epoch(SystemTime::now());
        Instant::now() + Duration::from_nanos(expires.saturating_sub(now))
    });
    let mut limit_hit = |reason: EndReason| {
        if let Err(error) = engine.log(id, "limit_hit", json!({ "limit": reason })) {
            tracing::warn!(sandbox = id, error = %error_chain(error.as_ref()), "cannot log a limit hit");
        }
    };
    sys::release_code_pages();
    let end = held.wait(deadline, &mut limit_hit)?;
    drop(held);
    match end {
        HeldEnd::Signal(_) => Ok(()),
        HeldEnd::Exited => engine.log(
            id,
            "ended",
            json!({ "reason": "the sandbox's init exited" }),
        ),
        HeldEnd::Expired => {
            engine.log(id, "expired", json!({}))?;
            let _lock = sandbox.lock()?;
            let mut record = sandbox.read_record()?;
            record.supervisor = None;
            engine.remove_locked(&sandbox, &mut record, "ttl")
        }
    }
}

/// Points the supervisor's stdin and stdout at /dev/null once the handshake is over.
fn release_stdio() {
    if let Ok(null) = sys::open(Path::new("/dev/null"), libc::O_RDWR) {
        let _ = sys::dup2(null.as_raw_fd(), 0);
        let _ = sys::dup2(null.as_raw_fd(), 1);
    }
}

/// Rejects starting a sandbox whose project is no longer a directory at its recorded path,
/// or, when Airlock runs as root, is now reached through a symlink, which creation refused.
fn check_project_in_place(record: &Record) -> Result<(), LifecycleError> {
    let spec = &record.spec;
    let Some(path) = spec.workspace.as_ref() else {
        return Ok(());
    };
    if spec.workspace_mode == WorkspaceMode::None {
        return Ok(());
    }
    let in_place = match path.canonicalize() {
        Ok(real) => real.is_dir() && (real == *path || sys::geteuid() != 0),
        Err(_) => false,
    };
    match in_place {
        true => Ok(()),
        false => Err(LifecycleError::ProjectMoved {
            id: record.id.clone(),
            path: path.clone(),
        }),
    }
}
