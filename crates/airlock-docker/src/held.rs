//! Held sandboxes: a container started without a command, kept by the supervisor, which
//! has the write end of the init's liveness pipe. When the supervisor goes, however it
//! goes, the init kills every process of the container and exits, which stops the
//! container; `airlock gc` then removes it with its volume.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use airlock_core::state::ProcessRef;
use airlock_core::{EndReason, Enforcement, HeldEnd, HeldSandbox, RunOptions, Spec, User};
use airlock_namespace::cgroup::Description;
use airlock_namespace::launch::{self as shared, RestoreMask};
use airlock_namespace::{held, sys};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::launch::{self, Sandbox};
use crate::watch::is_readable;

/// Facts about a running held sandbox that later commands need, stored in its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    /// The engine's socket, which later commands use whatever DOCKER_HOST names then.
    pub socket: PathBuf,
    /// The engine's id of the container.
    pub container: String,
    /// The container's init, by its host pid.
    pub init: ProcessRef,
    pub supervisor: ProcessRef,
    /// The host directory bound at /.airlock/run, where `exec` listens for its wrapper.
    pub run_dir: PathBuf,
    /// The user the sandbox's commands run as.
    pub user: User,
    /// Whether the engine remaps users, so that uid 0 inside is not uid 0 on the host.
    pub user_namespaces: bool,
    pub cgroup: Option<Description>,
    /// The Landlock ABI the kernel offers, 0 without Landlock.
    pub landlock_abi: u32,
    pub enforcement: Enforcement,
    /// The facts every later start of the sandbox reuses, which the lifecycle keeps in the
    /// sandbox's record after a stop.
    #[serde(default)]
    pub pinned: Pinned,
}

/// The facts a docker sandbox's first start fixes for its later starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pinned {
    /// The socket of the engine that created the sandbox's first container. A later start
    /// creates its container there, whatever DOCKER_HOST names then, because the sandbox's
    /// image is in that engine.
    pub socket: Option<PathBuf>,
}

impl Pinned {
    /// Returns the engine socket that a docker sandbox's record names: the pinned one, or
    /// the runtime's of a sandbox that a version without pinning started.
    pub fn socket_of(
        pinned: Option<&serde_json::Value>,
        runtime: Option<&serde_json::Value>,
    ) -> Option<PathBuf> {
        let pinned =
            pinned.and_then(|pinned| serde_json::from_value::<Pinned>(pinned.clone()).ok());
        let runtime = runtime.and_then(|runtime| runtime_of(runtime).ok());
        pinned
            .and_then(|pinned| pinned.socket)
            .or(runtime.map(|runtime| runtime.socket))
    }

    /// Reads the facts an earlier start pinned, from [`RunOptions::pinned`]. Facts this
    /// version cannot read are dropped with a warning, so the start finds the engine as a
    /// first start does.
    pub fn of(options: &RunOptions) -> Pinned {
        let Some(value) = &options.pinned else {
            return Pinned::default();
        };
        serde_json::from_value(value.clone()).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the facts pinned at the sandbox's first start");
            Pinned::default()
        })
    }
}

/// A running held sandbox, owned by its supervisor.
pub struct Held {
    sandbox: Sandbox,
    runtime: Runtime,
    signals: OwnedFd,
    _restore_mask: RestoreMask,
    /// Limits already reported, so each is reported once.
    reported: Vec<EndReason>,
}

/// Starts a container for `spec` without a command and waits until its init is ready.
pub fn start(spec: &Spec, options: &RunOptions) -> Result<Held, Error> {
    let (restore_mask, signals) = shared::block_forwarded_signals(false)?;
    let sandbox = launch::start(spec, options, true)?;
    let supervisor = ProcessRef::of(sys::getpid()).ok_or(Error::NotRunning {
        container: sandbox.container().to_owned(),
    })?;
    let runtime = Runtime {
        socket: sandbox.resources.engine.socket().to_owned(),
        container: sandbox.container().to_owned(),
        init: sandbox.init,
        supervisor,
        run_dir: sandbox.resources.run_dir.clone().unwrap_or_default(),
        user: sandbox.user,
        user_namespaces: sandbox.facts.user_namespaces,
        cgroup: sandbox.cgroup.as_ref().map(|cgroup| cgroup.describe()),
        landlock_abi: sandbox.facts.landlock_abi,
        enforcement: sandbox.enforcement.clone(),
        pinned: Pinned {
            socket: Some(sandbox.resources.engine.socket().to_owned()),
        },
    };
    tracing::info!(sandbox = %sandbox.id, pid = sandbox.init.pid, "held sandbox ready");
    Ok(Held {
        sandbox,
        runtime,
        signals,
        _restore_mask: restore_mask,
        reported: Vec::new(),
    })
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
        let init = self.sandbox.init_pidfd.as_raw_fd();
        loop {
            if is_readable(init)? {
                return Ok(HeldEnd::Exited);
            }
            let cgroup = self.sandbox.cgroup.as_ref();
            held::report_new_limit(cgroup, &mut self.reported, limit_hit);
            if let Some(end) = held::wait_step(init, &self.signals, deadline)? {
                return Ok(end);
            }
        }
    }
}

/// Reads the runtime a held sandbox recorded.
pub fn runtime_of(value: &serde_json::Value) -> Result<Runtime, Error> {
    serde_json::from_value(value.clone()).map_err(|error| Error::Runtime(error.to_string()))
}
