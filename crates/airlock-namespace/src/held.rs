//! Held sandboxes: a sandbox started without a command, kept alive by its supervisor
//! process, which later `airlock exec` commands join.
//!
//! The supervisor is the init's parent. It starts the sandbox with [`start`], records the
//! [`Runtime`] that joining needs, and waits in [`Held::wait`] until a signal stops it,
//! the sandbox's time is up, or the init dies. Dropping the [`Held`] kills the init, which
//! takes every process of the sandbox with it, and removes the cgroup.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use airlock_core::state::ProcessRef;
use airlock_core::{EndReason, Enforcement, HeldEnd, HeldSandbox, RunOptions, Spec, Stats};
use serde::{Deserialize, Serialize};

use crate::cgroup::{self, Cgroup};
use crate::control;
use crate::error::Error;
use crate::init::JOINED_NAMESPACES;
use crate::launch::{self, Launched};
use crate::report::{Report, ReportReader};
use crate::sys;

/// How often the supervisor checks the cgroup for a limit that was hit.
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Facts about a running held sandbox that later commands need, stored in its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    /// The sandbox's PID 1, whose namespaces `exec` joins.
    pub init: ProcessRef,
    pub cgroup: Option<cgroup::Description>,
    /// Whether the sandbox was started by root, which changes how its ids are mapped.
    pub is_root: bool,
    /// The Landlock ABI the kernel offers, 0 without Landlock.
    pub landlock_abi: u32,
    /// Whether the process limit is set as RLIMIT_NPROC, for lack of a pids cgroup.
    pub nproc_fallback: bool,
    pub enforcement: Enforcement,
    /// Inode of the sandbox's PID namespace, which identifies its processes.
    pub pid_namespace: u64,
    /// The supervisor, which keeps descriptors of the sandbox's namespaces open.
    pub supervisor: ProcessRef,
    /// The supervisor's descriptor numbers of the namespaces in
    /// [`crate::init::JOINED_NAMESPACES`] order, for `exec` to open through /proc.
    pub namespace_fds: Vec<i32>,
}

/// A running held sandbox, owned by its supervisor.
pub struct Held {
    launched: Launched,
    runtime: Runtime,
    /// The sandbox's namespaces, kept open for `exec`.
    _namespaces: Vec<OwnedFd>,
    /// Limits already reported, so each is reported once.
    reported: Vec<EndReason>,
}

/// Starts a sandbox for `spec` without a command and waits until it is ready.
pub fn start(spec: &Spec, options: &RunOptions) -> Result<Held, Error> {
    let mut launched = launch::launch(spec, options, true)?;
    let namespaces = wait_until_ready(&mut launched)?;
    let supervisor =
        ProcessRef::of(std::process::id() as i32).ok_or(Error::InitDied { status: 0 })?;
    let init = ProcessRef::of(launched.sandbox.pid).ok_or(Error::InitDied { status: 0 })?;
    let pid_namespace = launched
        .pid_namespace
        .ok_or(Error::InitDied { status: 0 })?;
    let runtime = Runtime {
        init,
        cgroup: launched.sandbox.cgroup.as_ref().map(Cgroup::describe),
        is_root: launched.is_root,
        landlock_abi: launched.landlock_abi,
        nproc_fallback: launched.nproc_fallback,
        enforcement: launched.enforcement.clone(),
        pid_namespace,
        supervisor,
        namespace_fds: namespaces.iter().map(AsRawFd::as_raw_fd).collect(),
    };
    tracing::info!(sandbox = %launched.id, pid = launched.sandbox.pid, "held sandbox ready");
    Ok(Held {
        launched,
        runtime,
        _namespaces: namespaces,
        reported: Vec::new(),
    })
}

/// Reads the init's reports until it reports that it is ready, and turns a failed setup into the
/// error that names the step. Returns the namespaces the init sent.
fn wait_until_ready(launched: &mut Launched) -> Result<Vec<OwnedFd>, Error> {
    let mut reports = ReportReader::new(launched.channels.report.as_raw_fd());
    loop {
        for report in reports.take() {
            match report {
                Report::Ready => return receive_namespaces(launched),
                Report::SetupFailed { step, error } => {
                    return Err(Error::Setup { step, cause: error })
                }
                _ => {}
            }
        }
        if let Some(status) = launched.sandbox.reap() {
            return Err(Error::InitDied { status });
        }
        let watch = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [
            watch(reports.fd()),
            watch(launched.sandbox.pidfd.as_raw_fd()),
        ];
        sys::poll(&mut fds, -1).map_err(Error::Wait)?;
        reports.read_available().map_err(Error::Wait)?;
    }
}

