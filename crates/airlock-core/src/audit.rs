//! The audit log of a sandbox: append-only JSON lines, each chained to the previous one.
//!
//! # Line format
//!
//! Each entry is one JSON object on one line, ended by `\n`, with its keys in this order:
//!
//! ```text
//! {"seq":3,"time":"2026-12-04T17:40:00.123456Z","sandbox":"<id>","event":"exec",<fields>,"prev":"<hex>","hash":"<hex>"}
//! ```
//!
//! - `seq`: 1 on the first line, one more on each line after it.
//! - `time`: when the entry was written, RFC 3339 in UTC with microseconds.
//! - `sandbox`: the sandbox id.
//! - `event`: the event name, such as `created`, `exec` or `rm`.
//! - the event's fields, in the iteration order of the map given to [`AuditLog::append`]. That
//!   order is sorted by key unless serde_json's `preserve_order` feature is enabled.
//! - `prev`: the SHA-256 of the previous line's bytes without its newline, or 64 zeros on the
//!   first line.
//! - `hash`: the SHA-256 of this line's bytes from the opening `{` up to, but not including, the
//!   `,"hash":"` that starts this key. It covers `prev`, so it also commits to the lines before.
//!
//! Both hashes are 64 lowercase hex digits, and `hash` is always the last key.
//!
//! # What verification detects
//!
//! [`verify`] reads the log from the start and reports the first bad line with its reason. A line
//! is bad if it is not a JSON object, or if its `hash` does not match its bytes (it was edited).
//! It is also bad if its `seq` is not the next number or its `prev` does not match the previous
//! line (a line was removed or the lines were reordered), or if it has no final newline (the log
//! was truncated). A line edited together with a recomputed `hash` is caught at the next
//! line, whose `prev` no longer matches. Nothing in the file can reveal lines removed from the
//! end, or a forged last line with a recomputed `hash`. To detect those, record the head hash
//! that [`verify`] returns somewhere else and compare it later.
//!
//! # Durability and concurrent writers
//!
//! [`AuditLog::append`] writes each line with one `write(2)` on a file opened with `O_APPEND`
//! and returns only after `fdatasync(2)`. Several processes may append to the same log: each
//! append holds an exclusive `flock(2)` while it reads the last line, writes and syncs.
//! [`verify`] and [`read`] hold a shared lock, so they never see half of a line.
//!
//! # Secrets
//!
//! The log is meant to be kept and read by people, so callers must never put environment
//! values in the fields: they often contain credentials. Command lines are logged as passed.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `prev` of the first line, which has no line before it.
pub const FIRST_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The keys that every line has, which the event's fields must not reuse.
const RESERVED_KEYS: [&str; 6] = ["seq", "time", "sandbox", "event", "prev", "hash"];

/// The text between the hashed part of a line and its hash value.
const HASH_KEY: &str = ",\"hash\":\"";

/// The length of the unhashed end of a line: `,"hash":"`, 64 hex digits and `"}`.
const HASH_SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

/// The number of bytes read per step when searching backwards for the last line.
const TAIL_CHUNK: u64 = 8192;

/// An audit log open for appending.
#[derive(Debug)]
pub struct AuditLog {
    file: File,
    path: PathBuf,
    sandbox: String,
}

/// The result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The number of lines in the log.
    pub lines: u64,
    /// The `hash` of the last line, or [`FIRST_PREV`] for an empty log.
    pub head: String,
}

/// One line of the log, as [`read`] parses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    /// The time the entry was written, RFC 3339 in UTC.
    pub time: String,
    pub sandbox: String,
    pub event: String,
    /// The event's fields: every key except the six that each line has.
    pub fields: Map<String, Value>,
    pub prev: String,
    pub hash: String,
}

/// The reason a line breaks the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    /// The last line has no newline.
    Truncated,
    /// The line is not valid JSON. `detail` is the parser's message.
    InvalidJson { detail: String },
    /// The line is valid JSON but not an object.
    NotAnObject,
    /// The line does not end with a `hash` key holding 64 hex digits.
    MisplacedHash,
    /// The line's `hash` is not the SHA-256 of its bytes.
    HashMismatch,
    /// A key that every line has is missing or has the wrong type.
    MissingField { field: &'static str },
    /// The line's `seq` is not its line number.
    UnexpectedSeq { expected: u64, found: u64 },
    /// The line's `prev` is not the SHA-256 of the previous line.
    PrevMismatch,
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => {
                write!(f, "no newline at the end: the log was truncated or a write was cut short")
            }
            Self::InvalidJson { detail } => {
                write!(f, "not valid JSON ({detail}): the line was edited or corrupted")
            }
            Self::NotAnObject => write!(f, "not a JSON object: the line was edited"),
            Self::MisplacedHash => write!(
                f,
                "the line does not end with a \"hash\" of 64 hex digits: the line was edited"
            ),
            Self::HashMismatch => write!(f, "hash does not match its content: the line was edited"),
            Self::MissingField { field } => write!(
                f,
                "the \"{field}\" key is missing or has the wrong type: the line was edited"
            ),
            Self::UnexpectedSeq { expected, found } => write!(
                f,
                "seq is {found}, expected {expected}: a line was removed or the lines were reordered"
            ),
            Self::PrevMismatch => write!(
                f,
                "prev does not match the previous line: a line was removed, replaced or reordered"
            ),
        }
    }
}

