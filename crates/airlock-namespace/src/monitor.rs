//! The launcher's wait loop: it relays streams, forwards signals, collects the init's reports,
//! enforces the timeout and the cgroup limits, and reads the cgroup's counters as soon as the
//! sandbox no longer uses it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use airlock_core::EndReason;

use crate::cgroup::Cgroup;
use crate::launch::Sandbox;
use crate::relay::Pump;
use crate::report::{Report, ReportReader};
use crate::{sys, tty};

/// How often the launcher checks the cgroup for a limit that was hit.
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// The launcher's findings once the sandbox has ended.
pub struct Ended {
    /// The init's wait status, if it was reaped; a finished init is not waited for.
    pub status: Option<libc::c_int>,
    pub reason: EndReason,
    pub reports: Vec<Report>,
    pub peak_memory: Option<u64>,
    /// The cgroup that the sandbox has left, for the caller to remove.
    pub cgroup_to_remove: Option<Cgroup>,
}

pub struct Monitor<'a> {
    sandbox: &'a mut Sandbox,
    signals: &'a OwnedFd,
    pumps: &'a mut Vec<Pump>,
    reports: ReportReader,
    deadline: Option<Instant>,
    reason: EndReason,
    /// The pty master, whose window size follows the caller's terminal.
    terminal: Option<RawFd>,
    /// Peak memory read from the cgroup once the sandbox left it.
    peak_memory: Option<u64>,
    cgroup_to_remove: Option<Cgroup>,
    /// When the cgroup's counters were last read.
    last_limit_check: Instant,
    /// Stop relaying once the watched process has exited, after copying what its streams
    /// hold, instead of waiting for every writer to close them.
    stop_at_exit: bool,
}

/// Rounds of copying after the watched process exited, at most 64 KiB per stream each.
const FINAL_DRAIN_ROUNDS: usize = 64;

impl<'a> Monitor<'a> {
    pub fn new(
        sandbox: &'a mut Sandbox,
        signals: &'a OwnedFd,
        pumps: &'a mut Vec<Pump>,
        report: RawFd,
        deadline: Option<Instant>,
        terminal: Option<RawFd>,
    ) -> Monitor<'a> {
        Monitor {
            sandbox,
            signals,
            pumps,
            reports: ReportReader::new(report),
            deadline,
            reason: EndReason::Exited,
            terminal,
            peak_memory: None,
            cgroup_to_remove: None,
            last_limit_check: Instant::now(),
            stop_at_exit: false,
        }
    }

    /// Makes [`Monitor::run`] return once the process has exited and the output it left in
    /// the pipes is copied, even if a background process of a held sandbox still holds them.
    pub fn stop_at_exit(mut self) -> Self {
        self.stop_at_exit = true;
        self
    }

    /// Waits until every output relay has drained and the sandbox is over: the init has
    /// exited, or it has sent its final report after leaving its cgroup, so that only the
    /// kernel's teardown of its namespaces remains.
    pub fn run(&mut self) -> io::Result<Ended> {
        loop {
            let exited = self.sandbox.reap().is_some();
            // The init leaves a v1 cgroup before its final report, so the cgroup can go
            // while the kernel tears down the init's namespaces. A v2 cgroup waits for the
            // init's exit, because leaving it would take the global migration lock.
            let cgroup_in_use = self.sandbox.cgroup.as_ref().is_some_and(Cgroup::is_v2);
            if self.reports.has_final() && !cgroup_in_use {
                self.release_cgroup();
                self.sandbox.finished = true;
            }
            if (exited || self.sandbox.finished) && !self.outputs_open() {
                break;
            }
            if exited && self.stop_at_exit {
                self.drain_now()?;
                break;
            }
            self.poll_once(exited)?;
            if !exited {
                self.enforce_limits();
            }
        }
        self.reports.read_available()?;
        self.release_cgroup();
        Ok(Ended {
            status: self.sandbox.status,
            reason: self.reason,
            reports: self.reports.take(),
            peak_memory: self.peak_memory,
            cgroup_to_remove: self.cgroup_to_remove.take(),
        })
    }

    fn outputs_open(&self) -> bool {
        self.pumps
            .iter()
            .any(|pump| !pump.is_input && !pump.is_done())
    }

    /// Reads the cgroup's counters and sets it aside for removal.
    fn release_cgroup(&mut self) {
        let Some(cgroup) = self.sandbox.cgroup.take() else {
            return;
        };
        if self.reason == EndReason::Exited {
            // The kernel may have killed the command for a limit before the last check.
            self.reason = cgroup.limit_hit().unwrap_or(self.reason);
        }
        self.peak_memory = cgroup.peak_memory();
        self.cgroup_to_remove = Some(cgroup);
    }

    fn poll_once(&mut self, exited: bool) -> io::Result<()> {
        let watch = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let pidfd = if exited {
            -1
        } else {
            self.sandbox.pidfd.as_raw_fd()
        };
        let mut fds = vec![
            watch(pidfd),
            watch(self.signals.as_raw_fd()),
            watch(self.reports.fd()),
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
        sys::poll(&mut fds, self.poll_timeout())?;
        if fds[1].revents != 0 {
            self.forward_signals()?;
        }
        if fds[2].revents != 0 {
            self.reports.read_available()?;
        }
        for (pollfd, &index) in fds[3..].iter().zip(&owners) {
            self.pumps[index].service(pollfd.revents);
        }
        Ok(())
    }

    /// Copies what the output pipes hold now, without waiting for more.
    fn drain_now(&mut self) -> io::Result<()> {
        for _ in 0..FINAL_DRAIN_ROUNDS {
            let mut fds = Vec::new();
            let mut owners = Vec::new();
            for (index, pump) in self.pumps.iter().enumerate() {
                if pump.is_input {
                    continue;
                }
                if let Some(interest) = pump.interest() {
                    fds.push(interest);
                    owners.push(index);
                }
            }
            if fds.is_empty() || sys::poll(&mut fds, 0)? == 0 {
                return Ok(());
            }
            for (pollfd, &index) in fds.iter().zip(&owners) {
                self.pumps[index].service(pollfd.revents);
            }
        }
        Ok(())
    }

    fn poll_timeout(&self) -> libc::c_int {
        let mut timeout = self.sandbox.cgroup.as_ref().map(|_| LIMIT_CHECK_INTERVAL);
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
            self.sandbox.signal(signal);
        }
        Ok(())
    }

    fn enforce_limits(&mut self) {
        if self.reason != EndReason::Exited {
            return;
        }
        let now = Instant::now();
        let hit = match self.deadline {
            Some(deadline) if now >= deadline => Some(EndReason::TimedOut),
            // Reading the counters costs a few system calls, so they are read at most once
            // per interval, however often the loop wakes for output.
            _ if now.duration_since(self.last_limit_check) < LIMIT_CHECK_INTERVAL => None,
            _ => {
                self.last_limit_check = now;
                self.sandbox.cgroup.as_ref().and_then(Cgroup::limit_hit)
            }
        };
        if let Some(reason) = hit {
            tracing::info!(?reason, "limit hit, killing the sandbox");
            self.reason = reason;
            self.sandbox.kill();
        }
    }
}
