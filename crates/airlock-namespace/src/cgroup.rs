//! Per-sandbox cgroups for memory, CPU and process limits, on cgroup v1 and v2.
//!
//! Root gets a cgroup below `airlock/` at the top of each hierarchy. Other users get one below
//! their own cgroup where it is delegated to them (writable, with the controllers enabled).
//! Where neither works, the caller reports the limits as not enforced.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use airlock_core::{procfs, EndReason};

use crate::control::Grant;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create cgroup {path:?}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path:?}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path:?}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// The cgroup hierarchy layout of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1: one directory per controller.
    V1,
    /// cgroup v2: one directory for all controllers.
    V2,
}

/// A sandbox's cgroup, removed on drop unless it is only a view of one that another process
/// owns.
#[derive(Debug)]
pub struct Cgroup {
    pub version: Version,
    /// (controller, directory) for every controller this cgroup has.
    dirs: Vec<(Controller, PathBuf)>,
    owned: bool,
}

/// A cgroup as stored in a sandbox's record, for the commands that join it, read its
/// counters or remove what a killed supervisor left.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Description {
    pub v2: bool,
    /// (controller name, directory)
    pub dirs: Vec<(String, PathBuf)>,
}

/// The counters of a sandbox's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory in use, in bytes, page cache included.
    pub memory: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

/// One mounted hierarchy from /proc/self/mountinfo.
#[derive(Debug)]
struct Hierarchy {
    mount_point: PathBuf,
    /// The cgroup path that is the root of this mount.
    root: String,
    /// v1 controllers of this hierarchy; empty for cgroup2.
    controllers: Vec<String>,
    is_v2: bool,
}

/// Lists the cgroup hierarchies. For root, the usual mounts below /sys/fs/cgroup are found
/// with a few statfs(2) calls, which take far less time than reading /proc/self/mountinfo.
/// Other callers need each mount's root to locate their own cgroup, which only mountinfo has.
fn hierarchies(is_root: bool) -> Vec<Hierarchy> {
    if is_root {
        if let Some(standard) = standard_hierarchies() {
            return standard;
        }
    }
    let mountinfo = procfs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().filter_map(parse_mountinfo_line).collect()
}

const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn filesystem_type(path: &Path) -> Option<i64> {
    let path = crate::sys::cstring(path).ok()?;
    // SAFETY: statfs is plain data, so an all-zero value is valid for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a live statfs for the call.
    let result = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    (result == 0).then_some(crate::sys::fs_type(&stat))
}

