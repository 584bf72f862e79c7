//! The host's wait loop for a docker sandbox's command: it relays the streams that are not
//! handed over, forwards signals, collects the reports, and enforces the timeout and the
//! limits. The namespace backend's monitor waits for a child process. The processes here are
//! the engine's, so the loop watches them through a pidfd and reaches them through the
//! engine or the channel.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use airlock_core::EndReason;
use airlock_namespace::cgroup::Cgroup;
use airlock_namespace::monitor::Ended;
use airlock_namespace::relay::Pump;
use airlock_namespace::report::{Report, ReportReader};
use airlock_namespace::{sys, tty};
use bollard::query_parameters::KillContainerOptionsBuilder;

use crate::channel::Channel;
use crate::engine::Engine;

/// How often the loop checks the container's cgroup for a limit that was hit.
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Rounds of copying after the watched process exited, at most 64 KiB per stream each.
const FINAL_DRAIN_ROUNDS: usize = 64;

/// The destination of the signals and kills the loop sends.
pub enum Target<'a> {
    /// The container's init, through the engine: a kill ends the container.
    Container {
        engine: &'a Engine,
        container: &'a str,
    },
    /// An exec's wrapper, over its channel: a kill ends the command's process group.
    Wrapper { channel: &'a Channel },
}

impl Target<'_> {
    fn signal(&self, signal: libc::c_int) {
        match self {
            Target::Container { engine, container } => {
                let options = KillContainerOptionsBuilder::new()
                    .signal(&signal.to_string())
                    .build();
                let killed =
                    engine.block_on(engine.docker().kill_container(container, Some(options)));
                if let Err(error) = killed {
                    tracing::warn!(container, signal, %error, "cannot signal the container");
                }
            }
            Target::Wrapper { channel } => {
                if let Err(error) = channel.signal(signal) {
                    tracing::warn!(signal, %error, "cannot signal the exec's command");
                }
            }
        }
    }
}

/// The inputs of one wait.
pub struct Watch<'a> {
    /// A pidfd of the init or the wrapper, readable once it exited.
    pub process: RawFd,
    pub signals: &'a OwnedFd,
    pub pumps: &'a mut Vec<Pump>,
    pub reports: RawFd,
    pub deadline: Option<Instant>,
    /// The pseudo-terminal's master, whose window size follows the caller's terminal.
    pub terminal: Option<RawFd>,
    /// The container's cgroup, checked while the command runs when `kill_on_limit` is set:
    /// a run ends at a refused fork or an out-of-memory kill, an exec does not.
    pub cgroup: Option<&'a Cgroup>,
    pub kill_on_limit: bool,
    pub target: Target<'a>,
}

impl Watch<'_> {
    /// Waits until the process has reported how the command ended and the relayed outputs
    /// are drained, or until it exited.
    pub fn run(self) -> io::Result<Ended> {
        let mut state = State {
            watch: self,
            reason: EndReason::Exited,
            last_limit_check: Instant::now(),
        };
        state.run()
    }
}

struct State<'a> {
    watch: Watch<'a>,
    reason: EndReason,
    last_limit_check: Instant,
}

impl State<'_> {
    fn run(&mut self) -> io::Result<Ended> {
        let mut reports = ReportReader::new(self.watch.reports);
        loop {
            let exited = is_readable(self.watch.process)?;
            if (exited || reports.has_final()) && !self.outputs_open() {
                break;
            }
            if exited {
                self.drain_now()?;
                break;
            }
            self.poll_once(&mut reports)?;
            self.enforce_limits();
        }
        reports.read_available()?;
        let peak_memory = self.watch.cgroup.and_then(Cgroup::peak_memory);
        if self.reason == EndReason::Exited && self.watch.kill_on_limit {
            // The kernel may have killed the command for a limit after the last check.
            self.reason = self
                .watch
                .cgroup
                .and_then(Cgroup::limit_hit)
                .unwrap_or(self.reason);
        }
        Ok(Ended {
            status: None,
            reason: self.reason,
            reports: reports.take(),
            peak_memory,
            cgroup_to_remove: None,
        })
    }

    fn outputs_open(&self) -> bool {
        self.watch
            .pumps
            .iter()
            .any(|pump| !pump.is_input && !pump.is_done())
    }

    fn poll_once(&mut self, reports: &mut ReportReader) -> io::Result<()> {
        let watch = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = vec![
            watch(self.watch.process),
            watch(self.watch.signals.as_raw_fd()),
            watch(reports.fd()),
        ];
        let mut owners = Vec::new();
        for (index, pump) in self.watch.pumps.iter().enumerate() {
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
            reports.read_available()?;
        }
        for (pollfd, &index) in fds[3..].iter().zip(&owners) {
            self.watch.pumps[index].service(pollfd.revents);
        }
        Ok(())
    }

    /// Copies what the output pipes hold now, without waiting for more.
    fn drain_now(&mut self) -> io::Result<()> {
        for _ in 0..FINAL_DRAIN_ROUNDS {
            let mut fds = Vec::new();
            let mut owners = Vec::new();
            for (index, pump) in self.watch.pumps.iter().enumerate() {
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
                self.watch.pumps[index].service(pollfd.revents);
            }
        }
        Ok(())
    }

    fn poll_timeout(&self) -> libc::c_int {
        let mut timeout = self
            .watch
            .cgroup
            .filter(|_| self.watch.kill_on_limit)
            .map(|_| LIMIT_CHECK_INTERVAL);
        if let Some(deadline) = self
            .watch
            .deadline
            .filter(|_| self.reason == EndReason::Exited)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        timeout.map_or(-1, |t| t.as_millis().max(1) as libc::c_int)
    }

    fn forward_signals(&mut self) -> io::Result<()> {
        while let Some(signal) = sys::read_signalfd(self.watch.signals)? {
            if signal == libc::SIGWINCH {
                if let Some(master) = self.watch.terminal {
                    tty::copy_window_size(master);
                }
                continue;
            }
            tracing::debug!(signal, "forwarding signal to the sandbox");
            self.watch.target.signal(signal);
        }
        Ok(())
    }

    fn enforce_limits(&mut self) {
        if self.reason != EndReason::Exited {
            return;
        }
        let now = Instant::now();
        let hit = match self.watch.deadline {
            Some(deadline) if now >= deadline => Some(EndReason::TimedOut),
            _ if !self.watch.kill_on_limit => None,
            _ if now.duration_since(self.last_limit_check) < LIMIT_CHECK_INTERVAL => None,
            _ => {
                self.last_limit_check = now;
                self.watch.cgroup.and_then(Cgroup::limit_hit)
            }
        };
        if let Some(reason) = hit {
            tracing::info!(?reason, "limit hit, killing the sandbox's command");
            self.reason = reason;
            self.watch.target.signal(libc::SIGKILL);
        }
    }
}

/// Returns whether `fd` is readable now; for a pidfd, whether its process exited.
pub fn is_readable(fd: RawFd) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    Ok(sys::poll(&mut fds, 0)? > 0)
}

/// Returns whether `reports` contain how the command ended.
pub fn has_final(reports: &[Report]) -> bool {
    reports
        .iter()
        .any(|report| matches!(report, Report::Exited { .. } | Report::Signaled { .. }))
}

/// Returns the failed setup step among `reports` as an error.
pub fn setup_failure(reports: &[Report]) -> Option<crate::Error> {
    reports.iter().find_map(|report| match report {
        Report::SetupFailed { step, error } => Some(crate::Error::Setup {
            step: step.clone(),
            cause: error.clone(),
        }),
        _ => None,
    })
}