/// A failure to open, append to, verify or read an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync directory {} after creating audit log {}", .dir.display(), .path.display())]
    SyncDirectory {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "invalid audit event name {event:?}: expected lowercase letters, digits and underscores"
    )]
    InvalidEvent { event: String },
    #[error(
        "audit event field {field:?} has the name of a key that every line has: rename the field"
    )]
    ReservedField { field: String },
    #[error("cannot lock audit log {}", .path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the last line of audit log {}", .path.display())]
    ReadLastLine {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot append to audit log {}, because it ends without a newline, so its last write was \
         cut short: check it with `airlock audit verify`, then remove the incomplete last line by hand",
        .path.display()
    )]
    IncompleteLastLine { path: PathBuf },
    #[error(
        "cannot append to audit log {}, because its last line is invalid: {reason}. \
         Run `airlock audit verify` to see the damage",
        .path.display()
    )]
    InvalidLastLine { path: PathBuf, reason: BreakReason },
    #[error(
        "cannot append to audit log {}: it belongs to sandbox {found}, not {expected}: \
         open the log of sandbox {expected}",
        .path.display()
    )]
    WrongSandbox {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("cannot write to audit log {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "short write to audit log {}: {written} of {expected} bytes written, probably because the \
         disk is full; the partial line was removed",
        .path.display()
    )]
    ShortWrite {
        path: PathBuf,
        written: usize,
        expected: usize,
    },
    #[error(
        "short write to audit log {}: {written} of {expected} bytes written, and the partial line \
         cannot be removed: remove the incomplete last line by hand",
        .path.display()
    )]
    PartialLineLeft {
        path: PathBuf,
        written: usize,
        expected: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync audit log {} to disk", .path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read audit log {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit log {}: line {line}: {reason}", .path.display())]
    BrokenChain {
        path: PathBuf,
        line: u64,
        reason: BreakReason,
    },
}

/// The position of the next entry: where the file ends, its `seq` and its `prev`.
struct Tail {
    len: u64,
    seq: u64,
    prev: String,
}

/// An entry made now and written later with [`AuditLog::append_all`].
#[derive(Debug, Clone)]
pub struct Pending {
    time: String,
    event: String,
    fields: Map<String, Value>,
}

impl Pending {
    /// Makes an entry stamped with the current time. `fields` must not contain environment
    /// values.
    pub fn now(event: &str, fields: Map<String, Value>) -> Pending {
        Pending::at(SystemTime::now(), event, fields)
    }

    /// Makes an entry stamped with `time`, for an event that happened before the entry is
    /// made. `fields` must not contain environment values.
    pub fn at(time: SystemTime, event: &str, fields: Map<String, Value>) -> Pending {
        Pending {
            time: format_rfc3339(time),
            event: event.to_owned(),
            fields,
        }
    }
}

/// An exclusive `flock(2)` on an open file, released when dropped.
struct ExclusiveLock<'a>(&'a File);

impl Drop for ExclusiveLock<'_> {
    fn drop(&mut self) {
        // flock(LOCK_UN) fails only on an invalid descriptor, and this one is open. Closing the
        // file would release the lock in any case.
        let _ = self.0.unlock();
    }
}