/// Finds the hierarchies at their usual places: cgroup2 on /sys/fs/cgroup, or one v1
/// hierarchy per controller at /sys/fs/cgroup/NAME. Returns `None` for any other layout.
fn standard_hierarchies() -> Option<Vec<Hierarchy>> {
    let top = Path::new("/sys/fs/cgroup");
    if filesystem_type(top)? == CGROUP2_SUPER_MAGIC {
        return Some(vec![Hierarchy {
            mount_point: top.to_owned(),
            root: "/".into(),
            controllers: Vec::new(),
            is_v2: true,
        }]);
    }
    let found: Vec<Hierarchy> = Controller::ALL
        .iter()
        .filter(|controller| {
            filesystem_type(&top.join(controller.name())) == Some(CGROUP_SUPER_MAGIC)
        })
        .map(|controller| Hierarchy {
            mount_point: top.join(controller.name()),
            root: "/".into(),
            controllers: vec![controller.name().to_owned()],
            is_v2: false,
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

fn parse_mountinfo_line(line: &str) -> Option<Hierarchy> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let after: Vec<&str> = after.split(' ').collect();
    let (fstype, super_options) = (*after.first()?, *after.get(2)?);
    let is_v2 = fstype == "cgroup2";
    if fstype != "cgroup" && !is_v2 {
        return None;
    }
    let controllers = super_options
        .split(',')
        .filter(|option| ["memory", "pids", "cpu"].contains(option))
        .map(str::to_owned)
        .collect();
    Some(Hierarchy {
        mount_point: PathBuf::from(fields.get(4)?),
        root: fields.get(3)?.to_string(),
        controllers,
        is_v2,
    })
}

/// Parses /proc/self/cgroup into (controllers, path) pairs; v2 has an empty controller list.
fn own_cgroups() -> Vec<(String, String)> {
    let content = procfs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    content
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// Joins a mount point and a cgroup path seen from the mount's root.
fn under_mount(hierarchy: &Hierarchy, cgroup_path: &str) -> PathBuf {
    let relative = cgroup_path
        .strip_prefix(hierarchy.root.as_str())
        .unwrap_or(cgroup_path)
        .trim_start_matches('/');
    hierarchy.mount_point.join(relative)
}

fn writable(path: &Path) -> bool {
    let Ok(path) = crate::sys::cstring(path) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string alive for the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

fn v2_unified(hierarchies: &[Hierarchy]) -> Option<&Hierarchy> {
    hierarchies.iter().find(|hierarchy| {
        hierarchy.is_v2
            && fs::read_to_string(hierarchy.mount_point.join("cgroup.controllers"))
                .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"))
    })
}

fn open(path: PathBuf, flags: libc::c_int) -> Result<OwnedFd, Error> {
    crate::sys::open(&path, flags).map_err(|source| Error::Open { path, source })
}

/// The places this process may create sandbox cgroups in: the hierarchy version and the
/// parent directory per controller.
#[derive(Debug)]
pub struct Layout {
    version: Version,
    parents: Vec<(Controller, PathBuf)>,
    is_root: bool,
}

impl Layout {
    /// Reads the host's cgroup mounts and this process's own cgroups.
    pub fn discover(is_root: bool) -> Option<Layout> {
        let (version, parents) = parents(is_root)?;
        Some(Layout {
            version,
            parents,
            is_root,
        })
    }

    /// Returns the directory below which [`Cgroup::create`] would make a sandbox cgroup with
    /// `controller`, or why it could not, by the same tests and without creating anything.
    pub fn check(&self, controller: Controller) -> Result<&Path, String> {
        let name = controller.name();
        let Some((_, parent)) = self.parents.iter().find(|(c, _)| *c == controller) else {
            return Err(format!(
                "no mounted cgroup hierarchy has the {name} controller"
            ));
        };
        let top = parent.parent().unwrap_or(parent);
        let usable = match (&self.version, self.is_root) {
            (Version::V2, true) => fs::read_to_string(top.join("cgroup.controllers"))
                .is_ok_and(|listed| listed.split_whitespace().any(|c| c == name)),
            (Version::V2, false) => {
                writable(parent) && v2_subtree_controllers(parent).iter().any(|c| c == name)
            }
            (Version::V1, true) => parent.is_dir() || writable(top),
            (Version::V1, false) => writable(parent),
        };
        if usable {
            return Ok(parent);
        }
        Err(match (&self.version, self.is_root) {
            (Version::V2, true) => format!("the cgroup v2 root {top:?} does not offer {name}"),
            (Version::V2, false) => format!(
                "{parent:?} is not writable by this user or does not enable {name} in its \
                 cgroup.subtree_control"
            ),
            (Version::V1, true) => format!("cannot create {parent:?}"),
            (Version::V1, false) => format!("{parent:?} is not writable by this user"),
        })
    }

    pub fn is_v2(&self) -> bool {
        self.version == Version::V2
    }

    /// Kills the processes of the sandbox cgroup `name` and removes it wherever this layout
    /// would have created it, for a sandbox whose supervisor died before recording it.
    pub fn remove_named(&self, name: &str) {
        let dirs = self
            .parents
            .iter()
            .map(|(controller, parent)| (*controller, parent.join(name)))
            .filter(|(_, dir)| dir.is_dir())
            .collect();
        let cgroup = Cgroup {
            version: self.version.clone(),
            dirs,
            owned: false,
        };
        cgroup.remove_now();
    }
}

/// Finds the parent directories where this process may create sandbox cgroups.
fn parents(is_root: bool) -> Option<(Version, Vec<(Controller, PathBuf)>)> {
    let hierarchies = hierarchies(is_root);
    if let Some(unified) = v2_unified(&hierarchies) {
        let parent = if is_root {
            unified.mount_point.join("airlock")
        } else {
            // NOTE: an unprivileged caller whose own v2 cgroup contains processes (the usual
            // case, as in a `systemd-run --user --scope -p Delegate=yes` scope) cannot enable
            // controllers there. Airlock does not yet move its launcher to a leaf cgroup first,
            // as crun does, so such a caller gets no cgroup.
            let own = own_cgroups()
                .into_iter()
                .find(|(controllers, _)| controllers.is_empty())?;
            under_mount(unified, &own.1)
        };
        let dirs = Controller::ALL
            .iter()
            .map(|&c| (c, parent.clone()))
            .collect();
        return Some((Version::V2, dirs));
    }
    let own = own_cgroups();
    let dirs = Controller::ALL
        .iter()
        .filter_map(|&controller| {
            let hierarchy = hierarchies
                .iter()
                .find(|h| !h.is_v2 && h.controllers.iter().any(|c| c == controller.name()))?;
            let parent = if is_root {
                hierarchy.mount_point.join("airlock")
            } else {
                let (_, path) = own.iter().find(|(controllers, _)| {
                    controllers.split(',').any(|c| c == controller.name())
                })?;
                under_mount(hierarchy, path)
            };
            Some((controller, parent))
        })
        .collect();
    Some((Version::V1, dirs))
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    fs::write(path, value).map_err(|source| Error::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), Error> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Lists the controllers enabled for children of a v2 cgroup.
fn v2_subtree_controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

impl Cgroup {
    /// Creates the cgroup `name` for the `wanted` controllers this process can use. Returns
    /// `None` when no controller is available, which the caller reports.
    pub fn create(
        layout: &Layout,
        name: &str,
        is_root: bool,
        wanted: &[Controller],
    ) -> Result<Option<Cgroup>, Error> {
        let (version, parents) = (layout.version.clone(), layout.parents.clone());
        let mut cgroup = Cgroup {
            version: version.clone(),
            dirs: Vec::new(),
            owned: true,
        };
        if version == Version::V2 {
            let Some((_, parent)) = parents.first() else {
                return Ok(None);
            };
            if is_root {
                if let Err(error) = prepare_v2_root_parent(parent) {
                    tracing::warn!(error = %crate::error_chain(&error), "cannot prepare the cgroup v2 parent");
                    return Ok(None);
                }
            }
            let enabled = v2_subtree_controllers(parent);
            if !writable(parent) {
                return Ok(None);
            }
            sweep_stale(parent);
            let dir = parent.join(name);
            let usable: Vec<Controller> = Controller::ALL
                .into_iter()
                .filter(|c| enabled.iter().any(|e| e == c.name()))
                .collect();
            if usable.is_empty() {
                return Ok(None);
            }
            create_dir(&dir)?;
            cgroup.dirs = usable.into_iter().map(|c| (c, dir.clone())).collect();
            return Ok(Some(cgroup));
        }
        // On v1 each controller is a directory of its own to create and remove, so only the
        // controllers of the spec's limits get one.
        for (controller, parent) in parents.into_iter().filter(|(c, _)| wanted.contains(c)) {
            // A caller that is uid 0 only inside a user namespace cannot create the shared
            // parent, so that controller is reported as unavailable rather than failing.
            if is_root && create_dir(&parent).is_err() {
                tracing::debug!(path = %parent.display(), "cannot create the cgroup parent");
                continue;
            }
            if !writable(&parent) {
                continue;
            }
            sweep_stale(&parent);
            let dir = parent.join(name);
            create_dir(&dir)?;
            cgroup.dirs.push((controller, dir));
        }
        Ok((!cgroup.dirs.is_empty()).then_some(cgroup))
    }

    pub fn has(&self, controller: Controller) -> bool {
        self.dir(controller).is_some()
    }

    fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, dir)| dir.as_path())
    }

    fn unique_dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = self.dirs.iter().map(|(_, dir)| dir.as_path()).collect();
        dirs.dedup();
        dirs
    }

    pub fn set_memory(&self, bytes: u64) -> Result<(), Error> {
        let Some(dir) = self.dir(Controller::Memory) else {
            return Ok(());
        };
        let value = bytes.to_string();
        match self.version {
            Version::V1 => {
                write(&dir.join("memory.limit_in_bytes"), &value)?;
                let swap = dir.join("memory.memsw.limit_in_bytes");
                if swap.exists() {
                    write(&swap, &value)?;
                }
            }
            Version::V2 => {
                write(&dir.join("memory.max"), &value)?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&dir.join("memory.oom.group"), "1")?;
            }
        }
        Ok(())
    }

    pub fn set_pids(&self, pids: u64) -> Result<(), Error> {
        match self.dir(Controller::Pids) {
            Some(dir) => write(&dir.join("pids.max"), &pids.to_string()),
            None => Ok(()),
        }
    }

    pub fn set_cpus(&self, cpus: f64) -> Result<(), Error> {
        const PERIOD_US: u64 = 100_000;
        let Some(dir) = self.dir(Controller::Cpu) else {
            return Ok(());
        };
        let quota = ((cpus * PERIOD_US as f64) as u64).max(1000);
        match self.version {
            Version::V1 => {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())
            }
            Version::V2 => write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}")),
        }
    }

    pub fn is_v2(&self) -> bool {
        self.version == Version::V2
    }

    /// Opens the v2 group's directory, for the launcher to clone the init into it. Moving a
    /// process with a write to `cgroup.procs` takes a global lock whose first use waits for
    /// an RCU grace period (about 12 ms per spaced start in bench/startup.sh on cgroup v1).
    /// Cloning into the group takes no such lock.
    pub fn open_dir(&self) -> Result<OwnedFd, Error> {
        let dir = self.unique_dirs()[0].to_path_buf();
        open(dir, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// Opens the v1 `tasks` files the init joins by, and those of the parents it leaves to.
    /// A thread moved through `tasks` skips the global lock that `cgroup.procs` takes.
    pub fn grant(&self, limits_pids: bool) -> Result<Grant, Error> {
        let mut grant = Grant {
            limits_pids,
            ..Grant::default()
        };
        for dir in self.unique_dirs() {
            grant.join.push(open(dir.join("tasks"), libc::O_WRONLY)?);
            if let Some(parent) = dir.parent() {
                grant
                    .leave
                    .push(open(parent.join("tasks"), libc::O_WRONLY)?);
            }
        }
        Ok(grant)
    }

    /// Returns the limit that the sandbox hit, if any: an out-of-memory kill or a refused fork.
    pub fn limit_hit(&self) -> Option<EndReason> {
        if let Some(dir) = self.dir(Controller::Memory) {
            let (file, key) = match self.version {
                Version::V1 => ("memory.oom_control", "oom_kill"),
                Version::V2 => ("memory.events", "oom_kill"),
            };
            if read_counter(&dir.join(file), key) > 0 {
                return Some(EndReason::OutOfMemory);
            }
        }
        if let Some(dir) = self.dir(Controller::Pids) {
            if read_counter(&dir.join("pids.events"), "max") > 0 {
                return Some(EndReason::PidsLimit);
            }
        }
        None
    }

    /// Reads the counters behind [`Cgroup::limit_hit`]: out-of-memory kills and refused forks.
    pub fn limit_counters(&self) -> (u64, u64) {
        let oom = self.dir(Controller::Memory).map_or(0, |dir| {
            let file = match self.version {
                Version::V1 => "memory.oom_control",
                Version::V2 => "memory.events",
            };
            read_counter(&dir.join(file), "oom_kill")
        });
        let pids = self
            .dir(Controller::Pids)
            .map_or(0, |dir| read_counter(&dir.join("pids.events"), "max"));
        (oom, pids)
    }

    /// Returns the limit hit since the counters read `before`, for a cgroup that outlives
    /// one command.
    pub fn limit_hit_since(&self, before: (u64, u64)) -> Option<EndReason> {
        let (oom, pids) = self.limit_counters();
        if oom > before.0 {
            Some(EndReason::OutOfMemory)
        } else if pids > before.1 {
            Some(EndReason::PidsLimit)
        } else {
            None
        }
    }

    /// Returns the peak memory use of the sandbox in bytes, where the kernel records it.
    pub fn peak_memory(&self) -> Option<u64> {
        let dir = self.dir(Controller::Memory)?;
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    }

    pub fn describe(&self) -> Description {
        Description {
            v2: self.is_v2(),
            dirs: self
                .dirs
                .iter()
                .map(|(controller, dir)| (controller.name().to_owned(), dir.clone()))
                .collect(),
        }
    }

    /// Returns a view of the cgroup that `description` names, which dropping leaves in place.
    pub fn view(description: &Description) -> Cgroup {
        let dirs = description
            .dirs
            .iter()
            .filter_map(|(name, dir)| {
                let controller = Controller::ALL.into_iter().find(|c| c.name() == name)?;
                Some((controller, dir.clone()))
            })
            .collect();
        Cgroup {
            version: if description.v2 {
                Version::V2
            } else {
                Version::V1
            },
            dirs,
            owned: false,
        }
    }

    /// Opens what a process needs to join this cgroup: the v1 `tasks` files, to which it
    /// writes "0", or the v2 directory to clone into.
    pub fn join_files(&self) -> Result<Vec<OwnedFd>, Error> {
        if self.is_v2() {
            return Ok(vec![self.open_dir()?]);
        }
        self.unique_dirs()
            .into_iter()
            .map(|dir| open(dir.join("tasks"), libc::O_WRONLY | libc::O_CLOEXEC))
            .collect()
    }

    /// Reads the memory and process counters.
    pub fn usage(&self) -> Usage {
        let read =
            |path: PathBuf| -> Option<u64> { fs::read_to_string(path).ok()?.trim().parse().ok() };
        let memory = self
            .dir(Controller::Memory)
            .and_then(|dir| match self.version {
                Version::V1 => read(dir.join("memory.usage_in_bytes")),
                Version::V2 => read(dir.join("memory.current")),
            });
        let pids = self
            .dir(Controller::Pids)
            .and_then(|dir| read(dir.join("pids.current")));
        Usage { memory, pids }
    }

    /// Kills every process in the cgroup and removes it, for a cgroup whose owner is gone.
    pub fn remove_now(&self) {
        self.remove();
    }

    /// Kills every process left in the cgroup and removes its directories, waiting up to a
    /// second for dying processes to leave.
    fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        for dir in self.unique_dirs() {
            loop {
                kill_members(dir);
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error) if Instant::now() >= deadline => {
                        tracing::warn!(path = %dir.display(), %error, "cannot remove cgroup");
                        break;
                    }
                    Err(_) => sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.owned {
            self.remove();
        }
    }
}

/// Age after which an empty sandbox cgroup is stale. A sandbox's init joins its cgroup
/// within milliseconds of its creation, and the launcher removes it once the init leaves, so
/// only a launcher killed in between leaves one behind.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Removes the empty sandbox cgroups below `parent` that a killed launcher left behind.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("airlock-") {
            continue;
        }
        let dir = entry.path();
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|created| created.elapsed().is_ok_and(|age| age > STALE_AFTER));
        let empty =
            fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|procs| procs.is_empty());
        if old && empty && fs::remove_dir(&dir).is_ok() {
            tracing::info!(path = %dir.display(), "removed a stale sandbox cgroup");
        }
    }
}

