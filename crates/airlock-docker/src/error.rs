//! Failures of the docker backend, one variant per step of creating, joining or removing a
//! sandbox.

use std::io;
use std::path::PathBuf;

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the docker backend runs a container image: pass --image NAME, a local image of the engine (`airlock image import DIR NAME` makes one from a directory tree)")]
    NoImage,
    #[error("--rootfs does not apply to the docker backend, which runs an image: import the tree once with `airlock image import {0:?} NAME` and pass --image NAME")]
    RootfsNotSupported(PathBuf),
    #[error(
        "invalid image {image:?}: {rule}; for example debian:bookworm or 127.0.0.1:5000/tools:1"
    )]
    InvalidImage {
        image: String,
        rule: crate::image::NameRule,
    },
    #[error("image {image:?} is not in the engine at {socket:?}: add it with `airlock image pull {image}`, or make it from a directory tree with `airlock image import DIR {image}`")]
    ImageNotFound { image: String, socket: PathBuf },
    #[error("cannot generate a sandbox id")]
    Id(#[source] io::Error),
    #[error("the sandbox cannot enforce what the spec requires: {unmet}; pass --allow-weaker to run with weaker isolation, or use --backend namespace")]
    WeakerThanRequired { unmet: String },
    #[error("cannot find the running Airlock binary, which the container runs as its init")]
    CurrentExe(#[source] io::Error),
    #[error("{path:?} is not a statically linked program, so it cannot run inside an image with another C library: build Airlock for the target x86_64-unknown-linux-musl (the default in .cargo/config.toml)")]
    BinaryNotStatic { path: PathBuf },
    #[error("the workspace path {path:?} contains {character:?}, which the engine's overlay volume options cannot carry: rename the directory, or pass --workspace-mode bind")]
    WorkspacePath { path: PathBuf, character: char },
    #[error("an overlay workspace needs a directory for its upper layer; pass --workspace-mode bind to write through instead")]
    NoLayers,
    #[error("cannot prepare the workspace overlay's layers in {path:?}")]
    Layers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare {path:?}, the directory through which the host hands commands to the container")]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the container's user {uid}:{gid} cannot execute the Airlock binary {binary:?}, which the container runs as its init: make it readable and executable by every user (chmod 755)")]
    BinaryNotExecutable {
        binary: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot {step}")]
    Request {
        step: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the engine started container {container} but reports no process for it (state {state:?}){}", logs_suffix(.logs))]
    NoInitPid {
        container: String,
        state: String,
        logs: String,
    },
    #[error("the container's init did not connect to the host, or report ready, within {seconds} s{}", logs_suffix(.logs))]
    InitSilent { seconds: u64, logs: String },
    #[error("the container's init exited before it was ready{}", logs_suffix(.logs))]
    InitExited { logs: String },
    #[error("the exec's wrapper in the container {reason}; check that the sandbox still runs with `airlock ls`")]
    WrapperFailed { reason: String },
    #[error("cannot hand the command over to the container")]
    Channel(#[source] io::Error),
    #[error("the container's init failed to {step}: {cause}")]
    Setup { step: String, cause: String },
    #[error("cannot wait for the sandbox")]
    Wait(#[source] io::Error),
    #[error("cannot block the signals the sandbox receives")]
    Signals(#[source] io::Error),
    #[error("the sandbox's record has no usable runtime ({0}); remove it with `airlock rm --force` or `airlock gc`")]
    Runtime(String),
    #[error("the sandbox's container {container} is not running; start the sandbox again with `airlock start`")]
    NotRunning { container: String },
    #[error("exec --user with uid or gid 0 would run as root or root's group on the host, because the engine does not remap users; omit --user, or create the sandbox with --allow-weaker to accept that")]
    PrivilegedExecUser,
    #[error("the copying process in the container {reason}; check that the sandbox still runs with `airlock ls`")]
    CopyHelperFailed { reason: String },
    #[error("cannot copy {path:?}: {cause}")]
    Copy { path: PathBuf, cause: String },
    /// A step of the namespace backend's machinery that this backend shares failed.
    #[error(transparent)]
    Shared(#[from] airlock_namespace::Error),
}

/// Appends the container's last log lines, which usually explain why its init failed.
fn logs_suffix(logs: &str) -> String {
    if logs.trim().is_empty() {
        String::new()
    } else {
        format!("; its output: {}", logs.trim())
    }
}

impl Error {
    /// Wraps a failed request to the engine in the step it served.
    pub fn request(step: &'static str) -> impl FnOnce(bollard::errors::Error) -> Error {
        move |source| Error::Request { step, source }
    }
}

/// Returns whether the engine's response in `error` is 404, the status of a missing container,
/// image or volume.
pub fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
