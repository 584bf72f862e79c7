//! The processes of a sandbox, found by their mount namespace.
//!
//! Every process of a chroot sandbox lives in the holder's private mount namespace: the
//! holder creates it, the commands it starts inherit it, and `exec` and `cp` join it with
//! setns. A process that is not root cannot leave it, because unshare(CLONE_NEWNS) needs
//! CAP_SYS_ADMIN and the kernel refuses a new user namespace to a chrooted process.
//!
//! A namespace is known by its inode number, which the kernel hands out again once the
//! namespace is gone. So each namespace found is confirmed by its mount table: only this
//! sandbox's tree has a root tmpfs whose source is the sandbox's [`marker`].
//!
//! NOTE: /proc lists thread group leaders only, and a leader that exited before its other
//! threads has no namespace to compare, so such a thread group is not found.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use airlock_core::{SandboxId, Stats};
use airlock_namespace::sys;

/// How long [`kill_all`] keeps killing before it gives up on processes that do not die,
/// such as ones blocked in an uninterruptible sleep.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// Returns the source name of the sandbox's root tmpfs, which marks its mount namespace.
pub fn marker(id: &SandboxId) -> String {
    format!("airlock-chroot-{id}")
}

/// Returns the inode number of the mount namespace of process `pid`.
pub fn mount_namespace(pid: i32) -> Option<u64> {
    let metadata = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok()?;
    Some(metadata.ino())
}

/// Returns whether the mount table of process `pid` contains a mount whose source is
/// `marker`, or `None` when the table cannot be read because the process exited.
fn sees_marker(pid: i32, marker: &str) -> Option<bool> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    Some(has_source(&mountinfo, marker))
}

/// Returns whether a line of `mountinfo`, in the format of /proc/PID/mountinfo, has the
/// mount source `source`.
fn has_source(mountinfo: &str, source: &str) -> bool {
    // Each line ends with " - TYPE SOURCE OPTIONS", after a variable number of optional
    // fields.
    mountinfo.lines().any(|line| {
        line.split_once(" - ")
            .and_then(|(_, tail)| tail.split(' ').nth(1))
            .is_some_and(|found| found == source)
    })
}

/// Returns the pids that /proc lists now.
fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The mount namespace of one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox<'a> {
    /// The namespace's inode number, when it is known; without it every namespace but the
    /// caller's own is searched for the marker.
    pub namespace: Option<u64>,
    pub marker: &'a str,
}

impl Sandbox<'_> {
    /// Returns the pids of the sandbox's processes.
    pub fn find(&self) -> Vec<i32> {
        let own = mount_namespace(sys::getpid());
        let mut confirmed: HashMap<u64, bool> = HashMap::new();
        let mut members = Vec::new();
        for pid in all_pids() {
            let Some(namespace) = mount_namespace(pid) else {
                continue;
            };
            let candidate = match self.namespace {
                Some(expected) => namespace == expected,
                None => Some(namespace) != own,
            };
            if !candidate {
                continue;
            }
            let belongs = match confirmed.get(&namespace) {
                Some(&belongs) => belongs,
                None => {
                    let Some(belongs) = sees_marker(pid, self.marker) else {
                        continue;
                    };
                    confirmed.insert(namespace, belongs);
                    belongs
                }
            };
            if belongs {
                members.push(pid);
            }
        }
        members
    }

    /// Kills every process of the sandbox but `spare`, again and again until none is left,
    /// since a process may fork between the listing and the kill. Returns whether none is
    /// left.
    pub fn kill_all(&self, spare: Option<i32>) -> bool {
        let deadline = Instant::now() + KILL_PATIENCE;
        loop {
            let members: Vec<i32> = self
                .find()
                .into_iter()
                .filter(|&pid| Some(pid) != spare)
                .collect();
            if members.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(marker = self.marker, pids = ?members, "processes of the sandbox survived SIGKILL");
                return false;
            }
            for pid in members {
                self.kill(pid);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills `pid` through a pidfd, after checking that the process the pidfd names is still
    /// in the namespace, so that a pid reused since the listing is left alone.
    fn kill(&self, pid: i32) {
        let Ok(pidfd) = sys::pidfd_open(pid) else {
            return;
        };
        let namespace = mount_namespace(pid);
        let still_member = match self.namespace {
            Some(expected) => namespace == Some(expected),
            None => sees_marker(pid, self.marker) == Some(true),
        };
        if still_member {
            let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        }
    }

    /// Reads what the sandbox's processes use now: their number, CPU time and resident
    /// memory.
    pub fn usage(&self) -> Stats {
        let page_size = sys::page_size();
        let ticks = sys::clock_ticks() as f64;
        let mut stats = Stats::default();
        let mut resident = 0;
        for pid in self.find() {
            stats.processes += 1;
            if let Some((cpu, rss)) = process_usage(pid) {
                stats.cpu_seconds += cpu as f64 / ticks;
                resident += rss * page_size;
            }
        }
        stats.memory = Some(resident);
        stats
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
1061 1060 0:95 / / ro,nosuid,nodev,relatime shared:530 - tmpfs airlock-chroot-ab12 rw,size=64k
1062 1061 254:0 /usr /usr ro,nosuid,nodev,relatime master:1 - ext4 /dev/vda rw
1070 1061 0:97 / /tmp rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=524288k
";

    #[test]
    fn mount_source_matches_whole_field() {
        assert!(has_source(MOUNTINFO, "airlock-chroot-ab12"));
        assert!(has_source(MOUNTINFO, "/dev/vda"));
        assert!(!has_source(MOUNTINFO, "airlock-chroot-ab1"));
        assert!(!has_source(MOUNTINFO, "airlock-chroot-ab123"));
        assert!(!has_source(MOUNTINFO, "tmpfs airlock-chroot-ab12"));
        assert!(!has_source(MOUNTINFO, "ro,nosuid,nodev,relatime"));
    }
}
