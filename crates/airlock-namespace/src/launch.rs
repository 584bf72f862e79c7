//! The launcher: the caller's side of a run. It prepares everything that can fail before the
//! sandbox exists, starts the init in new namespaces, finishes the outside setup (ID maps,
//! cgroup), then relays streams and signals and enforces the timeout and limits until the
//! init exits.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use airlock_core::{
    EndReason, Enforcement, ExecFailure, Finished, Outcome, RunOptions, SandboxId, Spec, Status,
};

use crate::cgroup::{self, Cgroup};
use crate::error::Error;
use crate::protections::{self, Assessment};
use crate::relay::Pump;
use crate::report::{self, Report};
use crate::{init, landlock, seccomp, stdio, sys, tty, userns, workload};

/// How often the launcher checks the cgroup for a limit that was hit.
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_millis(50);

const NAMESPACES: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC;

/// The init process, killed and reaped when dropped before it exits on its own.
struct Sandbox {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    status: Option<libc::c_int>,
}

impl Sandbox {
    fn kill(&self) {
        let _ = sys::kill(self.pid, libc::SIGKILL);
    }

    fn reap(&mut self) -> Option<libc::c_int> {
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
        if self.status.is_none() {
            self.kill();
            let _ = sys::waitpid(self.pid, 0);
        }
    }
}

/// Checks that this process has one thread, so that cloning it is safe.
fn ensure_single_threaded() -> Result<(), Error> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .unwrap_or(1);
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

fn workload_plan(
    spec: &Spec,
    assessment: &Assessment,
    landlock_abi: u32,
) -> Result<workload::Plan, Error> {
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
        deny_filter: seccomp::deny_filter().map_err(Error::Seccomp)?,
        clone3_filter: seccomp::clone3_filter().map_err(Error::Seccomp)?,
        landlock: landlock_abi > 0,
        nproc_rlimit: assessment.nproc_rlimit,
    })
}

fn apply_limits(cgroup: &Cgroup, spec: &Spec) -> Result<(), Error> {
    cgroup
        .set_memory(spec.limits.memory.value)
        .map_err(Error::Cgroup)?;
    cgroup
        .set_pids(spec.limits.pids.value)
        .map_err(Error::Cgroup)?;
    if let Some(cpus) = spec.limits.cpus.value {
        cgroup.set_cpus(cpus).map_err(Error::Cgroup)?;
    }
    Ok(())
}

fn check_required(enforcement: &Enforcement, allow_weaker: bool) -> Result<(), Error> {
    let unmet: Vec<String> = enforcement.unmet().map(ToString::to_string).collect();
    if unmet.is_empty() {
        return Ok(());
    }
    if allow_weaker {
        for protection in enforcement.unmet() {
            tracing::warn!(%protection, "running with weaker isolation than requested");
        }
        return Ok(());
    }
    Err(Error::WeakerThanRequired {
        unmet: unmet.join("; "),
    })
}

