//! Failures of the chroot backend, one variant per step of creating or joining a sandbox.

use std::io;
use std::path::PathBuf;

use airlock_core::{Unavailable, User};
use airlock_namespace::{stdio, workspace};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Unavailable(Unavailable),
    #[error("cannot generate a sandbox id")]
    Id(#[source] io::Error),
    #[error("exec --user with uid or gid 0 in a chroot sandbox would run as root or root's group on the host; omit --user, or create the sandbox with --allow-weaker to accept that")]
    RootExecNotAccepted,
    #[error("the sandbox cannot enforce what the spec requires: {unmet}; use --backend namespace, which enforces limits with cgroups, or pass --allow-weaker to run with weaker isolation")]
    WeakerThanRequired { unmet: String },
    #[error("argument or environment value {0:?} contains a NUL byte, which a command line cannot carry")]
    NulByte(String),
    #[error(transparent)]
    Stdio(stdio::Error),
    #[error(transparent)]
    Workspace(workspace::Error),
    #[error("cannot read the owner of the workspace {path:?}")]
    WorkspaceOwner {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot show the workspace {path:?}, owned by uid {owner}, as owned by uid {} through an idmapped mount; put the workspace on a file system that supports idmapped mounts (ext4, xfs, btrfs, tmpfs on Linux 6.3 or later), or pass --user {owner}:{owner_group} to run as its owner", user.uid)]
    IdmapWorkspace {
        path: PathBuf,
        owner: u32,
        owner_group: u32,
        user: User,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the workspace overlay's layers in {path:?}")]
    Layers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount the workspace's copy-on-write overlay with its layers in {path:?}")]
    Overlay {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("an overlay workspace needs a directory for its upper layer; pass --workspace-mode bind to write through instead")]
    NoLayers,
    #[error("cannot create the pipes to the sandbox's processes")]
    Channel(#[source] io::Error),
    #[error("cannot start the sandbox's holder process in a new mount namespace")]
    Clone(#[source] io::Error),
    #[error("cannot start the process that joins the sandbox")]
    Join(#[source] io::Error),
    #[error("cannot attach the sandbox's pseudo-terminal")]
    Terminal(#[source] io::Error),
    /// A step inside the sandbox failed; the cause arrives as text over the report pipe.
    #[error("sandbox setup failed: {step}: {cause}")]
    Setup { step: String, cause: String },
    #[error("the sandbox's holder process died without a report (wait status {status:#x})")]
    HolderDied { status: i32 },
    #[error("cannot wait for the sandbox")]
    Wait(#[source] io::Error),
    #[error("the sandbox is not running (its holder process, pid {pid}, is gone): start it with `airlock start`")]
    NotRunning { pid: i32 },
    #[error("the sandbox's record has no usable runtime ({0}); remove it with `airlock rm --force` or `airlock gc`")]
    Runtime(String),
    /// A failure in a part shared with the namespace backend, such as the stream relays or
    /// the copy.
    #[error(transparent)]
    Shared(airlock_namespace::Error),
}

impl From<airlock_namespace::Error> for Error {
    fn from(error: airlock_namespace::Error) -> Self {
        match error {
            airlock_namespace::Error::Setup { step, cause } => Error::Setup { step, cause },
            // The shared outcome builder names the process it waited for an init.
            airlock_namespace::Error::InitDied { status } => Error::HolderDied { status },
            other => Error::Shared(other),
        }
    }
}
