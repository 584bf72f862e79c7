//! Renders changes as a unified diff for review, in git's layout: a `diff a/… b/…` line,
//! mode lines, then `---`/`+++` headers and hunks. Binary files, files over
//! [`MAX_PATCH_FILE_SIZE`], directories and special files get a line each instead of hunks.
//! A symlink shows its target as a one-line file without a final newline, as git does.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use similar::{Algorithm, TextDiff};

use crate::change::{Change, ChangeKind, FileType, MAX_DEPTH};
use crate::error::Error;
use crate::tree::Tree;
use crate::{fs, sensitive};

/// Files larger than this, on either side, are marked as too large instead of diffed.
pub const MAX_PATCH_FILE_SIZE: u64 = 1024 * 1024;

/// A NUL byte in this many leading bytes marks a file as binary, as in git.
const BINARY_PROBE_LEN: usize = 8 * 1024;

/// Time after which the line diff stops looking for the shortest edit and returns a longer
/// one, so two large, unrelated files cannot stall a review.
const DIFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes a unified diff of `changes`, as returned by [`crate::diff`] for the same `lower`
/// and `upper`, to `out`. Sensitive changes carry a line starting with `# SENSITIVE:`.
pub fn patch(
    lower: &Path,
    upper: &Path,
    changes: &[Change],
    out: &mut dyn Write,
) -> Result<(), Error> {
    let lower = Tree::open_lower(lower)?;
    let upper = Tree::open_upper(upper)?;
    for change in changes {
        let old = match change.kind {
            ChangeKind::Added => Side::Missing,
            _ => load(&lower, &change.path)?,
        };
        let new = match change.kind {
            ChangeKind::Deleted => Side::Missing,
            _ => load(&upper, &change.path)?,
        };
        write_change(out, change, &old, &new).map_err(Error::WritePatch)?;
    }
    Ok(())
}

/// An entry as the patch shows it. Modes include the file type bits, as git prints them.
enum Side {
    Missing,
    Dir { mode: u32 },
    File { mode: u32, content: Content },
    Symlink { target: OsString },
    Other { mode: u32 },
}

#[derive(Clone)]
enum Content {
    Text(String),
    Binary,
    TooLarge(u64),
}

/// Loads the entry at `rel` in `tree` as the patch shows it.
fn load(tree: &Tree, rel: &Path) -> Result<Side, Error> {
    let parent = tree.open_parent(rel)?;
    let Some(stat) = tree.lstat(parent.as_fd(), rel)? else {
        return Ok(Side::Missing);
    };
    let permissions = fs::permissions(&stat);
    match FileType::of(&stat) {
        FileType::Dir => Ok(Side::Dir {
            mode: 0o040000 | permissions,
        }),
        FileType::Symlink => Ok(Side::Symlink {
            target: tree.read_link(parent.as_fd(), rel)?,
        }),
        FileType::Other => Ok(Side::Other { mode: stat.st_mode }),
        FileType::File => {
            let Some(file) = tree.open_file(parent.as_fd(), rel)? else {
                return Ok(Side::Other { mode: stat.st_mode });
            };
            let content = read_content(file).map_err(|source| Error::ReadFile {
                path: tree.full(rel),
                source,
            })?;
            Ok(Side::File {
                mode: 0o100000 | permissions,
                content,
            })
        }
    }
}

/// Reads a file of at most [`MAX_PATCH_FILE_SIZE`] bytes and classifies it as text or binary.
fn read_content(file: std::fs::File) -> io::Result<Content> {
    let size = file.metadata()?.len();
    if size > MAX_PATCH_FILE_SIZE {
        return Ok(Content::TooLarge(size));
    }
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_PATCH_FILE_SIZE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PATCH_FILE_SIZE {
        // The file grew after fstat.
        return Ok(Content::TooLarge(bytes.len() as u64));
    }
    let probe = &bytes[..bytes.len().min(BINARY_PROBE_LEN)];
    if probe.contains(&0) {
        return Ok(Content::Binary);
    }
    Ok(String::from_utf8(bytes).map_or(Content::Binary, Content::Text))
}

fn write_change(out: &mut dyn Write, change: &Change, old: &Side, new: &Side) -> io::Result<()> {
    let target = match new {
        Side::Symlink { target } => Some(Path::new(target)),
        _ => None,
    };
    let reason = match change.sensitive {
        true => sensitive::reason(&change.path, change.file_type, target),
        false => None,
    };
    let block = Block {
        path: &change.path,
        reason,
        too_deep: change.too_deep,
    };
    if old.file_type().is_some() && new.file_type().is_some() && old.file_type() != new.file_type()
    {
        // A type change reads as a deletion followed by an addition, as in git.
        block.write(out, old, &Side::Missing)?;
        let addition = Block {
            reason: None,
            ..block
        };
        return addition.write(out, &Side::Missing, new);
    }
    block.write(out, old, new)
}

/// The lines of one path.
#[derive(Clone, Copy)]
struct Block<'a> {
    path: &'a Path,
    reason: Option<&'static str>,
    too_deep: bool,
}

