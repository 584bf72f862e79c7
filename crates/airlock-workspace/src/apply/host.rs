//! The host side of an apply: the project directory, walked one component at a time with
//! O_NOFOLLOW, so that a directory the host (or anyone) replaced by a symlink is reported as
//! a conflict and never written through, and without crossing into a mount below the
//! project, which the sandbox never saw.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::report::ConflictReason;
use crate::change::FileType;
use crate::error::Error;
use crate::fs;
use crate::tree::Tree;

/// The directory that contains a path on the host, as far as it could be opened.
pub(super) enum Parent {
    Dir(OwnedFd),
    /// The first directory on the way that does not exist, relative to the root.
    Missing(PathBuf),
    Blocked(ConflictReason),
}

/// Opens the host directory that contains `rel`. Every component on the way must be a real
/// directory: a symlink or a file there blocks the path.
pub(super) fn parent(host: &Tree, rel: &Path) -> Result<Parent, Error> {
    let mut dir = fs::open_dir(host.root(), OsStr::new(".")).map_err(|source| Error::OpenDir {
        path: host.full(Path::new("")),
        source,
    })?;
    let mut walked = PathBuf::new();
    for name in fs::parent_names(rel) {
        walked.push(name);
        let Some(stat) = host.lstat(dir.as_fd(), &walked)? else {
            return Ok(Parent::Missing(walked));
        };
        match FileType::of(&stat) {
            FileType::Dir => {}
            FileType::Symlink => return Ok(symlink_parent(walked)),
            _ => return Ok(not_dir_parent(walked)),
        }
        dir = match fs::open_dir_on_mount(dir.as_fd(), name) {
            Ok(next) => next,
            Err(error) if error.raw_os_error() == Some(Errno::XDEV.raw_os_error()) => {
                return Ok(Parent::Blocked(ConflictReason::MountPointParent {
                    parent: walked,
                }))
            }
            // Replaced by a symlink or a file since the lstat above.
            Err(error) if error.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                return Ok(symlink_parent(walked))
            }
            Err(error) if error.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                return Ok(not_dir_parent(walked))
            }
            Err(source) => {
                return Err(Error::OpenDir {
                    path: host.full(&walked),
                    source,
                })
            }
        };
    }
    Ok(Parent::Dir(dir))
}

fn symlink_parent(parent: PathBuf) -> Parent {
    Parent::Blocked(ConflictReason::SymlinkParent { parent })
}

fn not_dir_parent(parent: PathBuf) -> Parent {
    Parent::Blocked(ConflictReason::ParentNotDir { parent })
}

/// Returns the directory part of `rel`, empty for an entry at the root.
pub(super) fn parent_path(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// Returns the path of `name` next to `rel`, for a temporary file beside its target.
pub(super) fn sibling(rel: &Path, name: &OsStr) -> PathBuf {
    parent_path(rel).join(name)
}
