//! The `docker` backend: each sandbox is a container of a Docker-compatible engine, Docker
//! Engine or Podman's API service, driven through its HTTP API on a unix socket.
//!
//! The engine builds the container from the spec: an image, a read-only root, no network
//! but `lo`, no capabilities, no_new_privs, its default seccomp profile and cgroup limits,
//! with the workspace as an overlay volume or a bind ([`config`]). The container's PID 1 is
//! the Airlock binary, bound read-only ([`inside`]). It takes the command and the caller's
//! streams from the host through a socket in a bound directory ([`channel`]). Then it starts
//! the command as the nspawn backend's init does, with Airlock's seccomp filter and Landlock
//! on top of the engine's profile. Every `exec` goes through the same binary as a wrapper
//! ([`exec`]), because a process that the engine starts there does not descend from PID 1.
//!
//! The engine's client runs on a current-thread runtime ([`engine`]), so the supervisor of a
//! held sandbox stays single-threaded.

pub mod binary;
pub mod cgroup;
pub mod channel;
pub mod config;
pub mod copy;
pub mod engine;
pub mod error;
pub mod exec;
pub mod held;
pub mod image;
pub mod inside;
pub mod launch;
pub mod observe;
pub mod protections;
pub mod resources;
pub mod rlimits;
mod stream;
pub mod transport;
pub mod watch;

use std::path::Path;

use airlock_core::{
    Backend, BackendError, Enforcement, ExecCommand, Finished, HeldSandbox, IsolationClass,
    RunOptions, SandboxId, Spec, Stats, Unavailable,
};
use bollard::query_parameters::StatsOptionsBuilder;
use futures_util::StreamExt;

pub use engine::{Engine, EngineError};
pub use error::Error;

/// The backend that runs sandboxes as containers of a Docker-compatible engine.
#[derive(Debug, Default, Clone, Copy)]
pub struct DockerBackend;

impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn class(&self) -> IsolationClass {
        IsolationClass::Container
    }

    fn availability(&self) -> Result<(), Unavailable> {
        Engine::probe()
            .map(drop)
            .map_err(|error| unavailable(&error))
    }

    fn assess(&self, spec: &Spec) -> Enforcement {
        let facts = match Engine::connect() {
            Ok(engine) => launch::facts(&engine),
            Err(error) => protections::Facts::unreachable(error.to_string()),
        };
        let owner = spec
            .workspace
            .as_deref()
            .filter(|_| spec.workspace_mode != airlock_core::WorkspaceMode::None)
            .and_then(|path| std::fs::metadata(path).ok())
            .map(|metadata| {
                use std::os::unix::fs::MetadataExt;
                (metadata.uid(), metadata.gid())
            });
        protections::assess(spec, config::sandbox_user(spec, owner), &facts)
    }

    fn run(&self, spec: &Spec, options: RunOptions) -> Result<Finished, BackendError> {
        Ok(launch::run(spec, options)?)
    }

    fn hold(
        &self,
        spec: &Spec,
        options: &RunOptions,
    ) -> Result<Box<dyn HeldSandbox>, BackendError> {
        Ok(Box::new(held::start(spec, options)?))
    }

    fn exec(
        &self,
        id: &SandboxId,
        spec: &Spec,
        runtime: &serde_json::Value,
        command: &ExecCommand,
        options: &RunOptions,
    ) -> Result<Finished, BackendError> {
        let runtime = held::runtime_of(runtime)?;
        Ok(exec::exec(id, spec, &runtime, command, options)?)
    }

    fn is_running(&self, runtime: &serde_json::Value) -> bool {
        held::runtime_of(runtime).is_ok_and(|runtime| runtime.init.is_alive())
    }

    fn stats(&self, runtime: &serde_json::Value) -> Result<Stats, BackendError> {
        Ok(stats(&held::runtime_of(runtime)?)?)
    }

    fn copy(
        &self,
        runtime: &serde_json::Value,
        source: &Path,
        target: &Path,
        into_sandbox: bool,
    ) -> Result<(), BackendError> {
        let runtime = held::runtime_of(runtime)?;
        Ok(copy::copy(&runtime, source, target, into_sandbox)?)
    }

    fn clean_up(&self, id: &SandboxId, runtime: Option<&serde_json::Value>) {
        let runtime = runtime.and_then(|runtime| held::runtime_of(runtime).ok());
        clean_up(id, runtime.as_ref());
    }

    fn clean_up_without_runtime(&self, id: &SandboxId, pinned: Option<&serde_json::Value>) {
        let socket = pinned
            .and_then(|pinned| serde_json::from_value::<held::Pinned>(pinned.clone()).ok())
            .and_then(|pinned| pinned.socket);
        match socket {
            Some(socket) => remove_on(id, Engine::connect_to(&socket)),
            None => clean_up(id, None),
        }
    }
}

/// Splits an engine connection error into the reason and the fix that `airlock doctor`
/// shows.
fn unavailable(error: &EngineError) -> Unavailable {
    let message = error.to_string();
    let (reason, fix) = match message.split_once("; ") {
        Some((reason, fix)) => (reason.to_owned(), fix.to_owned()),
        None => (message.clone(), "see the engine's log".to_owned()),
    };
    Unavailable { reason, fix }
}

/// Reads the one-shot statistics of the sandbox's container. CPU time is the container's
/// total since it started, which includes processes that have exited.
fn stats(runtime: &held::Runtime) -> Result<Stats, Error> {
    if !runtime.init.is_alive() {
        return Err(Error::NotRunning {
            container: runtime.container.clone(),
        });
    }
    let engine = Engine::connect_to(&runtime.socket)?;
    let options = StatsOptionsBuilder::new()
        .stream(false)
        .one_shot(true)
        .build();
    let docker = engine.docker();
    let read = engine.block_on(async {
        let mut stream = docker.stats(&runtime.container, Some(options));
        stream.next().await
    });
    let read = match read {
        Some(read) => read.map_err(Error::request("read the container's statistics"))?,
        None => {
            return Err(Error::NotRunning {
                container: runtime.container.clone(),
            })
        }
    };
    let nanoseconds = read
        .cpu_stats
        .and_then(|cpu| cpu.cpu_usage?.total_usage)
        .unwrap_or(0);
    Ok(Stats {
        memory: read.memory_stats.and_then(|memory| memory.usage),
        cpu_seconds: nanoseconds as f64 / 1e9,
        processes: read.pids_stats.and_then(|pids| pids.current).unwrap_or(0),
    })
}

/// Removes the container and volume of sandbox `id`, found by their label, and its run
/// directory. The engine is the recorded one, or where the supervisor died before recording
/// it, the one that DOCKER_HOST or the default sockets name now.
fn clean_up(id: &SandboxId, runtime: Option<&held::Runtime>) {
    let engine = match runtime {
        Some(runtime) => Engine::connect_to(&runtime.socket),
        None => Engine::connect(),
    };
    remove_on(id, engine);
    if let Some(runtime) = runtime {
        let _ = std::fs::remove_dir_all(&runtime.run_dir);
    }
}

/// Removes the container and volume of sandbox `id` from `engine`, or warns that the engine
/// is unreachable.
fn remove_on(id: &SandboxId, engine: Result<Engine, EngineError>) {
    match engine {
        Ok(engine) => resources::remove_labeled(&engine, &id.to_string()),
        Err(error) => {
            tracing::warn!(sandbox = %id, %error, "cannot reach the engine to remove the sandbox's container")
        }
    }
}
