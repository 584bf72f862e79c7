//! The cgroups of an nspawn sandbox: the namespace backend's limit cgroup (memory, pids,
//! cpu), and the cgroups systemd-nspawn runs in.
//!
//! With `--keep-unit`, systemd-nspawn creates `payload` and `supervisor` cgroups below its own
//! cgroup in systemd's hierarchy: `/sys/fs/cgroup` on a cgroup v2 host, and both the
//! `name=systemd` hierarchy and the unified one on a hybrid host. Started from the host's
//! root cgroup it would leave both at the top of the host's tree, so the process that
//! executes it first joins `airlock/airlock-ID` in each of those hierarchies, which the
//! clean-up removes with everything below.
//!
//! NOTE: only the hybrid layout (cgroup v1 controllers, `name=systemd` and a unified
//! hierarchy) was tested. On a cgroup v2 host systemd-nspawn runs in the limit cgroup itself
//! and makes its `payload` and `supervisor` cgroups below it, which is untested.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_core::{SandboxId, Spec};
use airlock_namespace::cgroup::{Cgroup, Controller, Layout};
use airlock_namespace::sys;

use crate::error::Error;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// How long the clean-up waits for the processes of a cgroup to leave it.
const REMOVE_GRACE: Duration = Duration::from_secs(2);

/// Returns the name of sandbox `id`'s cgroups, the same as the namespace backend's.
pub fn name(id: &SandboxId) -> String {
    format!("airlock-{}", id.short())
}

fn filesystem_type(path: &Path) -> Option<i64> {
    let path = sys::cstring(path).ok()?;
    // SAFETY: statfs is plain data, so an all-zero value is valid for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a live statfs for the call.
    let result = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    (result == 0).then(|| sys::fs_type(&stat))
}

/// Returns the directories systemd-nspawn of sandbox `id` runs in: one per systemd
/// hierarchy this host has.
pub fn placement_dirs(id: &SandboxId) -> Vec<PathBuf> {
    let top = Path::new("/sys/fs/cgroup");
    let hierarchies: Vec<PathBuf> = if filesystem_type(top) == Some(CGROUP2_SUPER_MAGIC) {
        vec![top.to_owned()]
    } else {
        [
            ("systemd", CGROUP_SUPER_MAGIC),
            ("unified", CGROUP2_SUPER_MAGIC),
        ]
        .into_iter()
        .map(|(name, magic)| (top.join(name), magic))
        .filter(|(dir, magic)| filesystem_type(dir) == Some(*magic))
        .map(|(dir, _)| dir)
        .collect()
    };
    hierarchies
        .into_iter()
        .map(|hierarchy| hierarchy.join("airlock").join(name(id)))
        .collect()
}

/// The descriptors a process enters the cgroups of a sandbox by.
#[derive(Debug, Default)]
pub struct Entry {
    /// The cgroup v2 directory to fork the process into.
    pub fork_into: Option<OwnedFd>,
    /// Files the process writes "0" to, once forked.
    pub join: Vec<OwnedFd>,
}

/// The cgroups of one sandbox, removed on drop.
pub struct Cgroups {
    pub id: SandboxId,
    /// The limit cgroup, if this host provides one.
    pub limits: Option<Cgroup>,
    /// The cgroups systemd-nspawn runs in.
    pub placement: Vec<PathBuf>,
    /// The host's cgroup layout, for limit cgroups made later.
    layout: Option<Layout>,
}

impl Cgroups {
    /// Creates the cgroups systemd-nspawn runs in and, on cgroup v2, where the limit cgroup
    /// is one of them, the limit cgroup with the spec's limits. The v1 limit cgroups, which
    /// only the container's init joins, are left to [`Cgroups::create_v1_limits`].
    pub fn create(spec: &Spec, id: &SandboxId) -> Result<Cgroups, Error> {
        let layout = Layout::discover(true);
        let mut cgroups = Cgroups {
            id: *id,
            limits: None,
            placement: Vec::new(),
            layout,
        };
        if let Some(layout) = cgroups.layout.as_ref().filter(|layout| layout.is_v2()) {
            cgroups.limits = create_limits(spec, id, layout)?;
        }
        for dir in placement_dirs(id) {
            fs::create_dir_all(&dir).map_err(|source| Error::PlacementCgroup {
                path: dir.clone(),
                source,
            })?;
            cgroups.placement.push(dir);
        }
        Ok(cgroups)
    }

    /// Creates the v1 limit cgroups with the spec's limits. The launcher calls this once
    /// systemd-nspawn runs, so that the work overlaps with the container's start.
    pub fn create_v1_limits(&mut self, spec: &Spec) -> Result<(), Error> {
        let Some(layout) = self.layout.as_ref().filter(|layout| !layout.is_v2()) else {
            return Ok(());
        };
        let expected_pids = self.limits_processes();
        self.limits = create_limits(spec, &self.id, layout)?;
        if self.limits_processes() != expected_pids {
            return Err(Error::PidsControllerChanged);
        }
        Ok(())
    }

