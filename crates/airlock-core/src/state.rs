//! The state directory: where persistent sandboxes live between commands.
//!
//! ```text
//! STATE/                       /var/lib/airlock for root, $XDG_STATE_HOME/airlock otherwise
//!   sandboxes/ID/record.json   the sandbox's record: spec, phase, supervisor, backend runtime
//!   sandboxes/ID/lock          taken by every command that changes the sandbox
//!   sandboxes/ID/layers/       the workspace overlay's upper layer and work directory, owned
//!                              by the host user that root inside the sandbox maps to
//!   sandboxes/ID/apply.journal temporary files of an apply in progress
//!   audit/ID.jsonl             the audit log, kept after the sandbox is removed
//!   spares/NAME                emptied directories of finished runs, reused by the next
//!                              run, whose directory operations cost about a millisecond
//! ```
//!
//! A record changes only under the sandbox's lock and is replaced atomically (written to a
//! temporary file, synced, renamed), so a killed command leaves either the old record or
//! the new one. Whether a sandbox runs is never stored: it runs while the supervisor process
//! named in its record is alive, which [`ProcessRef`] checks by pid and start time.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::spec::Spec;

/// Environment variable that overrides the state directory.
pub const STATE_DIR_VARIABLE: &str = "AIRLOCK_STATE_DIR";
/// State directory of root.
pub const ROOT_STATE_DIR: &str = "/var/lib/airlock";
/// Shortest id prefix accepted in place of a whole id.
pub const MIN_ID_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot find a state directory: set HOME or XDG_STATE_HOME, or pass --state-dir")]
    NoHome,
    #[error("cannot create the state directory {path:?} (choose a writable one with --state-dir, AIRLOCK_STATE_DIR or XDG_STATE_HOME)")]
    CreateRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the state directory {path:?}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state directory {path:?} belongs to uid {owner} with mode {mode:o}, but it must belong to this user and be writable by no one else: fix its owner and mode, or pass another --state-dir")]
    NotPrivate {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("the state directory {path:?} lies in {parent:?}, which belongs to uid {owner} with mode {mode:o}, so another user could replace it: pass a --state-dir whose parents belong to root or to you and are writable by no one else")]
    UnsafeParent {
        path: PathBuf,
        parent: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("cannot read the state directory {path:?}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the sandbox record {path:?}")]
    ReadRecord {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the sandbox record {path:?} is damaged: {reason}; remove the sandbox with `airlock gc`"
    )]
    DamagedRecord { path: PathBuf, reason: String },
    #[error("cannot write the sandbox record {path:?}")]
    WriteRecord {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock the sandbox {id}")]
    Lock {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("no sandbox {reference:?}: `airlock ls` lists the sandboxes by id and name")]
    NotFound { reference: String },
    #[error("{reference:?} matches several sandboxes ({matches}): give more of the id")]
    Ambiguous { reference: String, matches: String },
    #[error("a sandbox named {name:?} exists already ({id}): choose another --name, or remove it with `airlock rm {name}`")]
    NameTaken { name: String, id: String },
    #[error("cannot remove the state of sandbox {id} at {path:?}")]
    Remove {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The stage of a sandbox's life. Each command moves it forward under the sandbox's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The record exists but the sandbox was never ready; a sandbox left in this phase by a
    /// killed command is removed by `airlock gc`.
    Creating,
    /// The sandbox was ready once; it runs while its supervisor lives, and can be started
    /// again when it does not.
    Ready,
    /// Removal began; `airlock gc` finishes it.
    Removing,
}

/// A process named by its pid and its start time, so that a reused pid is never taken for
/// the process that had it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    /// Start time in clock ticks after boot, field 22 of /proc/PID/stat.
    pub start_time: u64,
}

impl ProcessRef {
    /// Returns the process with `pid`, if it exists now.
    pub fn of(pid: i32) -> Option<ProcessRef> {
        let start_time = start_time(pid)?;
        Some(ProcessRef { pid, start_time })
    }

    /// Returns whether the process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = crate::procfs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses, so the fields start after the
    // last closing parenthesis. The first of them is field 3, the state.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state == "Z"))
}

