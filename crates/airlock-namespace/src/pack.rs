//! The tar packer behind `airlock cp`, shared by the namespace backend and the vm agent.
//!
//! Each file entry contains exactly the number of bytes its header states. The tar crate's own
//! `append_file` (tar 0.4.46) writes the size from `fstat` and then copies until end of file.
//! A file that grows while it is read, such as a log being written, then spills bytes past
//! its entry, and the reader parses them as the next header. Here a file is read up to its
//! size at `fstat` time, and one that shrinks below it fails the copy. Files that report size
//! 0 but have content, such as those in /proc and /sys, are read whole into memory, up to
//! [`MAX_UNSIZED_FILE`] bytes, and stored with the size read.
//!
//! Device nodes, FIFOs and sockets below a copied directory are left out and listed in
//! [`Skipped`]. So a copy never creates a device or FIFO on the other side, never turns one
//! into an empty file, and never blocks reading a FIFO. A source that is itself one of them
//! is rejected.

use std::ffi::OsStr;
use std::fs::{self, File, FileType, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::report::Report;

/// Maximum bytes read from a file whose size reads as 0, such as /proc/self/status. A file
/// with more is rejected instead of being cut short.
pub const MAX_UNSIZED_FILE: u64 = 16 << 20;

/// Maximum number of entries that [`Skipped`] names. It counts the rest, so that a tree of
/// many FIFOs gives a few lines of warning.
pub const MAX_NAMED_SKIPS: usize = 20;

/// A device node, FIFO or socket, which `cp` leaves out of a copy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SpecialFile {
    DeviceNode,
    Fifo,
    Socket,
}

impl SpecialFile {
    /// Returns the kind of special file `kind` is, or `None` for a regular file, directory
    /// or symlink.
    pub fn of(kind: FileType) -> Option<SpecialFile> {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_block_device() || kind.is_char_device() {
            Some(SpecialFile::DeviceNode)
        } else if kind.is_fifo() {
            Some(SpecialFile::Fifo)
        } else if kind.is_socket() {
            Some(SpecialFile::Socket)
        } else {
            None
        }
    }

    /// Returns the kind with its article, as in "skipped PATH: a FIFO".
    pub fn described(self) -> &'static str {
        match self {
            SpecialFile::DeviceNode => "a device node",
            SpecialFile::Fifo => "a FIFO",
            SpecialFile::Socket => "a socket",
        }
    }
}

/// The entries that a copy left out: the first [`MAX_NAMED_SKIPS`] by path, and a count
/// of the others.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub named: Vec<(PathBuf, SpecialFile)>,
    pub unnamed: u64,
}

impl Skipped {
    /// Records that the copy left out `path`, a special file of `kind`.
    pub fn add(&mut self, path: &Path, kind: SpecialFile) {
        if self.named.len() < MAX_NAMED_SKIPS {
            self.named.push((path.to_owned(), kind));
        } else {
            self.unnamed += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.unnamed == 0
    }

    /// Returns the report that carries this list to the launching process.
    pub fn to_report(&self) -> Report {
        let named = self.named.iter();
        Report::Skipped {
            named: named
                .map(|(path, kind)| (path.to_string_lossy().into_owned(), *kind))
                .collect(),
            unnamed: self.unnamed,
        }
    }

    /// Prints one warning line per named entry on stderr, and one for the count of the
    /// others. Paths are printed quoted, with control characters escaped, since they may
    /// come from the sandbox.
    pub fn warn(&self) {
        for (path, kind) in &self.named {
            eprintln!(
                "airlock: warning: skipped {path:?}: {}; cp copies files, directories and \
                 symlinks only",
                kind.described()
            );
        }
        if self.unnamed > 0 {
            eprintln!(
                "airlock: warning: skipped {} more device nodes, FIFOs or sockets",
                self.unnamed
            );
        }
    }
}

/// A tar stream's sink after [`pack_tree`] wrote it, and the entries it left out.
pub struct Packed<W> {
    pub sink: W,
    pub skipped: Skipped,
}

/// Writes `source` and what is below it as a tar stream to `sink`, under the top-level
/// `name`. Symlinks are stored as symlinks, never followed. Device nodes, FIFOs and sockets
/// below `source` are left out and returned in [`Packed::skipped`].
pub fn pack_tree<W: Write>(sink: W, source: &Path, name: &OsStr) -> io::Result<Packed<W>> {
    let sink = CutOff {
        inner: sink,
        cut: false,
    };
    let mut builder = tar::Builder::new(sink);
    builder.follow_symlinks(false);
    let mut skipped = Skipped::default();
    if let Err(error) = append_source(&mut builder, source, name, &mut skipped) {
        // The builder writes the end marker when dropped (tar 0.4.46), and a stream with
        // its end marker would read as a complete copy of fewer entries.
        builder.get_mut().cut = true;
        return Err(error);
    }
    Ok(Packed {
        sink: builder.into_inner()?.inner,
        skipped,
    })
}

/// A writer that fails every write once `cut` is set.
struct CutOff<W> {
    inner: W,
    cut: bool,
}

impl<W: Write> Write for CutOff<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        if self.cut {
            return Err(io::Error::other("the copy failed"));
        }
        self.inner.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn append_source<W: Write>(
    builder: &mut tar::Builder<W>,
    source: &Path,
    name: &OsStr,
    skipped: &mut Skipped,
) -> io::Result<()> {
    let metadata = fs::symlink_metadata(source)
        .map_err(|error| with_path(error, "read the metadata of", source))?;
    let kind = metadata.file_type();
    if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
        return Err(io::Error::other(format!(
            "{} is a device node, FIFO or socket (a hidden secret is a bind of /dev/null); cp \
             copies files, directories and symlinks only",
            source.display()
        )));
    }
    if kind.is_dir() {
        append_dir_all(builder, Path::new(name), source, skipped)
    } else {
        append_entry(builder, Path::new(name), source, kind)
    }
}

