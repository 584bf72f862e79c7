//! The unpacker of `airlock cp`'s tar stream inside a sandbox. It stages the copy, so a copy
//! that fails leaves nothing at its target.
//!
//! The stream is unpacked into a staging directory, `.airlock-cp-TOKEN`, created in the
//! directory that receives the copy, so on the same file system. Once every entry is
//! written, the copy moves into place: by one rename when the destination is missing or is
//! not a directory, else entry by entry into the existing directory, which merges the two as
//! cp(1) does. A failure removes the staging directory. A process killed during the copy
//! leaves it behind, and [`remove_staging`], run by a fresh process, removes it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Start of the staging directory's name.
const STAGING_PREFIX: &str = ".airlock-cp-";

/// Returns a token for a staging directory's name, unique on this host for a while: the
/// process id and the time in nanoseconds, in hexadecimal.
pub fn new_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{:x}{nanos:x}", std::process::id())
}

/// Unpacks a tar stream made by [`crate::pack::pack_tree`]: into `target` when it is a
/// directory, else as `target` itself, whose name replaces the stream's top-level name.
/// The entries are staged in a directory named after `token`, so a failure leaves `target`
/// as it was. Device nodes and FIFOs are skipped. Paths that are not plain relative names
/// are rejected, but symlinks in the stream are followed by later entries, so this is for
/// the inside of a sandbox, never for the host.
pub fn unpack_staged(source: impl Read, target: &Path, token: &str) -> io::Result<()> {
    if names_directory(target) && !target.is_dir() {
        let message = format!(
            "cannot write {}: it ends with '/' but is no directory; create the directory first, or leave out the '/' to give the copy that name",
            target.display()
        );
        return Err(io::Error::new(io::ErrorKind::NotADirectory, message));
    }
    let (dir, new_name) = destination(target);
    let staging = staging_path(&dir, token)?;
    create_staging(&staging, target)?;
    let placed = unpack_entries(source, &staging, new_name)
        .and_then(|name| place(&staging.join(&name), &dir.join(&name)))
        .map_err(|error| with_target(unstaged(error, &staging, &dir), target));
    // After a merge, the staging directory still contains the merged directories, empty.
    let removed = fs::remove_dir_all(&staging);
    placed?;
    removed.map_err(|error| with_target(error, target))
}

/// Removes the staging directory that [`unpack_staged`] created for `target` and `token`,
/// if it is still there.
pub fn remove_staging(target: &Path, token: &str) -> io::Result<()> {
    let (dir, _) = destination(target);
    match fs::remove_dir_all(staging_path(&dir, token)?) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Returns whether `path` ends with '/', which, as for cp(1), names an existing directory.
pub fn names_directory(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().ends_with(b"/")
}

/// Returns the directory that receives the copy and, unless the copy goes into `target`,
/// the name that replaces the stream's top-level name.
fn destination(target: &Path) -> (PathBuf, Option<OsString>) {
    if target.is_dir() {
        return (target.to_owned(), None);
    }
    let parent = target.parent().unwrap_or(Path::new("/")).to_owned();
    (parent, target.file_name().map(OsStr::to_os_string))
}

fn staging_path(dir: &Path, token: &str) -> io::Result<PathBuf> {
    if token.is_empty() || !token.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        let invalid = format!("invalid staging token {token:?}: expected letters and digits");
        return Err(io::Error::new(io::ErrorKind::InvalidInput, invalid));
    }
    Ok(dir.join(format!("{STAGING_PREFIX}{token}")))
}

fn create_staging(staging: &Path, target: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(|error| with_target(error, target))
}

/// Names `target`, the path the caller asked for, in `error`.
fn with_target(error: io::Error, target: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot write {}: {error}", target.display()),
    )
}

/// Replaces the staging directory with `dir`, where the copy goes, in the message of
/// `error` and its causes, which it joins into one message.
fn unstaged(error: io::Error, staging: &Path, dir: &Path) -> io::Error {
    let message = crate::error_chain(&error)
        .replace(&staging.display().to_string(), &dir.display().to_string());
    io::Error::new(error.kind(), message)
}

