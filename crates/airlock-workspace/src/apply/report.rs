//! The report of an apply: the outcome for each path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::Error;

/// The outcome of an apply, path by path. Paths are relative to the workspace.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Paths written or removed on the host, in the order applied. A directory that apply
    /// created because a named path below it needed one is listed here too.
    pub applied: Vec<PathBuf>,
    /// Paths left as they are on the host because the host changed them too.
    pub conflicts: Vec<Conflict>,
    /// Paths left out on purpose.
    pub skipped: Vec<Skipped>,
    /// Paths whose write or removal failed. The apply went on with the others.
    pub failed: Vec<Failure>,
    /// New per-path baselines: when apply last wrote each applied path, and each host
    /// directory whose entries it changed and that the host had not changed before. Merge
    /// them into [`crate::ApplyOptions::applied`] for the next apply, so that Airlock's own
    /// writes are not taken for changes made on the host.
    pub baselines: BTreeMap<PathBuf, SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: PathBuf,
    pub reason: ConflictReason,
}

/// The reason a path was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    /// The host changed the path after its baseline: its ctime is later.
    ChangedOnHost { changed: SystemTime },
    /// The sandbox added the path, and the host now has another entry there.
    ExistsOnHost,
    /// The sandbox modified the path, and the host has deleted it since.
    MissingOnHost,
    /// A directory on the way is a symlink on the host, which apply never writes through.
    SymlinkParent { parent: PathBuf },
    /// A directory on the way is not a directory on the host.
    ParentNotDir { parent: PathBuf },
    /// A directory on the way is a mount point on the host. The sandbox's view of the
    /// project contains no mounts below it, so apply never writes into them.
    MountPointParent { parent: PathBuf },
    /// The entry itself is a mount point on the host, which apply neither changes nor
    /// replaces.
    MountPoint,
    /// A directory to remove or replace still has entries on the host: entries the host
    /// added, or entries this apply did not remove.
    NotEmpty,
    /// The entry in the sandbox changed type or disappeared while apply ran.
    ChangedInSandbox,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: SkipReason,
}

/// The reason a path was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The change can make the host run code, and no named path selects it.
    Sensitive,
    /// The entry is a FIFO, socket or device node, which apply never creates.
    SpecialFile,
    /// The directory is nested deeper than [`crate::MAX_DEPTH`], and its entries were not
    /// compared.
    TooDeep,
    /// A named path that matches no change.
    NoChange,
    /// The change is below a path whose own change was skipped, such as the files of a
    /// directory that the sandbox replaced with a sensitive symlink.
    ParentSkipped,
    /// The file in the upper layer belongs to neither the sandbox's user nor the project's
    /// owner, who may not read it: an overlay mounted by root copied it up from a file that
    /// the sandbox could rename but not read.
    NotReadableByOwner,
}

#[derive(Debug)]
pub struct Failure {
    pub path: PathBuf,
    pub error: Error,
}

impl ConflictReason {
    /// Returns the directory on the way that blocks the path, if that is the reason.
    pub(super) fn blocking_dir(&self) -> Option<&std::path::Path> {
        match self {
            ConflictReason::SymlinkParent { parent }
            | ConflictReason::ParentNotDir { parent }
            | ConflictReason::MountPointParent { parent } => Some(parent),
            _ => None,
        }
    }
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictReason::ChangedOnHost { .. } => {
                f.write_str("changed on the host after the sandbox started or after the last apply")
            }
            ConflictReason::ExistsOnHost => {
                f.write_str("added in the sandbox, but the host now has different contents there")
            }
            ConflictReason::MissingOnHost => {
                f.write_str("modified in the sandbox, but deleted on the host")
            }
            ConflictReason::SymlinkParent { parent } => {
                write!(
                    f,
                    "{parent:?} is a symlink on the host, which apply does not write through"
                )
            }
            ConflictReason::ParentNotDir { parent } => {
                write!(f, "{parent:?} is not a directory on the host")
            }
            ConflictReason::MountPointParent { parent } => write!(
                f,
                "{parent:?} is a mount point on the host, which apply does not write into"
            ),
            ConflictReason::MountPoint => {
                f.write_str("a mount point on the host, which apply does not change or replace")
            }
            ConflictReason::NotEmpty => {
                f.write_str("the directory still has entries on the host that were not removed")
            }
            ConflictReason::ChangedInSandbox => f.write_str("changed in the sandbox during apply"),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::Sensitive => "sensitive: name the path to apply it",
            SkipReason::SpecialFile => "a FIFO, socket or device node, which apply never creates",
            SkipReason::TooDeep => "nested too deep to compare",
            SkipReason::NotReadableByOwner => {
                "another user's file that the project's owner may not read, which apply never hands over"
            }
            SkipReason::NoChange => "no change at or below this path",
            SkipReason::ParentSkipped => {
                "below a path whose change was skipped: apply that path to apply this one"
            }
        })
    }
}