/// Everything stored about one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: Option<String>,
    pub backend: String,
    /// When the sandbox was created, in nanoseconds since the Unix epoch.
    pub created: u64,
    pub phase: Phase,
    pub spec: Spec,
    /// Made by `airlock run`: removed when its command ends unless the workspace changed.
    pub ephemeral: bool,
    /// When the sandbox removes itself, in nanoseconds since the Unix epoch.
    pub expires: Option<u64>,
    /// The process that keeps the sandbox alive while it runs: the supervisor of a persistent
    /// sandbox, or the `airlock run` command of an ephemeral one.
    pub supervisor: Option<ProcessRef>,
    /// Backend-specific facts of the running sandbox, such as its init and cgroup.
    pub runtime: Option<serde_json::Value>,
    /// Workspace paths applied to the host, with the time of the apply in nanoseconds since
    /// the Unix epoch: a later host change of such a path is measured from then.
    #[serde(default)]
    pub applied: BTreeMap<PathBuf, u64>,
    /// Backend-specific facts fixed at the sandbox's first start, from the `pinned` field of
    /// its runtime, which outlive a stop so that every later start reuses them.
    #[serde(default)]
    pub pinned: Option<serde_json::Value>,
}

impl Record {
    pub fn new(id: String, backend: &str, spec: Spec) -> Record {
        let created = nanos_since_epoch(SystemTime::now());
        let expires = spec
            .ttl
            .map(|ttl| created.saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)));
        Record {
            id,
            name: spec.name.clone(),
            backend: backend.to_owned(),
            created,
            phase: Phase::Creating,
            spec,
            ephemeral: false,
            expires,
            supervisor: None,
            runtime: None,
            applied: BTreeMap::new(),
            pinned: None,
        }
    }

    /// Returns whether the sandbox runs now.
    pub fn is_running(&self) -> bool {
        self.supervisor.as_ref().is_some_and(ProcessRef::is_alive)
    }

    /// Returns the short status that `airlock ls` shows.
    pub fn status(&self) -> &'static str {
        match (self.phase, self.is_running()) {
            (Phase::Creating, _) => "creating",
            (Phase::Removing, _) => "removing",
            (Phase::Ready, true) => "running",
            (Phase::Ready, false) => "stopped",
        }
    }

    /// When the sandbox was created.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.created)
    }
}

pub fn nanos_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// Every sandbox directory, with its record or the reason it cannot be read.
pub type Listing = Vec<(SandboxDir, Result<Record, StateError>)>;

