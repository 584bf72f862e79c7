//! `airlock exec` in a docker sandbox. The engine starts the exec wrapper
//! ([`crate::inside::exec`]) in the container. The wrapper connects to a socket of its own in
//! the run directory, and the host hands it the command as it does to the init. The wrapper
//! sheds every privilege in the command's process, as the init does, and stays its parent:
//! it relays the host's signals and reports how the command ended.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use airlock_core::{EndReason, ExecCommand, Finished, RunOptions, SandboxId, Spec, Teardown};
use airlock_namespace::cgroup::Cgroup;
use airlock_namespace::launch as shared;
use airlock_namespace::report::Report;
use airlock_namespace::{join, outcome, stdio, sys};
use bollard::exec::StartExecOptions;
use bollard::models::ExecConfig;

use crate::channel::{self, Plan, RunDir};
use crate::config;
use crate::engine::Engine;
use crate::error::Error;
use crate::held::Runtime;
use crate::protections::is_privileged;
use crate::watch::{has_final, setup_failure, Target, Watch};

/// Runs `command` in the held sandbox described by `runtime` and waits for it to end.
pub fn exec(
    id: &SandboxId,
    sandbox: &Spec,
    runtime: &Runtime,
    command: &ExecCommand,
    options: &RunOptions,
) -> Result<Finished, Error> {
    let started = Instant::now();
    let privileged = command.user.is_some_and(is_privileged);
    if privileged && !runtime.user_namespaces && !sandbox.allow_weaker {
        return Err(Error::PrivilegedExecUser);
    }
    if !runtime.init.is_alive() {
        return Err(Error::NotRunning {
            container: runtime.container.clone(),
        });
    }
    let engine = Engine::connect_to(&runtime.socket)?;
    let spec = join::command_spec(sandbox, command);
    let mut streams = stdio::Plan::new(spec.tty, options.track_stderr_line)
        .map_err(airlock_namespace::Error::Stdio)?;
    let (restore_mask, signals) = shared::block_forwarded_signals(spec.tty)?;

    let user = command.user.unwrap_or(runtime.user);
    let Connected {
        pid: wrapper,
        pidfd,
        connection,
    } = start_connected(&engine, runtime, crate::inside::EXEC_MODE, user)
        .map_err(wrapper_failed)?;
    let plan = Plan {
        command: airlock_nspawn::init::Plan {
            argv: spec.command.clone(),
            env: spec.environment(|name| std::env::var_os(name)),
            overlay: false,
            landlock: runtime.landlock_abi > 0,
            pids: spec.limits.pids.value,
            nproc_fallback: false,
            linger: false,
            terminal: false,
        },
        tty: spec.tty,
    };
    let stdio = if spec.tty {
        [stdio::SANDBOX_NULL; 3]
    } else {
        streams.child_fds
    };
    let channel = channel::hand_over(connection, stdio, &plan)?;
    streams.child_ends.clear();
    let terminal = plan.tty.then(|| channel.receive_terminal()).transpose()?;
    let mut early = channel
        .wait_until_ready(pidfd.as_raw_fd())
        .map_err(wrapper_failed)?;
    let cgroup = runtime.cgroup.as_ref().map(Cgroup::view);
    let counters_before = cgroup.as_ref().map(Cgroup::limit_counters);
    channel.go_ahead()?;
    tracing::info!(sandbox = %id, pid = wrapper, "command started in the container");

    let raw_mode = match &terminal {
        Some(master) => shared::attach_terminal(master, &mut streams)?,
        None => None,
    };
    let watched = Watch {
        process: pidfd.as_raw_fd(),
        signals: &signals,
        pumps: &mut streams.pumps,
        reports: channel.reports.as_raw_fd(),
        deadline: spec.limits.timeout.map(|timeout| Instant::now() + timeout),
        terminal: terminal.as_ref().map(AsRawFd::as_raw_fd),
        cgroup: cgroup.as_ref(),
        kill_on_limit: false,
        target: Target::Wrapper { channel: &channel },
    }
    .run()
    .map_err(Error::Wait);
    drop((raw_mode, restore_mask));
    let mut ended = watched?;
    let stderr_ends_line = streams
        .stderr_pump
        .is_none_or(|index| streams.pumps[index].ends_line());
    early.append(&mut ended.reports);
    ended.reports = early;
    check_final(&ended.reports, ended.reason)?;
    if let (Some(cgroup), Some(before), EndReason::Exited) =
        (&cgroup, counters_before, ended.reason)
    {
        let killed = ended.reports.iter().any(
            |report| matches!(report, Report::Signaled { signal } if *signal == libc::SIGKILL),
        );
        // A refused fork shows in the command's own status rather than as a kill, so the
        // process limit counts whenever it was hit during the command.
        match cgroup.limit_hit_since(before) {
            Some(EndReason::PidsLimit) => ended.reason = EndReason::PidsLimit,
            Some(reason) if killed => ended.reason = reason,
            _ => {}
        }
    }
    ended.peak_memory = None;
    let mut outcome = outcome::build(&spec, id, runtime.enforcement.clone(), ended, started)?;
    outcome.backend = "docker";
    Ok(Finished {
        outcome,
        stderr_ends_line,
        teardown: Teardown::none(),
    })
}

