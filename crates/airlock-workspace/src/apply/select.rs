//! The selection of the changes an apply writes, from the paths the caller named.

use std::path::{Component, Path, PathBuf};

use super::report::{SkipReason, Skipped};
use crate::change::{Change, ChangeKind, FileType};
use crate::error::Error;
use crate::sensitive;

pub(super) struct Selection<'c> {
    pub(super) chosen: Vec<&'c Change>,
    pub(super) skipped: Vec<Skipped>,
}

/// Turns named paths into plain relative paths: `./src/` becomes `src`, and `.` becomes the
/// empty path, which names the whole workspace.
pub(super) fn normalize(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    paths.iter().map(|path| normalize_one(path)).collect()
}

fn normalize_one(path: &Path) -> Result<PathBuf, Error> {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => normal.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidSelection {
                    path: path.to_owned(),
                })
            }
        }
    }
    Ok(normal)
}

/// Picks the changes to apply. With no named paths, every change that is not sensitive;
/// otherwise the changes at or below a named path. A sensitive change is picked only when a
/// named path is the change's own path or a sensitive directory above it, so naming
/// `.github/workflows` applies the workflows, while naming `src` leaves `src/.envrc` out.
pub(super) fn select<'c>(changes: &'c [Change], named: &[PathBuf]) -> Selection<'c> {
    let mut selection = Selection {
        chosen: Vec::new(),
        skipped: Vec::new(),
    };
    for change in changes {
        let mut covering = named.iter().filter(|name| change.path.starts_with(name));
        let reason = if named.is_empty() {
            skip_reason(change, false)
        } else {
            let first = covering.next();
            if first.is_none() {
                continue;
            }
            let names_it = first
                .into_iter()
                .chain(covering)
                .any(|name| *name == change.path || sensitive::path_reason(name).is_some());
            skip_reason(change, names_it)
        };
        match reason {
            Some(reason) => selection.skipped.push(Skipped {
                path: change.path.clone(),
                reason,
            }),
            None => selection.chosen.push(change),
        }
    }
    // A change below a skipped one would apply half of a replacement: the files of a
    // directory deleted, while the symlink that replaced the directory is left out.
    let skipped_parents: Vec<PathBuf> = selection
        .skipped
        .iter()
        .map(|skipped| skipped.path.clone())
        .collect();
    selection.chosen.retain(|change| {
        let below = |parent: &PathBuf| change.path != *parent && change.path.starts_with(parent);
        if !skipped_parents.iter().any(below) {
            return true;
        }
        selection.skipped.push(Skipped {
            path: change.path.clone(),
            reason: SkipReason::ParentSkipped,
        });
        false
    });
    for name in named {
        if !changes.iter().any(|change| change.path.starts_with(name)) {
            selection.skipped.push(Skipped {
                path: name.clone(),
                reason: SkipReason::NoChange,
            });
        }
    }
    selection
}

/// Returns the reason `change` is left out, if it is. `named` is whether a named path
/// selects it explicitly enough to apply a sensitive change.
fn skip_reason(change: &Change, named: bool) -> Option<SkipReason> {
    if change.sensitive && !named {
        Some(SkipReason::Sensitive)
    } else if change.too_deep {
        Some(SkipReason::TooDeep)
    } else if change.kind != ChangeKind::Deleted && change.file_type == FileType::Other {
        Some(SkipReason::SpecialFile)
    } else {
        None
    }
}
