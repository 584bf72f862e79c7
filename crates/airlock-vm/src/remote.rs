//! `exec` and `stats` for a persistent vm sandbox, from processes other than its
//! supervisor: they connect to the supervisor's control socket and speak the agent's
//! protocol through it.

use std::time::{Duration, Instant};

use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_core::{ExecCommand, Finished, SandboxId, Spec, Stats, User};
use airlock_protocol::{FrameKind, Message};

use crate::client::{self, Connection};
use crate::error::Error;
use crate::exec;
use crate::held::Runtime;
use crate::interrupt::Interrupts;
use crate::launch::{self, Unfinished};

/// How long a client waits for the supervisor to accept its connection.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// Connects to the supervisor's control socket of the sandbox.
pub fn connect(runtime: &Runtime) -> Result<Connection, Error> {
    let deadline = Instant::now() + CONNECT_LIMIT;
    Connection::connect(&runtime.socket, || {
        (Instant::now() >= deadline).then(|| "the supervisor does not accept".to_owned())
    })
    .map_err(|message| Error::ControlSocket {
        path: runtime.socket.clone(),
        message,
    })
}

/// Returns the sandbox's spec with the user, variables and terminal of `command`, for the
/// inner layer that runs it.
// NOTE: each exec runs in an inner sandbox of its own, so only the guest's /workspace
// carries over from one exec to the next: the inner /tmp and processes left in the
// background end with the exec.
fn inner_spec(spec: &Spec, command: &ExecCommand) -> Spec {
    let mut inner = spec.clone();
    inner.user = command.user.or(spec.user);
    inner.env.extend(command.env.iter().cloned());
    inner.tty = command.tty;
    inner
}

/// Runs `command` in the sandbox's guest with this process's standard streams. A timeout
/// ends the connection, and the supervisor then kills the command's process group.
pub fn exec(
    id: &SandboxId,
    spec: &Spec,
    runtime: &Runtime,
    command: &ExecCommand,
) -> Result<Finished, Error> {
    let started = Instant::now();
    let mut interrupts = Interrupts::catch().map_err(Error::CatchSignals)?;
    let mut connection = connect(runtime)?;
    let user = command.user.or(spec.user).unwrap_or(User::ROOT);
    let mut env = launch::environment(spec);
    for (key, value) in &command.env {
        env.retain(|(existing, _)| existing != key);
        env.push((key.clone(), value.to_string_lossy().into_owned()));
    }
    let argv: Vec<String> = command
        .argv
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let accel = runtime.machine.accel;
    let request = if spec.inner.is_some() {
        launch::inner_request(&inner_spec(spec, command), argv, command.timeout, accel)
    } else {
        exec::Request {
            argv,
            env,
            cwd: SANDBOX_WORKSPACE.to_owned(),
            tty: command.tty,
            uid: user.uid,
            gid: user.gid,
            timeout: command.timeout,
            silence_limit: launch::silence_limit(accel),
        }
    };
    let finish = exec::run(&mut connection, request, &mut interrupts);
    let name = command.argv[0].to_string_lossy();
    let outcome = launch::to_outcome(finish.end, &name, id, started, &runtime.enforcement)
        .map_err(|unfinished| match unfinished {
            Unfinished::GuestStopped => Error::AgentFailed {
                message: "the guest stopped while the command ran".into(),
            },
            Unfinished::GuestSilent => Error::AgentFailed {
                message: "the guest sent nothing, not even its heartbeat, for too long; stop the sandbox with `airlock stop`".into(),
            },
            Unfinished::Broken(message) => Error::AgentFailed { message },
        })?;
    Ok(Finished {
        outcome,
        stderr_ends_line: finish.stderr_ends_line,
        teardown: airlock_core::Teardown::none(),
    })
}

/// Reads QEMU's resident memory and CPU time, and counts the guest's processes: the
/// commands' cgroup and the agent. The count is 0 when the agent cannot be asked.
pub fn stats(runtime: &Runtime) -> Stats {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", runtime.qemu_pid)).unwrap_or_default();
    let memory = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024);
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", runtime.qemu_pid)).unwrap_or_default();
    // Fields 14 and 15, after the command name in parentheses, are utime and stime in ticks.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|field| field.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Stats {
        memory,
        cpu_seconds: ticks as f64 / airlock_namespace::sys::clock_ticks() as f64,
        processes: guest_processes(runtime).unwrap_or(0),
    }
}

/// Returns the number of processes in the guest's commands' cgroup, plus the agent.
fn guest_processes(runtime: &Runtime) -> Option<u64> {
    let mut connection = connect(runtime).ok()?;
    let path = format!("{}/cgroup.procs", crate::agent::cgroup::WORKLOAD);
    let procs = read_guest_file(&mut connection, &path)?;
    let commands = procs.lines().filter(|line| !line.trim().is_empty()).count();
    Some(commands as u64 + 1)
}

/// Reads a small text file of the guest through the agent, or `None` when it fails.
fn read_guest_file(connection: &mut Connection, path: &str) -> Option<String> {
    let channel = connection.open_channel();
    let message = Message::ReadFile { path: path.into() };
    connection.send(channel, &message).ok()?;
    let deadline = Instant::now() + CONNECT_LIMIT;
    let mut content = Vec::new();
    loop {
        let frame = match connection.next_event(Some(deadline)) {
            client::Wait::Event(client::Event::Frame(frame)) => frame,
            _ => return None,
        };
        if frame.channel != channel {
            continue;
        }
        match frame.kind {
            FrameKind::FileData => content.extend_from_slice(&frame.payload),
            FrameKind::Message => {
                return match frame.to_message().ok()? {
                    Message::Done => Some(String::from_utf8_lossy(&content).into_owned()),
                    _ => None,
                };
            }
            _ => {}
        }
    }
}