/// The state directory of one caller.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Finds the state directory: `explicit`, else $AIRLOCK_STATE_DIR, else /var/lib/airlock
    /// for root and $XDG_STATE_HOME/airlock (by default ~/.local/state/airlock) for others.
    /// Creates it, readable by its owner only, if it is missing.
    pub fn locate(explicit: Option<&Path>, is_root: bool) -> Result<StateDir, StateError> {
        let root = match explicit {
            Some(path) => path.to_owned(),
            None => default_root(is_root)?,
        };
        let root =
            crate::spec::lexically_absolute(&root).map_err(|source| StateError::CreateRoot {
                path: root.clone(),
                source,
            })?;
        create_private_dir(&root).map_err(|error| match error {
            StateError::CreateDir { path, source } => StateError::CreateRoot { path, source },
            other => other,
        })?;
        // From here on the directory is named by its real path, checked from `/` down, so a
        // symlink or a parent that someone else controls cannot redirect it later.
        let root = root.canonicalize().map_err(|source| StateError::ReadDir {
            path: root.clone(),
            source,
        })?;
        check_private(&root)?;
        check_ancestors(&root)?;
        let state = StateDir { root };
        for dir in [state.sandboxes(), state.audit_dir(), state.spares()] {
            create_private_dir(&dir)?;
        }
        Ok(state)
    }

    /// Returns whether `path`, absolute and free of symlinks, is this state directory, is
    /// inside it, or contains it: a sandbox whose workspace overlaps the state directory could read
    /// and forge the records that Airlock acts on.
    pub fn overlaps(&self, path: &Path) -> bool {
        let root = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        root.starts_with(path) || path.starts_with(&root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }

    fn spares(&self) -> PathBuf {
        self.root.join("spares")
    }

    /// Returns the path of sandbox `id`'s audit log, which outlives the sandbox.
    pub fn audit_path(&self, id: &str) -> PathBuf {
        self.audit_dir().join(format!("{id}.jsonl"))
    }

    pub fn sandbox(&self, id: &str) -> SandboxDir {
        SandboxDir {
            id: id.to_owned(),
            path: self.sandboxes().join(id),
        }
    }

    /// Lists every sandbox directory, with its record or the reason it cannot be read.
    pub fn list(&self) -> Result<Listing, StateError> {
        let dir = self.sandboxes();
        let entries = fs::read_dir(&dir).map_err(|source| StateError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        let mut sandboxes = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if id.starts_with('.') {
                continue;
            }
            let sandbox = self.sandbox(&id);
            let record = sandbox.read_record();
            sandboxes.push((sandbox, record));
        }
        sandboxes.sort_by_key(|(_, record)| record.as_ref().map_or(0, |record| record.created));
        Ok(sandboxes)
    }

    /// Finds a sandbox by its whole id, a unique prefix of it, or its name.
    pub fn resolve(&self, reference: &str) -> Result<(SandboxDir, Record), StateError> {
        let not_found = || StateError::NotFound {
            reference: reference.to_owned(),
        };
        if reference.is_empty() || reference.contains('/') || reference.starts_with('.') {
            return Err(not_found());
        }
        let exact = self.sandbox(reference);
        if exact.path.is_dir() {
            let record = exact.read_record()?;
            return Ok((exact, record));
        }
        let mut matches: Vec<(SandboxDir, Record)> = Vec::new();
        for (sandbox, record) in self.list()? {
            let Ok(record) = record else { continue };
            let by_name = record.name.as_deref() == Some(reference);
            let by_prefix = reference.len() >= MIN_ID_PREFIX && sandbox.id.starts_with(reference);
            if by_name {
                return Ok((sandbox, record));
            }
            if by_prefix {
                matches.push((sandbox, record));
            }
        }
        match matches.len() {
            0 => Err(not_found()),
            1 => Ok(matches.remove(0)),
            _ => Err(StateError::Ambiguous {
                reference: reference.to_owned(),
                matches: matches
                    .iter()
                    .map(|(sandbox, _)| sandbox.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Creates the directory of a new sandbox and writes its first record. Fails if another
    /// sandbox has the same name.
    pub fn allocate(&self, record: &Record) -> Result<(SandboxDir, SandboxLock), StateError> {
        self.allocate_with(record, true, false)
    }

    /// Like [`StateDir::allocate`], with a record that is not synced to disk, for the
    /// sandbox of one `airlock run`. Reuses a spare directory when there is one.
    pub fn allocate_volatile(
        &self,
        record: &Record,
    ) -> Result<(SandboxDir, SandboxLock), StateError> {
        self.allocate_with(record, false, true)
    }

    /// Takes a spare directory for the volatile `record`: locks it where it lies, writes the
    /// record over the old one, and moves it to `sandbox`. Spares are out of `gc`'s sight,
    /// so this needs no hidden name, and the record needs no atomic replacement: a torn one
    /// is a damaged record, which `gc` removes. Returns `None` when there is no spare.
    fn take_spare(
        &self,
        record: &Record,
        sandbox: &SandboxDir,
    ) -> Result<Option<SandboxLock>, StateError> {
        let Ok(entries) = fs::read_dir(self.spares()) else {
            return Ok(None);
        };
        for entry in entries.flatten() {
            let spare = SandboxDir {
                id: entry.file_name().to_string_lossy().into_owned(),
                path: entry.path(),
            };
            // Another run may be taking the same spare.
            let Ok(Some(lock)) = spare.try_lock() else {
                continue;
            };
            if spare.overwrite_record(record).is_err() {
                continue;
            }
            if fs::rename(&spare.path, &sandbox.path).is_ok() {
                return Ok(Some(lock));
            }
        }
        Ok(None)
    }

    /// Keeps the directory of a finished run, whose overlay upper layer is empty, for the
    /// next run, or removes it when enough spares are kept already. The spare's upper
    /// directory takes `project`, the attributes of the run's project, as described at
    /// [`reset_upper`]. Without them the directory is removed.
    pub fn recycle(
        &self,
        sandbox: &SandboxDir,
        project: Option<RootAttributes>,
    ) -> Result<(), StateError> {
        const MAX_SPARES: usize = 4;
        let spares = fs::read_dir(self.spares()).map_or(MAX_SPARES, |entries| entries.count());
        let upper_empty = has_entries(&sandbox.upper()) == Some(false);
        if spares >= MAX_SPARES || !upper_empty {
            return sandbox.remove();
        }
        let Some(project) = project else {
            return sandbox.remove();
        };
        if reset_upper(&sandbox.upper(), project).is_err() {
            return sandbox.remove();
        }
        // The kernel's work directory belongs to the identity of the last run, which may
        // differ next time; the next mount makes it again.
        make_owner_accessible(&sandbox.work());
        let _ = fs::remove_dir_all(sandbox.work().join("work"));
        match fs::rename(&sandbox.path, self.spares().join(&sandbox.id)) {
            Ok(()) => Ok(()),
            Err(_) => sandbox.remove(),
        }
    }

    fn allocate_with(
        &self,
        record: &Record,
        durable: bool,
        spare: bool,
    ) -> Result<(SandboxDir, SandboxLock), StateError> {
        if let Some(name) = &record.name {
            if let Some(existing) = self.named(name)? {
                return Err(StateError::NameTaken {
                    name: name.clone(),
                    id: existing,
                });
            }
        }
        let sandbox = self.sandbox(&record.id);
        if spare {
            if let Some(lock) = self.take_spare(record, &sandbox)? {
                return Ok((sandbox, lock));
            }
        }
        // The directory is prepared under a hidden name, which listings skip, and appears
        // under its id with its record and its lock held, so `gc` never finds it half made.
        let hidden = self.sandbox(&format!(".new-{}", record.id));
        create_private_dir(&hidden.path)?;
        let lock = hidden.lock()?;
        hidden.replace_record(record, durable)?;
        fs::rename(&hidden.path, &sandbox.path).map_err(|source| StateError::CreateDir {
            path: sandbox.path.clone(),
            source,
        })?;
        Ok((sandbox, lock))
    }

    /// Returns the id of the sandbox named `name`, if there is one.
    fn named(&self, name: &str) -> Result<Option<String>, StateError> {
        Ok(self.list()?.into_iter().find_map(|(sandbox, record)| {
            let record = record.ok()?;
            (record.name.as_deref() == Some(name)).then_some(sandbox.id)
        }))
    }

    /// Removes the hidden directories of allocations whose command died, which hold no
    /// lock any more.
    pub fn remove_abandoned_allocations(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(entries) = fs::read_dir(self.sandboxes()) else {
            return removed;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(".new-") {
                continue;
            }
            // An allocation killed between its mkdir and its lock leaves no lock file, so
            // the lock is created here. An allocation that is still running then fails to
            // take it, or finds its directory gone, and reports an error.
            let hidden = self.sandbox(&name);
            let Ok(file) = hidden.lock_file() else {
                continue;
            };
            if file.try_lock().is_ok() && hidden.remove().is_ok() {
                removed.push(name);
            }
        }
        removed
    }
}

fn default_root(is_root: bool) -> Result<PathBuf, StateError> {
    if let Some(dir) = std::env::var_os(STATE_DIR_VARIABLE).filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if is_root {
        return Ok(PathBuf::from(ROOT_STATE_DIR));
    }
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .filter(|dir| Path::new(dir).is_absolute())
        .map(PathBuf::from);
    let base = match xdg {
        Some(dir) => dir,
        None => std::env::var_os("HOME")
            .filter(|home| Path::new(home).is_absolute())
            .map(|home| Path::new(&home).join(".local/state"))
            .ok_or(StateError::NoHome)?,
    };
    Ok(base.join("airlock"))
}

/// Checks that the state directory belongs to the caller and that no one else may write to
/// it, because Airlock acts on the records in it.
fn check_private(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path).map_err(|source| StateError::ReadDir {
        path: path.to_owned(),
        source,
    })?;
    let owner = rustix::process::geteuid().as_raw();
    if metadata.uid() != owner || metadata.mode() & 0o022 != 0 {
        return Err(StateError::NotPrivate {
            path: path.to_owned(),
            owner: metadata.uid(),
            mode: metadata.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Checks that no one but root and the caller can replace the state directory through one of
/// its parents. Each parent must belong to one of them and be writable by no one else, unless
/// it is sticky (as /tmp is), because there others cannot rename entries they do not own.
fn check_ancestors(root: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let caller = rustix::process::geteuid().as_raw();
    // Inside a user namespace, directories of users it does not map (host root among them)
    // show the overflow uid.
    let unmapped = in_user_namespace().then(|| {
        fs::read_to_string("/proc/sys/kernel/overflowuid")
            .ok()
            .and_then(|uid| uid.trim().parse::<u32>().ok())
            .unwrap_or(65534)
    });
    for parent in root.ancestors().skip(1) {
        let metadata = fs::metadata(parent).map_err(|source| StateError::ReadDir {
            path: parent.to_owned(),
            source,
        })?;
        let trusted_owner =
            metadata.uid() == 0 || metadata.uid() == caller || Some(metadata.uid()) == unmapped;
        let shared = metadata.mode() & 0o022 != 0 && metadata.mode() & 0o1000 == 0;
        if !trusted_owner || shared {
            return Err(StateError::UnsafeParent {
                path: root.to_owned(),
                parent: parent.to_owned(),
                owner: metadata.uid(),
                mode: metadata.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// Returns whether this process runs in a user namespace other than the host's.
fn in_user_namespace() -> bool {
    crate::procfs::read_to_string("/proc/self/uid_map").is_ok_and(|map| {
        let fields: Vec<&str> = map.split_whitespace().collect();
        fields != ["0", "0", "4294967295"]
    })
}

fn create_private_dir(path: &Path) -> Result<(), StateError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(source) => Err(StateError::CreateDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The directory of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    pub id: String,
    pub path: PathBuf,
}

/// The sandbox's lock, released when dropped.
#[derive(Debug)]
pub struct SandboxLock {
    _file: File,
}

impl SandboxDir {
    pub fn record_path(&self) -> PathBuf {
        self.path.join("record.json")
    }

    /// Returns the directory that contains the overlay's upper layer and work directory.
    pub fn layers(&self) -> PathBuf {
        self.path.join("layers")
    }

    /// Returns the upper layer of the workspace overlay.
    pub fn upper(&self) -> PathBuf {
        self.layers().join("upper")
    }

    /// Returns the work directory that overlayfs needs next to the upper layer.
    pub fn work(&self) -> PathBuf {
        self.layers().join("work")
    }

    /// Returns the journal of an apply's temporary files.
    pub fn apply_journal(&self) -> PathBuf {
        self.path.join("apply.journal")
    }

    /// Takes the sandbox's lock, waiting for another command that holds it.
    pub fn lock(&self) -> Result<SandboxLock, StateError> {
        let file = self.lock_file()?;
        file.lock().map_err(|source| StateError::Lock {
            id: self.id.clone(),
            source,
        })?;
        Ok(SandboxLock { _file: file })
    }

    /// Takes the sandbox's lock if no other command holds it. A directory without a lock
    /// file is being created or removed by another command, and is left alone.
    pub fn try_lock(&self) -> Result<Option<SandboxLock>, StateError> {
        let file = match OpenOptions::new().write(true).open(self.path.join("lock")) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Lock {
                    id: self.id.clone(),
                    source,
                })
            }
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(SandboxLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(source)) => Err(StateError::Lock {
                id: self.id.clone(),
                source,
            }),
        }
    }

    fn lock_file(&self) -> Result<File, StateError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.path.join("lock"))
            .map_err(|source| StateError::Lock {
                id: self.id.clone(),
                source,
            })
    }

    pub fn read_record(&self) -> Result<Record, StateError> {
        let path = self.record_path();
        let text = fs::read(&path).map_err(|source| StateError::ReadRecord {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|error| StateError::DamagedRecord {
            path,
            reason: error.to_string(),
        })
    }

    /// Replaces the record atomically and durably.
    pub fn write_record(&self, record: &Record) -> Result<(), StateError> {
        self.replace_record(record, true)
    }

    /// Writes the record over the old one in place, for a spare that only its locker sees.
    fn overwrite_record(&self, record: &Record) -> Result<(), StateError> {
        let path = self.record_path();
        let mut text = serde_json::to_vec(record).map_err(io::Error::other);
        if let Ok(text) = &mut text {
            text.push(b'\n');
        }
        // Written over the old record without truncating it first: on ext4 a truncation
        // is a journaled change that costs about 0.3 ms on an idle disk, while records of
        // successive runs mostly have the same length.
        text.and_then(|text| {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&text)?;
            if file.metadata()?.len() != text.len() as u64 {
                file.set_len(text.len() as u64)?;
            }
            Ok(())
        })
        .map_err(|source| StateError::WriteRecord { path, source })
    }

    fn replace_record(&self, record: &Record, durable: bool) -> Result<(), StateError> {
        let path = self.record_path();
        let failed = |source| StateError::WriteRecord {
            path: path.clone(),
            source,
        };
        let temporary = self.path.join(".record.json.new");
        let mut text = serde_json::to_vec_pretty(record)
            .map_err(io::Error::other)
            .map_err(failed)?;
        text.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(failed)?;
        file.write_all(&text).map_err(failed)?;
        if durable {
            file.sync_data().map_err(failed)?;
        }
        fs::rename(&temporary, &path).map_err(failed)?;
        if !durable {
            return Ok(());
        }
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(failed)
    }

    /// Removes the sandbox's directory and everything in it, without following symlinks.
    pub fn remove(&self) -> Result<(), StateError> {
        // overlayfs leaves directories without permissions in its work directory, and a
        // sandbox may leave such directories in its upper layer; their owner can remove them
        // only after granting itself access.
        make_owner_accessible(&self.work());
        let mut result = self.remove_contents();
        if result
            .as_ref()
            .is_err_and(|error| error.kind() == io::ErrorKind::PermissionDenied)
        {
            make_owner_accessible(&self.path);
            result = self.remove_contents();
        }
        // The lock file goes last, so a removal that is killed halfway leaves a directory
        // that `gc` can still lock and finish.
        let result = result
            .and_then(|()| fs::remove_file(self.path.join("lock")).or_else(not_found_is_ok))
            .and_then(|()| fs::remove_dir(&self.path));
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Remove {
                id: self.id.clone(),
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Removes everything in the directory except its lock file.
    fn remove_contents(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_name() == "lock" {
                continue;
            }
            let removed = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())
            } else {
                fs::remove_file(entry.path())
            };
            removed.or_else(not_found_is_ok)?;
        }
        Ok(())
    }
}

fn not_found_is_ok(error: io::Error) -> io::Result<()> {
    if error.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(error)
    }
}

/// Gives the owner read, write and search permission on `dir` and the directories below it,
/// without following symlinks.
pub fn make_owner_accessible(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = fs::symlink_metadata(dir) else {
        return;
    };
    if !metadata.is_dir() {
        return;
    }
    if metadata.permissions().mode() & 0o700 != 0o700 {
        let mode = metadata.permissions().mode() | 0o700;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_owner_accessible(&entry.path());
        }
    }
}

/// Returns whether the overlay's upper directory `upper` has entries, as [`has_entries`]
/// does, after giving its owner back read, write and search permission where it cannot be
/// read. It is /workspace in the sandbox, and the command may have taken them, which would
/// hide every change below it.
pub fn reopen_upper(upper: &Path) -> Option<bool> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(found) = has_entries(upper) {
        return Some(found);
    }
    let metadata = fs::symlink_metadata(upper).ok()?;
    let mode = metadata.permissions().mode() | 0o700;
    fs::set_permissions(upper, fs::Permissions::from_mode(mode)).ok()?;
    has_entries(upper)
}

/// The attributes of a project directory that /workspace shows through the root of the
/// overlay's upper directory: permission bits (with the setuid, setgid and sticky bits),
/// and the access and modification times as seconds and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootAttributes {
    pub mode: u32,
    pub times: [(i64, i64); 2],
}

impl RootAttributes {
    pub fn of(metadata: &fs::Metadata) -> RootAttributes {
        use std::os::unix::fs::MetadataExt;
        RootAttributes {
            mode: metadata.mode() & 0o7777,
            times: [
                (metadata.atime(), metadata.atime_nsec()),
                (metadata.mtime(), metadata.mtime_nsec()),
            ],
        }
    }

    /// Gives the directory `dir` these attributes. `current`, the attributes it has, spares
    /// the calls for those that already match.
    pub fn apply_to(&self, dir: &Path, current: Option<RootAttributes>) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if current.map(|current| current.mode) != Some(self.mode) {
            fs::set_permissions(dir, fs::Permissions::from_mode(self.mode))?;
        }
        if current.map(|current| current.times) != Some(self.times) {
            let time = |(seconds, nanoseconds): (i64, i64)| rustix::fs::Timespec {
                tv_sec: seconds,
                tv_nsec: nanoseconds as _,
            };
            let times = rustix::fs::Timestamps {
                last_access: time(self.times[0]),
                last_modification: time(self.times[1]),
            };
            let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
            rustix::fs::utimensat(rustix::fs::CWD, dir, &times, flags)?;
        }
        Ok(())
    }
}

/// Resets the empty upper directory `upper` for the next run. The upper layer's root is
/// /workspace in the sandbox, so its mode, times and extended attributes are what the last
/// command left on /workspace, and the next run must not see them. The directory loses the
/// extended attributes that a sandbox can set on it: `user.` ones and POSIX ACLs, whose
/// default ACL would widen the modes of new files. It takes `project`'s attributes, so the
/// next run of that project finds them set. Deleting and making the directory again would
/// do the same, at the cost of a freed and an allocated inode.
fn reset_upper(upper: &Path, project: RootAttributes) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = [0u8; 1024];
    let listed = rustix::fs::llistxattr(upper, &mut names[..])?;
    for name in names[..listed].split(|byte| *byte == 0) {
        if name.starts_with(b"user.") || name.starts_with(b"system.posix_acl_") {
            let name = std::ffi::OsStr::from_bytes(name);
            rustix::fs::lremovexattr(upper, name)?;
        }
    }
    project.apply_to(upper, None)
}

/// Returns whether the directory `dir` has entries besides `.` and `..`, or `None` when it
/// cannot be read. It reads with getdents64 into a buffer on the stack and allocates
/// nothing, because the upper layer of every finished run is checked this way.
pub fn has_entries(dir: &Path) -> Option<bool> {
    use rustix::fs::{Mode, OFlags, RawDir};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::empty()).ok()?;
    let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
    let mut entries = RawDir::new(&fd, &mut buffer);
    while let Some(entry) = entries.next() {
        let entry = entry.ok()?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary_state() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::locate(Some(dir.path()), false).unwrap();
        (dir, state)
    }

    fn record(id: &str, name: Option<&str>) -> Record {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.name = name.map(str::to_owned);
        Record::new(id.to_owned(), "namespace", spec)
    }

    #[test]
    fn has_entries_sees_files_dirs_and_dotfiles() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(has_entries(dir.path()), Some(false));
        fs::write(dir.path().join(".hidden"), "").unwrap();
        assert_eq!(has_entries(dir.path()), Some(true));
        fs::remove_file(dir.path().join(".hidden")).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(has_entries(dir.path()), Some(true));
        assert_eq!(has_entries(&dir.path().join("missing")), None);
        assert_eq!(
            has_entries(&dir.path().join("sub").join("..").join("sub")),
            Some(false)
        );
    }

    #[test]
    fn record_round_trips_through_the_state_directory() {
        let (_dir, state) = temporary_state();
        let (sandbox, _lock) = state.allocate(&record("abcdef0123", Some("web"))).unwrap();
        let read = sandbox.read_record().unwrap();
        assert_eq!(read.id, "abcdef0123");
        assert_eq!(read.name.as_deref(), Some("web"));
        assert_eq!(read.phase, Phase::Creating);
        assert_eq!(read.status(), "creating");
    }

    #[test]
    fn resolve_finds_by_id_prefix_and_name() {
        let (_dir, state) = temporary_state();
        state.allocate(&record("abcdef0123", Some("web"))).unwrap();
        state.allocate(&record("abc9990000", None)).unwrap();
        assert_eq!(state.resolve("abcdef0123").unwrap().0.id, "abcdef0123");
        assert_eq!(state.resolve("abcd").unwrap().0.id, "abcdef0123");
        assert_eq!(state.resolve("web").unwrap().0.id, "abcdef0123");
        assert!(matches!(
            state.resolve("abc"),
            Err(StateError::NotFound { .. })
        ));
        assert!(matches!(
            state.resolve("../x"),
            Err(StateError::NotFound { .. })
        ));
        state.allocate(&record("abcd000000", None)).unwrap();
        assert!(matches!(
            state.resolve("abcd"),
            Err(StateError::Ambiguous { .. })
        ));
    }

    #[test]
    fn allocate_refuses_a_taken_name() {
        let (_dir, state) = temporary_state();
        state.allocate(&record("abcdef0123", Some("web"))).unwrap();
        let error = state
            .allocate(&record("1234567890", Some("web")))
            .unwrap_err();
        assert!(matches!(error, StateError::NameTaken { .. }));
        assert!(error.to_string().contains("web"));
    }

    #[test]
    fn name_matching_an_id_prefix_is_not_taken() {
        let (_dir, state) = temporary_state();
        state.allocate(&record("abcdef0123", None)).unwrap();
        assert!(state.allocate(&record("1234567890", Some("abcd"))).is_ok());
    }

    #[test]
    fn state_directory_writable_by_others_is_rejected() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = StateDir::locate(Some(dir.path()), false).unwrap_err();
        assert!(matches!(error, StateError::NotPrivate { .. }), "{error}");
        assert!(error.to_string().contains("777"), "{error}");
    }

    #[test]
    fn state_directory_under_a_shared_parent_is_rejected() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = StateDir::locate(Some(&dir.path().join("state")), false).unwrap_err();
        assert!(matches!(error, StateError::UnsafeParent { .. }), "{error}");
        // A sticky parent, as /tmp is, keeps others from replacing the entry.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(StateDir::locate(Some(&dir.path().join("state")), false).is_ok());
    }

    #[test]
    fn workspace_around_or_inside_state_overlaps() {
        let (dir, state) = temporary_state();
        let root = dir.path().canonicalize().unwrap();
        assert!(state.overlaps(&root));
        assert!(state.overlaps(root.parent().unwrap()));
        assert!(state.overlaps(&root.join("sandboxes")));
        assert!(!state.overlaps(Path::new("/nonexistent/project")));
    }

    #[test]
    fn dead_supervisor_means_stopped() {
        let mut record = record("abcdef0123", None);
        record.phase = Phase::Ready;
        record.supervisor = ProcessRef::of(std::process::id() as i32);
        assert_eq!(record.status(), "running");
        record.supervisor = Some(ProcessRef {
            pid: std::process::id() as i32,
            start_time: 1,
        });
        assert_eq!(record.status(), "stopped");
    }

    #[test]
    fn damaged_record_names_the_file_and_gc() {
        let (_dir, state) = temporary_state();
        let (sandbox, _lock) = state.allocate(&record("abcdef0123", None)).unwrap();
        fs::write(sandbox.record_path(), b"{not json").unwrap();
        let error = sandbox.read_record().unwrap_err().to_string();
        assert!(
            error.contains("record.json") && error.contains("airlock gc"),
            "{error}"
        );
    }
}