impl AuditLog {
    /// Opens the log at `path` for the sandbox with id `sandbox`, creating it with mode 0600.
    ///
    /// After creating the file, syncs its directory so that the new entry in it is durable,
    /// except on file systems whose sync of a file also commits its new directory entry.
    pub fn open(path: &Path, sandbox: &str) -> Result<Self, AuditError> {
        let open_error = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        let (file, created) = open_or_create(path).map_err(open_error)?;
        if created && !syncs_new_entries(&file) {
            sync_parent_directory(path)?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            sandbox: sandbox.to_owned(),
        })
    }

    /// Returns the path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and returns its `seq` once it is on disk.
    ///
    /// `event` is lowercase letters, digits and underscores. `fields` must not use the six keys
    /// that every line has, and must never contain environment values, because those often
    /// contain credentials. Fails without writing if the last line is incomplete, is not a valid
    /// entry or belongs to another sandbox.
    pub fn append(&mut self, event: &str, fields: Map<String, Value>) -> Result<u64, AuditError> {
        self.append_all(vec![Pending::now(event, fields)])
    }

    /// Appends several entries with one write and one sync, each with the time it was
    /// made. Returns the `seq` of the last one. The same rules as [`AuditLog::append`] apply;
    /// none of the entries is durable before this returns.
    pub fn append_all(&mut self, entries: Vec<Pending>) -> Result<u64, AuditError> {
        self.write_entries(entries, true)
    }

    /// Appends entries without waiting for the disk: a later synced append, or the kernel's
    /// own writeback, makes them durable. They survive the death of this process, but not a
    /// crash of the machine before then.
    pub fn append_unsynced(&mut self, entries: Vec<Pending>) -> Result<u64, AuditError> {
        self.write_entries(entries, false)
    }

    fn write_entries(&mut self, entries: Vec<Pending>, sync: bool) -> Result<u64, AuditError> {
        for entry in &entries {
            validate_event_name(&entry.event)?;
            validate_field_names(&entry.fields)?;
        }

        let _lock = self.lock()?;
        let tail = self.read_tail()?;
        let (mut seq, mut prev) = (tail.seq, tail.prev.clone());
        let mut text = String::new();
        for entry in &entries {
            let line = format_line(
                seq,
                &entry.time,
                &self.sandbox,
                &entry.event,
                &entry.fields,
                &prev,
            );
            prev = sha256_hex(line.trim_end_matches('\n').as_bytes());
            text.push_str(&line);
            seq += 1;
        }
        self.write_line(&text, tail.len)?;
        if sync {
            self.file.sync_data().map_err(|source| AuditError::Sync {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(seq - 1)
    }

    fn lock(&self) -> Result<ExclusiveLock<'_>, AuditError> {
        self.file.lock().map_err(|source| AuditError::Lock {
            path: self.path.clone(),
            source,
        })?;
        Ok(ExclusiveLock(&self.file))
    }

    /// Reads the last line to find the next `seq` and `prev`. Call it with the lock held.
    fn read_tail(&self) -> Result<Tail, AuditError> {
        let read_error = |source| AuditError::ReadLastLine {
            path: self.path.clone(),
            source,
        };
        let len = self.file.metadata().map_err(read_error)?.len();
        if len == 0 {
            return Ok(Tail {
                len,
                seq: 1,
                prev: FIRST_PREV.to_owned(),
            });
        }

        let Some(last) = read_last_line(&self.file, len).map_err(read_error)? else {
            return Err(AuditError::IncompleteLastLine {
                path: self.path.clone(),
            });
        };
        let invalid = |reason| AuditError::InvalidLastLine {
            path: self.path.clone(),
            reason,
        };
        let entry = parse_object(&last)
            .and_then(entry_from_object)
            .map_err(invalid)?;
        if entry.sandbox != self.sandbox {
            return Err(AuditError::WrongSandbox {
                path: self.path.clone(),
                expected: self.sandbox.clone(),
                found: entry.sandbox,
            });
        }

        // The last line's own hash is not checked here: an edited line stays detectable by
        // `verify` after more lines follow it. A forged `seq` of u64::MAX saturates, and
        // `verify` reports the forged line.
        Ok(Tail {
            len,
            seq: entry.seq.saturating_add(1),
            prev: sha256_hex(&last),
        })
    }

    /// Writes `line` with one `write(2)`. After a short write, cuts the file back to `old_len`.
    fn write_line(&self, line: &str, old_len: u64) -> Result<(), AuditError> {
        let bytes = line.as_bytes();
        let written = loop {
            match (&self.file).write(bytes) {
                Ok(written) => break written,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(AuditError::Write {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        };
        if written == bytes.len() {
            return Ok(());
        }

        match self.file.set_len(old_len) {
            Ok(()) => Err(AuditError::ShortWrite {
                path: self.path.clone(),
                written,
                expected: bytes.len(),
            }),
            Err(source) => Err(AuditError::PartialLineLeft {
                path: self.path.clone(),
                written,
                expected: bytes.len(),
                source,
            }),
        }
    }
}

/// Opens `path` for reading and appending. Returns whether this call created the file.
fn open_or_create(path: &Path) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).mode(0o600);
    match options.clone().create_new(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            Ok((options.open(path)?, false))
        }
        Err(error) => Err(error),
    }
}

/// Whether the file system of `file` journals a new file's directory entry in the same
/// transaction as the file, so that the file's own fdatasync makes the entry durable: ext4,
/// XFS and btrfs do. Elsewhere the directory is synced, as POSIX requires.
fn syncs_new_entries(file: &File) -> bool {
    const EXT4: u64 = 0xEF53;
    const XFS: u64 = 0x5846_5342;
    const BTRFS: u64 = 0x9123_683E;
    rustix::fs::fstatfs(file).is_ok_and(|stat| {
        #[allow(clippy::unnecessary_cast)]
        let kind = stat.f_type as u64;
        [EXT4, XFS, BTRFS].contains(&kind)
    })
}

fn sync_parent_directory(path: &Path) -> Result<(), AuditError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| AuditError::SyncDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
            source,
        })
}

fn validate_event_name(event: &str) -> Result<(), AuditError> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if event.is_empty() || !event.chars().all(valid_char) {
        return Err(AuditError::InvalidEvent {
            event: event.to_owned(),
        });
    }
    Ok(())
}

fn validate_field_names(fields: &Map<String, Value>) -> Result<(), AuditError> {
    match RESERVED_KEYS.iter().find(|key| fields.contains_key(**key)) {
        Some(key) => Err(AuditError::ReservedField {
            field: (*key).to_owned(),
        }),
        None => Ok(()),
    }
}

/// Reads the last line of a file of `len` bytes, without its newline.
///
/// Returns `None` if the file does not end with a newline. Reads backwards in chunks of
/// [`TAIL_CHUNK`] bytes until it finds the newline that ends the line before.
fn read_last_line(file: &File, len: u64) -> io::Result<Option<Vec<u8>>> {
    let mut chunks = Vec::new();
    let mut end = len;
    loop {
        let start = end.saturating_sub(TAIL_CHUNK);
        let mut chunk = vec![0; (end - start) as usize];
        file.read_exact_at(&mut chunk, start)?;
        if end == len {
            if chunk.last() != Some(&b'\n') {
                return Ok(None);
            }
            chunk.pop();
        }

        let newline = chunk.iter().rposition(|&byte| byte == b'\n');
        if let Some(position) = newline {
            chunk.drain(..=position);
        }
        chunks.push(chunk);
        if newline.is_some() || start == 0 {
            break;
        }
        end = start;
    }
    chunks.reverse();
    Ok(Some(chunks.concat()))
}

