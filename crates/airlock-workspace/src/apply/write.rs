//! The writes of an apply: files and symlinks under a temporary name renamed over their
//! target, directories with mkdir, and removals, all relative to a host directory opened
//! without following symlinks.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Gid, Mode, OFlags, RenameFlags, Stat, Uid};
use rustix::io::Errno;

use super::host::{self, Parent};
use super::{ConflictReason, Outcome, Run, SkipReason};
use crate::change::{Change, ChangeKind, FileType};
use crate::error::Error;
use crate::fs;
use crate::journal::TEMP_PREFIX;
use crate::tree::{same_contents, Located};

/// How many random temporary names to try before giving up.
const TEMP_ATTEMPTS: usize = 8;

/// The host entry that a write replaces or creates.
struct Target<'t> {
    rel: &'t Path,
    /// The host directory that contains it.
    parent: &'t OwnedFd,
    /// The host entry there now, if any.
    existing: Option<Stat>,
    kind: ChangeKind,
}

#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl Owner {
    fn of(stat: &Stat) -> Owner {
        Owner {
            uid: stat.st_uid,
            gid: stat.st_gid,
        }
    }
}

impl Run<'_> {
    /// Removes the host entry of a deletion. A directory is removed only when it is empty:
    /// the deletions of its entries run before it and empty it.
    pub(super) fn delete(&mut self, change: &Change) -> Result<Outcome, Error> {
        let rel = &change.path;
        let parent = match host::parent(&self.host, rel)? {
            Parent::Dir(parent) => parent,
            Parent::Missing(_) => return Ok(Outcome::Applied),
            Parent::Blocked(reason) => return Ok(Outcome::Conflict(reason)),
        };
        let Some(stat) = self.host.lstat(parent.as_fd(), rel)? else {
            return Ok(Outcome::Applied);
        };
        if fs::is_mount_point(parent.as_fd(), fs::file_name(rel)) {
            return Ok(Outcome::Conflict(ConflictReason::MountPoint));
        }

        self.touch(host::parent_path(rel), &parent)?;
        let flags = match FileType::of(&stat) {
            FileType::Dir => AtFlags::REMOVEDIR,
            _ => AtFlags::empty(),
        };
        match rustix::fs::unlinkat(&parent, fs::file_name(rel), flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(Outcome::Applied),
            Err(Errno::NOTEMPTY | Errno::EXIST) => Ok(Outcome::Conflict(ConflictReason::NotEmpty)),
            Err(errno) => Err(Error::Remove {
                path: self.host.full(rel),
                source: errno.into(),
            }),
        }
    }

    /// Writes the upper entry of an addition or a modification to the host.
    pub(super) fn write(&mut self, change: &Change) -> Result<Outcome, Error> {
        let rel = &change.path;
        let upper_parent = self.upper.open_parent(rel)?;
        let upper_stat = self.upper.lstat(upper_parent.as_fd(), rel)?;
        let Some(upper_stat) = upper_stat.filter(|stat| FileType::of(stat) == change.file_type)
        else {
            return Ok(Outcome::Conflict(ConflictReason::ChangedInSandbox));
        };
        if change.file_type == FileType::File && !self.owner_may_read(&upper_stat)? {
            return Ok(Outcome::Skipped(SkipReason::NotReadableByOwner));
        }

        let parent = match self.parent_for_write(rel)? {
            Ok(parent) => parent,
            Err(reason) => return Ok(Outcome::Conflict(reason)),
        };
        if fs::is_mount_point(parent.as_fd(), fs::file_name(rel)) {
            return Ok(Outcome::Conflict(ConflictReason::MountPoint));
        }
        self.touch(host::parent_path(rel), &parent)?;

        let target = Target {
            rel,
            parent: &parent,
            existing: self.host.lstat(parent.as_fd(), rel)?,
            kind: change.kind,
        };
        match change.file_type {
            FileType::File => self.write_file(&target, &upper_parent),
            FileType::Symlink => self.write_symlink(&target, &upper_parent),
            FileType::Dir => self.write_dir(&target, fs::permissions(&upper_stat) & 0o777),
            FileType::Other => Ok(Outcome::Skipped(SkipReason::SpecialFile)),
        }
    }

    /// Returns whether the project's owner may read the upper file `stat`: it belongs to the
    /// sandbox's user (the owner of the upper layer's root) or to the project's owner, or its
    /// mode lets the owner read it. Overlayfs copies a file up with its mounter's
    /// credentials, so where root mounts the overlay, a rename in the sandbox puts another
    /// user's unreadable file into the upper layer, which apply must not hand over.
    fn owner_may_read(&self, stat: &Stat) -> Result<bool, Error> {
        let root_stat = |tree: &crate::tree::Tree| {
            rustix::fs::fstat(tree.root()).map_err(|errno| Error::Stat {
                path: tree.full(Path::new("")),
                source: errno.into(),
            })
        };
        let (upper, project) = (root_stat(&self.upper)?, root_stat(&self.host)?);
        let mode = fs::permissions(stat);
        Ok(stat.st_uid == upper.st_uid
            || stat.st_uid == project.st_uid
            || mode & 0o004 != 0
            || (stat.st_gid == project.st_gid && mode & 0o040 != 0))
    }

    fn write_file(
        &mut self,
        target: &Target<'_>,
        upper_parent: &OwnedFd,
    ) -> Result<Outcome, Error> {
        let Some(source) = self.upper.open_file(upper_parent.as_fd(), target.rel)? else {
            return Ok(Outcome::Conflict(ConflictReason::ChangedInSandbox));
        };
        let stat = rustix::fs::fstat(&source).map_err(|errno| Error::Stat {
            path: self.upper.full(target.rel),
            source: errno.into(),
        })?;
        let owner = self.owner_for(target)?;

        let (temp, file) = self.create_temp_file(target)?;
        if let Err(error) = self.fill_temp_file(target, &temp, &file, &source, &stat, owner) {
            self.remove_temp(target, &temp);
            return Err(error);
        }
        drop(file);
        self.replace(target, &temp)
    }

    /// Copies the upper file into the temporary file, sets owner and permissions without
    /// setuid, setgid and sticky bits, and flushes it to disk before it replaces the target.
    fn fill_temp_file(
        &self,
        target: &Target<'_>,
        temp: &OsStr,
        file: &File,
        source: &File,
        stat: &Stat,
        owner: Owner,
    ) -> Result<(), Error> {
        let temp_path = self.host.full(&host::sibling(target.rel, temp));
        fs::copy_sparse(source, file, fs::size(stat)).map_err(|source| Error::Copy {
            from: self.upper.full(target.rel),
            to: temp_path.clone(),
            source,
        })?;
        set_owner(file, owner).map_err(|source| Error::SetOwner {
            path: temp_path.clone(),
            source,
        })?;
        let mode = Mode::from_raw_mode(fs::permissions(stat) & 0o777);
        rustix::fs::fchmod(file, mode).map_err(|errno| Error::SetMode {
            path: temp_path.clone(),
            source: errno.into(),
        })?;
        file.sync_all().map_err(|source| Error::Sync {
            path: temp_path,
            source,
        })
    }

    /// Copies the upper symlink to the host. Its target is copied as text and never read.
    fn write_symlink(
        &mut self,
        target: &Target<'_>,
        upper_parent: &OwnedFd,
    ) -> Result<Outcome, Error> {
        let link_target = self.upper.read_link(upper_parent.as_fd(), target.rel)?;
        let owner = self.owner_for(target)?;
        let temp = self.create_temp_symlink(target, &link_target)?;
        if let Err(source) = set_link_owner(target.parent, &temp, owner) {
            self.remove_temp(target, &temp);
            return Err(Error::SetOwner {
                path: self.host.full(&host::sibling(target.rel, &temp)),
                source,
            });
        }
        self.replace(target, &temp)
    }

    fn write_dir(&mut self, target: &Target<'_>, mode: u32) -> Result<Outcome, Error> {
        let Some(existing) = target.existing else {
            let owner = self.parent_owner(target.parent, target.rel)?;
            return self.make_dir(target.parent, target.rel, mode, owner);
        };
        if target.kind == ChangeKind::Added {
            // The host has made the same directory, or has something else there.
            return Ok(match FileType::of(&existing) {
                FileType::Dir => Outcome::Applied,
                _ => Outcome::Conflict(ConflictReason::ExistsOnHost),
            });
        }
        if FileType::of(&existing) == FileType::Dir {
            let dir = self.host.open_dir(target.parent.as_fd(), target.rel)?;
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).map_err(|errno| {
                Error::SetMode {
                    path: self.host.full(target.rel),
                    source: errno.into(),
                }
            })?;
            return Ok(Outcome::Applied);
        }
        // A file or symlink becomes a directory.
        let name = fs::file_name(target.rel);
        rustix::fs::unlinkat(target.parent, name, AtFlags::empty()).map_err(|errno| {
            Error::Remove {
                path: self.host.full(target.rel),
                source: errno.into(),
            }
        })?;
        self.make_dir(target.parent, target.rel, mode, Owner::of(&existing))
    }

    /// Creates the directory `rel` in `parent`, private until it has its owner and mode.
    fn make_dir(
        &mut self,
        parent: &OwnedFd,
        rel: &Path,
        mode: u32,
        owner: Owner,
    ) -> Result<Outcome, Error> {
        self.touch(host::parent_path(rel), parent)?;
        let create_error = |errno: Errno| Error::CreateDir {
            path: self.host.full(rel),
            source: errno.into(),
        };
        match rustix::fs::mkdirat(parent, fs::file_name(rel), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Ok(Outcome::Conflict(ConflictReason::ExistsOnHost)),
            Err(errno) => return Err(create_error(errno)),
        }
        let dir = self.host.open_dir(parent.as_fd(), rel)?;
        set_owner(&dir, owner).map_err(|source| Error::SetOwner {
            path: self.host.full(rel),
            source,
        })?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).map_err(|errno| Error::SetMode {
            path: self.host.full(rel),
            source: errno.into(),
        })?;
        Ok(Outcome::Applied)
    }

    /// Opens the host directory that contains `rel`, first creating the directories on the way
    /// that the host lacks, as the upper layer has them. That happens when a named path's
    /// parent directories are new and were not named themselves.
    fn parent_for_write(&mut self, rel: &Path) -> Result<Result<OwnedFd, ConflictReason>, Error> {
        for _ in 0..rel.components().count() {
            match host::parent(&self.host, rel)? {
                Parent::Dir(parent) => return Ok(Ok(parent)),
                Parent::Blocked(reason) => return Ok(Err(reason)),
                Parent::Missing(missing) => {
                    if let Outcome::Conflict(reason) = self.create_missing_dir(&missing)? {
                        return Ok(Err(reason));
                    }
                }
            }
        }
        // The host removed each directory as soon as apply made it.
        Ok(Err(ConflictReason::MissingOnHost))
    }

    fn create_missing_dir(&mut self, missing: &Path) -> Result<Outcome, Error> {
        let upper_parent = self.upper.open_parent(missing)?;
        let upper_stat = self.upper.lstat(upper_parent.as_fd(), missing)?;
        let Some(upper_stat) = upper_stat.filter(|stat| FileType::of(stat) == FileType::Dir) else {
            return Ok(Outcome::Conflict(ConflictReason::ChangedInSandbox));
        };
        let parent = match host::parent(&self.host, missing)? {
            Parent::Dir(parent) => parent,
            Parent::Blocked(reason) => return Ok(Outcome::Conflict(reason)),
            Parent::Missing(_) => return Ok(Outcome::Conflict(ConflictReason::MissingOnHost)),
        };
        let owner = self.parent_owner(&parent, missing)?;
        let mode = fs::permissions(&upper_stat) & 0o777;
        let outcome = self.make_dir(&parent, missing, mode, owner)?;
        if let Outcome::Applied = outcome {
            self.applied(missing);
            self.report
                .skipped
                .retain(|skipped| skipped.path != missing);
        }
        Ok(outcome)
    }

    /// Renames the temporary entry `temp` over the target. An addition never replaces an
    /// entry that appeared on the host meanwhile. A directory in the way of a modification
    /// is removed first, if the deletions before have emptied it.
    fn replace(&mut self, target: &Target<'_>, temp: &OsStr) -> Result<Outcome, Error> {
        let name = fs::file_name(target.rel);
        let existing_dir = target
            .existing
            .is_some_and(|stat| FileType::of(&stat) == FileType::Dir);
        if target.kind == ChangeKind::Modified && existing_dir {
            match rustix::fs::unlinkat(target.parent, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::NOTEMPTY | Errno::EXIST) => {
                    self.remove_temp(target, temp);
                    return Ok(Outcome::Conflict(ConflictReason::NotEmpty));
                }
                Err(errno) => {
                    self.remove_temp(target, temp);
                    return Err(Error::Remove {
                        path: self.host.full(target.rel),
                        source: errno.into(),
                    });
                }
            }
        }
        match rename(target, temp) {
            Ok(()) => Ok(Outcome::Applied),
            Err(Errno::EXIST) => {
                let same = self.same_as_temp(target, temp);
                self.remove_temp(target, temp);
                Ok(match same? {
                    true => Outcome::Applied,
                    false => Outcome::Conflict(ConflictReason::ExistsOnHost),
                })
            }
            Err(errno) => {
                self.remove_temp(target, temp);
                Err(Error::Rename {
                    from: self.host.full(&host::sibling(target.rel, temp)),
                    to: self.host.full(target.rel),
                    source: errno.into(),
                })
            }
        }
    }

    /// Checks whether the entry that appeared at the target equals the temporary one.
    fn same_as_temp(&self, target: &Target<'_>, temp: &OsStr) -> Result<bool, Error> {
        let temp_rel = host::sibling(target.rel, temp);
        let existing = Located {
            tree: &self.host,
            dir: target.parent.as_fd(),
            rel: target.rel,
        };
        let written = Located {
            tree: &self.host,
            dir: target.parent.as_fd(),
            rel: &temp_rel,
        };
        same_contents(existing, written)
    }

    /// Creates an empty temporary file next to the target, after recording it in the
    /// journal.
    fn create_temp_file(&mut self, target: &Target<'_>) -> Result<(OsString, File), Error> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for _ in 0..TEMP_ATTEMPTS {
            let name = self.record_temp_name(target)?;
            match rustix::fs::openat(target.parent, &name, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((name, File::from(fd))),
                Err(Errno::EXIST) => continue,
                Err(errno) => return Err(self.temp_error(target, errno.into())),
            }
        }
        Err(self.temp_error(target, Errno::EXIST.into()))
    }

    /// Creates a temporary symlink to `link_target` next to the target, after recording it
    /// in the journal.
    fn create_temp_symlink(
        &mut self,
        target: &Target<'_>,
        link_target: &OsStr,
    ) -> Result<OsString, Error> {
        for _ in 0..TEMP_ATTEMPTS {
            let name = self.record_temp_name(target)?;
            match rustix::fs::symlinkat(link_target, target.parent, &name) {
                Ok(()) => return Ok(name),
                Err(Errno::EXIST) => continue,
                Err(errno) => {
                    return Err(Error::CreateSymlink {
                        path: self.host.full(&host::sibling(target.rel, &name)),
                        source: errno.into(),
                    })
                }
            }
        }
        Err(self.temp_error(target, Errno::EXIST.into()))
    }

    fn record_temp_name(&mut self, target: &Target<'_>) -> Result<OsString, Error> {
        let name =
            fs::random_name(TEMP_PREFIX).map_err(|source| self.temp_error(target, source))?;
        self.journal.record(&host::sibling(target.rel, &name))?;
        Ok(name)
    }

    fn temp_error(&self, target: &Target<'_>, source: io::Error) -> Error {
        Error::CreateTemp {
            dir: self.host.full(host::parent_path(target.rel)),
            source,
        }
    }

    fn remove_temp(&mut self, target: &Target<'_>, temp: &OsStr) {
        if rustix::fs::unlinkat(target.parent, temp, AtFlags::empty()).is_err() {
            // The journal still lists the file, so keeping the journal lets recover retry.
            self.leftovers = true;
        }
    }

    /// Returns the owner a write gives the target: the replaced entry's, or for a new entry,
    /// its parent directory's.
    fn owner_for(&self, target: &Target<'_>) -> Result<Owner, Error> {
        match &target.existing {
            Some(stat) => Ok(Owner::of(stat)),
            None => self.parent_owner(target.parent, target.rel),
        }
    }

    fn parent_owner(&self, parent: &OwnedFd, rel: &Path) -> Result<Owner, Error> {
        let stat = rustix::fs::fstat(parent).map_err(|errno| Error::Stat {
            path: self.host.full(host::parent_path(rel)),
            source: errno.into(),
        })?;
        Ok(Owner::of(&stat))
    }
}

