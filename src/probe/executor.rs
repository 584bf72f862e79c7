//! Running one probe as its own command: in a sandbox through the [`Engine`], for any
//! backend, or directly on the host as the control group. Each command runs in a child
//! process with a deadline, so a probe that hangs, crashes or is killed ends as an
//! [`Execution`] to judge, never as a failure of the whole run.

use std::ffi::{CStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_core::{
    BackendError, BackendKind, EndReason, ExecCommand, Limit, RootFs, Spec, User, WorkspaceMode,
};
use airlock_namespace::{error_chain, sys};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::host::{token, ProbeLimits};
use super::staging::Staging;
use super::Sources;
use crate::lifecycle::Engine;
use crate::selection::Selected;
use airlock_namespace::interrupt::{Interrupted, Interrupts};

/// How long one probe may run before its backend kills it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long past its timeout the host waits before it kills the process running a probe,
/// for a backend that failed to.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long the probes' sandbox lives at most: if Airlock is killed and cannot remove it,
/// the sandbox removes itself then.
const SANDBOX_TTL: Duration = Duration::from_secs(300);
/// Name of the copy of Airlock in the sandbox's workspace.
const PROBE_BINARY_NAME: &str = ".airlock-probe";
/// Maximum output kept from one probe, in bytes.
const OUTPUT_LIMIT: u64 = 1 << 20;

/// One command that runs a probe.
pub struct Invocation<'a> {
    /// The arguments after `airlock __probe NAME`.
    pub args: Vec<String>,
    /// A host terminal that becomes the probe's standard input, with a new terminal
    /// requested from the backend.
    pub terminal: Option<BorrowedFd<'a>>,
    /// Run as root inside (uid 0 of the sandbox), where the backend allows it.
    pub as_root: bool,
    pub timeout: Duration,
}

impl Invocation<'_> {
    pub fn new(args: Vec<String>) -> Invocation<'static> {
        Invocation {
            args,
            terminal: None,
            as_root: false,
            timeout: PROBE_TIMEOUT,
        }
    }
}

/// The end of a probe's command.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
    /// The backend ended it at a limit: its timeout, the memory or the process limit.
    Limit(EndReason),
    /// It could not be started, for the reason in the message.
    NotStarted(String),
    /// It still ran past its timeout and the grace period, so the host killed it.
    Killed,
}

impl Ended {
    pub fn describe(&self) -> String {
        match self {
            Ended::Exited(code) => format!("the probe exited with status {code}"),
            Ended::Signaled(signal) => format!("the probe was killed by signal {signal}"),
            Ended::Limit(EndReason::TimedOut) => "the probe timed out".to_owned(),
            Ended::Limit(EndReason::OutOfMemory) => {
                "the probe was killed at the memory limit".to_owned()
            }
            Ended::Limit(EndReason::PidsLimit) => "the probe hit the process limit".to_owned(),
            Ended::Limit(EndReason::Exited) => "the probe exited".to_owned(),
            Ended::NotStarted(message) => format!("the probe could not run: {message}"),
            Ended::Killed => "the probe hung, and the host killed it".to_owned(),
        }
    }
}

/// A probe's command after it ran: the JSON lines it printed and how it ended.
#[derive(Debug)]
pub struct Execution {
    /// The JSON objects the probe printed, one per line, in order.
    pub lines: Vec<Value>,
    pub ended: Ended,
    /// The command's standard error, for the reason of a probe without result.
    pub stderr: String,
}

impl Execution {
    /// Returns the probe's final result, when it printed one.
    pub fn result<T: DeserializeOwned>(&self) -> Option<T> {
        self.last_field("result")
    }

    /// Returns the last progress record the probe printed before it ended.
    pub fn progress<T: DeserializeOwned>(&self) -> Option<T> {
        self.last_field("progress")
    }

    fn last_field<T: DeserializeOwned>(&self, field: &str) -> Option<T> {
        let value = self.lines.iter().rev().find_map(|line| line.get(field))?;
        serde_json::from_value(value.clone()).ok()
    }