/// Builds one line, with its newline, in the key order and with the hash of the module docs.
fn format_line(
    seq: u64,
    time: &str,
    sandbox: &str,
    event: &str,
    fields: &Map<String, Value>,
    prev: &str,
) -> String {
    let mut line = format!(
        "{{\"seq\":{seq},\"time\":{},\"sandbox\":{},\"event\":{}",
        json_string(time),
        json_string(sandbox),
        json_string(event),
    );
    for (key, value) in fields {
        line.push(',');
        line.push_str(&json_string(key));
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push_str(",\"prev\":\"");
    line.push_str(prev);
    line.push('"');

    let hash = sha256_hex(line.as_bytes());
    line.push_str(HASH_KEY);
    line.push_str(&hash);
    line.push_str("\"}\n");
    line
}

fn json_string(text: &str) -> String {
    Value::from(text).to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Checks a log from its first line and returns its line count and head hash.
///
/// Fails with [`AuditError::BrokenChain`] at the first line that breaks the log. Removing lines
/// at the end cannot be detected this way: compare the returned head with one recorded earlier.
pub fn verify(path: &Path) -> Result<Verified, AuditError> {
    let mut prev = FIRST_PREV.to_owned();
    let mut head = FIRST_PREV.to_owned();
    let lines = for_each_line(path, |number, line| {
        let entry = parse_object(line)
            .and_then(|object| check_hash(line).map(|()| object))
            .and_then(entry_from_object)?;
        if entry.seq != number {
            return Err(BreakReason::UnexpectedSeq {
                expected: number,
                found: entry.seq,
            });
        }
        if entry.prev != prev {
            return Err(BreakReason::PrevMismatch);
        }
        prev = sha256_hex(line);
        head = entry.hash;
        Ok(())
    })?;
    Ok(Verified { lines, head })
}

/// Parses every line of a log, without checking hashes, `seq` or `prev`.
///
/// Use it to show a log, even a damaged one. Fails with [`AuditError::BrokenChain`] at the first
/// line that is not a complete entry. Run [`verify`] to check that the log is intact.
pub fn read(path: &Path) -> Result<Vec<Entry>, AuditError> {
    let mut entries = Vec::new();
    for_each_line(path, |_, line| {
        entries.push(parse_object(line).and_then(entry_from_object)?);
        Ok(())
    })?;
    Ok(entries)
}

/// Calls `check` with the 1-based number and the bytes, without the newline, of each line.
///
/// Holds a shared lock so that no append is seen half-written. Returns the number of lines.
fn for_each_line(
    path: &Path,
    mut check: impl FnMut(u64, &[u8]) -> Result<(), BreakReason>,
) -> Result<u64, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Open {
        path: path.to_owned(),
        source,
    })?;
    file.lock_shared().map_err(|source| AuditError::Lock {
        path: path.to_owned(),
        source,
    })?;

    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| AuditError::Read {
                path: path.to_owned(),
                source,
            })?;
        if read == 0 {
            return Ok(number);
        }

        number += 1;
        let result = match line.pop() {
            Some(b'\n') => check(number, &line),
            _ => Err(BreakReason::Truncated),
        };
        result.map_err(|reason| AuditError::BrokenChain {
            path: path.to_owned(),
            line: number,
            reason,
        })?;
    }
}

fn parse_object(line: &[u8]) -> Result<Map<String, Value>, BreakReason> {
    match serde_json::from_slice(line) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(BreakReason::NotAnObject),
        Err(error) => Err(BreakReason::InvalidJson {
            detail: error.to_string(),
        }),
    }
}

/// Checks that the line ends with its `hash` key and that the hash matches the bytes before it.
fn check_hash(line: &[u8]) -> Result<(), BreakReason> {
    let Some(split) = line.len().checked_sub(HASH_SUFFIX_LEN) else {
        return Err(BreakReason::MisplacedHash);
    };
    let (hashed, suffix) = line.split_at(split);
    let Some(hex) = suffix
        .strip_prefix(HASH_KEY.as_bytes())
        .and_then(|rest| rest.strip_suffix(b"\"}"))
    else {
        return Err(BreakReason::MisplacedHash);
    };
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(BreakReason::MisplacedHash);
    }

    if hex != sha256_hex(hashed).as_bytes() {
        return Err(BreakReason::HashMismatch);
    }
    Ok(())
}

fn entry_from_object(mut object: Map<String, Value>) -> Result<Entry, BreakReason> {
    let seq = match object.remove("seq").as_ref().and_then(Value::as_u64) {
        Some(seq) => seq,
        None => return Err(BreakReason::MissingField { field: "seq" }),
    };
    Ok(Entry {
        seq,
        time: take_string(&mut object, "time")?,
        sandbox: take_string(&mut object, "sandbox")?,
        event: take_string(&mut object, "event")?,
        prev: take_string(&mut object, "prev")?,
        hash: take_string(&mut object, "hash")?,
        fields: object,
    })
}

