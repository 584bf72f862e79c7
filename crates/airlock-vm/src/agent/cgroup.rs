//! The guest's process limit: every command runs in one cgroup v2 group with `pids.max`,
//! outside of which only the agent stays. A refused fork kills the whole group through
//! `cgroup.kill` (Linux 5.14 and later), as a fork bomb would otherwise keep running.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_namespace::sys;

/// The group of the commands, below the guest's cgroup v2 root.
pub const WORKLOAD: &str = "/sys/fs/cgroup/airlock-workload";

/// How often a watcher reads the group's count of refused forks.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Mounts cgroup v2 at `root/sys/fs/cgroup` and creates the workload group with `pids`
/// as its `pids.max`.
pub fn set_up(root: &Path, pids: u64) -> io::Result<()> {
    let mount_point = root.join("sys/fs/cgroup");
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(
        Some(Path::new("cgroup2")),
        &mount_point,
        Some("cgroup2"),
        flags,
        None,
    )?;
    std::fs::write(mount_point.join("cgroup.subtree_control"), "+pids")?;
    let group = mount_point.join("airlock-workload");
    std::fs::create_dir(&group)?;
    std::fs::write(group.join("pids.max"), pids.to_string())
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
        let events =
            std::fs::read_to_string(self.directory.join("pids.events")).unwrap_or_default();
        events
            .lines()
            .find_map(|line| line.strip_prefix("max "))
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

    /// Watches for a refused fork until `done` is set, and then kills the group. Returns
    /// the flag that tells whether it did.
    pub fn watch(self: &Arc<Self>, done: Arc<AtomicBool>) -> Arc<AtomicBool> {
        let refused_before = self.refused_forks();
        let hit = Arc::new(AtomicBool::new(false));
        let (workload, flag) = (Arc::clone(self), Arc::clone(&hit));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if workload.refused_forks() > refused_before {
                    flag.store(true, Ordering::SeqCst);
                    if let Err(error) = workload.kill_all() {
                        super::console(&format!("cannot kill the workload's cgroup: {error}"));
                    }
                    return;
                }
                std::thread::sleep(WATCH_INTERVAL);
            }
        });
        hit
    }
}