/// Runs `spec` in a new namespace sandbox and waits for it to end.
pub fn run(spec: &Spec, options: RunOptions) -> Result<Finished, Error> {
    let started = Instant::now();
    ensure_single_threaded()?;
    let id = SandboxId::generate().map_err(Error::Id)?;
    let (uid, gid) = (sys::geteuid(), sys::getegid());
    let is_root = uid == 0;

    // NOTE: the init dies with the launcher (PR_SET_PDEATHSIG), so a killed launcher leaves no
    // process behind, but its empty cgroup directory stays until it is removed by hand.
    let cgroup =
        Cgroup::create(&format!("airlock-{}", id.short()), is_root).map_err(Error::Cgroup)?;
    if let Some(cgroup) = &cgroup {
        apply_limits(cgroup, spec)?;
    }
    let landlock_abi = landlock::effective_abi();
    let assessment = protections::assess(spec, cgroup.as_ref(), landlock_abi, is_root);
    check_required(&assessment.enforcement, spec.allow_weaker)?;
    let workload = workload_plan(spec, &assessment, landlock_abi)?;

    let mut streams =
        stdio::Plan::new(spec.tty, options.track_stderr_line).map_err(Error::Stdio)?;
    let (sync_read, sync_write) = sys::pipe().map_err(Error::Channel)?;
    let (report_read, report_write) = sys::pipe().map_err(Error::Channel)?;
    let pty_sockets = spec
        .tty
        .then(tty::socketpair)
        .transpose()
        .map_err(Error::Channel)?;
    let mut forwarded = init::FORWARDED_SIGNALS.to_vec();
    if spec.tty {
        forwarded.push(libc::SIGWINCH);
    }
    let forwarded = sys::sigset(&forwarded);
    let old_mask = sys::set_signal_mask(libc::SIG_BLOCK, &forwarded).map_err(Error::Signals)?;
    let restore_mask = RestoreMask(old_mask);
    let signals = sys::signalfd(&forwarded).map_err(Error::Signals)?;

    let (pty_outside, pty_inside) = match pty_sockets {
        Some((outside, inside)) => (Some(outside), Some(inside)),
        None => (None, None),
    };
    let cgroup_entry = cgroup
        .as_ref()
        .map(Cgroup::entry)
        .transpose()
        .map_err(Error::Cgroup)?;
    let clone_into = match &cgroup_entry {
        Some(cgroup::Entry::CloneInto(dir)) => Some(dir.as_raw_fd()),
        _ => None,
    };
    let pid = match sys::clone_process(NAMESPACES, clone_into) {
        Ok(0) => {
            drop((sync_write, report_read, pty_outside));
            init::run(init::Plan {
                spec,
                hostname: format!("airlock-{}", id.short()),
                is_root,
                sync: sync_read,
                cgroup: cgroup_entry.as_ref(),
                report: report_write,
                pty_socket: pty_inside,
                stdio: streams.child_fds,
                workload: &workload,
            })
        }
        Ok(pid) => pid,
        Err(source) => {
            let errno = source.raw_os_error().unwrap_or(0);
            return Err(match userns::diagnose(errno, is_root) {
                Some(disabled) => Error::UserNamespace(disabled),
                None => Error::Clone(source),
            });
        }
    };
    drop((sync_read, report_write, pty_inside));
    streams.child_ends.clear();
    let pidfd = sys::pidfd_open(pid).map_err(Error::Wait)?;
    let mut sandbox = Sandbox {
        pid,
        pidfd,
        status: None,
    };
    tracing::info!(sandbox = %id, backend = "namespace", pid, "sandbox created");

    drop(cgroup_entry);
    userns::write_maps(pid, uid, gid, is_root).map_err(Error::UserNamespace)?;
    sys::write_all(sync_write.as_raw_fd(), b"1").map_err(Error::Channel)?;
    drop(sync_write);

    let mut master: Option<OwnedFd> = None;
    let mut _raw_mode = None;
    if let Some(socket) = &pty_outside {
        master = tty::recv_fd(socket.as_raw_fd()).map_err(Error::Terminal)?;
    }
    if let Some(master) = &master {
        _raw_mode = tty::RawMode::enter(0).map_err(Error::Terminal)?;
        tty::copy_window_size(master.as_raw_fd());
        streams.attach_terminal(master).map_err(Error::Terminal)?;
    }

    let deadline = spec.limits.timeout.map(|timeout| Instant::now() + timeout);
    let mut monitor = Monitor {
        sandbox: &mut sandbox,
        signals: &signals,
        pumps: &mut streams.pumps,
        cgroup: cgroup.as_ref(),
        deadline,
        reason: EndReason::Exited,
        terminal: master.as_ref().map(AsRawFd::as_raw_fd),
    };
    let status = monitor.run().map_err(Error::Wait)?;
    let mut reason = monitor.reason;
    if reason == EndReason::Exited {
        // The kernel may have killed the command for a limit before the last check.
        reason = cgroup
            .as_ref()
            .and_then(Cgroup::limit_hit)
            .unwrap_or(reason);
    }
    let stderr_ends_line = streams
        .stderr_pump
        .is_none_or(|index| streams.pumps[index].ends_line());
    drop(restore_mask);

    let reports = report::read_all(report_read.as_raw_fd()).map_err(Error::Channel)?;
    let peak_memory = cgroup
        .as_ref()
        .and_then(Cgroup::peak_memory)
        .or_else(|| Some(sys::children_max_rss()));
    let outcome = build_outcome(
        spec,
        &id,
        assessment.enforcement,
        reason,
        status,
        &reports,
        started,
        peak_memory,
    )?;
    tracing::info!(sandbox = %id, reason = ?outcome.reason, code = ?outcome.exit_code, signal = ?outcome.signal, "sandbox ended");
    drop(sandbox);
    drop(cgroup);
    Ok(Finished {
        outcome,
        stderr_ends_line,
    })
}

/// Restores the launcher's signal mask when dropped.
struct RestoreMask(libc::sigset_t);

impl Drop for RestoreMask {
    fn drop(&mut self) {
        let _ = sys::set_signal_mask(libc::SIG_SETMASK, &self.0);
    }
}

