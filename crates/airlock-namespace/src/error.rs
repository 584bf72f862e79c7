//! Failures of the namespace backend, one variant per step of creating a sandbox.

use std::io;

use crate::{cgroup, stdio, userns, workspace};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot generate a sandbox id")]
    Id(#[source] io::Error),
    #[error("the namespace backend must start sandboxes from a single-threaded process, but this one has {threads} threads")]
    MultiThreaded { threads: usize },
    #[error("cannot set up the sandbox's cgroup")]
    Cgroup(#[source] cgroup::Error),
    #[error("the sandbox cannot enforce what the spec requires: {unmet}; run airlock as root or in a cgroup delegated to you (see the README), or pass --allow-weaker to run with weaker isolation")]
    WeakerThanRequired { unmet: String },
    #[error("argument or environment value {0:?} contains a NUL byte, which a command line cannot carry")]
    NulByte(String),
    #[error(transparent)]
    Stdio(stdio::Error),
    #[error(transparent)]
    Workspace(workspace::Error),
    #[error("cannot create the channel to the sandbox")]
    Channel(#[source] io::Error),
    #[error("cannot block the signals forwarded to the sandbox")]
    Signals(#[source] io::Error),
    #[error("cannot create the sandbox's namespaces")]
    Clone(#[source] io::Error),
    #[error(transparent)]
    UserNamespace(userns::Error),
    #[error("cannot give the sandbox the workspace {path:?} as an idmapped mount, which keeps root inside from being root on the host; put the workspace on a file system that supports idmapped mounts (ext4, xfs, btrfs, tmpfs on Linux 6.3 or later)")]
    IdmapWorkspace {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach the sandbox's pseudo-terminal")]
    Terminal(#[source] io::Error),
    /// A step inside the sandbox failed; the cause arrives as text over the report pipe.
    #[error("sandbox setup failed: {step}: {cause}")]
    Setup { step: String, cause: String },
    #[error("cannot prepare the workspace overlay's layers in {path:?}")]
    Layers {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount the workspace's copy-on-write overlay with its layers in {path:?}")]
    Overlay {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("an overlay workspace needs a directory for its upper layer; pass --workspace-mode bind to write through instead")]
    NoLayers,
    #[error(
        "the sandbox is not running (its init, pid {pid}, is gone): start it with `airlock start`"
    )]
    NotRunning { pid: i32 },
    #[error("the sandbox's record has no usable runtime ({0}); remove it with `airlock rm --force` or `airlock gc`")]
    Runtime(String),
    #[error("copy failed: {step}: {cause}")]
    Copy { step: String, cause: String },
    #[error("cannot join the sandbox's PID namespace")]
    Join(#[source] io::Error),
    #[error("cannot wait for the sandbox")]
    Wait(#[source] io::Error),
    #[error("the namespace backend runs commands as root inside the sandbox's user namespace only, which holds no privilege on the host; omit --user or pass --user root")]
    UserNotMapped { uid: u32 },
    #[error("the sandbox's init died without a report (wait status {status:#x})")]
    InitDied { status: i32 },
}
