//! Turns an overlay's upper layer into the list of changes it makes to the lower layer.
//!
//! The walk follows the overlay's rules for the options Airlock mounts with (userxattr, no
//! redirect_dir, no metacopy). An upper entry replaces the lower one, a character device 0:0
//! (a whiteout) deletes it, and an opaque directory hides every lower entry it lacks. Each
//! candidate is then compared with the lower entry, so a copy-up that left type, permissions
//! and contents (or the symlink target) as they were is not a change.
//!
//! A deleted directory is listed with every entry below it, each as its own deletion, so
//! that a patch shows what goes and apply can check and remove each entry on its own.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::Stat;

use crate::change::{Change, ChangeKind, FileType, MAX_DEPTH};
use crate::error::Error;
use crate::tree::{same_contents, Located, Tree};
use crate::{fs, sensitive};

/// Lists every path that `upper` adds, modifies or deletes relative to `lower`, sorted by
/// path. Neither tree's symlinks are followed, and files are read through O_NOFOLLOW
/// descriptors.
pub fn diff(lower: &Path, upper: &Path) -> Result<Vec<Change>, Error> {
    let lower = Tree::open_lower(lower)?;
    let upper = Tree::open_upper(upper)?;
    let mut walk = Walk {
        lower: &lower,
        upper: &upper,
        changes: Vec::new(),
    };
    walk.compare_dir(upper.root(), Some(lower.root()), Path::new(""), false)?;
    let mut changes = walk.changes;
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

/// One directory entry on one side: the directory that contains it, and its metadata.
#[derive(Clone, Copy)]
struct Entry<'fd> {
    dir: BorrowedFd<'fd>,
    stat: Stat,
}

struct Walk<'t> {
    lower: &'t Tree,
    upper: &'t Tree,
    changes: Vec<Change>,
}

