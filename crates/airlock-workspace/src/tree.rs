//! One side of the overlay (the lower or the upper directory), opened once. Lookups take the
//! descriptor of the directory that contains the entry and the entry's path relative to the
//! root. The path gives the entry's name and completes error messages.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::Stat;

use crate::change::FileType;
use crate::error::Error;
use crate::fs;

pub(crate) struct Tree {
    root: OwnedFd,
    path: PathBuf,
}

impl Tree {
    pub(crate) fn open_lower(path: &Path) -> Result<Tree, Error> {
        let root = fs::open_project(path).map_err(|source| {
            let path = path.to_owned();
            if is_moved(&source) {
                Error::ProjectMoved { path, source }
            } else {
                Error::OpenLower { path, source }
            }
        })?;
        Ok(Tree {
            root,
            path: path.to_owned(),
        })
    }

    pub(crate) fn open_upper(path: &Path) -> Result<Tree, Error> {
        let root = fs::open_root(path).map_err(|source| Error::OpenUpper {
            path: path.to_owned(),
            source,
        })?;
        Ok(Tree {
            root,
            path: path.to_owned(),
        })
    }

    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Returns the path of `rel` under the root, for messages.
    pub(crate) fn full(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens the directory that contains `rel`. A symlink or a file on the way is an error.
    pub(crate) fn open_parent(&self, rel: &Path) -> Result<OwnedFd, Error> {
        fs::open_parent(self.root(), rel).map_err(|source| Error::OpenDir {
            path: self.full(rel.parent().unwrap_or(Path::new(""))),
            source,
        })
    }

    pub(crate) fn lstat(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<Option<Stat>, Error> {
        fs::lstat(dir, fs::file_name(rel)).map_err(|source| Error::Stat {
            path: self.full(rel),
            source,
        })
    }

    /// Opens the directory `rel` in `dir`, never through a symlink.
    pub(crate) fn open_dir(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Error> {
        fs::open_dir(dir, fs::file_name(rel)).map_err(|source| Error::OpenDir {
            path: self.full(rel),
            source,
        })
    }

    pub(crate) fn list(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<Vec<OsString>, Error> {
        fs::list(dir).map_err(|source| Error::ReadDir {
            path: self.full(rel),
            source,
        })
    }

    /// Opens the regular file `rel` in `dir` for reading, or returns `None` if it is not one.
    pub(crate) fn open_file(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<Option<File>, Error> {
        fs::open_regular(dir, fs::file_name(rel)).map_err(|source| Error::OpenFile {
            path: self.full(rel),
            source,
        })
    }

    pub(crate) fn read_link(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<OsString, Error> {
        fs::read_link(dir, fs::file_name(rel)).map_err(|source| Error::ReadLink {
            path: self.full(rel),
            source,
        })
    }
}

/// One entry to compare: the tree it is in, the directory that contains it, and its path.
#[derive(Clone, Copy)]
pub(crate) struct Located<'a> {
    pub(crate) tree: &'a Tree,
    pub(crate) dir: BorrowedFd<'a>,
    pub(crate) rel: &'a Path,
}

/// Checks whether two entries have the same type and the same contents or symlink target.
/// Permissions are not compared, any two directories match, and special files never do.
pub(crate) fn same_contents(a: Located<'_>, b: Located<'_>) -> Result<bool, Error> {
    let (Some(a_stat), Some(b_stat)) = (a.tree.lstat(a.dir, a.rel)?, b.tree.lstat(b.dir, b.rel)?)
    else {
        return Ok(false);
    };
    let file_type = FileType::of(&a_stat);
    if file_type != FileType::of(&b_stat) {
        return Ok(false);
    }
    match file_type {
        FileType::Dir => Ok(true),
        FileType::Other => Ok(false),
        FileType::Symlink => Ok(a.tree.read_link(a.dir, a.rel)? == b.tree.read_link(b.dir, b.rel)?),
        FileType::File => {
            if a_stat.st_size != b_stat.st_size {
                return Ok(false);
            }
            let (Some(mut a_file), Some(mut b_file)) = (
                a.tree.open_file(a.dir, a.rel)?,
                b.tree.open_file(b.dir, b.rel)?,
            ) else {
                return Ok(false);
            };
            let a_path = a.tree.full(a.rel);
            let b_path = b.tree.full(b.rel);
            fs::same_content(&mut a_file, &a_path, &mut b_file, &b_path)
        }
    }
}

/// Returns whether opening the project failed because nothing, or a symlink, is at its path.
/// Opening without following symlinks fails with ELOOP for a symlink.
fn is_moved(error: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let moved = [Errno::LOOP, Errno::NOENT, Errno::NOTDIR];
    moved
        .iter()
        .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
}
