//! Failures of reading, patching, applying and discarding a workspace, one variant per step.
//! Each variant names the path it failed on and keeps the system error as its source.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the project directory {path:?}, which was moved, removed or replaced by a symlink since the sandbox was created (put the project back at that path, or remove the sandbox with `airlock rm`)")]
    ProjectMoved {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the lower directory {path:?}")]
    OpenLower {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the upper directory {path:?}")]
    OpenUpper {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the directory {path:?}")]
    OpenDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the directory {path:?}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the metadata of {path:?}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the overlay attributes of {path:?}")]
    ReadXattr {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the file {path:?}")]
    OpenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the file {path:?}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the symlink {path:?}")]
    ReadLink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the path {path:?} to apply is not relative to the workspace: name paths such as src/main.rs")]
    InvalidSelection { path: PathBuf },
    #[error("cannot create a temporary file in {dir:?}")]
    CreateTemp {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy {from:?} to {to:?}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the owner of {path:?}")]
    SetOwner {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the permissions of {path:?}")]
    SetMode {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot flush {path:?} to disk")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rename {from:?} to {to:?}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the symlink {path:?}")]
    CreateSymlink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the directory {path:?}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path:?}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move the deeply nested directory {path:?} up to {to:?} to remove it")]
    MoveUp {
        path: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the apply journal {path:?}")]
    CreateJournal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the apply journal {path:?}")]
    WriteJournal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the apply journal {path:?}")]
    ReadJournal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the apply journal {path:?}")]
    RemoveJournal {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the patch")]
    WritePatch(#[source] io::Error),
}
