//! Writes a directory tree, such as a debootstrap root, as a tar stream for the engine's
//! import endpoint.
//!
//! The archive keeps numeric owners, modes (setuid, setgid and sticky bits included) and
//! modification times. Symlinks stay symlinks, and a hard link points to the first path of
//! its inode. Device nodes and FIFOs are kept. The extended attributes of files and
//! directories go in PAX `SCHILY.xattr.*` records, which Docker 20.10 and Podman 4.3 both
//! apply on import.
//!
//! Symlinks are never followed. Each directory is opened relative to its parent's
//! descriptor with `O_NOFOLLOW`, and each file too, so a symlink planted while the walk runs
//! makes the open fail instead of pulling a file from outside the tree into the image.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use tar::{EntryType, Header};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot open {path:?} to import it; make it readable, or remove it from the tree")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the directory {path:?} to import it; make it readable, or remove it from the tree")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path:?} to import it; make it readable, or remove it from the tree")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path:?} changed while it was imported; import the tree again once nothing writes to it"
    )]
    Changed { path: PathBuf },
    #[error("cannot encode {path:?} in the tar stream")]
    Encode {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Counts of what the walk wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeSummary {
    pub entries: u64,
    /// Sockets, which tar cannot represent.
    pub skipped_sockets: u64,
    /// Mount points of other file systems, stored as empty directories.
    pub skipped_mounts: u64,
}

/// Writes the tree at `root` to `out` as a tar archive: the root directory as `./`, then
/// every path below it relative to the root (`etc/passwd`), depth first in sorted order.
pub fn write_tree<W: Write>(root: &Path, out: W) -> Result<TreeSummary, TreeError> {
    walk_tree(root, out, Contents::Read)
}

/// Walks the tree at `root` as [`write_tree`] does, opening every directory and file and
/// reading their extended attributes, but not the files' contents. A file that cannot be
/// opened fails here, before an import sends anything to the engine.
pub fn check_tree(root: &Path) -> Result<TreeSummary, TreeError> {
    walk_tree(root, io::sink(), Contents::Skip)
}

/// Whether the walk reads the files' contents into the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contents {
    Read,
    Skip,
}

fn walk_tree<W: Write>(root: &Path, out: W, contents: Contents) -> Result<TreeSummary, TreeError> {
    let open_error = |source| TreeError::Open {
        path: root.to_owned(),
        source,
    };
    // The root itself may be reached through a symlink: the caller named it.
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| open_error(errno.into()))?;
    let stat = rustix::fs::fstat(&root_fd).map_err(|errno| open_error(errno.into()))?;
    let mut walk = Walk {
        root: root.to_owned(),
        root_device: stat.st_dev,
        builder: tar::Builder::new(out),
        contents,
        hard_links: HashMap::new(),
        summary: TreeSummary::default(),
    };
    walk.append_directory(&root_fd, Path::new(""), &stat)?;
    walk.append_children(&root_fd, Path::new(""))?;
    walk.builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|source| TreeError::Encode {
            path: root.to_owned(),
            source,
        })?;
    Ok(walk.summary)
}

struct Walk<W: Write> {
    root: PathBuf,
    /// The device of the root's file system. Directories on another device are mount points,
    /// whose contents the walk skips as `tar --one-file-system` does: a chroot tree often has
    /// the host's /proc, /sys or /dev mounted inside.
    root_device: u64,
    builder: tar::Builder<W>,
    contents: Contents,
    /// The archive path of the first entry seen for each (device, inode) with more than one
    /// link, which later entries of the same inode link to.
    hard_links: HashMap<(u64, u64), PathBuf>,
    summary: TreeSummary,
}

impl<W: Write> Walk<W> {
    fn host_path(&self, archive_path: &Path) -> PathBuf {
        self.root.join(archive_path)
    }