    /// Describes why there is no result: how the command ended and its last error line.
    pub fn describe_failure(&self) -> String {
        let last_error = self
            .stderr
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty());
        match last_error {
            Some(line) if !matches!(self.ended, Ended::NotStarted(_)) => {
                format!("no result: {} ({})", self.ended.describe(), line.trim())
            }
            _ => format!("no result: {}", self.ended.describe()),
        }
    }

    /// Builds the execution of a probe from its standard output and error.
    pub fn parse(stdout: &[u8], stderr: &[u8], ended: Ended) -> Execution {
        let text = String::from_utf8_lossy(stdout);
        // Through a terminal, lines end in "\r\n" and may follow echoed input.
        let lines = text
            .lines()
            .filter_map(|line| line.find('{').map(|start| &line[start..]))
            .filter_map(|line| serde_json::from_str::<Value>(line.trim_end()).ok())
            .filter(Value::is_object)
            .collect();
        Execution {
            lines,
            ended,
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }
}

/// A place where probes run: one sandbox of one backend, or the bare host.
pub trait Executor {
    /// Runs `airlock __probe PROBE ARGS` and waits for it, at most until its deadline.
    fn exec(
        &mut self,
        probe: &str,
        invocation: &Invocation<'_>,
        interrupts: &Interrupts,
    ) -> Result<Execution, Interrupted>;

    /// Ends the sandbox and removes it.
    fn end(&mut self) -> Result<(), BackendError>;
}

/// Builds the spec of the probes' sandbox: the staging workspace under an overlay, small
/// limits that the bombs run into quickly, and a time to live in case Airlock is killed.
/// Protections that the host cannot enforce are accepted, and the probes show the result.
fn probe_spec(workspace: PathBuf, sources: Sources<'_>, limits: &ProbeLimits) -> Spec {
    let mut spec = Spec::new(Vec::new());
    spec.image = sources.image.map(str::to_owned);
    if let Some(rootfs) = sources.rootfs {
        spec.rootfs = RootFs::Directory(rootfs.to_owned());
    }
    spec.workspace = Some(workspace);
    spec.workspace_mode = WorkspaceMode::Overlay;
    spec.name = Some(format!("probe-{}", token(4)));
    spec.ttl = Some(SANDBOX_TTL);
    spec.limits.memory = Limit::requested(limits.memory);
    spec.limits.pids = Limit::requested(limits.pids);
    spec.limits.tmp_size = limits.tmp_size;
    spec.limits.timeout = Some(PROBE_TIMEOUT);
    spec.allow_weaker = true;
    spec
}

/// How many times longer a probe may run in a virtual machine: under software emulation
/// (TCG) on a loaded 2-core host, the memory bomb took 10 to 20 s where the host takes 1 s.
const VM_TIMEOUT_FACTOR: u32 = 4;

/// Runs probes in one sandbox, which it creates, and removes it when ended or dropped.
pub struct SandboxExecutor<'a> {
    engine: &'a Engine,
    id: Option<String>,
    /// The factor on each probe's timeout.
    timeout_factor: u32,
}