/// Appends the directory `source` and everything below it under `archive_path`, each
/// directory's header before its entries. Special files are recorded in `skipped` instead.
fn append_dir_all<W: Write>(
    builder: &mut tar::Builder<W>,
    archive_path: &Path,
    source: &Path,
    skipped: &mut Skipped,
) -> io::Result<()> {
    let mut stack = vec![(source.to_owned(), archive_path.to_owned(), true)];
    while let Some((path, archive_path, is_dir)) = stack.pop() {
        if !is_dir {
            let kind = fs::symlink_metadata(&path)?.file_type();
            match SpecialFile::of(kind) {
                Some(special) => skipped.add(&path, special),
                None => append_entry(builder, &archive_path, &path, kind)?,
            }
            continue;
        }
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let child: PathBuf = archive_path.join(entry.file_name());
            stack.push((entry.path(), child, entry.file_type()?.is_dir()));
        }
        builder.append_path_with_name(&path, &archive_path)?;
    }
    Ok(())
}

/// Appends one entry that is not a directory's content: a regular file through
/// [`append_file`], a symlink through [`append_symlink`], a directory header through the
/// tar crate.
fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    archive_path: &Path,
    path: &Path,
    kind: FileType,
) -> io::Result<()> {
    if kind.is_file() {
        let (file, metadata) = open_regular(path)?;
        append_file(builder, archive_path, path, file, &metadata)
    } else if kind.is_symlink() {
        append_symlink(builder, archive_path, path)
    } else {
        builder.append_path_with_name(path, archive_path)
    }
}

/// Appends the symlink at `path` under `archive_path`, with its target byte for byte. The
/// tar crate's `set_link_name` (0.4.46) normalizes a target, which turns `/` into `//`.
fn append_symlink<W: Write>(
    builder: &mut tar::Builder<W>,
    archive_path: &Path,
    path: &Path,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let metadata = fs::symlink_metadata(path)
        .map_err(|error| with_path(error, "read the metadata of", path))?;
    let target = fs::read_link(path).map_err(|error| with_path(error, "read the symlink", path))?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    header.set_size(0);
    let target = target.as_os_str().as_bytes();
    // The header's link name field has room for 100 bytes. A longer target goes whole into
    // a GNU long-link entry just before the header, NUL-terminated as GNU tar writes it.
    if target.len() > LINK_NAME_FIELD {
        let mut long_link = tar::Header::new_gnu();
        long_link.set_entry_type(tar::EntryType::GNULongLink);
        long_link.set_size(target.len() as u64 + 1);
        let data = [target, b"\0"].concat();
        builder.append_data(&mut long_link, "././@LongLink", data.as_slice())?;
    }
    header.set_link_name_literal(&target[..target.len().min(LINK_NAME_FIELD)])?;
    builder.append_data(&mut header, archive_path, io::empty())
}

