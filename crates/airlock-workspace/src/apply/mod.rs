//! Applies a sandbox's changes to the host project.
//!
//! Apply recomputes the diff, picks the changes to write (see [`ApplyOptions::paths`]) and
//! checks all of them for conflicts with the host before it writes anything. Deletions
//! come first and deepest first, so that a directory is empty when its turn comes. Then
//! come additions and modifications, parents before children. A conflict or a failure
//! leaves that one path as it is on the host, and the apply goes on.
//!
//! Every write goes through a descriptor of the host directory that contains the target,
//! opened one component at a time without following symlinks. A file or symlink is
//! created under a temporary name next to its target and renamed over it, so the target
//! never contains a partial file and a symlink at the target is replaced, never written
//! through. Permissions keep only the 0o777 bits. A replaced entry keeps its owner and
//! group, and a new one takes those of its parent directory, as if the project's owner had
//! created it. That needs root: an unprivileged apply leaves its entries owned by itself.
//!
//! Two applies must not run at once with the same journal: each starts by recovering the
//! journal, which removes the temporary files that the other lists.

mod host;
mod report;
mod select;
mod write;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::Stat;

pub use report::{ApplyReport, Conflict, ConflictReason, Failure, SkipReason, Skipped};

use self::host::Parent;
use crate::change::{Change, ChangeKind, FileType};
use crate::diff::diff;
use crate::error::Error;
use crate::fs;
use crate::journal::{recover, Journal};
use crate::tree::{same_contents, Located, Tree};

/// The selection of changes to apply, and the baselines to check them against.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Paths to apply, relative to the workspace. Empty applies every change that is not
    /// sensitive. A named path selects itself and everything below it, and a sensitive
    /// change is applied only when a named path is that change's path or a sensitive
    /// directory above it (such as `.github/workflows`).
    pub paths: Vec<PathBuf>,
    /// When the sandbox started. A host path whose ctime is later has changed on the host
    /// since, and the sandbox's version of it is a conflict.
    pub baseline: SystemTime,
    /// Per-path baselines from earlier applies ([`ApplyReport::baselines`]), which take the
    /// place of `baseline` for their path.
    pub applied: BTreeMap<PathBuf, SystemTime>,
    /// The journal of temporary files (see [`crate::recover`]). It must not be inside the
    /// workspace, and it is deleted when the apply finishes.
    pub journal: PathBuf,
}

/// Writes the changes of `upper` that `options` selects into `lower`, the host project, and
/// returns the outcome for each path. An `Err` means that the apply could not start or could
/// not delete its journal at the end. A path that fails is listed in the report instead.
pub fn apply(lower: &Path, upper: &Path, options: &ApplyOptions) -> Result<ApplyReport, Error> {
    // A journal left by a killed apply lists temporary files that would otherwise stay.
    recover(&options.journal)?;

    let named = select::normalize(&options.paths)?;
    let changes = diff(lower, upper)?;
    let selection = select::select(&changes, &named);

    let mut run = Run::start(lower, upper, options)?;
    run.report.skipped = selection.skipped;
    let pending = run.check_conflicts(&selection.chosen);

    let (deletions, writes): (Vec<&Change>, Vec<&Change>) = pending
        .into_iter()
        .partition(|change| change.kind == ChangeKind::Deleted);
    for change in deletions.into_iter().rev() {
        run.apply_change(change);
    }
    for change in writes {
        run.apply_change(change);
    }

    run.finish()
}

/// The outcome of one change.
enum Outcome {
    Applied,
    Conflict(ConflictReason),
    Skipped(SkipReason),
}

/// The state of one apply.
struct Run<'a> {
    host: Tree,
    upper: Tree,
    journal: Journal,
    options: &'a ApplyOptions,
    report: ApplyReport,
    /// Host directories whose entries this apply changed, with whether the host had left
    /// them unchanged since their baseline before that.
    touched: BTreeMap<PathBuf, bool>,
    /// Whether a temporary file could not be removed, so the journal must stay for
    /// [`recover`].
    leftovers: bool,
}