impl<'a> SandboxExecutor<'a> {
    /// Creates the sandbox from the staging workspace and `sources`, and copies the staged
    /// binary into it.
    pub fn start(
        engine: &'a Engine,
        kind: BackendKind,
        sources: Sources<'_>,
        staging: &Staging,
        limits: &ProbeLimits,
    ) -> Result<SandboxExecutor<'a>, BackendError> {
        // The vm backend keeps a workspace's changes in guest memory, in a layer as small as
        // the probes' /tmp, so its copy of Airlock goes into the workspace image instead.
        let staged_in_workspace = kind == BackendKind::Vm;
        if staged_in_workspace {
            let staged = staging.workspace().join(PROBE_BINARY_NAME);
            std::fs::hard_link(staging.binary(), staged)?;
        }
        let spec = probe_spec(staging.workspace(), sources, limits);
        let id = engine.create(&Selected::named(kind), spec)?.id;
        // From here on, dropping the executor removes the sandbox.
        let executor = SandboxExecutor {
            engine,
            id: Some(id.clone()),
            timeout_factor: if kind == BackendKind::Vm {
                VM_TIMEOUT_FACTOR
            } else {
                1
            },
        };
        if !staged_in_workspace {
            let target = Path::new(SANDBOX_WORKSPACE).join(PROBE_BINARY_NAME);
            engine.copy(&id, &staging.binary(), &target, true)?;
        }
        Ok(executor)
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl Executor for SandboxExecutor<'_> {
    fn exec(
        &mut self,
        probe: &str,
        invocation: &Invocation<'_>,
        interrupts: &Interrupts,
    ) -> Result<Execution, Interrupted> {
        let Some(id) = self.id.clone() else {
            let ended = Ended::NotStarted("the sandbox was already removed".to_owned());
            return Ok(Execution::parse(&[], &[], ended));
        };
        let timeout = invocation.timeout * self.timeout_factor;
        let command = probe_command(probe, invocation, timeout);
        let mut capture = match Capture::new() {
            Ok(capture) => capture,
            Err(error) => return Ok(not_started("cannot capture its output", &error)),
        };

        let terminal = invocation.terminal.map(|fd| fd.as_raw_fd());
        let pid = match sys::fork() {
            Ok(0) => run_exec_child(self.engine, &id, command, &capture, terminal),
            Ok(pid) => pid,
            Err(error) => return Ok(not_started("cannot fork", &error)),
        };

        let deadline = Instant::now() + timeout + KILL_GRACE;
        let waited = wait_for_child(pid, deadline, interrupts)?;
        let summary = capture.outcome_summary();
        let ended = match waited {
            Waited::DeadlinePassed => Ended::Killed,
            Waited::Status(_) => ended_from_summary(summary.as_ref()),
        };
        Ok(capture.into_execution(ended))
    }

    fn end(&mut self) -> Result<(), BackendError> {
        if let Some(id) = self.id.take() {
            self.engine.remove(&id, true)?;
        }
        Ok(())
    }
}

impl Drop for SandboxExecutor<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.end() {
            tracing::warn!(error = %error_chain(error.as_ref()), "cannot remove the probes' sandbox");
        }
    }
}

/// Builds the exec of `airlock __probe PROBE ARGS`, run from the copy in the workspace.
fn probe_command(probe: &str, invocation: &Invocation<'_>, timeout: Duration) -> ExecCommand {
    let mut argv: Vec<OsString> = vec![
        Path::new(SANDBOX_WORKSPACE).join(PROBE_BINARY_NAME).into(),
        "__probe".into(),
        probe.into(),
    ];
    argv.extend(invocation.args.iter().map(OsString::from));
    ExecCommand {
        argv,
        env: Vec::new(),
        tty: invocation.terminal.is_some(),
        timeout: Some(timeout),
        user: invocation.as_root.then_some(User::ROOT),
    }
}

fn not_started(step: &str, error: &io::Error) -> Execution {
    Execution::parse(&[], &[], Ended::NotStarted(format!("{step}: {error}")))
}

/// Runs one `exec` through the engine in a child process, which the host can kill at its
/// deadline. The child leaves Airlock's session, so that neither the caller's terminal nor
/// its signals reach the probe, and it never returns into the parent's code.
fn run_exec_child(
    engine: &Engine,
    id: &str,
    command: ExecCommand,
    capture: &Capture,
    terminal: Option<RawFd>,
) -> ! {
    let _ = sys::setsid();
    let null = sys::open(Path::new("/dev/null"), libc::O_RDWR);
    let stdin = match (terminal, &null) {
        (Some(terminal), _) => terminal,
        (None, Ok(null)) => null.as_raw_fd(),
        (None, Err(_)) => -1,
    };
    let _ = sys::dup2(stdin, 0);
    let _ = sys::dup2(capture.stdout.as_raw_fd(), 1);
    let _ = sys::dup2(capture.stderr.as_raw_fd(), 2);
    if terminal.is_some() {
        let _ = sys::ioctl_int(0, libc::TIOCSCTTY, 0);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.exec(id, command, false)
    }));
    let summary = match result {
        Ok(Ok(finished)) => {
            let outcome = finished.outcome;
            json!({
                "exit_code": outcome.exit_code,
                "signal": outcome.signal,
                "reason": outcome.reason,
                "exec_failure": outcome.exec_failure,
            })
        }
        Ok(Err(error)) => json!({ "error": error_chain(error.as_ref()) }),
        Err(_) => json!({ "error": "the exec panicked" }),
    };
    let _ = sys::write_all(capture.outcome.as_raw_fd(), summary.to_string().as_bytes());
    sys::exit_now(0)
}