/// Size of the link name field of a tar header, in bytes.
const LINK_NAME_FIELD: usize = 100;

/// Opens `path` without following a symlink or blocking on a FIFO, and checks that it is
/// still a regular file.
fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| with_path(error, "open", path))?;
    let metadata = file
        .metadata()
        .map_err(|error| with_path(error, "read the metadata of", path))?;
    if !metadata.is_file() {
        let changed = format!(
            "{} is no longer a regular file; copy it again once nothing replaces it",
            path.display()
        );
        return Err(io::Error::other(changed));
    }
    Ok((file, metadata))
}

fn with_path(error: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("failed to {action} {}: {error}", path.display()),
    )
}

/// Appends the open regular file `file`, whose metadata is `metadata`, under
/// `archive_path`. The entry contains the file's first `metadata.len()` bytes, or all of it
/// when that size is 0.
fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    archive_path: &Path,
    path: &Path,
    mut file: File,
    metadata: &Metadata,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(metadata, tar::HeaderMode::Complete);
    if metadata.len() == 0 {
        let contents = read_unsized(&mut file, path)?;
        header.set_size(contents.len() as u64);
        return builder.append_data(&mut header, archive_path, contents.as_slice());
    }
    let contents = ExactSize {
        file,
        path,
        size: metadata.len(),
        remaining: metadata.len(),
    };
    builder.append_data(&mut header, archive_path, contents)
}

/// Reads a file whose size reads as 0, which /proc and /sys files do although they have
/// content, up to [`MAX_UNSIZED_FILE`] bytes.
fn read_unsized(file: &mut File, path: &Path) -> io::Result<Vec<u8>> {
    let mut contents = Vec::new();
    file.take(MAX_UNSIZED_FILE + 1)
        .read_to_end(&mut contents)
        .map_err(|error| with_path(error, "read", path))?;
    if contents.len() as u64 > MAX_UNSIZED_FILE {
        let too_large = format!(
            "{} reports size 0 but holds more than {MAX_UNSIZED_FILE} bytes, the maximum cp \
             reads from such a file; copy it with `cat` instead",
            path.display()
        );
        return Err(io::Error::other(too_large));
    }
    Ok(contents)
}

/// The first `size` bytes of a file. Reading stops there even when the file has grown, and
/// fails when the file ends before it, so the tar entry always matches its header.
struct ExactSize<'a> {
    file: File,
    path: &'a Path,
    size: u64,
    remaining: u64,
}

impl Read for ExactSize<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let max = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        let max = buffer.len().min(max);
        if max == 0 {
            return Ok(0);
        }
        let count = self
            .file
            .read(&mut buffer[..max])
            .map_err(|error| with_path(error, "read", self.path))?;
        if count == 0 {
            return Err(self.shrank());
        }
        self.remaining -= count as u64;
        Ok(count)
    }
}

