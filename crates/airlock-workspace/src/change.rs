//! The changes a sandbox made to its workspace, one entry per path.

use std::fmt;
use std::path::PathBuf;

/// The deepest level, in path components below the workspace root, at which the diff still
/// compares a directory's entries. Deeper trees are reported as one change marked
/// [`Change::too_deep`], so a hostile upper layer cannot exhaust descriptors or stack.
pub const MAX_DEPTH: usize = 128;

/// The kind of change to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// The type of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device node, which apply never creates.
    Other,
}

/// One added, modified or deleted path of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The path relative to the workspace root.
    pub path: PathBuf,
    pub kind: ChangeKind,
    /// The entry's type in the upper layer, or on the host for a deletion.
    pub file_type: FileType,
    /// The entry's type on the host before the change, or `None` for an addition. A
    /// modification whose `lower_type` differs from `file_type` replaces the entry with one of
    /// another type.
    pub lower_type: Option<FileType>,
    /// Whether the change can make the host run code later (see [`crate::sensitive`]). Apply
    /// skips a sensitive change unless its path is named.
    pub sensitive: bool,
    /// Whether the entry is a directory at [`MAX_DEPTH`] whose entries were not compared.
    /// Apply skips it.
    pub too_deep: bool,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
        })
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileType::File => "file",
            FileType::Dir => "directory",
            FileType::Symlink => "symlink",
            FileType::Other => "special file",
        })
    }
}