fn kill_members(dir: &Path) {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|line| line.trim().parse().ok()) {
        let _ = crate::sys::kill(pid, libc::SIGKILL);
    }
}

/// Enables the controllers for children of the top-level `airlock` cgroup on v2.
fn prepare_v2_root_parent(parent: &Path) -> Result<(), Error> {
    let Some(top) = parent.parent() else {
        return Ok(());
    };
    let available = fs::read_to_string(top.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = Controller::ALL
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == c.name()))
        .map(|c| format!("+{}", c.name()))
        .collect();
    let wanted = wanted.join(" ");
    create_dir(parent)?;
    write(&top.join("cgroup.subtree_control"), &wanted)?;
    write(&parent.join("cgroup.subtree_control"), &wanted)
}

/// Reads `key N` from a flat-keyed cgroup file, 0 when absent.
fn read_counter(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == key).then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_mountinfo_lines() {
        let v1 = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        let hierarchy = parse_mountinfo_line(v1).unwrap();
        assert_eq!(hierarchy.mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(hierarchy.controllers, ["memory"]);
        assert!(!hierarchy.is_v2);
        let v2 = "41 31 0:38 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        assert!(parse_mountinfo_line(v2).unwrap().is_v2);
        let other = "22 27 0:21 / /proc rw,relatime - proc proc rw";
        assert!(parse_mountinfo_line(other).is_none());
    }

    #[test]
    fn standard_layout_agrees_with_mountinfo() {
        let Some(standard) = standard_hierarchies() else {
            eprintln!("skipped: /sys/fs/cgroup has no standard layout on this host");
            return;
        };
        let from_mountinfo = hierarchies(false);
        for hierarchy in standard {
            let resolved = hierarchy.mount_point.canonicalize().unwrap();
            let listed = from_mountinfo
                .iter()
                .find(|h| h.mount_point == resolved && h.is_v2 == hierarchy.is_v2);
            assert!(
                listed.is_some(),
                "{resolved:?} is not a cgroup mount in mountinfo"
            );
        }
    }

    #[test]
    fn joins_paths_below_mount_root() {
        let hierarchy = Hierarchy {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/user.slice".into(),
            controllers: vec![],
            is_v2: true,
        };
        assert_eq!(
            under_mount(&hierarchy, "/user.slice/user-1000.slice"),
            Path::new("/sys/fs/cgroup/user-1000.slice")
        );
    }
}