impl Block<'_> {
    fn write(&self, out: &mut dyn Write, old: &Side, new: &Side) -> io::Result<()> {
        let path = self.path.as_os_str().as_bytes();
        let a = quote("a/", path);
        let b = quote("b/", path);
        writeln!(out, "diff {a} {b}")?;
        if let Some(reason) = self.reason {
            writeln!(
                out,
                "# SENSITIVE: {reason}. Apply writes it only when its path is named."
            )?;
        }
        write_modes(out, old, new)?;

        if self.too_deep {
            return writeln!(
                out,
                "# {b} is nested {MAX_DEPTH} directories deep: its entries were not compared, and apply skips it."
            );
        }
        if let Side::Other { .. } = new {
            return writeln!(
                out,
                "# {b} is a FIFO, socket or device node: apply skips it."
            );
        }
        let (Some(old_content), Some(new_content)) = (old.content(), new.content()) else {
            return Ok(());
        };

        let a = match old {
            Side::Missing => "/dev/null".to_owned(),
            _ => a,
        };
        let b = match new {
            Side::Missing => "/dev/null".to_owned(),
            _ => b,
        };
        write_contents(out, &a, &b, old_content, new_content)
    }
}

/// Writes the difference of two contents: hunks for text, a line otherwise.
fn write_contents(
    out: &mut dyn Write,
    a: &str,
    b: &str,
    old: Content,
    new: Content,
) -> io::Result<()> {
    match (old, new) {
        (Content::TooLarge(size), _) | (_, Content::TooLarge(size)) => writeln!(
            out,
            "# The file is too large for a patch ({size} bytes; the limit is {MAX_PATCH_FILE_SIZE})."
        ),
        (Content::Binary, _) | (_, Content::Binary) => {
            writeln!(out, "Binary files {a} and {b} differ")
        }
        (Content::Text(old_text), Content::Text(new_text)) => {
            write_hunks(out, a, b, &old_text, &new_text)
        }
    }
}

fn write_modes(out: &mut dyn Write, old: &Side, new: &Side) -> io::Result<()> {
    match (old.mode(), new.mode()) {
        (None, Some(mode)) if matches!(new, Side::Dir { .. }) => {
            writeln!(out, "new directory mode {mode:06o}")
        }
        (None, Some(mode)) => writeln!(out, "new file mode {mode:06o}"),
        (Some(mode), None) if matches!(old, Side::Dir { .. }) => {
            writeln!(out, "deleted directory mode {mode:06o}")
        }
        (Some(mode), None) => writeln!(out, "deleted file mode {mode:06o}"),
        (Some(old_mode), Some(new_mode)) if old_mode != new_mode => {
            writeln!(out, "old mode {old_mode:06o}")?;
            writeln!(out, "new mode {new_mode:06o}")
        }
        _ => Ok(()),
    }
}

/// Writes the `---`/`+++` headers and the hunks, or nothing when the texts are equal.
fn write_hunks(out: &mut dyn Write, a: &str, b: &str, old: &str, new: &str) -> io::Result<()> {
    let diff = TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .timeout(DIFF_TIMEOUT)
        .diff_lines(old, new);
    let unified = diff.unified_diff();
    let mut hunks = unified.iter_hunks().peekable();
    if hunks.peek().is_none() {
        return Ok(());
    }
    writeln!(out, "--- {a}")?;
    writeln!(out, "+++ {b}")?;
    for hunk in hunks {
        hunk.to_writer(&mut *out)?;
    }
    Ok(())
}

impl Side {
    fn file_type(&self) -> Option<FileType> {
        match self {
            Side::Missing => None,
            Side::Dir { .. } => Some(FileType::Dir),
            Side::File { .. } => Some(FileType::File),
            Side::Symlink { .. } => Some(FileType::Symlink),
            Side::Other { .. } => Some(FileType::Other),
        }
    }

    fn mode(&self) -> Option<u32> {
        match self {
            Side::Missing => None,
            Side::Dir { mode } | Side::File { mode, .. } | Side::Other { mode } => Some(*mode),
            Side::Symlink { .. } => Some(0o120000),
        }
    }

    /// Returns the contents to diff: a file's, or a symlink's target as one line without a
    /// newline. A missing side is empty; directories and special files have none.
    fn content(&self) -> Option<Content> {
        match self {
            Side::Missing => Some(Content::Text(String::new())),
            Side::File { content, .. } => Some(content.clone()),
            Side::Symlink { target } => Some(Content::Text(quote("", target.as_bytes()))),
            Side::Dir { .. } | Side::Other { .. } => None,
        }
    }
}

/// Returns `prefix` followed by `bytes`, in double quotes with C escapes as git writes paths
/// that contain a control character, a quote, a backslash or a non-ASCII byte. A name then
/// cannot break a patch line, and look-alike or bidirectional Unicode characters show as
/// octal escapes.
fn quote(prefix: &str, bytes: &[u8]) -> String {
    let plain = |byte: &u8| (0x20..0x7f).contains(byte) && *byte != b'"' && *byte != b'\\';
    if bytes.iter().all(plain) {
        return format!("{prefix}{}", String::from_utf8_lossy(bytes));
    }
    let mut quoted = format!("\"{prefix}");
    for &byte in bytes {
        match byte {
            b'"' => quoted.push_str("\\\""),
            b'\\' => quoted.push_str("\\\\"),
            b'\n' => quoted.push_str("\\n"),
            b'\t' => quoted.push_str("\\t"),
            b'\r' => quoted.push_str("\\r"),
            0x07 => quoted.push_str("\\a"),
            0x08 => quoted.push_str("\\b"),
            0x0b => quoted.push_str("\\v"),
            0x0c => quoted.push_str("\\f"),
            0x20..0x7f => quoted.push(char::from(byte)),
            _ => quoted.push_str(&format!("\\{byte:03o}")),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests;
