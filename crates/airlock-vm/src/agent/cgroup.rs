//! The guest's process and memory limits: every command runs in one cgroup v2 group with
//! `pids.max` and `memory.max`, outside of which only the agent stays. A refused fork kills
//! the whole group through `cgroup.kill` (Linux 5.14 and later), as a fork bomb would
//! otherwise keep running. So does thrashing at the memory limit: without swap, the kernel
//! reclaims the group's file pages, such as its programs' code, and reads them back again
//! rather than call its OOM killer, which can stall a command for many seconds.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_namespace::sys;

/// The group of the commands, below the guest's cgroup v2 root.
pub const WORKLOAD: &str = "/sys/fs/cgroup/airlock-workload";

/// How often a watcher reads the group's count of refused forks and its memory stall.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// The window over which a watcher measures the group's memory stall.
const THRASH_WINDOW: Duration = Duration::from_secs(1);

/// The stall, in microseconds within [`THRASH_WINDOW`], during which a process of the
/// group waited for memory, past which a group at its memory limit counts as thrashing.
// NOTE: measured on one case only, a memory bomb in Debian's 6.1 cloud kernel under TCG,
// which stalled about 60% of the time and never long enough for the `full` line.
const THRASH_STALL_MICROS: u64 = 300_000;

/// What a watcher saw before it killed the group.
pub struct Hits {
    /// A fork was refused at the process limit.
    pub pids: AtomicBool,
    /// The group thrashed at its memory limit.
    pub memory: AtomicBool,
    workload: Arc<Workload>,
    /// The group's count of refused forks when the watch started.
    refused_before: u64,
}

impl Hits {
    /// Counts a fork refused since the watch's last look, as when the command gave up on
    /// it and exited before the watch woke, and kills the group as the watch would have.
    pub fn check_refused_forks(&self) {
        if !self.pids.load(Ordering::SeqCst) && self.workload.refused_forks() > self.refused_before
        {
            self.pids.store(true, Ordering::SeqCst);
            if let Err(error) = self.workload.kill_all() {
                super::console(&format!("cannot kill the workload's cgroup: {error}"));
            }
        }
    }
}

/// Mounts cgroup v2 at `root/sys/fs/cgroup` and creates the workload group with `pids`
/// as its `pids.max` and `memory`, when given, as its `memory.max`.
pub fn set_up(root: &Path, pids: u64, memory: Option<u64>) -> io::Result<()> {
    let mount_point = root.join("sys/fs/cgroup");
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(
        Some(Path::new("cgroup2")),
        &mount_point,
        Some("cgroup2"),
        flags,
        None,
    )?;
    let controllers = if memory.is_some() {
        "+pids +memory"
    } else {
        "+pids"
    };
    std::fs::write(mount_point.join("cgroup.subtree_control"), controllers)?;
    let group = mount_point.join("airlock-workload");
    std::fs::create_dir(&group)?;
    std::fs::write(group.join("pids.max"), pids.to_string())?;
    if let Some(memory) = memory {
        std::fs::write(group.join("memory.max"), memory.to_string())?;
    }
    Ok(())
}

/// The workload group, once the agent runs in the sandbox's root.
pub struct Workload {
    procs: File,
    directory: PathBuf,
}

impl Workload {
    /// Opens the group, or returns `None` when the boot did not create it.
    pub fn open() -> Option<Workload> {
        let directory = PathBuf::from(WORKLOAD);
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(directory.join("cgroup.procs"))
            .ok()?;
        Some(Workload { procs, directory })
    }

    /// Returns the descriptor a new process writes "0" to, between fork and exec, to join.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Returns how many forks the limit has refused so far.
    pub fn refused_forks(&self) -> u64 {
        self.read_field("pids.events", "max ")
    }

    /// Returns how often the group has reached its memory limit so far.
    fn memory_limit_reached(&self) -> u64 {
        self.read_field("memory.events", "max ")
    }

    /// Returns the group's total time, in microseconds, during which a process of it
    /// waited for memory (the `some` line of its pressure stall information).
    fn memory_stall(&self) -> u64 {
        let pressure =
            std::fs::read_to_string(self.directory.join("memory.pressure")).unwrap_or_default();
        pressure
            .lines()
            .find_map(|line| line.strip_prefix("some "))
            .and_then(|fields| {
                fields
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("total="))
            })
            .and_then(|total| total.parse().ok())
            .unwrap_or(0)
    }

    /// Returns the number after `prefix` in the group's file `name`, or 0.
    fn read_field(&self, name: &str, prefix: &str) -> u64 {
        let events = std::fs::read_to_string(self.directory.join(name)).unwrap_or_default();
        events
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Kills every process of the group.
    pub fn kill_all(&self) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.directory.join("cgroup.kill"))?
            .write_all(b"1")
    }

    /// Watches for a refused fork, and for thrashing at the memory limit, until `done` is
    /// set; kills the group at the first of them. Returns what it saw.
    pub fn watch(self: &Arc<Self>, done: Arc<AtomicBool>) -> Arc<Hits> {
        let refused_before = self.refused_forks();
        let limit_reached_before = self.memory_limit_reached();
        let hits = Arc::new(Hits {
            pids: AtomicBool::new(false),
            memory: AtomicBool::new(false),
            workload: Arc::clone(self),
            refused_before,
        });
        let (workload, seen) = (Arc::clone(self), Arc::clone(&hits));
        std::thread::spawn(move || {
            let mut window = (Instant::now(), workload.memory_stall());
            while !done.load(Ordering::SeqCst) {
                let hit = if workload.refused_forks() > refused_before {
                    &seen.pids
                } else if workload.thrashed(&mut window, limit_reached_before) {
                    &seen.memory
                } else {
                    std::thread::sleep(WATCH_INTERVAL);
                    continue;
                };
                hit.store(true, Ordering::SeqCst);
                if let Err(error) = workload.kill_all() {
                    super::console(&format!("cannot kill the workload's cgroup: {error}"));
                }
                return;
            }
        });
        hits
    }

    /// Returns whether the group reached its memory limit and stalled on memory for most
    /// of the window that ends now; starts a new window when this one is over.
    fn thrashed(&self, window: &mut (Instant, u64), limit_reached_before: u64) -> bool {
        let (started, stall_at_start) = *window;
        if started.elapsed() < THRASH_WINDOW {
            return false;
        }
        let stall = self.memory_stall();
        *window = (Instant::now(), stall);
        stall.saturating_sub(stall_at_start) >= THRASH_STALL_MICROS
            && self.memory_limit_reached() > limit_reached_before
    }
}
