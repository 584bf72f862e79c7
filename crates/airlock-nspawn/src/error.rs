//! Failures of the nspawn backend, one variant per step of creating or joining a sandbox.

use std::io;
use std::path::PathBuf;

use airlock_core::Unavailable;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the nspawn backend cannot run on this host")]
    Unavailable(#[source] Unavailable),
    #[error("cannot generate a sandbox id")]
    Id(#[source] io::Error),
    #[error("the sandbox cannot enforce what the spec requires: {unmet}; pass --allow-weaker to run with weaker isolation, or use --backend namespace")]
    WeakerThanRequired { unmet: String },
    #[error("root filesystem {0:?} has no usr/ directory, which systemd-nspawn requires of a container's tree: pass a tree with usr/, such as a debootstrap tree")]
    RootfsWithoutUsr(PathBuf),
    #[error("cannot set up the sandbox's cgroup")]
    Cgroup(#[source] airlock_namespace::cgroup::Error),
    #[error("the host's pids cgroup controller became usable or unusable while the sandbox started; run the command again")]
    PidsControllerChanged,
    #[error("cannot create the cgroup {path:?} that systemd-nspawn keeps its processes in")]
    PlacementCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the staging directory {path:?} for the sandbox's root")]
    Stage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot prepare the workspace overlay's layers in {path:?}")]
    Layers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("an overlay workspace needs a directory for its upper layer; pass --workspace-mode bind to write through instead")]
    NoLayers,
    #[error("cannot send the command to the sandbox's init")]
    SendPlan(#[source] io::Error),
    #[error("cannot start systemd-nspawn")]
    Spawn(#[source] io::Error),
    #[error("cannot wait for the sandbox")]
    Wait(#[source] io::Error),
    #[error("systemd-nspawn exited with status {status} before the sandbox was ready; its messages are above (\"Failed to map ids\" means that the workspace's file system has no ID-mapped mounts: use a workspace on ext4, xfs, btrfs, or tmpfs on Linux 6.3 or later)")]
    NspawnExited { status: i32 },
    #[error("systemd-nspawn (pid {pid}) was killed by signal {signal} while the command ran; the container was ended with it")]
    NspawnKilled { pid: i32, signal: i32 },
    #[error("cannot find the init process of the container that systemd-nspawn {nspawn} started")]
    NoLeader { nspawn: i32 },
    #[error("cannot open the namespaces of the container's init {pid}")]
    Namespaces {
        pid: i32,
        #[source]
        source: io::Error,
    },
    /// A step of the namespace backend's machinery that this backend shares failed.
    #[error(transparent)]
    Shared(#[from] airlock_namespace::Error),
    #[error("the sandbox's record has no usable runtime ({0}); remove it with `airlock rm --force` or `airlock gc`")]
    Runtime(String),
    #[error("the nspawn backend runs commands as root inside the container's user namespace only, which holds no privilege on the host; omit --user or pass --user root")]
    UserNotMapped { uid: u32 },
}
