//! File system helpers over directory descriptors. Every lookup is relative to an open
//! directory and none follows a symlink, so a link planted in the upper layer or on the host
//! cannot redirect a read, a write or a removal.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, SeekFrom, Stat};
use rustix::io::Errno;

use crate::change::FileType;
use crate::error::Error;

/// Flags to open a directory for listing and for lookups of its entries.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Size of the buffers that compare and copy file contents.
const CHUNK: usize = 64 * 1024;

/// Extended attributes that mark an upper directory as opaque: `user.` with the `userxattr`
/// mount option, `trusted.` without it.
const OPAQUE_XATTRS: [&str; 2] = ["user.overlay.opaque", "trusted.overlay.opaque"];

/// Opens the directory `path` chosen by the caller. Symlinks in `path` itself are followed.
pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Opens the project directory `path`. As root, no component of the path may be a symlink:
/// the owner of a directory on the way could otherwise point it at any directory of the
/// host between the sandbox's creation and this open.
pub(crate) fn open_project(path: &Path) -> io::Result<OwnedFd> {
    if !rustix::process::geteuid().is_root() {
        return open_root(path);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = rustix::fs::ResolveFlags::NO_SYMLINKS | rustix::fs::ResolveFlags::NO_MAGICLINKS;
    Ok(rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        flags,
        Mode::empty(),
        resolve,
    )?)
}

/// Opens the directory `name` in `dir`. A symlink there fails with ELOOP.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Opens the directory `name` in `dir` on the mount of `dir` alone. A symlink there fails
/// with ELOOP, and a mount point with EXDEV.
pub(crate) fn open_dir_on_mount(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let resolve = rustix::fs::ResolveFlags::NO_XDEV | rustix::fs::ResolveFlags::NO_SYMLINKS;
    Ok(rustix::fs::openat2(
        dir,
        name,
        DIR_FLAGS,
        Mode::empty(),
        resolve,
    )?)
}

/// Returns whether the entry `name` in `dir` is a mount point, such as a directory or file
/// that the host bound over the project's own entry.
pub(crate) fn is_mount_point(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    let resolve = rustix::fs::ResolveFlags::NO_XDEV | rustix::fs::ResolveFlags::NO_SYMLINKS;
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    matches!(
        rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve),
        Err(Errno::XDEV)
    )
}

/// Opens the directory that contains `rel`, one component at a time from `root`. A symlink
/// on the way fails with ELOOP and a non-directory with ENOTDIR.
pub(crate) fn open_parent(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut dir = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty())?;
    for name in parent_names(rel) {
        dir = open_dir(dir.as_fd(), name)?;
    }
    Ok(dir)
}

/// Returns the components of `rel` above its last one.
pub(crate) fn parent_names(rel: &Path) -> impl Iterator<Item = &OsStr> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    parent.components().filter_map(|component| match component {
        Component::Normal(name) => Some(name),
        _ => None,
    })
}

/// Returns the last component of `rel`, which diff and selection guarantee to exist.
pub(crate) fn file_name(rel: &Path) -> &OsStr {
    rel.file_name().unwrap_or_default()
}

/// Returns the metadata of `name` in `dir` without following a symlink, or `None` when
/// there is no such entry.
pub(crate) fn lstat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::NOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

/// Lists the entry names of `dir` in byte order, without "." and "..".
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort();
    Ok(names)
}

/// Opens `name` in `dir` for reading if it is a regular file, or returns `None` for any other
/// type. The entry is first opened with O_PATH, which has no effect on a FIFO or a device.
/// It is reopened for reading through /proc only once fstat shows a regular file, so a swap
/// between the check and the open cannot make Airlock open a device or block on a FIFO.
pub(crate) fn open_regular(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<File>> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let handle = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    if FileType::of(&rustix::fs::fstat(&handle)?) != FileType::File {
        return Ok(None);
    }
    let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC;
    Ok(Some(File::from(rustix::fs::open(
        reopen.as_str(),
        flags,
        Mode::empty(),
    )?)))
}