    /// Appends every entry of the directory open as `dir`, depth first.
    fn append_children(&mut self, dir: &OwnedFd, archive_dir: &Path) -> Result<(), TreeError> {
        for name in self.sorted_names(dir, archive_dir)? {
            let archive_path = archive_dir.join(&name);
            let stat = rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|errno| TreeError::Open {
                    path: self.host_path(&archive_path),
                    source: errno.into(),
                })?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => {
                    let child = self.open_child(dir, &name, &archive_path, OFlags::DIRECTORY)?;
                    self.check_unchanged(&child, &stat, &archive_path)?;
                    self.append_directory(&child, &archive_path, &stat)?;
                    if stat.st_dev == self.root_device {
                        self.append_children(&child, &archive_path)?;
                    } else {
                        warn!(path = %self.host_path(&archive_path).display(), "stored a mount point as an empty directory, without the file system mounted on it");
                        self.summary.skipped_mounts += 1;
                    }
                }
                FileType::RegularFile => {
                    if !self.append_hard_link(&archive_path, &stat)? {
                        let file = self.open_child(dir, &name, &archive_path, OFlags::empty())?;
                        self.check_unchanged(&file, &stat, &archive_path)?;
                        self.append_file(file, &archive_path, &stat)?;
                    }
                }
                FileType::Symlink => {
                    if !self.append_hard_link(&archive_path, &stat)? {
                        let target = rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new())
                            .map_err(|errno| TreeError::Read {
                                path: self.host_path(&archive_path),
                                source: errno.into(),
                            })?;
                        let target = OsStr::from_bytes(target.as_bytes()).to_owned();
                        self.append_symlink(&archive_path, &stat, &target)?;
                    }
                }
                FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                    if !self.append_hard_link(&archive_path, &stat)? {
                        self.append_special(&archive_path, &stat)?;
                    }
                }
                FileType::Socket | FileType::Unknown => {
                    warn!(path = %self.host_path(&archive_path).display(), "skipped a socket, which a tar archive cannot hold");
                    self.summary.skipped_sockets += 1;
                }
            }
        }
        Ok(())
    }

    fn sorted_names(&self, dir: &OwnedFd, archive_dir: &Path) -> Result<Vec<OsString>, TreeError> {
        let list_error = |source: io::Error| TreeError::List {
            path: self.host_path(archive_dir),
            source,
        };
        let entries = rustix::fs::Dir::read_from(dir).map_err(|errno| list_error(errno.into()))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|errno| list_error(errno.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens `name` in `dir` without following a symlink in its place.
    fn open_child(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        archive_path: &Path,
        kind: OFlags,
    ) -> Result<OwnedFd, TreeError> {
        // O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | kind;
        rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|errno| TreeError::Open {
            path: self.host_path(archive_path),
            source: errno.into(),
        })
    }

    /// Fails when the opened file is not the one `stat` described, because the path was
    /// replaced between the two calls.
    fn check_unchanged(
        &self,
        fd: &OwnedFd,
        stat: &Stat,
        archive_path: &Path,
    ) -> Result<(), TreeError> {
        let opened = rustix::fs::fstat(fd).map_err(|errno| TreeError::Read {
            path: self.host_path(archive_path),
            source: errno.into(),
        })?;
        if opened.st_dev != stat.st_dev || opened.st_ino != stat.st_ino {
            return Err(TreeError::Changed {
                path: self.host_path(archive_path),
            });
        }
        Ok(())
    }

    fn append_directory(
        &mut self,
        dir: &OwnedFd,
        archive_path: &Path,
        stat: &Stat,
    ) -> Result<(), TreeError> {
        let mut header = header_for(stat, EntryType::Directory);
        let xattrs = self.read_xattrs(dir, archive_path)?;
        let path = directory_name(archive_path);
        self.append(&mut header, &path, &xattrs, io::empty())
    }

    fn append_file(
        &mut self,
        file: OwnedFd,
        archive_path: &Path,
        stat: &Stat,
    ) -> Result<(), TreeError> {
        let mut header = header_for(stat, EntryType::Regular);
        let xattrs = self.read_xattrs(&file, archive_path)?;
        if self.contents == Contents::Skip {
            return self.append(&mut header, archive_path, &xattrs, io::empty());
        }
        let size = stat.st_size as u64;
        header.set_size(size);
        let file = File::from(file);
        let content = ExactReader {
            file: &file,
            remaining: size,
        };
        self.append(&mut header, archive_path, &xattrs, content)?;
        let after = rustix::fs::fstat(&file).map_err(|errno| TreeError::Read {
            path: self.host_path(archive_path),
            source: errno.into(),
        })?;
        let changed = after.st_size != stat.st_size
            || after.st_mtime != stat.st_mtime
            || after.st_mtime_nsec != stat.st_mtime_nsec;
        if changed {
            return Err(TreeError::Changed {
                path: self.host_path(archive_path),
            });
        }
        Ok(())
    }

    fn append_symlink(
        &mut self,
        archive_path: &Path,
        stat: &Stat,
        target: &OsStr,
    ) -> Result<(), TreeError> {
        let mut header = header_for(stat, EntryType::Symlink);
        self.builder
            .append_link(&mut header, archive_path, target)
            .map_err(|source| self.encode_error(archive_path, source))?;
        self.summary.entries += 1;
        Ok(())
    }

    // NOTE: the extended attributes of symlinks, device nodes and FIFOs are not carried:
    // reading them needs a path, which a concurrent rename could point elsewhere.
    fn append_special(&mut self, archive_path: &Path, stat: &Stat) -> Result<(), TreeError> {
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::CharacterDevice => EntryType::Char,
            FileType::BlockDevice => EntryType::Block,
            _ => EntryType::Fifo,
        };
        let mut header = header_for(stat, kind);
        if kind != EntryType::Fifo {
            let device = (
                rustix::fs::major(stat.st_rdev),
                rustix::fs::minor(stat.st_rdev),
            );
            header
                .set_device_major(device.0)
                .and_then(|()| header.set_device_minor(device.1))
                .map_err(|source| self.encode_error(archive_path, source))?;
        }
        self.append(&mut header, archive_path, &[], io::empty())
    }

    /// Appends a hard link to the first path of this inode when one was archived before;
    /// returns whether it did. Otherwise records `archive_path` as the inode's first path.
    fn append_hard_link(&mut self, archive_path: &Path, stat: &Stat) -> Result<bool, TreeError> {
        if stat.st_nlink <= 1 {
            return Ok(false);
        }
        let key = (stat.st_dev, stat.st_ino);
        let Some(first) = self.hard_links.get(&key).cloned() else {
            self.hard_links.insert(key, archive_path.to_owned());
            return Ok(false);
        };
        let mut header = header_for(stat, EntryType::Link);
        self.builder
            .append_link(&mut header, archive_path, &first)
            .map_err(|source| self.encode_error(archive_path, source))?;
        self.summary.entries += 1;
        Ok(true)
    }

    /// Appends one entry, preceded by a PAX header with its extended attributes if it has
    /// any.
    fn append(
        &mut self,
        header: &mut Header,
        archive_path: &Path,
        xattrs: &[(OsString, Vec<u8>)],
        content: impl Read,
    ) -> Result<(), TreeError> {
        if !xattrs.is_empty() {
            let records = pax_xattr_records(xattrs);
            let mut pax = Header::new_ustar();
            pax.set_entry_type(EntryType::XHeader);
            pax.set_mode(0o644);
            pax.set_size(records.len() as u64);
            self.builder
                .append_data(&mut pax, "PaxHeaders/entry", records.as_slice())
                .map_err(|source| self.encode_error(archive_path, source))?;
        }
        self.builder
            .append_data(header, archive_path, content)
            .map_err(|source| TreeError::Read {
                path: self.host_path(archive_path),
                source,
            })?;
        self.summary.entries += 1;
        Ok(())
    }

    /// Reads every extended attribute of the open file, in the order the file system lists
    /// them. A file system without extended attributes yields none.
    fn read_xattrs(
        &self,
        fd: &OwnedFd,
        archive_path: &Path,
    ) -> Result<Vec<(OsString, Vec<u8>)>, TreeError> {
        let read_error = |errno: rustix::io::Errno| TreeError::Read {
            path: self.host_path(archive_path),
            source: errno.into(),
        };
        let names = match read_xattr_names(fd) {
            Ok(names) => names,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(errno) => return Err(read_error(errno)),
        };
        let mut xattrs = Vec::new();
        for name in names {
            match read_xattr_value(fd, &name) {
                Ok(value) => xattrs.push((OsStr::from_bytes(name.to_bytes()).to_owned(), value)),
                // Removed since it was listed.
                Err(rustix::io::Errno::NODATA) => {}
                Err(errno) => return Err(read_error(errno)),
            }
        }
        Ok(xattrs)
    }

    fn encode_error(&self, archive_path: &Path, source: io::Error) -> TreeError {
        TreeError::Encode {
            path: self.host_path(archive_path),
            source,
        }
    }
}