#[allow(clippy::too_many_arguments)]
fn build_outcome(
    spec: &Spec,
    id: &SandboxId,
    mut enforcement: Enforcement,
    reason: EndReason,
    status: libc::c_int,
    reports: &[Report],
    started: Instant,
    peak_memory: Option<u64>,
) -> Result<Outcome, Error> {
    let mut exit_code = None;
    let mut signal = None;
    let mut exec_failure = None;
    let mut landlock_abi = None;
    for report in reports {
        match report {
            Report::SetupFailed { step, error } => {
                return Err(Error::Setup {
                    step: step.clone(),
                    cause: error.clone(),
                })
            }
            Report::Landlock {
                abi,
                fully_enforced,
            } => {
                landlock_abi = Some(*abi);
                if !fully_enforced {
                    mark_landlock_partial(&mut enforcement, *abi);
                }
            }
            Report::ExecFailed { errno } => exec_failure = Some(exec_failure_of(spec, *errno)),
            Report::Exited { code } => exit_code = Some(*code),
            Report::Signaled { signal: number } => signal = Some(*number),
        }
    }
    if exit_code.is_none() && signal.is_none() && reason == EndReason::Exited {
        // The init died without a report, which only an outside kill causes.
        return Err(Error::InitDied { status });
    }
    if reason != EndReason::Exited && exit_code.is_none() {
        signal = signal.or(Some(libc::SIGKILL));
    }
    Ok(Outcome {
        sandbox_id: id.to_string(),
        backend: "namespace",
        reason,
        exit_code,
        signal,
        duration: started.elapsed(),
        peak_memory,
        exec_failure,
        landlock_abi,
        enforcement,
    })
}

fn mark_landlock_partial(enforcement: &mut Enforcement, abi: u32) {
    if let Some(protection) = enforcement.0.iter_mut().find(|p| p.rule == "landlock") {
        protection.status = Status::Partial(format!(
            "the kernel enforced part of the rules at ABI {abi}"
        ));
    }
}

fn exec_failure_of(spec: &Spec, errno: i32) -> ExecFailure {
    let command = spec
        .command
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    match errno {
        libc::ENOENT | libc::ENOTDIR => ExecFailure::NotFound { command },
        _ => ExecFailure::NotExecutable {
            command,
            error: io::Error::from_raw_os_error(errno).to_string(),
        },
    }
}

/// The launcher's wait loop.
struct Monitor<'a> {
    sandbox: &'a mut Sandbox,
    signals: &'a OwnedFd,
    pumps: &'a mut Vec<Pump>,
    cgroup: Option<&'a Cgroup>,
    deadline: Option<Instant>,
    reason: EndReason,
    terminal: Option<i32>,
}

impl Monitor<'_> {
    /// Waits until the init has exited and every output relay has drained; returns the init's
    /// wait status.
    fn run(&mut self) -> io::Result<libc::c_int> {
        loop {
            let exited = self.sandbox.reap();
            let outputs_open = self
                .pumps
                .iter()
                .any(|pump| !pump.is_input && !pump.is_done());
            if let Some(status) = exited {
                if !outputs_open {
                    return Ok(status);
                }
            }
            self.poll_once(exited.is_some())?;
            if exited.is_none() {
                self.enforce_limits();
            }
        }
    }

    fn poll_once(&mut self, exited: bool) -> io::Result<()> {
        let mut fds = vec![
            libc::pollfd {
                fd: self.sandbox.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut owners = Vec::new();
        for (index, pump) in self.pumps.iter().enumerate() {
            if exited && pump.is_input {
                continue;
            }
            if let Some(interest) = pump.interest() {
                fds.push(interest);
                owners.push(index);
            }
        }
        if exited {
            fds[0].fd = -1;
        }
        sys::poll(&mut fds, self.poll_timeout())?;
        if fds[1].revents != 0 {
            self.forward_signals()?;
        }
        for (pollfd, &index) in fds[2..].iter().zip(&owners) {
            self.pumps[index].service(pollfd.revents);
        }
        Ok(())
    }

    fn poll_timeout(&self) -> libc::c_int {
        let mut timeout = self.cgroup.map(|_| LIMIT_CHECK_INTERVAL);
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        timeout.map_or(-1, |t| t.as_millis().max(1) as libc::c_int)
    }

    fn forward_signals(&mut self) -> io::Result<()> {
        while let Some(signal) = sys::read_signalfd(self.signals)? {
            if signal == libc::SIGWINCH {
                if let Some(master) = self.terminal {
                    tty::copy_window_size(master);
                }
                continue;
            }
            tracing::debug!(signal, "forwarding signal to the sandbox");
            let _ = sys::kill(self.sandbox.pid, signal);
        }
        Ok(())
    }

    fn enforce_limits(&mut self) {
        if self.reason != EndReason::Exited {
            return;
        }
        let hit = match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Some(EndReason::TimedOut),
            _ => self.cgroup.and_then(Cgroup::limit_hit),
        };
        if let Some(reason) = hit {
            tracing::info!(?reason, "limit hit, killing the sandbox");
            self.reason = reason;
            self.sandbox.kill();
        }
    }
}