/// Receives the init's namespace descriptors, which it sends before it reports ready.
fn receive_namespaces(launched: &Launched) -> Result<Vec<OwnedFd>, Error> {
    let message = control::recv(launched.channels.control.as_raw_fd()).map_err(Error::Channel)?;
    match message {
        Some((payload, fds)) if payload == b"n" && fds.len() == JOINED_NAMESPACES.len() => Ok(fds),
        _ => Err(Error::Setup {
            step: "receive the sandbox's namespaces".into(),
            cause: "the init sent no namespaces".into(),
        }),
    }
}

impl HeldSandbox for Held {
    fn runtime(&self) -> serde_json::Value {
        serde_json::to_value(&self.runtime).expect("runtimes always serialize")
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        limit_hit: &mut dyn FnMut(EndReason),
    ) -> io::Result<HeldEnd> {
        let pidfd = self.launched.sandbox.pidfd.as_raw_fd();
        loop {
            if self.launched.sandbox.reap().is_some() {
                return Ok(HeldEnd::Exited);
            }
            let cgroup = self.launched.sandbox.cgroup.as_ref();
            report_new_limit(cgroup, &mut self.reported, limit_hit);
            if let Some(end) = wait_step(pidfd, &self.launched.signals, deadline)? {
                return Ok(end);
            }
        }
    }
}

/// Calls `limit_hit` for a limit of `cgroup` that its processes ran into, unless it is in
/// `reported` already, so each limit is reported once.
pub fn report_new_limit(
    cgroup: Option<&Cgroup>,
    reported: &mut Vec<EndReason>,
    limit_hit: &mut dyn FnMut(EndReason),
) {
    let Some(reason) = cgroup.and_then(Cgroup::limit_hit) else {
        return;
    };
    if !reported.contains(&reason) {
        reported.push(reason);
        limit_hit(reason);
    }
}

/// Waits until the process of `pidfd` ends, the signalfd `signals` has a signal, `deadline`
/// passes, or the limit check interval is over. Returns why the held sandbox's wait ends, or
/// `None` to check again.
pub fn wait_step(
    pidfd: RawFd,
    signals: &OwnedFd,
    deadline: Option<Instant>,
) -> io::Result<Option<HeldEnd>> {
    let now = Instant::now();
    if deadline.is_some_and(|deadline| now >= deadline) {
        return Ok(Some(HeldEnd::Expired));
    }
    let mut timeout = LIMIT_CHECK_INTERVAL;
    if let Some(deadline) = deadline {
        timeout = timeout.min(deadline.saturating_duration_since(now));
    }
    let watch = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [watch(pidfd), watch(signals.as_raw_fd())];
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    sys::poll(&mut fds, millis)?;
    if fds[1].revents != 0 {
        if let Some(signal) = sys::read_signalfd(signals)? {
            return Ok(Some(HeldEnd::Signal(signal)));
        }
    }
    Ok(None)
}

/// Reads what the running sandbox uses: the cgroup's memory counter where there is one, else
/// the resident memory of its processes, and the CPU time and number of its processes.
pub fn stats(runtime: &Runtime) -> Result<Stats, Error> {
    if !runtime.init.is_alive() {
        return Err(Error::NotRunning {
            pid: runtime.init.pid,
        });
    }
    let page_size = sys::page_size();
    let ticks = sys::clock_ticks() as f64;
    let mut stats = Stats::default();
    let mut resident = 0;
    let mut init_counted = false;
    for entry in std::fs::read_dir("/proc").map_err(Error::Wait)?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let namespace = std::fs::metadata(format!("/proc/{pid}/ns/pid")).map(|m| m.ino());
        // The init is not dumpable, so an unprivileged caller cannot inspect its namespace.
        let is_init = pid == runtime.init.pid;
        if !is_init && namespace.ok() != Some(runtime.pid_namespace) {
            continue;
        }
        init_counted |= is_init;
        stats.processes += 1;
        if let Some((cpu, rss)) = process_usage(pid) {
            stats.cpu_seconds += cpu as f64 / ticks;
            resident += rss * page_size;
        }
    }
    if !init_counted {
        stats.processes += 1;
    }
    let cgroup_memory = runtime
        .cgroup
        .as_ref()
        .and_then(|description| Cgroup::view(description).usage().memory);
    stats.memory = Some(cgroup_memory.unwrap_or(resident));
    Ok(stats)
}

/// Returns the CPU time in clock ticks and the resident pages of process `pid`.
fn process_usage(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let cpu = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, rss))
}

/// Kills what a sandbox whose supervisor is gone left behind, and removes its cgroup: the
/// recorded one, or the one its name gives where the supervisor died before recording it.
pub fn clean_up(id: &airlock_core::SandboxId, runtime: Option<&Runtime>) {
    if let Some(runtime) = runtime {
        if runtime.init.is_alive() {
            let _ = sys::kill(runtime.init.pid, libc::SIGKILL);
        }
        if let Some(description) = &runtime.cgroup {
            Cgroup::view(description).remove_now();
        }
    }
    if let Some(layout) = cgroup::Layout::discover(sys::geteuid() == 0) {
        layout.remove_named(&format!("airlock-{}", id.short()));
    }
}