    /// Whether the limit cgroup counts the sandbox's processes, which decides before it is
    /// made whether RLIMIT_NPROC has to stand in.
    pub fn limits_processes(&self) -> bool {
        match (&self.limits, &self.layout) {
            (Some(limits), _) => limits.has(Controller::Pids),
            (None, Some(layout)) if !layout.is_v2() => layout.check(Controller::Pids).is_ok(),
            _ => false,
        }
    }

    /// Opens what the child that executes systemd-nspawn enters its cgroups by: the cgroup v2
    /// directory it is forked into, and the `tasks` file it writes "0" to for the
    /// `name=systemd` hierarchy. The v1 limit cgroups are left to [`Cgroups::admit`], so that
    /// systemd-nspawn itself does not count against the sandbox's limits.
    /// Being forked into a v2 cgroup and writing "0" to a v1 `tasks` file both move one
    /// thread without the kernel's global migration lock. Moving a whole process through
    /// `cgroup.procs` takes that lock and can wait for an RCU grace period (15 ms in one
    /// trace).
    pub fn entry(&self) -> Result<Entry, Error> {
        let mut entry = Entry::default();
        for dir in &self.placement {
            let opened = if filesystem_type(dir) == Some(CGROUP2_SUPER_MAGIC) {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
                sys::open(dir, flags).map(|fd| entry.fork_into = Some(fd))
            } else {
                let flags = libc::O_WRONLY | libc::O_CLOEXEC;
                sys::open(&dir.join("tasks"), flags).map(|fd| entry.join.push(fd))
            };
            opened.map_err(|source| Error::PlacementCgroup {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(entry)
    }

    /// Opens the `tasks` files of the v1 limit cgroups, which the container's init joins by
    /// writing "0" to them, so that everything it starts stays there. systemd-nspawn remains
    /// outside them: counted against the memory limit, it would be the largest process there,
    /// and the kernel's OOM killer would end the whole container with it. The init moves
    /// itself because a write of another process's pid takes the kernel's global cgroup
    /// migration lock, whose RCU grace period cost 8 ms per run here. On cgroup v2 the limit
    /// cgroup is a placement directory, which the init is in already.
    pub fn limit_join_files(&self) -> Result<Vec<OwnedFd>, Error> {
        match self.limits.as_ref().filter(|limits| !limits.is_v2()) {
            Some(limits) => limits.join_files().map_err(Error::Cgroup),
            None => Ok(Vec::new()),
        }
    }

    pub fn has(&self, controller: Controller) -> bool {
        self.limits
            .as_ref()
            .is_some_and(|limits| limits.has(controller))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in &self.placement {
            remove_tree(dir);
        }
        // Dropping the limit cgroup removes it; on v2 it was one of the placement
        // directories and is gone already.
        self.limits = None;
    }
}

/// Writes "0" to each file, which moves the calling single-threaded process into the
/// cgroup.
pub fn join(files: &[OwnedFd]) -> io::Result<()> {
    for file in files {
        sys::write_all(file.as_raw_fd(), b"0")?;
    }
    Ok(())
}

fn create_limits(spec: &Spec, id: &SandboxId, layout: &Layout) -> Result<Option<Cgroup>, Error> {
    let mut controllers = vec![Controller::Memory, Controller::Pids];
    if spec.limits.cpus.value.is_some() {
        controllers.push(Controller::Cpu);
    }
    let created = Cgroup::create(layout, &name(id), true, &controllers).map_err(Error::Cgroup)?;
    let Some(cgroup) = created else {
        return Ok(None);
    };
    cgroup
        .set_memory(spec.limits.memory.value)
        .map_err(Error::Cgroup)?;
    // systemd-nspawn and the container's init count besides the command's processes.
    cgroup
        .set_pids(spec.limits.pids.value + 2)
        .map_err(Error::Cgroup)?;
    if let Some(cpus) = spec.limits.cpus.value {
        cgroup.set_cpus(cpus).map_err(Error::Cgroup)?;
    }
    Ok(Some(cgroup))
}

/// Kills the processes in `dir` and every cgroup below it, and removes them, deepest first.
pub fn remove_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let deadline = Instant::now() + REMOVE_GRACE;
    loop {
        let members = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in members.lines().filter_map(|line| line.trim().parse().ok()) {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return,
            Err(error) if Instant::now() >= deadline => {
                tracing::warn!(path = %dir.display(), %error, "cannot remove cgroup");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Removes the cgroups of sandbox `id`, for a sandbox whose supervisor is gone.
pub fn remove_named(id: &SandboxId) {
    for dir in placement_dirs(id) {
        remove_tree(&dir);
    }
}
