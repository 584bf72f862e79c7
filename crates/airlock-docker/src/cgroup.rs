//! Finds the cgroup the engine put a container in, so that Airlock can read its counters: an
//! out-of-memory kill, a refused fork, the peak memory. The engine sets the limits; Airlock
//! only reads.

use std::path::{Path, PathBuf};

use airlock_namespace::cgroup::Description;

/// The root of the cgroup file systems.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The controllers whose counters Airlock reads.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Describes the cgroup of host process `pid` below [`CGROUP_ROOT`], or returns `None`
/// where it cannot be found, as when this process runs in a cgroup namespace of its own.
pub fn of_process(pid: libc::pid_t) -> Option<Description> {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v2 = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
    let dirs = directories(&listing, v2, Path::new(CGROUP_ROOT));
    let dirs: Vec<(String, PathBuf)> = dirs.into_iter().filter(|(_, dir)| dir.is_dir()).collect();
    (!dirs.is_empty()).then_some(Description { v2, dirs })
}

/// Returns whether the memory cgroup of `description` counts out-of-memory kills: the
/// `oom_kill` key of `memory.oom_control` (cgroup v1, Linux 4.13 and later) or
/// `memory.events` (cgroup v2).
pub fn counts_oom_kills(description: &Description) -> bool {
    let Some((_, dir)) = description.dirs.iter().find(|(name, _)| name == "memory") else {
        return false;
    };
    let file = if description.v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    std::fs::read_to_string(dir.join(file)).is_ok_and(|counters| {
        counters
            .lines()
            .any(|line| line.split_whitespace().next() == Some("oom_kill"))
    })
}

/// Maps each of [`CONTROLLERS`] to its directory below `root`, from a /proc/PID/cgroup
/// listing: lines of `ID:CONTROLLERS:PATH`, where cgroup v2 has one line with no
/// controllers and v1 one line per hierarchy, mounted at `root/CONTROLLERS`.
fn directories(listing: &str, v2: bool, root: &Path) -> Vec<(String, PathBuf)> {
    let mut dirs = Vec::new();
    for line in listing.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if v2 {
            if controllers.is_empty() {
                let dir = root.join(relative);
                dirs.extend(CONTROLLERS.map(|name| (name.to_owned(), dir.clone())));
            }
            continue;
        }
        for name in controllers.split(',') {
            if CONTROLLERS.contains(&name) {
                dirs.push((name.to_owned(), root.join(controllers).join(relative)));
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_listing_maps_each_controller_to_its_hierarchy() {
        let listing = "12:pids:/docker/abc\n5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n";
        let dirs = directories(listing, false, Path::new("/sys/fs/cgroup"));
        assert_eq!(
            dirs,
            [
                (
                    "pids".to_owned(),
                    PathBuf::from("/sys/fs/cgroup/pids/docker/abc")
                ),
                (
                    "cpu".to_owned(),
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/docker/abc")
                ),
                (
                    "memory".to_owned(),
                    PathBuf::from("/sys/fs/cgroup/memory/docker/abc")
                ),
            ]
        );
    }

    #[test]
    fn oom_kills_counted_only_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let description = Description {
            v2: false,
            dirs: vec![("memory".to_owned(), dir.path().to_owned())],
        };
        assert!(!counts_oom_kills(&description), "no file");
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        assert!(!counts_oom_kills(&description), "a kernel before 4.13");
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        assert!(counts_oom_kills(&description));
    }

    #[test]
    fn v2_listing_gives_one_directory() {
        let dirs = directories("0::/system.slice/docker-abc.scope\n", true, Path::new("/r"));
        assert_eq!(dirs.len(), 3);
        assert!(dirs
            .iter()
            .all(|(_, dir)| dir == Path::new("/r/system.slice/docker-abc.scope")));
    }
}