/// Returns the archive name of a directory: `./` for the root, the path otherwise.
fn directory_name(archive_path: &Path) -> PathBuf {
    if archive_path.as_os_str().is_empty() {
        PathBuf::from("./")
    } else {
        archive_path.to_owned()
    }
}

/// Builds a GNU header with the owner, mode and modification time of `stat`. Owners are
/// numeric only, as the tree's user database is not the host's.
fn header_for(stat: &Stat, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

fn read_xattr_names(fd: &OwnedFd) -> Result<Vec<std::ffi::CString>, rustix::io::Errno> {
    loop {
        let size = rustix::fs::flistxattr_query(fd.as_fd())?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buffer = vec![0u8; size];
        match rustix::fs::flistxattr(fd.as_fd(), &mut buffer[..]) {
            Ok(length) => {
                let names = buffer[..length]
                    .split(|byte| *byte == 0)
                    .filter(|name| !name.is_empty())
                    .map(|name| std::ffi::CString::new(name).expect("split at NUL bytes"))
                    .collect();
                return Ok(names);
            }
            // The list grew between the two calls.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

fn read_xattr_value(fd: &OwnedFd, name: &CStr) -> Result<Vec<u8>, rustix::io::Errno> {
    loop {
        let size = rustix::fs::fgetxattr_query(fd.as_fd(), name)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buffer = vec![0u8; size];
        match rustix::fs::fgetxattr(fd.as_fd(), name, &mut buffer[..]) {
            Ok(length) => {
                buffer.truncate(length);
                return Ok(buffer);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

/// Encodes extended attributes as PAX records, `LENGTH SCHILY.xattr.NAME=VALUE\n` each,
/// where LENGTH counts the whole record, its own digits included.
fn pax_xattr_records(xattrs: &[(OsString, Vec<u8>)]) -> Vec<u8> {
    let mut records = Vec::new();
    for (name, value) in xattrs {
        let key = [b"SCHILY.xattr.", name.as_bytes()].concat();
        // " " + key + "=" + value + "\n", then the length's own digits.
        let body = key.len() + value.len() + 3;
        let mut length = body + body.to_string().len();
        if length.to_string().len() != body.to_string().len() {
            length = body + length.to_string().len();
        }
        records.extend_from_slice(length.to_string().as_bytes());
        records.push(b' ');
        records.extend_from_slice(&key);
        records.push(b'=');
        records.extend_from_slice(value);
        records.push(b'\n');
    }
    records
}

/// Reads exactly `remaining` bytes of a file, failing when the file ends sooner, so a file
/// that shrinks while it is read cannot leave a short, corrupt entry in the archive.
struct ExactReader<'a> {
    file: &'a File,
    remaining: u64,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let limit = buffer
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let mut file = self.file;
        let read = file.read(&mut buffer[..limit])?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file became shorter while it was read",
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