impl Walk<'_> {
    /// Compares the entries of the upper directory `dir` with those of the lower one. In an
    /// `opaque` directory, lower entries missing from upper are deleted; in a merged one they
    /// show through unchanged.
    fn compare_dir(
        &mut self,
        upper_dir: BorrowedFd<'_>,
        lower_dir: Option<BorrowedFd<'_>>,
        dir: &Path,
        opaque: bool,
    ) -> Result<(), Error> {
        let names = self.upper.list(upper_dir, dir)?;
        for name in &names {
            let path = dir.join(name);
            let upper = self.upper.lstat(upper_dir, &path)?;
            let lower = match lower_dir {
                Some(lower_dir) => entry(lower_dir, self.lower.lstat(lower_dir, &path)?),
                None => None,
            };
            if let Some(upper) = entry(upper_dir, upper) {
                self.compare_entry(&path, upper, lower)?;
            }
        }
        let Some(lower_dir) = lower_dir.filter(|_| opaque) else {
            return Ok(());
        };
        for name in self.lower.list(lower_dir, dir)? {
            if names.binary_search(&name).is_err() {
                let path = dir.join(&name);
                if let Some(lower) = entry(lower_dir, self.lower.lstat(lower_dir, &path)?) {
                    self.record_deleted(&path, lower)?;
                }
            }
        }
        Ok(())
    }

    fn compare_entry(
        &mut self,
        path: &Path,
        upper: Entry<'_>,
        lower: Option<Entry<'_>>,
    ) -> Result<(), Error> {
        if fs::is_whiteout(&upper.stat) {
            return match lower {
                Some(lower) => self.record_deleted(path, lower),
                None => Ok(()),
            };
        }
        let upper_type = FileType::of(&upper.stat);
        if upper_type == FileType::Dir {
            return self.compare_upper_dir(path, upper, lower);
        }
        let kind = match lower {
            None => ChangeKind::Added,
            Some(lower) if self.same_entry(path, upper, lower)? => return Ok(()),
            Some(_) => ChangeKind::Modified,
        };
        let target = match upper_type {
            FileType::Symlink => Some(self.upper.read_link(upper.dir, path)?),
            _ => None,
        };
        let lower_type = lower.map(|lower| FileType::of(&lower.stat));
        self.push(path, kind, upper_type, lower_type, target.as_deref());
        if let Some(lower) = lower.filter(|_| lower_type == Some(FileType::Dir)) {
            // A file or symlink replaced a directory, whose entries are gone with it.
            self.record_entries_deleted(path, lower)?;
        }
        Ok(())
    }

    /// Records the upper directory at `path` if it is new or changed, then compares its
    /// entries with the lower directory's, if there is one.
    fn compare_upper_dir(
        &mut self,
        path: &Path,
        upper: Entry<'_>,
        lower: Option<Entry<'_>>,
    ) -> Result<(), Error> {
        let upper_fd = self.upper.open_dir(upper.dir, path)?;
        let lower_type = lower.map(|lower| FileType::of(&lower.stat));
        let lower_fd = match lower.filter(|_| lower_type == Some(FileType::Dir)) {
            Some(lower) => Some(self.lower.open_dir(lower.dir, path)?),
            None => None,
        };
        let opaque = lower_fd.is_some()
            && fs::is_opaque(upper_fd.as_fd()).map_err(|source| Error::ReadXattr {
                path: self.upper.full(path),
                source,
            })?;
        let kind = match lower {
            None => Some(ChangeKind::Added),
            Some(_) if lower_type != Some(FileType::Dir) => Some(ChangeKind::Modified),
            Some(lower) if fs::permissions(&lower.stat) != fs::permissions(&upper.stat) => {
                Some(ChangeKind::Modified)
            }
            Some(_) => None,
        };
        if depth(path) >= MAX_DEPTH
            && (opaque || !self.upper.list(upper_fd.as_fd(), path)?.is_empty())
        {
            let kind = kind.unwrap_or(ChangeKind::Modified);
            self.push(path, kind, FileType::Dir, lower_type, None);
            self.mark_too_deep();
            return Ok(());
        }
        if let Some(kind) = kind {
            self.push(path, kind, FileType::Dir, lower_type, None);
        }
        let lower_fd = lower_fd.as_ref().map(|fd| fd.as_fd());
        self.compare_dir(upper_fd.as_fd(), lower_fd, path, opaque)
    }

    /// Checks whether the upper entry equals the lower one in type, permission bits and contents
    /// or symlink target, as after a copy-up that changed nothing in the end.
    fn same_entry(&self, path: &Path, upper: Entry<'_>, lower: Entry<'_>) -> Result<bool, Error> {
        let file_type = FileType::of(&upper.stat);
        if file_type != FileType::of(&lower.stat)
            || fs::permissions(&upper.stat) != fs::permissions(&lower.stat)
        {
            return Ok(false);
        }
        if file_type == FileType::Other {
            return Ok(upper.stat.st_rdev == lower.stat.st_rdev);
        }
        let upper = Located {
            tree: self.upper,
            dir: upper.dir,
            rel: path,
        };
        let lower = Located {
            tree: self.lower,
            dir: lower.dir,
            rel: path,
        };
        same_contents(upper, lower)
    }

    /// Records the lower entry at `path` as deleted, with every entry below it.
    fn record_deleted(&mut self, path: &Path, lower: Entry<'_>) -> Result<(), Error> {
        let file_type = FileType::of(&lower.stat);
        self.push(path, ChangeKind::Deleted, file_type, Some(file_type), None);
        if file_type == FileType::Dir {
            self.record_entries_deleted(path, lower)?;
        }
        Ok(())
    }

    /// Records every entry below the lower directory at `path` as deleted.
    fn record_entries_deleted(&mut self, path: &Path, lower: Entry<'_>) -> Result<(), Error> {
        let dir = self.lower.open_dir(lower.dir, path)?;
        let names = self.lower.list(dir.as_fd(), path)?;
        if names.is_empty() {
            return Ok(());
        }
        if depth(path) >= MAX_DEPTH {
            self.mark_too_deep();
            return Ok(());
        }
        for name in names {
            let child = path.join(&name);
            if let Some(child_entry) = entry(dir.as_fd(), self.lower.lstat(dir.as_fd(), &child)?) {
                self.record_deleted(&child, child_entry)?;
            }
        }
        Ok(())
    }

    fn push(
        &mut self,
        path: &Path,
        kind: ChangeKind,
        file_type: FileType,
        lower_type: Option<FileType>,
        symlink_target: Option<&OsStr>,
    ) {
        let target = symlink_target.map(Path::new);
        let sensitive = sensitive::reason(path, file_type, target).is_some();
        self.changes.push(Change {
            path: path.to_owned(),
            kind,
            file_type,
            lower_type,
            sensitive,
            too_deep: false,
        });
    }

    /// Marks the change recorded last as a directory whose entries were not compared.
    fn mark_too_deep(&mut self) {
        if let Some(change) = self.changes.last_mut() {
            change.too_deep = true;
        }
    }
}

fn entry(dir: BorrowedFd<'_>, stat: Option<Stat>) -> Option<Entry<'_>> {
    stat.map(|stat| Entry { dir, stat })
}

/// Returns the number of components of `path`, its depth below the workspace root.
fn depth(path: &Path) -> usize {
    path.components().count()
}