/// Reads the target of the symlink `name` in `dir`.
pub(crate) fn read_link(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OsString> {
    let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(OsString::from_vec(target.into_bytes()))
}

/// Returns whether `stat` describes an overlay whiteout: a character device with number 0:0.
pub(crate) fn is_whiteout(stat: &Stat) -> bool {
    let file_type = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    file_type == rustix::fs::FileType::CharacterDevice && stat.st_rdev == 0
}

/// Returns whether the upper directory `dir` is opaque, which hides every lower entry it lacks.
pub(crate) fn is_opaque(dir: BorrowedFd<'_>) -> io::Result<bool> {
    for xattr in OPAQUE_XATTRS {
        let mut value = [0u8; 2];
        match rustix::fs::fgetxattr(dir, xattr, &mut value) {
            Ok(len) if value[..len] == *b"y" => return Ok(true),
            // ENODATA: no such attribute (or, for `trusted.`, no privilege to see it).
            Ok(_) | Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(false)
}

/// Returns the status change time of `stat`.
#[allow(
    clippy::useless_conversion,
    reason = "the stat fields are narrower than 64 bits on 32-bit targets"
)]
pub(crate) fn ctime(stat: &Stat) -> SystemTime {
    let seconds = i64::from(stat.st_ctime);
    let nanos = Duration::from_nanos(u64::from(stat.st_ctime_nsec));
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()) + nanos
    }
}

/// Returns the permission bits of `stat`, with setuid, setgid and sticky.
pub(crate) fn permissions(stat: &Stat) -> u32 {
    stat.st_mode & 0o7777
}

/// Returns the size of the file that `stat` describes.
pub(crate) fn size(stat: &Stat) -> u64 {
    u64::try_from(stat.st_size).unwrap_or(0)
}

/// Compares the contents of two open files, named `a_path` and `b_path` in errors.
pub(crate) fn same_content(
    a: &mut File,
    a_path: &Path,
    b: &mut File,
    b_path: &Path,
) -> Result<bool, Error> {
    let mut a_buffer = vec![0u8; CHUNK];
    let mut b_buffer = vec![0u8; CHUNK];
    loop {
        let a_len = read_full(a, &mut a_buffer).map_err(|source| Error::ReadFile {
            path: a_path.to_owned(),
            source,
        })?;
        let b_len = read_full(b, &mut b_buffer).map_err(|source| Error::ReadFile {
            path: b_path.to_owned(),
            source,
        })?;
        if a_buffer[..a_len] != b_buffer[..b_len] {
            return Ok(false);
        }
        if a_len == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buffer` is full or the file ends, and returns the number of bytes read.
fn read_full(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(len) => filled += len,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Copies the first `len` bytes of `from` into the empty file `to`. Only the data regions
/// that SEEK_DATA and SEEK_HOLE report are copied, so a sparse file of a terabyte stays
/// sparse instead of filling the host's disk with zeros.
pub(crate) fn copy_sparse(from: &File, to: &File, len: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < len {
        let data = match rustix::fs::seek(from, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // ENXIO: no data after `offset`, only a hole up to the end.
            Err(Errno::NXIO) => break,
            Err(errno) => return Err(errno.into()),
        };
        let hole = rustix::fs::seek(from, SeekFrom::Hole(data))?.min(len);
        copy_range(from, to, data, hole, &mut buffer)?;
        offset = hole;
    }
    to.set_len(len)
}

fn copy_range(from: &File, to: &File, start: u64, end: u64, buffer: &mut [u8]) -> io::Result<()> {
    let mut position = start;
    while position < end {
        let want = buffer
            .len()
            .min(usize::try_from(end - position).unwrap_or(usize::MAX));
        let read = from.read_at(&mut buffer[..want], position)?;
        if read == 0 {
            // The file shrank while it was copied. The caller's `set_len` pads the rest.
            break;
        }
        to.write_all_at(&buffer[..read], position)?;
        position += read as u64;
    }
    Ok(())
}

/// Returns `prefix` followed by 16 random hexadecimal digits.
pub(crate) fn random_name(prefix: &str) -> io::Result<OsString> {
    let mut bytes = [0u8; 8];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    let suffix: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(OsString::from(format!("{prefix}{suffix}")))
}

impl FileType {
    pub(crate) fn of(stat: &Stat) -> FileType {
        match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
            rustix::fs::FileType::RegularFile => FileType::File,
            rustix::fs::FileType::Directory => FileType::Dir,
            rustix::fs::FileType::Symlink => FileType::Symlink,
            _ => FileType::Other,
        }
    }
}