/// Turns the exec child's summary of the outcome into how the probe ended.
fn ended_from_summary(summary: Option<&Value>) -> Ended {
    let Some(summary) = summary else {
        return Ended::NotStarted("the exec ended without an outcome".to_owned());
    };
    if let Some(error) = summary.get("error").and_then(Value::as_str) {
        return Ended::NotStarted(error.to_owned());
    }
    if let Some(failure) = summary.get("exec_failure").filter(|value| !value.is_null()) {
        return Ended::NotStarted(format!("the copy of Airlock could not execute: {failure}"));
    }
    let reason: EndReason = match summary.get("reason").and_then(Value::as_str) {
        Some("timed_out") => EndReason::TimedOut,
        Some("out_of_memory") => EndReason::OutOfMemory,
        Some("pids_limit") => EndReason::PidsLimit,
        _ => EndReason::Exited,
    };
    if reason != EndReason::Exited {
        return Ended::Limit(reason);
    }
    let number = |field: &str| summary.get(field).and_then(Value::as_i64);
    match (number("signal"), number("exit_code")) {
        (Some(signal), _) => Ended::Signaled(signal as i32),
        (None, Some(code)) => Ended::Exited(code as i32),
        (None, None) => Ended::NotStarted("the exec reported no status".to_owned()),
    }
}

/// Runs probes directly on the host, as the control group: each should escape.
pub struct UnconfinedExecutor {
    workspace: PathBuf,
    is_root: bool,
}

impl UnconfinedExecutor {
    pub fn new(workspace: PathBuf, is_root: bool) -> UnconfinedExecutor {
        UnconfinedExecutor { workspace, is_root }
    }
}

impl Executor for UnconfinedExecutor {
    fn exec(
        &mut self,
        probe: &str,
        invocation: &Invocation<'_>,
        interrupts: &Interrupts,
    ) -> Result<Execution, Interrupted> {
        if invocation.as_root && !self.is_root {
            let message = "outside a sandbox the probe runs as the caller, who is not root";
            return Ok(Execution::parse(
                &[],
                &[],
                Ended::NotStarted(message.into()),
            ));
        }
        let capture = match Capture::new() {
            Ok(capture) => capture,
            Err(error) => return Ok(not_started("cannot capture its output", &error)),
        };
        let spawned = spawn_unconfined(probe, invocation, &self.workspace, &capture);
        let child = match spawned {
            Ok(child) => child,
            Err(error) => return Ok(not_started("cannot start it", &error)),
        };
        let deadline = Instant::now() + invocation.timeout;
        let ended = match wait_for_child(child.id() as libc::pid_t, deadline, interrupts)? {
            Waited::DeadlinePassed => Ended::Limit(EndReason::TimedOut),
            Waited::Status(status) if libc::WIFSIGNALED(status) => {
                Ended::Signaled(libc::WTERMSIG(status))
            }
            Waited::Status(status) => Ended::Exited(libc::WEXITSTATUS(status)),
        };
        Ok(capture.into_execution(ended))
    }

    fn end(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Starts `airlock __probe` on the host in the workspace, in a session of its own whose
/// controlling terminal is the invocation's terminal, if it has one.
fn spawn_unconfined(
    probe: &str,
    invocation: &Invocation<'_>,
    workspace: &Path,
    capture: &Capture,
) -> io::Result<std::process::Child> {
    let stdin = match invocation.terminal {
        Some(terminal) => Stdio::from(terminal.try_clone_to_owned()?),
        None => Stdio::null(),
    };
    let has_terminal = invocation.terminal.is_some();
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("__probe")
        .arg(probe)
        .args(&invocation.args)
        .current_dir(workspace)
        .stdin(stdin)
        .stdout(capture.stdout.try_clone()?)
        .stderr(capture.stderr.try_clone()?);
    // SAFETY: the closure runs in the forked child before it executes the binary, and makes
    // only async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            // The probe gets none of the interrupts that Airlock holds back.
            sys::set_signal_mask(libc::SIG_SETMASK, &sys::sigset(&[]))?;
            sys::setsid()?;
            if has_terminal {
                sys::ioctl_int(0, libc::TIOCSCTTY, 0)?;
            }
            Ok(())
        });
    }
    command.spawn()
}

