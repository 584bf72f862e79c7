//! Throws away everything a sandbox wrote: the contents of the overlay's upper and work
//! directories.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::change::FileType;
use crate::error::Error;
use crate::fs;

/// Directories nested deeper than this below `upper` or `work` are first moved up to the
/// top, so that removal keeps a bounded number of descriptors and stack frames however
/// deep the sandbox nested its directories.
const MAX_REMOVE_DEPTH: usize = 32;

/// The name prefix of directories moved up for removal.
const MOVED_PREFIX: &str = ".airlock-discard-";

/// Removes everything inside `upper` and `work`, but not the directories themselves. No
/// symlink is followed: a link is removed itself. Directories without search or write
/// permission for their owner get it first, so a sandbox cannot make its files stick by
/// taking permissions away.
pub fn discard(upper: &Path, work: &Path) -> Result<(), Error> {
    empty_dir(upper)?;
    empty_dir(work)
}

fn empty_dir(path: &Path) -> Result<(), Error> {
    let root = fs::open_root(path).map_err(|source| Error::OpenDir {
        path: path.to_owned(),
        source,
    })?;
    let remover = Remover {
        root: root.as_fd(),
        path,
    };
    // Each round removes the tree, apart from the directories it moved up, which the next
    // round removes.
    loop {
        let names = remover.list(root.as_fd(), Path::new(""))?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            remover.remove(root.as_fd(), &PathBuf::from(&name), 0)?;
        }
    }
}

struct Remover<'a> {
    root: BorrowedFd<'a>,
    path: &'a Path,
}

impl Remover<'_> {
    /// Removes the entry `rel` in `dir`, and everything below it.
    fn remove(&self, dir: BorrowedFd<'_>, rel: &Path, depth: usize) -> Result<(), Error> {
        let name = fs::file_name(rel);
        let stat = fs::lstat(dir, name).map_err(|source| Error::Stat {
            path: self.path.join(rel),
            source,
        })?;
        let Some(stat) = stat else {
            return Ok(());
        };
        if FileType::of(&stat) != FileType::Dir {
            return self.unlink(dir, rel, AtFlags::empty());
        }
        if depth >= MAX_REMOVE_DEPTH {
            return self.move_up(dir, rel);
        }
        let child = self.open_for_removal(dir, rel)?;
        for entry in self.list(child.as_fd(), rel)? {
            self.remove(child.as_fd(), &rel.join(entry), depth + 1)?;
        }
        self.unlink(dir, rel, AtFlags::REMOVEDIR)
    }

    fn unlink(&self, dir: BorrowedFd<'_>, rel: &Path, flags: AtFlags) -> Result<(), Error> {
        match rustix::fs::unlinkat(dir, fs::file_name(rel), flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(Error::Remove {
                path: self.path.join(rel),
                source: errno.into(),
            }),
        }
    }

    /// Moves the directory `rel` in `dir` to the top under a new name, for a later round.
    fn move_up(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<(), Error> {
        let move_error = |to: &OsStr, source| Error::MoveUp {
            path: self.path.join(rel),
            to: self.path.join(to),
            source,
        };
        let new_name =
            fs::random_name(MOVED_PREFIX).map_err(|source| move_error(OsStr::new(""), source))?;
        let name = fs::file_name(rel);
        rustix::fs::renameat_with(dir, name, self.root, &new_name, RenameFlags::NOREPLACE)
            .map_err(|errno| move_error(&new_name, errno.into()))
    }

    /// Opens the directory `rel` in `dir` and gives its owner full permissions on it, which
    /// removing its entries needs.
    fn open_for_removal(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Error> {
        let open_error = |source| Error::OpenDir {
            path: self.path.join(rel),
            source,
        };
        let name = fs::file_name(rel);
        let child = match fs::open_dir(dir, name) {
            Ok(child) => child,
            Err(error) if error.raw_os_error() == Some(Errno::ACCESS.raw_os_error()) => {
                self.reopen_after_chmod(dir, rel).map_err(open_error)?
            }
            Err(error) => return Err(open_error(error)),
        };
        let stat = rustix::fs::fstat(&child).map_err(|errno| open_error(errno.into()))?;
        if stat.st_mode & 0o700 != 0o700 {
            rustix::fs::fchmod(&child, Mode::from_raw_mode(0o700)).map_err(|errno| {
                Error::SetMode {
                    path: self.path.join(rel),
                    source: errno.into(),
                }
            })?;
        }
        Ok(child)
    }

    /// Opens a directory that its mode keeps closed: through an O_PATH descriptor, which
    /// needs no permission on the directory itself, chmod through /proc (fchmod does not
    /// accept O_PATH descriptors), then open it for reading.
    fn reopen_after_chmod(&self, dir: BorrowedFd<'_>, rel: &Path) -> std::io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let handle = rustix::fs::openat(dir, fs::file_name(rel), flags, Mode::empty())?;
        let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
        rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(0o700))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(rustix::fs::open(proc_path.as_str(), flags, Mode::empty())?)
    }

    fn list(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<Vec<std::ffi::OsString>, Error> {
        fs::list(dir).map_err(|source| Error::ReadDir {
            path: self.path.join(rel),
            source,
        })
    }
}
