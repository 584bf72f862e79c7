//! Held containers: started without a command, kept by the supervisor, which is the parent of
//! systemd-nspawn. `airlock exec` and `airlock cp` join the container's namespaces with the
//! namespace backend's joiner, through the namespace descriptors the supervisor keeps open,
//! so [`Runtime`] contains that backend's runtime.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use airlock_core::state::ProcessRef;
use airlock_core::{EndReason, HeldEnd, HeldSandbox, RunOptions, SandboxId, Spec};
use airlock_namespace::init::JOINED_NAMESPACES;
use airlock_namespace::{held, sys};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::launch::{self, Container};

/// Facts about a running held container that later commands need, stored in its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    /// The namespace backend's runtime, which its joiner reads; its `init` is the container's
    /// init.
    #[serde(flatten)]
    pub container: airlock_namespace::held::Runtime,
    /// systemd-nspawn, a child of the supervisor.
    pub nspawn: ProcessRef,
    pub machine: String,
}

/// A running held container, owned by its supervisor.
pub struct Held {
    container: Container,
    runtime: Runtime,
    /// The container's namespaces, kept open for `exec`.
    _namespaces: Vec<OwnedFd>,
    /// Limits already reported, so each is reported once.
    reported: Vec<EndReason>,
}

/// Starts a container for `spec` without a command and waits until it is ready.
pub fn start(spec: &Spec, options: &RunOptions) -> Result<Held, Error> {
    let container = launch::start(spec, options, true)?;
    let leader = container.leader.ok_or(Error::NoLeader {
        nspawn: container.nspawn.pid,
    })?;
    let namespaces = open_namespaces(leader.pid)?;
    let namespaces_error = |source| Error::Namespaces {
        pid: leader.pid,
        source,
    };
    let pid_namespace = std::fs::metadata(format!("/proc/{}/ns/pid", leader.pid))
        .map_err(namespaces_error)?
        .ino();
    let gone = || Error::NoLeader {
        nspawn: container.nspawn.pid,
    };
    let supervisor = ProcessRef::of(sys::getpid()).ok_or_else(gone)?;
    let nspawn = ProcessRef::of(container.nspawn.pid).ok_or_else(gone)?;
    let runtime = Runtime {
        container: airlock_namespace::held::Runtime {
            init: leader,
            cgroup: container
                .cgroups
                .limits
                .as_ref()
                .map(|limits| limits.describe()),
            is_root: true,
            landlock_abi: container.landlock_abi,
            nproc_fallback: container.nproc_fallback,
            enforcement: container.enforcement.clone(),
            pid_namespace,
            supervisor,
            namespace_fds: namespaces.iter().map(AsRawFd::as_raw_fd).collect(),
        },
        nspawn,
        machine: launch::machine(&container.id),
    };
    tracing::info!(sandbox = %container.id, pid = leader.pid, "held sandbox ready");
    Ok(Held {
        container,
        runtime,
        _namespaces: namespaces,
        reported: Vec::new(),
    })
}

/// Opens the init's namespaces in the order a joining process enters them.
fn open_namespaces(leader: libc::pid_t) -> Result<Vec<OwnedFd>, Error> {
    JOINED_NAMESPACES
        .iter()
        .map(|(name, _)| {
            let path = format!("/proc/{leader}/ns/{name}");
            sys::open(Path::new(&path), libc::O_RDONLY | libc::O_CLOEXEC).map_err(|source| {
                Error::Namespaces {
                    pid: leader,
                    source,
                }
            })
        })
        .collect()
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
        let pidfd = self.container.nspawn.pidfd.as_raw_fd();
        loop {
            if self.container.nspawn.reap().is_some() {
                return Ok(HeldEnd::Exited);
            }
            let cgroup = self.container.cgroups.limits.as_ref();
            held::report_new_limit(cgroup, &mut self.reported, limit_hit);
            if let Some(end) = held::wait_step(pidfd, &self.container.signals, deadline)? {
                return Ok(end);
            }
        }
    }
}

/// Kills what a container whose supervisor is gone left behind and removes its cgroups and
/// directories: the recorded processes, or where the supervisor died before recording
/// them, whatever the cgroups named after `id` still contain.
pub fn clean_up(id: &SandboxId, runtime: Option<&Runtime>) {
    if let Some(runtime) = runtime {
        if runtime.container.init.is_alive() {
            let _ = sys::kill(runtime.container.init.pid, libc::SIGKILL);
        }
        wait_for_exit(runtime.nspawn);
    }
    // systemd-nspawn's own cgroups first: on cgroup v2 they are below the limit cgroup.
    crate::cgroups::remove_named(id);
    airlock_namespace::held::clean_up(id, runtime.map(|runtime| &runtime.container));
    launch::remove_host_leftovers(id);
}

/// Waits up to two seconds for `process`, which is not this process's child, to exit, and
/// kills it if it does not.
fn wait_for_exit(process: ProcessRef) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while process.is_alive() {
        if Instant::now() >= deadline {
            let _ = sys::kill(process.pid, libc::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