impl<'a> Run<'a> {
    fn start(lower: &Path, upper: &Path, options: &'a ApplyOptions) -> Result<Run<'a>, Error> {
        let host = Tree::open_lower(lower)?;
        let upper = Tree::open_upper(upper)?;
        let root = std::path::absolute(lower).map_err(|source| Error::OpenLower {
            path: lower.to_owned(),
            source,
        })?;
        let journal = Journal::create(&options.journal, &root)?;
        Ok(Run {
            host,
            upper,
            journal,
            options,
            report: ApplyReport::default(),
            touched: BTreeMap::new(),
            leftovers: false,
        })
    }

    /// Records the conflicts among `chosen` and returns the other changes. All checks run
    /// before anything is written, because apply's own writes change the ctime of the
    /// directories they write into.
    fn check_conflicts<'c>(&mut self, chosen: &[&'c Change]) -> Vec<&'c Change> {
        let mut pending = Vec::new();
        // Directories that will replace a host file or symlink. Until then, that file or
        // symlink blocks the paths below, which are no conflict. `chosen` is sorted, so a
        // directory comes before its entries.
        let mut new_dirs: Vec<&Path> = Vec::new();
        for change in chosen {
            match self.find_conflict(change) {
                Ok(None) => {
                    if change.file_type == FileType::Dir
                        && change
                            .lower_type
                            .is_some_and(|lower| lower != FileType::Dir)
                    {
                        new_dirs.push(&change.path);
                    }
                    pending.push(*change);
                }
                Ok(Some(reason))
                    if reason
                        .blocking_dir()
                        .is_some_and(|dir| new_dirs.contains(&dir)) =>
                {
                    pending.push(*change)
                }
                Ok(Some(reason)) => self.conflict(&change.path, reason),
                Err(error) => self.fail(&change.path, error),
            }
        }
        pending
    }

    fn find_conflict(&self, change: &Change) -> Result<Option<ConflictReason>, Error> {
        let parent = match host::parent(&self.host, &change.path)? {
            Parent::Dir(parent) => parent,
            Parent::Blocked(reason) => return Ok(Some(reason)),
            Parent::Missing(_) if change.kind == ChangeKind::Modified => {
                return Ok(Some(ConflictReason::MissingOnHost))
            }
            Parent::Missing(_) => return Ok(None),
        };
        let existing = self.host.lstat(parent.as_fd(), &change.path)?;
        match (change.kind, existing) {
            (ChangeKind::Added | ChangeKind::Deleted, None) => Ok(None),
            (ChangeKind::Modified, None) => Ok(Some(ConflictReason::MissingOnHost)),
            (ChangeKind::Added, Some(_)) => {
                let upper_parent = self.upper.open_parent(&change.path)?;
                let host = Located {
                    tree: &self.host,
                    dir: parent.as_fd(),
                    rel: &change.path,
                };
                let upper = Located {
                    tree: &self.upper,
                    dir: upper_parent.as_fd(),
                    rel: &change.path,
                };
                let same = same_contents(host, upper)?;
                Ok((!same).then_some(ConflictReason::ExistsOnHost))
            }
            (ChangeKind::Modified | ChangeKind::Deleted, Some(stat)) => {
                Ok(self.changed_on_host(&change.path, &stat))
            }
        }
    }

    /// Returns a conflict if the host entry at `rel` changed after its baseline.
    // NOTE: file systems stamp ctime from a clock that can lag the system clock by a few
    // milliseconds, so a host change in the first milliseconds after a baseline can be missed.
    fn changed_on_host(&self, rel: &Path, stat: &Stat) -> Option<ConflictReason> {
        let changed = fs::ctime(stat);
        (changed > self.baseline(rel)).then_some(ConflictReason::ChangedOnHost { changed })
    }

    fn baseline(&self, rel: &Path) -> SystemTime {
        let applied = self.options.applied.get(rel).copied();
        applied.unwrap_or(self.options.baseline)
    }

    fn apply_change(&mut self, change: &Change) {
        let outcome = match change.kind {
            ChangeKind::Deleted => self.delete(change),
            ChangeKind::Added | ChangeKind::Modified => self.write(change),
        };
        match outcome {
            Ok(Outcome::Applied) => self.applied(&change.path),
            Ok(Outcome::Conflict(reason)) => self.conflict(&change.path, reason),
            Ok(Outcome::Skipped(reason)) => self.report.skipped.push(Skipped {
                path: change.path.clone(),
                reason,
            }),
            Err(error) => self.fail(&change.path, error),
        }
    }

    fn applied(&mut self, rel: &Path) {
        self.report.applied.push(rel.to_owned());
        let now = SystemTime::now();
        self.report.baselines.insert(rel.to_owned(), now);
    }

    fn conflict(&mut self, rel: &Path, reason: ConflictReason) {
        let path = rel.to_owned();
        self.report.conflicts.push(Conflict { path, reason });
    }

    fn fail(&mut self, rel: &Path, error: Error) {
        let path = rel.to_owned();
        self.report.failed.push(Failure { path, error });
    }

    /// Notes that this apply is about to change the entries of the host directory `dir`,
    /// open as `fd`, so that its new ctime is recorded as a baseline unless the host had
    /// changed it first. Call it before the first change in `dir`.
    fn touch(&mut self, dir: &Path, fd: &impl AsFd) -> Result<(), Error> {
        if dir.as_os_str().is_empty() || self.touched.contains_key(dir) {
            return Ok(());
        }
        let stat = rustix::fs::fstat(fd).map_err(|errno| Error::Stat {
            path: self.host.full(dir),
            source: errno.into(),
        })?;
        // A directory this apply created is its own, whatever its ctime.
        let created_here = self.report.baselines.contains_key(dir);
        let unchanged = created_here || fs::ctime(&stat) <= self.baseline(dir);
        self.touched.insert(dir.to_owned(), unchanged);
        Ok(())
    }

    fn finish(mut self) -> Result<ApplyReport, Error> {
        let now = SystemTime::now();
        for (dir, unchanged) in std::mem::take(&mut self.touched) {
            if unchanged {
                self.report.baselines.insert(dir, now);
            }
        }
        if !self.leftovers {
            self.journal.remove()?;
        }
        Ok(self.report)
    }
}