/// A process that the engine started in the container, connected to the host.
pub(crate) struct Connected {
    /// The process's host pid.
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub connection: OwnedFd,
}

/// Starts the Airlock binary in the container as `user`, in the hidden `mode`, and accepts
/// its connection on a new socket of the run directory. A process that exits before it
/// connects fails with [`Error::InitExited`].
pub(crate) fn start_connected(
    engine: &Engine,
    runtime: &Runtime,
    mode: &str,
    user: airlock_core::User,
) -> Result<Connected, Error> {
    let run_dir = RunDir::open(&runtime.run_dir)?;
    let prefix = mode.trim_start_matches("__docker-");
    let name = channel::unique_name(prefix)?;
    let listener = run_dir.listen(&name)?;
    let pid = start_helper(engine, runtime, mode, &name, user)?;
    let exited = |_| Error::InitExited {
        logs: String::new(),
    };
    let pidfd = sys::pidfd_open(pid).map_err(exited)?;
    let connection = listener.accept(pid, pidfd.as_raw_fd())?;
    Ok(Connected {
        pid,
        pidfd,
        connection,
    })
}

/// Starts the Airlock binary in the container as `user`, in the hidden `mode`
/// (`__docker-exec` or `__docker-cp`), listening at socket `name` of the run directory.
/// Returns its host pid.
fn start_helper(
    engine: &Engine,
    runtime: &Runtime,
    mode: &str,
    name: &str,
    user: airlock_core::User,
) -> Result<libc::pid_t, Error> {
    let socket = Path::new(config::RUN_DIR).join(name);
    let config = ExecConfig {
        cmd: Some(vec![
            config::BINARY.to_owned(),
            mode.to_owned(),
            socket.display().to_string(),
        ]),
        user: Some(format!("{}:{}", user.uid, user.gid)),
        working_dir: Some(airlock_core::spec::SANDBOX_WORKSPACE.to_owned()),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        ..ExecConfig::default()
    };
    let docker = engine.docker();
    let created = engine
        .block_on(docker.create_exec(&runtime.container, config))
        .map_err(Error::request("create the exec"))?;
    let start = StartExecOptions {
        detach: true,
        ..StartExecOptions::default()
    };
    engine
        .block_on(docker.start_exec(&created.id, Some(start)))
        .map_err(Error::request("start the exec"))?;
    let inspected = engine
        .block_on(docker.inspect_exec(&created.id))
        .map_err(Error::request("inspect the exec"))?;
    inspected
        .pid
        .and_then(|pid| libc::pid_t::try_from(pid).ok())
        .filter(|&pid| pid > 0)
        .ok_or(Error::WrapperFailed {
            reason: format!(
                "ended at once with exit code {}",
                inspected.exit_code.unwrap_or(-1)
            ),
        })
}

/// Names the wrapper in an error that the channel reports about the container's process.
fn wrapper_failed(error: Error) -> Error {
    match error {
        Error::InitExited { .. } => Error::WrapperFailed {
            reason: "exited before it connected or was ready".into(),
        },
        Error::InitSilent { seconds, .. } => Error::WrapperFailed {
            reason: format!("did not connect or report ready within {seconds} s"),
        },
        other => other,
    }
}

/// Fails when the wrapper ended without a report of how the command ended and no limit
/// explains it: its setup failed, it was killed, or its command killed it.
fn check_final(reports: &[Report], reason: EndReason) -> Result<(), Error> {
    if has_final(reports) || reason != EndReason::Exited {
        return Ok(());
    }
    Err(setup_failure(reports).unwrap_or_else(|| Error::Setup {
        step: "wait for the command".into(),
        cause: "the exec's wrapper exited without a report (killed, or killed by its command)"
            .into(),
    }))
}