/// The end of the wait for a child.
enum Waited {
    /// The child exited with this wait status.
    Status(libc::c_int),
    /// The deadline passed, and the child was killed and reaped.
    DeadlinePassed,
}

/// Waits for the child `pid` until `deadline`; kills and reaps it when the deadline passes
/// or an interrupt arrives.
fn wait_for_child(
    pid: libc::pid_t,
    deadline: Instant,
    interrupts: &Interrupts,
) -> Result<Waited, Interrupted> {
    let pidfd = sys::pidfd_open(pid).ok();
    loop {
        if let Ok(Some((_, status))) = sys::waitpid(pid, libc::WNOHANG) {
            return Ok(Waited::Status(status));
        }
        let stop = |waited| {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, 0);
            waited
        };
        if let Some(signal) = interrupts.pending() {
            return stop(Err(Interrupted(signal)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return stop(Ok(Waited::DeadlinePassed));
        }
        let slice = left.min(Duration::from_millis(100)).as_millis().max(1) as libc::c_int;
        match &pidfd {
            Some(pidfd) => {
                let mut fds = [libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                let _ = sys::poll(&mut fds, slice);
            }
            None => std::thread::sleep(Duration::from_millis(slice as u64)),
        }
    }
}

/// Memory files that receive a probe's standard output and error, and the exec child's
/// summary of the outcome. They are files, not pipes, so a process the probe leaves behind
/// cannot hold the reading end open.
struct Capture {
    stdout: File,
    stderr: File,
    outcome: File,
}

impl Capture {
    fn new() -> io::Result<Capture> {
        Ok(Capture {
            stdout: memory_file(c"airlock-probe-stdout")?,
            stderr: memory_file(c"airlock-probe-stderr")?,
            outcome: memory_file(c"airlock-probe-outcome")?,
        })
    }

    fn outcome_summary(&mut self) -> Option<Value> {
        let bytes = read_back(&mut self.outcome);
        serde_json::from_slice(&bytes).ok()
    }

    fn into_execution(mut self, ended: Ended) -> Execution {
        let stdout = read_back(&mut self.stdout);
        let stderr = read_back(&mut self.stderr);
        Execution::parse(&stdout, &stderr, ended)
    }
}

fn memory_file(name: &CStr) -> io::Result<File> {
    // SAFETY: `name` is NUL-terminated; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is fresh, so the file is its only owner.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Reads a capture file from its start, up to [`OUTPUT_LIMIT`] bytes.
fn read_back(file: &mut File) -> Vec<u8> {
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(0)).is_ok() {
        let _ = file.take(OUTPUT_LIMIT).read_to_end(&mut bytes);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn output_through_terminal_parsed() {
        let stdout =
            b"echoed{\"progress\":{\"n\":1}}\r\n{\"probe\":\"x\",\"result\":{\"n\":2}}\r\n";
        let execution = Execution::parse(stdout, b"", Ended::Exited(0));
        let progress: Value = execution.progress().expect("a progress line");
        let result: Value = execution.result().expect("a result line");
        assert_eq!(progress["n"], 1);
        assert_eq!(result["n"], 2);
    }

    #[test]
    fn capture_reads_from_start() {
        let mut capture = Capture::new().unwrap();
        writeln!(capture.stdout, "{{\"result\":{{\"n\":3}}}}").unwrap();
        let execution = capture.into_execution(Ended::Exited(0));
        let result: Value = execution.result().unwrap();
        assert_eq!(result["n"], 3);
    }

    #[test]
    fn summary_with_signal_ends_signaled() {
        let summary = json!({ "exit_code": null, "signal": 9, "reason": "exited" });
        assert_eq!(ended_from_summary(Some(&summary)), Ended::Signaled(9));
        let limit = json!({ "exit_code": 0, "signal": null, "reason": "pids_limit" });
        assert_eq!(
            ended_from_summary(Some(&limit)),
            Ended::Limit(EndReason::PidsLimit)
        );
    }
}
