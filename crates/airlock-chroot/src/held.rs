//! Held sandboxes: a holder without a command, kept by its supervisor, which later `exec`
//! and `cp` commands join.
//!
//! The supervisor starts the holder with [`start`], records the [`Runtime`] that joining
//! needs, and waits in [`Held::wait`] until a signal stops it or the sandbox's time is up.
//! Dropping the [`Held`] kills the holder first, so that no later `exec` can join, and then
//! every process left in the sandbox's mount namespace.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use airlock_core::state::ProcessRef;
use airlock_core::{
    EndReason, Enforcement, HeldEnd, HeldSandbox, RunOptions, SandboxId, Spec, Stats, User,
};
use airlock_namespace::launch::{self as shared, RestoreMask, Sandbox};
use airlock_namespace::report::{Report, ReportReader};
use airlock_namespace::{stdio, sys};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::launch::{self, Holder};
use crate::members::{self, Sandbox as Members};

/// Facts about a running held sandbox that later commands need, stored in its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    /// The holder, named `init` as the process that `airlock ls` lists for a sandbox.
    pub init: ProcessRef,
    /// The supervisor, whose death ends the sandbox.
    pub supervisor: ProcessRef,
    /// Inode number of the holder's mount namespace, which `exec` checks before it joins.
    pub mount_namespace: u64,
    /// Source name of the tree's root tmpfs, which confirms the namespace's processes.
    pub marker: String,
    /// The user commands run as unless `exec --user` names another, and that the workspace
    /// is mapped to.
    pub user: User,
    pub enforcement: Enforcement,
}

impl Runtime {
    /// Returns the sandbox's processes, as a searchable set.
    pub fn members(&self) -> Members<'_> {
        Members {
            namespace: Some(self.mount_namespace),
            marker: &self.marker,
        }
    }
}

/// A running held sandbox, owned by its supervisor.
pub struct Held {
    holder: Sandbox,
    runtime: Runtime,
    signals: OwnedFd,
    _restore_mask: RestoreMask,
    /// The write end of the pipe whose end of file makes the holder end the sandbox, should
    /// the supervisor die.
    _alive: OwnedFd,
}

/// Starts a sandbox for `spec` without a command and waits until it is ready.
pub fn start(spec: &Spec, options: &RunOptions) -> Result<Held, Error> {
    let prepared = launch::prepare(spec, options)?;
    let (restore_mask, signals) = shared::block_forwarded_signals(false)?;
    let detached = stdio::Plan::detached();
    let Holder {
        pid,
        pidfd,
        channels,
    } = launch::start_holder(spec, &prepared, None, detached.child_fds)?;
    let mut holder = Sandbox {
        pid,
        pidfd,
        status: None,
        cgroup: None,
        finished: false,
        group: false,
        signal_target: None,
    };
    wait_until_ready(&mut holder, &channels.report)?;
    let died = || Error::HolderDied { status: 0 };
    let runtime = Runtime {
        init: ProcessRef::of(pid).ok_or_else(died)?,
        supervisor: ProcessRef::of(sys::getpid()).ok_or_else(died)?,
        mount_namespace: members::mount_namespace(pid).ok_or_else(died)?,
        marker: prepared.marker,
        user: prepared.user,
        enforcement: prepared.enforcement,
    };
    tracing::info!(sandbox = %prepared.id, pid, "held sandbox ready");
    Ok(Held {
        holder,
        runtime,
        signals,
        _restore_mask: restore_mask,
        _alive: channels.alive,
    })
}

/// Reads the holder's reports until it reports that it is ready, and turns a failed setup
/// into the error that names the step.
fn wait_until_ready(holder: &mut Sandbox, report: &OwnedFd) -> Result<(), Error> {
    let mut reports = ReportReader::new(report.as_raw_fd());
    loop {
        for report in reports.take() {
            match report {
                Report::Ready => return Ok(()),
                Report::SetupFailed { step, error } => {
                    return Err(Error::Setup { step, cause: error })
                }
                _ => {}
            }
        }
        if let Some(status) = holder.reap() {
            return Err(Error::HolderDied { status });
        }
        let watch = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [watch(reports.fd()), watch(holder.pidfd.as_raw_fd())];
        sys::poll(&mut fds, -1).map_err(Error::Wait)?;
        reports.read_available().map_err(Error::Wait)?;
    }
}

impl HeldSandbox for Held {
    fn runtime(&self) -> serde_json::Value {
        serde_json::to_value(&self.runtime).expect("runtimes always serialize")
    }

    /// Waits for a stop, the deadline or the holder's death. rlimits leave no trace when a
    /// command hits one, so `limit_hit` is never called.
    fn wait(
        &mut self,
        deadline: Option<Instant>,
        _limit_hit: &mut dyn FnMut(EndReason),
    ) -> io::Result<HeldEnd> {
        loop {
            if self.holder.reap().is_some() {
                return Ok(HeldEnd::Exited);
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Ok(HeldEnd::Expired);
            }
            let timeout = deadline.map_or(-1, |deadline| {
                let left = deadline.saturating_duration_since(now).as_millis();
                left.clamp(1, i32::MAX as u128) as libc::c_int
            });
            let watch = |fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let mut fds = [
                watch(self.holder.pidfd.as_raw_fd()),
                watch(self.signals.as_raw_fd()),
            ];
            sys::poll(&mut fds, timeout)?;
            if fds[1].revents != 0 {
                if let Some(signal) = sys::read_signalfd(&self.signals)? {
                    return Ok(HeldEnd::Signal(signal));
                }
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.holder.reap().is_none() {
            self.holder.kill();
            if let Ok(Some((_, status))) = sys::waitpid(self.holder.pid, 0) {
                self.holder.status = Some(status);
            }
        }
        self.runtime.members().kill_all(None);
    }
}

/// Reads what the running sandbox uses: its processes, the holder included.
pub fn stats(runtime: &Runtime) -> Result<Stats, Error> {
    if !runtime.init.is_alive() {
        return Err(Error::NotRunning {
            pid: runtime.init.pid,
        });
    }
    Ok(runtime.members().usage())
}

/// Kills what sandbox `id`, whose supervisor is gone, left behind: its holder, and every
/// process whose mount namespace carries the sandbox's marker. The search covers every
/// namespace, so it also finds the processes of a run, which records no runtime.
pub fn clean_up(id: &SandboxId, runtime: Option<&Runtime>) {
    if let Some(holder) = runtime.map(|runtime| runtime.init) {
        if let Ok(pidfd) = sys::pidfd_open(holder.pid) {
            if holder.is_alive() {
                let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
            }
        }
    }
    let marker = members::marker(id);
    let left = Members {
        namespace: None,
        marker: &marker,
    };
    left.kill_all(None);
}