fn take_string(
    object: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, BreakReason> {
    match object.remove(field) {
        Some(Value::String(text)) => Ok(text),
        _ => Err(BreakReason::MissingField { field }),
    }
}

/// Formats an entry as one line for people: time to the millisecond, `seq`, event, fields.
///
/// For example `2026-12-04 17:40:00.123Z  #3  exec  argv=["make","test"] exit=0`. Field values
/// are compact JSON. Control characters are escaped, so a crafted log cannot send escape
/// sequences to the terminal.
pub fn render(entry: &Entry) -> String {
    let mut out = format!(
        "{}  #{}  {}",
        render_time(&entry.time),
        entry.seq,
        render_word(&entry.event)
    );
    let fields: Vec<String> = entry
        .fields
        .iter()
        .map(|(key, value)| {
            let value = escape_controls(&value.to_string());
            format!("{}={value}", render_word(key))
        })
        .collect();
    if !fields.is_empty() {
        out.push_str("  ");
        out.push_str(&fields.join(" "));
    }
    out
}

/// Shortens `2026-12-04T17:40:00.123456Z` to `2026-12-04 17:40:00.123Z`. Other text is quoted.
fn render_time(time: &str) -> String {
    let bytes = time.as_bytes();
    let is_written_format = bytes.len() == 27
        && bytes.get(10) == Some(&b'T')
        && bytes.get(19) == Some(&b'.')
        && bytes.get(26) == Some(&b'Z')
        && time.is_ascii();
    if is_written_format {
        format!("{} {}Z", &time[..10], &time[11..23])
    } else {
        render_word(time)
    }
}

/// Returns `word` as it is if it is printable ASCII without `=` and `"`, or else as JSON.
fn render_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b'=' && byte != b'"');
    if plain {
        word.to_owned()
    } else {
        escape_controls(&json_string(word))
    }
}

