//! The copy-on-write workspace: what a sandbox changed in its overlay, and applying it.
//!
//! A sandbox works on the project (the lower directory) through an overlay whose upper
//! directory receives every write. This crate reads the upper directory from the host,
//! where its contents are under the sandbox's control and treated as hostile:
//!
//! - [`diff`] lists added, modified and deleted paths, each flagged when it is
//!   [`sensitive`] (it can make the host run code later).
//! - [`patch`] renders them as a unified diff for review.
//! - [`apply`] writes chosen changes into the project, atomically per file, without
//!   following symlinks and without overwriting what the host changed meanwhile.
//! - [`recover`] removes temporary files that a killed apply left behind.
//! - [`discard`] empties the upper and work directories.
//!
//! Nothing here mounts the overlay. The diff relies on the options Airlock mounts it with:
//! `userxattr`, no `redirect_dir` and no `metacopy`, so a copied-up file holds its whole
//! contents and a renamed directory is a copy.

mod apply;
mod change;
mod diff;
mod discard;
mod error;
mod fs;
mod journal;
mod patch;
pub mod sensitive;
mod tree;

pub use apply::{
    apply, ApplyOptions, ApplyReport, Conflict, ConflictReason, Failure, SkipReason, Skipped,
};
pub use change::{Change, ChangeKind, FileType, MAX_DEPTH};
pub use diff::diff;
pub use discard::discard;
pub use error::Error;
pub use journal::{recover, TEMP_PREFIX};
pub use patch::{patch, MAX_PATCH_FILE_SIZE};
