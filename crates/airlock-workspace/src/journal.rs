//! The apply journal: the temporary files an apply creates, each written down before it is
//! created, so that [`recover`] can remove what an apply killed midway left behind.
//!
//! The journal is a sequence of NUL-terminated records. The first is the absolute path of
//! the host directory the apply writes into, and each later one is a temporary file's path
//! relative to it. A last record without its NUL was cut short before its file existed and
//! is ignored.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::change::FileType;
use crate::error::Error;
use crate::fs;

/// The name prefix of apply's temporary files.
pub const TEMP_PREFIX: &str = ".airlock-apply-";

/// An open journal of one apply.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Creates the journal at `path`, which must not exist, for an apply into the absolute
    /// directory `root`.
    pub(crate) fn create(path: &Path, root: &Path) -> Result<Journal, Error> {
        let create_error = |source| Error::CreateJournal {
            path: path.to_owned(),
            source,
        };
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::APPEND
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))
            .map_err(|errno| create_error(errno.into()))?;
        sync_parent(path).map_err(create_error)?;
        let mut journal = Journal {
            file: File::from(fd),
            path: path.to_owned(),
        };
        journal.append(root.as_os_str())?;
        Ok(journal)
    }

    /// Records the temporary file `temp`, relative to the root, and flushes the record to
    /// disk. The caller creates the file only after this returns.
    pub(crate) fn record(&mut self, temp: &Path) -> Result<(), Error> {
        self.append(temp.as_os_str())
    }

    fn append(&mut self, record: &OsStr) -> Result<(), Error> {
        let mut bytes = record.as_bytes().to_vec();
        bytes.push(0);
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        written.map_err(|source| Error::WriteJournal {
            path: self.path.clone(),
            source,
        })
    }

    /// Deletes the journal, once none of its temporary files is left.
    pub(crate) fn remove(self) -> Result<(), Error> {
        remove_journal(&self.path)
    }
}

/// Removes the temporary files listed in the journal at `journal`, then the journal itself.
/// A missing journal means there is nothing to recover. Only entries whose name starts
/// with [`TEMP_PREFIX`] and that are regular files or symlinks (apply creates both) are
/// removed. The path to each is walked without following symlinks, and a link is removed
/// itself, never its target.
pub fn recover(journal: &Path) -> Result<(), Error> {
    let Some(bytes) = read_journal(journal)? else {
        return Ok(());
    };
    let mut records: Vec<&[u8]> = bytes.split(|byte| *byte == 0).collect();
    // The piece after the last NUL is empty or an incomplete record.
    records.pop();
    if let Some((root, temps)) = records.split_first() {
        let root = Path::new(OsStr::from_bytes(root));
        remove_temps(root, temps)?;
    }
    remove_journal(journal)
}

fn read_journal(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let read_error = |source| Error::ReadJournal {
        path: path.to_owned(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(errno) => return Err(read_error(errno.into())),
    };
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes).map_err(read_error)?;
    Ok(Some(bytes))
}

fn remove_temps(root: &Path, temps: &[&[u8]]) -> Result<(), Error> {
    let root_fd = match fs::open_root(root) {
        Ok(fd) => fd,
        // The project is gone, and its temporary files with it.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::OpenLower {
                path: root.to_owned(),
                source,
            })
        }
    };
    for temp in temps {
        let temp = Path::new(OsStr::from_bytes(temp));
        if !is_temp_path(temp) {
            continue;
        }
        // A parent that is missing, a symlink or a file cannot hold a file of ours.
        let Ok(parent) = fs::open_parent(root_fd.as_fd(), temp) else {
            continue;
        };
        let name = fs::file_name(temp);
        let stat = fs::lstat(parent.as_fd(), name).map_err(|source| Error::Stat {
            path: root.join(temp),
            source,
        })?;
        let removable = stat
            .is_some_and(|stat| matches!(FileType::of(&stat), FileType::File | FileType::Symlink));
        if removable {
            match rustix::fs::unlinkat(parent.as_fd(), name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(errno) => {
                    return Err(Error::Remove {
                        path: root.join(temp),
                        source: errno.into(),
                    })
                }
            }
        }
    }
    Ok(())
}

/// Returns whether `temp` is a relative path, without `..`, to a name with [`TEMP_PREFIX`].
fn is_temp_path(temp: &Path) -> bool {
    let relative = temp
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    let name = temp.file_name().unwrap_or_default().as_bytes();
    relative && name.starts_with(TEMP_PREFIX.as_bytes())
}

fn remove_journal(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::RemoveJournal {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Flushes the directory entry of a new file at `path` to disk.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    rustix::fs::fsync(fs::open_root(parent)?)?;
    Ok(())
}