/// Escapes the control characters that JSON leaves as they are: DEL and U+0080 to U+009F.
fn escape_controls(json: &str) -> String {
    json.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{:04x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Formats the current time as RFC 3339 in UTC with microseconds.
pub fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

/// Formats `time` as RFC 3339 in UTC with microseconds, like `2026-12-04T17:40:00.123456Z`.
///
/// Sub-microsecond digits are dropped. Times before 1970 work too.
// NOTE: years outside 0000..=9999 print with a sign or more than four digits, which is not
// valid RFC 3339.
pub fn format_rfc3339(time: SystemTime) -> String {
    let (seconds, micros) = unix_seconds_and_micros(time);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    );
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z")
}

/// Splits `time` into whole seconds since the Unix epoch, rounded down, and the microseconds
/// after them.
fn unix_seconds_and_micros(time: SystemTime) -> (i64, u32) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_micros(),
        ),
        Err(error) => {
            let before = error.duration();
            let seconds = i64::try_from(before.as_secs()).map_or(i64::MIN, |s| -s);
            match before.subsec_nanos() {
                0 => (seconds, 0),
                nanos => (seconds - 1, (1_000_000_000 - nanos) / 1000),
            }
        }
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// This is Howard Hinnant's `civil_from_days`: it counts in 400-year eras of 146097 days, with
/// years starting on March 1 so that the leap day is the last day of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both values are in range by construction: month is 1..=12 and day is 1..=31.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::thread;
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    const SANDBOX: &str = "0123456789abcdef0123456789abcdef";

    /// A directory under the system temp directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("airlock-audit-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn log(&self) -> PathBuf {
            self.0.join("audit.jsonl")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fields(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("expected a JSON object, got {other}"),
        }
    }

    fn write_chain(path: &Path, count: u64) {
        let mut log = AuditLog::open(path, SANDBOX).unwrap();
        for i in 0..count {
            let seq = log
                .append("exec", fields(json!({"argv": ["echo", i], "exit": 0})))
                .unwrap();
            assert_eq!(seq, i + 1);
        }
    }

    fn read_lines(path: &Path) -> Vec<String> {
        let text = fs::read_to_string(path).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        fs::write(path, text).unwrap();
    }

    fn broken_line(path: &Path) -> (u64, BreakReason) {
        match verify(path) {
            Err(AuditError::BrokenChain { line, reason, .. }) => (line, reason),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    /// Replaces the hash of `line` with the one its edited bytes give, as a forger would.
    fn rehash(line: &str) -> String {
        let hashed = &line[..line.len() - HASH_SUFFIX_LEN];
        format!("{hashed}{HASH_KEY}{}\"}}", sha256_hex(hashed.as_bytes()))
    }

    #[test]
    fn chain_of_appends_verifies() {
        let dir = TempDir::new("chain");
        write_chain(&dir.log(), 10);

        let verified = verify(&dir.log()).unwrap();

        let last = parse_object(read_lines(&dir.log())[9].as_bytes()).unwrap();
        assert_eq!(verified.lines, 10);
        assert_eq!(verified.head, last["hash"]);
    }

    #[test]
    fn line_keys_come_in_documented_order() {
        let dir = TempDir::new("order");
        write_chain(&dir.log(), 1);
        let line = &read_lines(&dir.log())[0];

        let keys = [
            "\"seq\":1,",
            "\"time\":",
            "\"sandbox\":",
            "\"event\":\"exec\"",
            "\"argv\":[\"echo\",0]",
            "\"exit\":0",
            "\"prev\":",
            "\"hash\":",
        ];
        let positions: Vec<usize> = keys.iter().map(|key| line.find(key).unwrap()).collect();
        assert!(line.starts_with("{\"seq\":1,"), "{line}");
        assert!(positions.is_sorted(), "keys out of order in {line}");
    }

    #[test]
    fn hash_and_prev_follow_documented_definition() {
        let dir = TempDir::new("definition");
        write_chain(&dir.log(), 2);
        let lines = read_lines(&dir.log());
        let first = parse_object(lines[0].as_bytes()).unwrap();
        let second = parse_object(lines[1].as_bytes()).unwrap();

        let hash_start = lines[0].find(",\"hash\":\"").unwrap();
        let expected_hash = sha256_hex(&lines[0].as_bytes()[..hash_start]);
        assert_eq!(first["prev"], FIRST_PREV);
        assert_eq!(first["hash"], expected_hash.as_str());
        assert_eq!(second["prev"], sha256_hex(lines[0].as_bytes()).as_str());
    }

    #[test]
    fn time_key_is_rfc3339_with_microseconds() {
        let dir = TempDir::new("time-key");
        write_chain(&dir.log(), 1);

        let entry = &read(&dir.log()).unwrap()[0];

        let bytes = entry.time.as_bytes();
        assert_eq!(bytes.len(), 27, "{}", entry.time);
        assert_eq!(bytes[10], b'T');
        assert_eq!(bytes[19], b'.');
        assert_eq!(bytes[26], b'Z');
    }

    #[test]
    fn edited_middle_line_is_named() {
        let dir = TempDir::new("edit-middle");
        write_chain(&dir.log(), 10);
        let mut lines = read_lines(&dir.log());
        lines[4] = lines[4].replace("\"exit\":0", "\"exit\":1");
        write_lines(&dir.log(), &lines);

        assert_eq!(broken_line(&dir.log()), (5, BreakReason::HashMismatch));
    }

    #[test]
    fn edited_last_line_is_named() {
        let dir = TempDir::new("edit-last");
        write_chain(&dir.log(), 10);
        let mut lines = read_lines(&dir.log());
        lines[9] = lines[9].replace("\"echo\"", "\"rm\"");
        write_lines(&dir.log(), &lines);

        assert_eq!(broken_line(&dir.log()), (10, BreakReason::HashMismatch));
    }

    #[test]
    fn rehashed_edit_breaks_next_line() {
        let dir = TempDir::new("edit-rehash");
        write_chain(&dir.log(), 10);
        let mut lines = read_lines(&dir.log());
        lines[4] = rehash(&lines[4].replace("\"exit\":0", "\"exit\":1"));
        write_lines(&dir.log(), &lines);

        assert_eq!(broken_line(&dir.log()), (6, BreakReason::PrevMismatch));
    }

    #[test]
    fn removed_middle_line_names_line_after_gap() {
        let dir = TempDir::new("remove-middle");
        write_chain(&dir.log(), 10);
        let mut lines = read_lines(&dir.log());
        lines.remove(4);
        write_lines(&dir.log(), &lines);

        let expected = BreakReason::UnexpectedSeq {
            expected: 5,
            found: 6,
        };
        assert_eq!(broken_line(&dir.log()), (5, expected));
    }

    #[test]
    fn removed_first_line_is_named() {
        let dir = TempDir::new("remove-first");
        write_chain(&dir.log(), 3);
        let mut lines = read_lines(&dir.log());
        lines.remove(0);
        write_lines(&dir.log(), &lines);

        let expected = BreakReason::UnexpectedSeq {
            expected: 1,
            found: 2,
        };
        assert_eq!(broken_line(&dir.log()), (1, expected));
    }

    #[test]
    fn removed_and_renumbered_line_breaks_prev() {
        let dir = TempDir::new("remove-renumber");
        write_chain(&dir.log(), 5);
        let mut lines = read_lines(&dir.log());
        lines.remove(2);
        lines[2] = rehash(&lines[2].replace("\"seq\":4,", "\"seq\":3,"));
        write_lines(&dir.log(), &lines);

        assert_eq!(broken_line(&dir.log()), (3, BreakReason::PrevMismatch));
    }

    #[test]
    fn swapped_lines_name_first_swapped_one() {
        let dir = TempDir::new("swap");
        write_chain(&dir.log(), 10);
        let mut lines = read_lines(&dir.log());
        lines.swap(2, 3);
        write_lines(&dir.log(), &lines);

        let expected = BreakReason::UnexpectedSeq {
            expected: 3,
            found: 4,
        };
        assert_eq!(broken_line(&dir.log()), (3, expected));
    }

    #[test]
    fn truncated_last_line_is_reported() {
        let dir = TempDir::new("truncate");
        write_chain(&dir.log(), 10);
        let text = fs::read(dir.log()).unwrap();
        fs::write(dir.log(), &text[..text.len() - 20]).unwrap();

        assert_eq!(broken_line(&dir.log()), (10, BreakReason::Truncated));
    }

    #[test]
    fn missing_final_newline_is_reported() {
        let dir = TempDir::new("no-newline");
        write_chain(&dir.log(), 3);
        let text = fs::read(dir.log()).unwrap();
        fs::write(dir.log(), &text[..text.len() - 1]).unwrap();

        assert_eq!(broken_line(&dir.log()), (3, BreakReason::Truncated));
    }

    #[test]
    fn removed_last_line_needs_head_anchor() {
        let dir = TempDir::new("remove-last");
        write_chain(&dir.log(), 5);
        let anchored = verify(&dir.log()).unwrap();
        let mut lines = read_lines(&dir.log());
        lines.pop();
        write_lines(&dir.log(), &lines);

        let verified = verify(&dir.log()).unwrap();

        assert_eq!(verified.lines, 4);
        assert_ne!(verified.head, anchored.head);
    }

    #[test]
    fn line_that_is_not_json_object_is_named() {
        let dir = TempDir::new("not-json");
        write_chain(&dir.log(), 3);
        let mut lines = read_lines(&dir.log());
        lines[1] = "[1,2]".to_owned();
        write_lines(&dir.log(), &lines);
        assert_eq!(broken_line(&dir.log()), (2, BreakReason::NotAnObject));

        lines[1] = "{\"seq\":2,".to_owned();
        write_lines(&dir.log(), &lines);
        let (line, reason) = broken_line(&dir.log());
        assert_eq!(line, 2);
        assert!(
            matches!(reason, BreakReason::InvalidJson { .. }),
            "unexpected {reason:?}"
        );
    }

    #[test]
    fn line_without_trailing_hash_is_named() {
        let dir = TempDir::new("no-hash");
        write_chain(&dir.log(), 3);
        let mut lines = read_lines(&dir.log());
        let hash_start = lines[1].find(HASH_KEY).unwrap();
        lines[1] = format!("{}}}", &lines[1][..hash_start]);
        write_lines(&dir.log(), &lines);

        assert_eq!(broken_line(&dir.log()), (2, BreakReason::MisplacedHash));
    }

    #[test]
    fn broken_chain_message_names_line() {
        let error = AuditError::BrokenChain {
            path: PathBuf::from("/x/y.jsonl"),
            line: 7,
            reason: BreakReason::HashMismatch,
        };

        assert_eq!(
            error.to_string(),
            "audit log /x/y.jsonl: line 7: hash does not match its content: the line was edited"
        );
    }

    #[test]
    fn empty_log_verifies_with_zero_head() {
        let dir = TempDir::new("empty");
        AuditLog::open(&dir.log(), SANDBOX).unwrap();

        let verified = verify(&dir.log()).unwrap();

        assert_eq!(verified.lines, 0);
        assert_eq!(verified.head, FIRST_PREV);
    }

    #[test]
    fn missing_log_fails_to_open() {
        let dir = TempDir::new("missing");

        let error = verify(&dir.log()).unwrap_err();

        let AuditError::Open { source, .. } = error else {
            panic!("expected an open error, got {error:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn four_thread_appends_form_one_chain() {
        let dir = TempDir::new("threads");
        let path = dir.log();
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let path = path.clone();
                thread::spawn(move || {
                    let mut log = AuditLog::open(&path, SANDBOX).unwrap();
                    (0..50)
                        .map(|i| {
                            let event = fields(json!({"writer": writer, "i": i}));
                            log.append("exec", event).unwrap()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = writers
            .into_iter()
            .flat_map(|writer| writer.join().unwrap())
            .collect();
        seqs.sort_unstable();

        let verified = verify(&path).unwrap();

        assert_eq!(verified.lines, 200);
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    }

    #[test]
    fn reopened_log_continues_chain() {
        let dir = TempDir::new("reopen");
        write_chain(&dir.log(), 3);

        let mut log = AuditLog::open(&dir.log(), SANDBOX).unwrap();
        let seq = log.append("stop", Map::new()).unwrap();

        assert_eq!(seq, 4);
        assert_eq!(verify(&dir.log()).unwrap().lines, 4);
    }

    #[test]
    fn batch_of_entries_chains_like_single_appends() {
        let dir = TempDir::new("batch");
        write_chain(&dir.log(), 2);
        let mut log = AuditLog::open(&dir.log(), SANDBOX).unwrap();
        let created = Pending::now("created", Map::new());
        let exec = Pending::now("exec", fields(json!({"exit_code": 0})));
        let seq = log.append_all(vec![created, exec]).unwrap();
        let after = log.append("removed", Map::new()).unwrap();

        assert_eq!((seq, after), (4, 5));
        assert_eq!(verify(&dir.log()).unwrap().lines, 5);
        let events: Vec<String> = read(&dir.log())
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(&events[2..], ["created", "exec", "removed"]);
    }

    #[test]
    fn long_last_line_is_continued() {
        let dir = TempDir::new("long-line");
        let mut log = AuditLog::open(&dir.log(), SANDBOX).unwrap();
        log.append("start", Map::new()).unwrap();
        let long_argument = "x".repeat(3 * TAIL_CHUNK as usize);
        log.append("exec", fields(json!({"argv": [long_argument]})))
            .unwrap();

        let seq = log.append("stop", Map::new()).unwrap();

        assert_eq!(seq, 3);
        assert_eq!(verify(&dir.log()).unwrap().lines, 3);
    }

    #[test]
    fn append_after_incomplete_last_line_is_rejected() {
        let dir = TempDir::new("append-incomplete");
        write_chain(&dir.log(), 2);
        let text = fs::read(dir.log()).unwrap();
        fs::write(dir.log(), &text[..text.len() - 5]).unwrap();

        let mut log = AuditLog::open(&dir.log(), SANDBOX).unwrap();
        let error = log.append("stop", Map::new()).unwrap_err();

        assert!(
            matches!(error, AuditError::IncompleteLastLine { .. }),
            "{error:?}"
        );
        assert_eq!(fs::read(dir.log()).unwrap().len(), text.len() - 5);
    }

    #[test]
    fn append_after_invalid_last_line_is_rejected() {
        let dir = TempDir::new("append-invalid");
        write_chain(&dir.log(), 2);
        fs::write(dir.log(), "garbage\n").unwrap();

        let mut log = AuditLog::open(&dir.log(), SANDBOX).unwrap();
        let error = log.append("stop", Map::new()).unwrap_err();

        assert!(
            matches!(
                error,
                AuditError::InvalidLastLine {
                    reason: BreakReason::InvalidJson { .. },
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn append_to_other_sandbox_log_is_rejected() {
        let dir = TempDir::new("other-sandbox");
        write_chain(&dir.log(), 1);

        let mut log = AuditLog::open(&dir.log(), "another").unwrap();
        let error = log.append("stop", Map::new()).unwrap_err();

        let AuditError::WrongSandbox {
            expected, found, ..
        } = error
        else {
            panic!("expected a wrong sandbox error, got {error:?}");
        };
        assert_eq!(expected, "another");
        assert_eq!(found, SANDBOX);
    }

    #[test]
    fn reserved_field_name_is_rejected() {
        let dir = TempDir::new("reserved");
        let mut log = AuditLog::open(&dir.log(), SANDBOX).unwrap();

        for key in RESERVED_KEYS {
            let error = log
                .append("exec", fields(json!({ key: "forged" })))
                .unwrap_err();
            assert!(
                matches!(&error, AuditError::ReservedField { field } if field == key),
                "{error:?}"
            );
        }
        assert_eq!(fs::metadata(dir.log()).unwrap().len(), 0);
    }

    #[test]
    fn invalid_event_name_is_rejected() {
        let dir = TempDir::new("event-name");
        let mut log = AuditLog::open(&dir.log(), SANDBOX).unwrap();

        for event in ["", "Exec", "exec now", "exec\n"] {
            let error = log.append(event, Map::new()).unwrap_err();
            assert!(
                matches!(error, AuditError::InvalidEvent { .. }),
                "{event:?}: {error:?}"
            );
        }
    }

    #[test]
    fn new_log_file_has_mode_0600() {
        let dir = TempDir::new("mode");
        AuditLog::open(&dir.log(), SANDBOX).unwrap();

        let mode = fs::metadata(dir.log()).unwrap().permissions().mode();

        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn read_returns_entries_without_line_keys() {
        let dir = TempDir::new("read");
        write_chain(&dir.log(), 3);

        let entries = read(&dir.log()).unwrap();

        assert_eq!(entries.len(), 3);
        assert_eq!(entries[2].seq, 3);
        assert_eq!(entries[2].sandbox, SANDBOX);
        assert_eq!(entries[2].event, "exec");
        assert_eq!(
            entries[2].fields,
            fields(json!({"argv": ["echo", 2], "exit": 0}))
        );
    }

    #[test]
    fn read_shows_edited_log() {
        let dir = TempDir::new("read-edited");
        write_chain(&dir.log(), 3);
        let mut lines = read_lines(&dir.log());
        lines[1] = lines[1].replace("\"exit\":0", "\"exit\":1");
        write_lines(&dir.log(), &lines);

        let entries = read(&dir.log()).unwrap();

        assert_eq!(entries[1].fields["exit"], 1);
    }

    #[test]
    fn render_shows_time_seq_event_and_fields() {
        let entry = Entry {
            seq: 3,
            time: "2026-12-04T17:40:00.123456Z".to_owned(),
            sandbox: SANDBOX.to_owned(),
            event: "exec".to_owned(),
            fields: fields(json!({"argv": ["make", "test"], "exit": 0})),
            prev: FIRST_PREV.to_owned(),
            hash: FIRST_PREV.to_owned(),
        };

        assert_eq!(
            render(&entry),
            "2026-12-04 17:40:00.123Z  #3  exec  argv=[\"make\",\"test\"] exit=0"
        );
    }

    #[test]
    fn render_escapes_control_characters() {
        let entry = Entry {
            seq: 1,
            time: "\u{1b}[2J".to_owned(),
            sandbox: SANDBOX.to_owned(),
            event: "exec\u{9b}".to_owned(),
            fields: fields(json!({"argv": ["\u{1b}]0;x\u{7}", "\u{9b}2J"]})),
            prev: FIRST_PREV.to_owned(),
            hash: FIRST_PREV.to_owned(),
        };

        let rendered = render(&entry);

        assert!(!rendered.chars().any(char::is_control), "{rendered:?}");
    }

    #[test]
    fn time_formatting_of_known_instants() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_868_799, 999_999_999, "2000-02-29T23:59:59.999999Z"),
            (1_709_210_096, 789_012_000, "2024-02-29T12:34:56.789012Z"),
            (2_147_483_648, 0, "2038-01-19T03:14:08.000000Z"),
            (4_107_542_400, 1_000, "2100-03-01T00:00:00.000001Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000Z"),
        ];
        for (seconds, nanos, expected) in cases {
            let time = UNIX_EPOCH + Duration::new(seconds, nanos);
            assert_eq!(format_rfc3339(time), expected, "{seconds}.{nanos:09}");
        }
    }

    #[test]
    fn time_formatting_before_epoch() {
        let half_second_before = UNIX_EPOCH - Duration::from_millis(500);
        let leap_day_1968 = UNIX_EPOCH - Duration::from_secs(672 * 86_400);

        assert_eq!(
            format_rfc3339(half_second_before),
            "1969-12-31T23:59:59.500000Z"
        );
        assert_eq!(format_rfc3339(leap_day_1968), "1968-02-29T00:00:00.000000Z");
    }
}