/// Unpacks every entry of `source` below `staging`, under one top-level name: `new_name`
/// when given, else the stream's own. Returns that name.
fn unpack_entries(
    source: impl Read,
    staging: &Path,
    new_name: Option<OsString>,
) -> io::Result<OsString> {
    let mut top: Option<OsString> = None;
    let mut source = EndWatch::new(source);
    let mut archive = tar::Archive::new(&mut source);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        // The tar crate (0.4.46) unpacks these as empty regular files.
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            continue;
        }
        let path = entry.path()?.into_owned();
        let mut components = path.components();
        let first = components.next().map(|c| c.as_os_str().to_os_string());
        let name = new_name.clone().or(first).unwrap_or_default();
        if top.get_or_insert_with(|| name.clone()) != &name {
            let mixed = format!("rejecting the archive path {path:?}: a second top-level name");
            return Err(io::Error::new(io::ErrorKind::InvalidData, mixed));
        }
        let mut relative = PathBuf::from(&name);
        let rest = components.as_path();
        if !rest.as_os_str().is_empty() {
            relative.push(rest);
        }
        let safe = relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
        if !safe {
            let rejected = format!("rejecting the archive path {path:?}");
            return Err(io::Error::new(io::ErrorKind::InvalidData, rejected));
        }
        entry.unpack(staging.join(relative))?;
    }
    source.check_marker()?;
    top.ok_or_else(|| {
        let empty = "the tar stream ended before its first entry";
        io::Error::new(io::ErrorKind::UnexpectedEof, empty)
    })
}

/// Moves the staged `from` to `to`. A directory moves into an existing directory entry by
/// entry, anything else replaces what is at `to` by a rename, and an existing symlink at
/// `to` is replaced, not followed.
// NOTE: a failure during a merge leaves the entries moved so far in place, each of them
// complete.
fn place(from: &Path, to: &Path) -> io::Result<()> {
    let merge = fs::symlink_metadata(to).is_ok_and(|existing| existing.is_dir())
        && fs::symlink_metadata(from)?.is_dir();
    if !merge {
        return fs::rename(from, to);
    }
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        place(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

/// A reader of a tar stream that distinguishes a complete stream from one cut short between two
/// entries. The tar crate (0.4.46) ends the entries at end of file as it does at the end
/// marker, two blocks of zeros, and reads nothing past the marker's first block.
pub struct EndWatch<R> {
    inner: R,
    reached_end_of_file: bool,
}

impl<R: Read> EndWatch<R> {
    pub fn new(inner: R) -> EndWatch<R> {
        EndWatch {
            inner,
            reached_end_of_file: false,
        }
    }

    /// Fails when the stream ended without its end marker, which happens when the side
    /// that sends it fails.
    pub fn check_marker(&self) -> io::Result<()> {
        if self.reached_end_of_file {
            let cut = "the tar stream ended without its end marker: the sending side failed";
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, cut));
        }
        Ok(())
    }
}

impl<R: Read> Read for EndWatch<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        if count == 0 && !buffer.is_empty() {
            self.reached_end_of_file = true;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a tar stream of the directory `copy` with two files, without its end marker.
    fn stream_without_marker() -> Vec<u8> {
        let builder = crate::pack::tests::builder_with(
            0o755,
            &[
                ("copy", tar::EntryType::Directory, b""),
                ("copy/one", tar::EntryType::Regular, b"one"),
                ("copy/two", tar::EntryType::Regular, b"two"),
            ],
        );
        builder.get_ref().clone()
    }

    #[test]
    fn complete_stream_lands_at_target() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut stream = stream_without_marker();
        stream.extend_from_slice(&[0; 1024]);

        unpack_staged(stream.as_slice(), &dir.path().join("target"), "token").expect("unpack");

        let landed = fs::read(dir.path().join("target/two")).expect("read two");
        assert_eq!(landed, b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["target"]);
    }

    #[test]
    fn stream_cut_between_entries_leaves_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stream = stream_without_marker();

        let error = unpack_staged(stream.as_slice(), &dir.path().join("target"), "token")
            .expect_err("a stream without its end marker fails");

        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        assert!(error.to_string().contains("target"), "{error}");
        let left = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 0, "the failed copy left entries behind");
    }

    #[test]
    fn directory_merges_into_existing_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let existing = dir.path().join("copy");
        fs::create_dir(&existing).unwrap();
        fs::write(existing.join("kept"), b"kept").unwrap();
        fs::write(existing.join("one"), b"old").unwrap();
        let mut stream = stream_without_marker();
        stream.extend_from_slice(&[0; 1024]);

        unpack_staged(stream.as_slice(), dir.path(), "token").expect("unpack");

        assert_eq!(fs::read(existing.join("kept")).unwrap(), b"kept");
        assert_eq!(fs::read(existing.join("one")).unwrap(), b"one");
        assert_eq!(fs::read(existing.join("two")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["copy"], "the staging directory is left");
    }
}
