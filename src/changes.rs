//! The copy-on-write workspace of a sandbox from the front end's side: what changed, applying
//! it to the project on the host, and discarding it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_core::state::{self, nanos_since_epoch, Record, SandboxDir};
use airlock_core::{BackendError, WorkspaceMode};
use airlock_workspace::{ApplyOptions, ApplyReport, Change, ChangeKind, FileType};
use serde_json::{json, Value};

use crate::lifecycle::Engine;

#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("sandbox {id} is running, so its processes could change files between your review and this apply: stop it first (`airlock stop {id}`, then `airlock diff {id}`), or pass --running to apply the files as they are now")]
    Running { id: String },
    #[error("sandbox {id} has no copy-on-write workspace (its workspace mode is {mode}): its changes are already on the host, or it has none")]
    NotOverlay { id: String, mode: WorkspaceMode },
}

/// A sandbox's project directory and the upper layer of its overlay.
pub struct Layers {
    pub lower: PathBuf,
    pub upper: PathBuf,
}

fn layers_of(sandbox: &SandboxDir, record: &Record) -> Result<Layers, ChangesError> {
    let not_overlay = || ChangesError::NotOverlay {
        id: record.id.clone(),
        mode: record.spec.workspace_mode,
    };
    if record.spec.workspace_mode != WorkspaceMode::Overlay {
        return Err(not_overlay());
    }
    let lower = record.spec.workspace.clone().ok_or_else(not_overlay)?;
    let upper = sandbox.upper();
    state::reopen_upper(&upper);
    Ok(Layers { lower, upper })
}

/// Removes the temporary files that a killed apply left in the project, as its journal lists
/// them. Returns whether there was such a journal.
pub fn recover(sandbox: &SandboxDir) -> Result<bool, BackendError> {
    let journal = sandbox.apply_journal();
    if !journal.exists() {
        return Ok(false);
    }
    airlock_workspace::recover(&journal)?;
    Ok(true)
}

pub fn kind_name(kind: &ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Added => "added",
        ChangeKind::Modified => "modified",
        ChangeKind::Deleted => "deleted",
    }
}

pub fn type_name(file_type: &FileType) -> &'static str {
    match file_type {
        FileType::File => "file",
        FileType::Dir => "dir",
        FileType::Symlink => "symlink",
        FileType::Other => "other",
    }
}

pub fn change_json(change: &Change) -> Value {
    json!({
        "path": lossy(&change.path),
        "kind": kind_name(&change.kind),
        "type": type_name(&change.file_type),
        "sensitive": change.sensitive,
    })
}

/// Lists the workspace changes of a sandbox, and logs that they were looked at.
/// Also returns whether the sandbox runs.
pub fn diff(engine: &Engine, reference: &str) -> Result<(Layers, Vec<Change>, bool), BackendError> {
    let (sandbox, record) = engine.state().resolve(reference)?;
    let layers = layers_of(&sandbox, &record)?;
    engine.sync_changes(&sandbox, &record)?;
    let changes = airlock_workspace::diff(&layers.lower, &layers.upper)?;
    let paths: Vec<String> = changes.iter().map(|change| lossy(&change.path)).collect();
    engine.log_event(&record.id, "diff", json!({ "paths": paths }))?;
    Ok((layers, changes, record.is_running()))
}

/// Converts a path to JSON text: names that are not UTF-8 get replacement characters.
fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn to_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Applies the workspace changes of a sandbox to the host, all non-sensitive ones or those
/// below `paths`, and records the new baselines of the applied paths.
pub fn apply(
    engine: &Engine,
    reference: &str,
    paths: Vec<PathBuf>,
    running: bool,
) -> Result<(String, ApplyReport), BackendError> {
    let (sandbox, _) = engine.state().resolve(reference)?;
    let _lock = sandbox.lock()?;
    let mut record = sandbox.read_record()?;
    let layers = layers_of(&sandbox, &record)?;
    if record.is_running() && !running {
        return Err(ChangesError::Running { id: record.id }.into());
    }
    engine.sync_changes(&sandbox, &record)?;
    let applied: BTreeMap<PathBuf, SystemTime> = record
        .applied
        .iter()
        .map(|(path, nanos)| (path.clone(), to_time(*nanos)))
        .collect();
    let options = ApplyOptions {
        paths,
        baseline: to_time(record.created),
        applied,
        journal: sandbox.apply_journal(),
    };
    let report = airlock_workspace::apply(&layers.lower, &layers.upper, &options)?;
    // A path that is not UTF-8 cannot be stored in the record. Without its baseline, a
    // later apply reports it as a conflict, which errs on the safe side.
    for (path, time) in &report.baselines {
        if path.to_str().is_some() {
            record
                .applied
                .insert(path.clone(), nanos_since_epoch(*time));
        }
    }
    sandbox.write_record(&record)?;
    engine.log_event(&record.id, "apply", report_json(&report))?;
    Ok((record.id, report))
}

pub fn report_json(report: &ApplyReport) -> Value {
    json!({
        "applied": report.applied.iter().map(|path| lossy(path)).collect::<Vec<_>>(),
        "conflicts": report.conflicts.iter().map(|conflict| json!({
            "path": lossy(&conflict.path), "reason": conflict.reason.to_string(),
        })).collect::<Vec<_>>(),
        "skipped": report.skipped.iter().map(|skipped| json!({
            "path": lossy(&skipped.path), "reason": skipped.reason.to_string(),
        })).collect::<Vec<_>>(),
        "failed": report.failed.iter().map(|failure| json!({
            "path": lossy(&failure.path),
            "error": airlock_namespace::error_chain(&failure.error),
        })).collect::<Vec<_>>(),
    })
}

/// Drops every workspace change of a sandbox. The overlay must not be mounted while its
/// upper layer changes, so a running sandbox is stopped first and started again after.
/// Returns the id and whether the sandbox was restarted.
pub fn discard(engine: &Engine, reference: &str) -> Result<(String, bool), BackendError> {
    let (sandbox, record) = engine.state().resolve(reference)?;
    layers_of(&sandbox, &record)?;
    let restart = record.is_running();
    if restart {
        engine.stop(&record.id)?;
    }
    {
        let _lock = sandbox.lock()?;
        let mut record = sandbox.read_record()?;
        airlock_workspace::discard(&sandbox.upper(), &sandbox.work())?;
        record.applied.clear();
        sandbox.write_record(&record)?;
        engine.log_event(&record.id, "discard", json!({}))?;
    }
    if restart {
        engine.start(&record.id)?;
    }
    Ok((record.id, restart))
}