impl ExactSize<'_> {
    fn shrank(&self) -> io::Error {
        let read = self.size - self.remaining;
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} shrank from {} to {read} bytes while it was copied; copy it again once \
                 nothing truncates it",
                self.path.display(),
                self.size
            ),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// Packs the open `file` with `metadata` under the name `name` into an archive in memory.
    fn pack_opened(file: File, metadata: &Metadata, path: &Path) -> io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        append_file(&mut builder, Path::new("name"), path, file, metadata)?;
        builder.into_inner()
    }

    /// Returns a tar builder holding `entries`, each a name, a type and contents, all with
    /// `mode`. The caller adds the end marker with `into_inner`, or leaves it out.
    pub(crate) fn builder_with(
        mode: u32,
        entries: &[(&str, tar::EntryType, &[u8])],
    ) -> tar::Builder<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for &(name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder
    }

    /// Returns each entry of `archive` as its path and contents.
    fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(archive);
        let mut found = Vec::new();
        for entry in archive.entries().expect("archive") {
            let mut entry = entry.expect("entry parses");
            let path = entry.path().expect("path").display().to_string();
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).expect("contents");
            found.push((path, contents));
        }
        found
    }

    #[test]
    fn file_grown_after_stat_keeps_its_stat_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        fs::write(&path, b"first line\n").expect("write");
        let (file, metadata) = open_regular(&path).expect("open");
        // A header-shaped block written after the size was read must stay out of the copy.
        let mut appender = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut fake = tar::Header::new_gnu();
        fake.set_path("planted").unwrap();
        fake.set_size(0);
        fake.set_cksum();
        appender.write_all(&[0; 501]).unwrap();
        appender.write_all(fake.as_bytes()).unwrap();

        let archive = pack_opened(file, &metadata, &path).expect("pack");

        let found = entries(&archive);
        assert_eq!(found.len(), 1, "entries: {found:?}");
        assert_eq!(found[0].0, "name");
        assert_eq!(found[0].1, b"first line\n");
    }

    #[test]
    fn file_shrunk_after_stat_fails_the_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        fs::write(&path, vec![b'x'; 4096]).expect("write");
        let (file, metadata) = open_regular(&path).expect("open");
        File::create(&path).expect("truncate");

        let error = pack_opened(file, &metadata, &path).expect_err("a shrunk file fails");

        let message = error.to_string();
        assert!(message.contains("shrank from 4096 to 0 bytes"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn proc_file_of_size_zero_is_copied_whole() {
        let path = Path::new("/proc/self/status");
        let (file, metadata) = open_regular(path).expect("open");
        assert_eq!(metadata.len(), 0, "/proc files report size 0");

        let archive = pack_opened(file, &metadata, path).expect("pack");

        let found = entries(&archive);
        assert_eq!(found.len(), 1);
        let text = String::from_utf8_lossy(&found[0].1).into_owned();
        assert!(text.starts_with("Name:"), "{text}");
        assert!(text.contains("\nPid:"), "{text}");
    }

    #[test]
    fn unpack_in_sandbox_skips_devices_and_fifos() {
        let builder = builder_with(
            0o644,
            &[
                ("copy", tar::EntryType::Directory, b""),
                ("copy/null", tar::EntryType::Char, b""),
                ("copy/disk", tar::EntryType::Block, b""),
                ("copy/fifo", tar::EntryType::Fifo, b""),
                ("copy/file", tar::EntryType::Regular, b"data"),
            ],
        );
        let archive = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().expect("temp dir");

        crate::join::unpack_tree(archive.as_slice(), dir.path()).expect("unpack");

        let mut names: Vec<String> = fs::read_dir(dir.path().join("copy"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["file"]);
        assert_eq!(fs::read(dir.path().join("copy/file")).unwrap(), b"data");
    }

    #[test]
    fn tree_keeps_directories_before_their_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/file"), b"data").unwrap();
        std::os::unix::fs::symlink("/etc", tree.join("link")).unwrap();

        let packed = pack_tree(Vec::new(), &tree, OsStr::new("copy")).expect("pack");

        assert!(packed.skipped.is_empty(), "{:?}", packed.skipped);
        let found = entries(&packed.sink);
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        let position = |name: &str| paths.iter().position(|path| *path == name);
        assert_eq!(position("copy"), Some(0), "{paths:?}");
        assert!(
            position("copy/sub") < position("copy/sub/file"),
            "{paths:?}"
        );
        assert!(position("copy/link").is_some(), "{paths:?}");
        let file = found.iter().find(|(path, _)| path == "copy/sub/file");
        assert_eq!(file.map(|(_, data)| data.as_slice()), Some(&b"data"[..]));
    }

    #[test]
    fn tree_leaves_out_fifos_and_sockets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("file"), b"data").unwrap();
        let fifo = tree.join("fifo");
        let fifo_name = crate::sys::cstring(&fifo).unwrap();
        // SAFETY: `fifo_name` is a NUL-terminated path that lives for the call.
        assert_eq!(unsafe { libc::mkfifo(fifo_name.as_ptr(), 0o600) }, 0);
        let socket = tree.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();

        let packed = pack_tree(Vec::new(), &tree, OsStr::new("copy")).expect("pack");

        let found = entries(&packed.sink);
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(paths, ["copy", "copy/file"]);
        let mut skipped = packed.skipped.named.clone();
        skipped.sort();
        assert_eq!(
            skipped,
            [(fifo, SpecialFile::Fifo), (socket, SpecialFile::Socket)]
        );
        assert_eq!(packed.skipped.unnamed, 0);
    }

    #[test]
    fn skipped_names_first_entries_and_counts_rest() {
        let mut skipped = Skipped::default();
        for index in 0..MAX_NAMED_SKIPS + 3 {
            skipped.add(
                Path::new(&format!("/dev/null{index}")),
                SpecialFile::DeviceNode,
            );
        }
        assert_eq!(skipped.named.len(), MAX_NAMED_SKIPS);
        assert_eq!(skipped.unnamed, 3);
    }
}