/// Renames the temporary entry over the target. For an addition, the rename fails with
/// EEXIST if the target exists. That uses RENAME_NOREPLACE, or a check and a plain rename
/// on file systems without that flag.
fn rename(target: &Target<'_>, temp: &OsStr) -> Result<(), Errno> {
    let name = fs::file_name(target.rel);
    let parent = target.parent;
    if target.kind != ChangeKind::Added {
        return rustix::fs::renameat(parent, temp, parent, name);
    }
    match rustix::fs::renameat_with(parent, temp, parent, name, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) => {
            if fs::lstat(parent.as_fd(), name)
                .map_err(|_| Errno::IO)?
                .is_some()
            {
                return Err(Errno::EXIST);
            }
            rustix::fs::renameat(parent, temp, parent, name)
        }
        result => result,
    }
}

/// Gives the open entry `fd` to `owner` if it has another owner. A caller that is not root
/// cannot give entries to other users, so EPERM then leaves the entry as the caller made it.
fn set_owner(fd: &impl AsFd, owner: Owner) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    if Owner::of(&stat).uid == owner.uid && stat.st_gid == owner.gid {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
    permit_unprivileged(rustix::fs::fchown(fd, Some(uid), Some(gid)))
}

/// Gives the symlink `name` in `parent` to `owner`, as [`set_owner`] does for files.
fn set_link_owner(parent: &OwnedFd, name: &OsStr, owner: Owner) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
    let flags = AtFlags::SYMLINK_NOFOLLOW;
    permit_unprivileged(rustix::fs::chownat(
        parent,
        name,
        Some(uid),
        Some(gid),
        flags,
    ))
}

fn permit_unprivileged(result: Result<(), Errno>) -> io::Result<()> {
    match result {
        Err(Errno::PERM) if !rustix::process::geteuid().is_root() => Ok(()),
        result => Ok(result?),
    }
}
