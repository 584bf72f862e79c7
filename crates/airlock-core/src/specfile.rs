//! Spec files: every option of `airlock run` and `airlock create` in one TOML file, passed with
//! `--spec FILE`.
//!
//! Each key is the long option name with `-` replaced by `_`, and every key is optional:
//!
//! ```toml
//! backend = "namespace"        # or "chroot", "nspawn", "docker"
//! risk = "medium"              # low, medium, high or critical: the lightest backend that meets it
//! rootfs = "rootfs"            # a directory, relative to this file's directory
//! image = "debian:bookworm"    # a local image of the engine, for the docker backend
//! kernel = "/boot/vmlinuz-6.1.0-57-cloud-amd64"   # the guest kernel, for the vm backend
//! inner = "namespace"          # a sandbox inside the vm backend's machine
//! workspace = "project"        # a directory, relative to this file's directory
//! workspace_mode = "overlay"   # overlay, bind, readonly or none
//! memory = "512M"              # or a whole number of bytes
//! cpus = 0.5                   # or a string such as "0.5"
//! pids = 256
//! tmp_size = "128M"            # or a whole number of bytes
//! timeout = "10m"              # or a whole number of seconds
//! tty = false
//! allow_weaker = false
//! user = "65534:65534"         # root, UID or UID:GID
//! name = "build-1"
//! ttl = "2h"                   # or a whole number of seconds
//! command = ["make", "test"]   # used by `run` when the command line gives no command
//!
//! [env]
//! RUST_LOG = "debug"
//! ```
//!
//! Values are checked as strictly as on the command line. An unknown key or an invalid value
//! is reported as `FILE:LINE:COLUMN: message`, pointing at the key or the value. Options given
//! on the command line take precedence over the file (see [`SpecFile::apply`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;
use toml::{Spanned, Value};

use crate::action::BackendKind;
use crate::risk::RiskLevel;
use crate::size::{self, format_bytes};
use crate::spec::{
    self, InnerBackend, Limit, RootFs, Spec, User, WorkspaceMode, MAX_PIDS, MIN_MEMORY,
    MIN_TMP_SIZE,
};

/// Every key a spec file may contain, in the order of the format's documentation.
pub const KEYS: [&str; 20] = [
    "backend",
    "risk",
    "rootfs",
    "image",
    "kernel",
    "inner",
    "workspace",
    "workspace_mode",
    "env",
    "memory",
    "cpus",
    "pids",
    "tmp_size",
    "timeout",
    "tty",
    "allow_weaker",
    "user",
    "name",
    "ttl",
    "command",
];

/// Maximum length of a sandbox name, in characters: the length limit of a DNS label.
pub const MAX_NAME_LENGTH: usize = 63;

/// The parsed and validated contents of a spec file. An `Option` field is `None` when the file
/// does not contain its key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpecFile {
    /// A name from [`BackendKind::ALL`], which the front end maps to a [`BackendKind`].
    pub backend: Option<String>,
    /// The risk level that picks the backend, as `--risk` does.
    pub risk: Option<RiskLevel>,
    /// Root filesystem directory, already joined to the spec file's directory.
    pub rootfs: Option<PathBuf>,
    /// Image of the docker backend's engine, valid by [`spec::parse_image`].
    pub image: Option<String>,
    /// Guest kernel of the vm backend, already joined to the spec file's directory.
    pub kernel: Option<PathBuf>,
    /// The backend of a sandbox inside the vm backend's machine.
    pub inner: Option<InnerBackend>,
    /// Workspace directory, already joined to the spec file's directory.
    pub workspace: Option<PathBuf>,
    pub workspace_mode: Option<WorkspaceMode>,
    /// Variables of the `env` table, sorted by name. Empty when the file has no `env` table.
    pub env: Vec<(String, OsString)>,
    /// Memory limit in bytes, at least [`MIN_MEMORY`].
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    /// Process limit, from 1 to [`MAX_PIDS`].
    pub pids: Option<u64>,
    /// Size of the private /tmp, in bytes.
    pub tmp_size: Option<u64>,
    pub timeout: Option<Duration>,
    pub tty: Option<bool>,
    pub allow_weaker: Option<bool>,
    /// The user the command runs as inside.
    pub user: Option<User>,
    /// Sandbox name, valid by [`validate_name`].
    pub name: Option<String>,
    pub ttl: Option<Duration>,
    /// The command and its arguments, never empty.
    pub command: Option<Vec<OsString>>,
}

/// A place in a spec file, printed as `FILE:LINE:COLUMN`, or as `FILE` when the TOML parser
/// reported no position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub position: Option<Position>,
}

/// A line and column in a text, both 1-based. Columns count characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        Ok(())
    }
}

/// A spec file that cannot be read or does not describe a valid spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("spec file {path:?} gives a command, which `create` does not run: remove `command` from it, or use the file with `airlock run`")]
    CommandForCreate { path: PathBuf },
    #[error("cannot read spec file {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{location}: invalid TOML: {message}")]
    Syntax { location: Location, message: String },
    #[error("{location}: unknown key {key:?}: expected one of {}", KEYS.join(", "))]
    UnknownKey { location: Location, key: String },
    #[error("{location}: {message}")]
    InvalidValue {
        location: Location,
        /// The top-level key whose value is invalid.
        key: String,
        message: String,
    },
}

/// Reads and validates the spec file at `path`.
pub fn load(path: &Path) -> Result<SpecFile, SpecFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates `text`, the contents of the spec file at `path`. The path appears in
/// error messages, and relative paths in the file are joined to its directory.
pub fn parse(text: &str, path: &Path) -> Result<SpecFile, SpecFileError> {
    let source = Source { text, path };
    let table = DeTable::parse(text).map_err(|error| SpecFileError::Syntax {
        location: source.location(error.span()),
        message: error.message().to_owned(),
    })?;
    let entries = source.check_keys(table.get_ref())?;
    let raw = RawSpecFile::deserialize(toml::de::Deserializer::from(table))
        .map_err(|error| source.type_error(&entries, &error))?;
    source.validate(raw)
}

/// Returns the top-level key whose entry contains `offset`. The span of a `[table]` entry
/// covers only its header (as of toml 1.2), so an offset outside every entry belongs to the
/// nearest key before it.
fn key_at(entries: &[Entry], offset: usize) -> &str {
    let containing = entries.iter().find(|entry| entry.span.contains(&offset));
    let preceding = || {
        entries
            .iter()
            .filter(|entry| entry.span.start <= offset)
            .max_by_key(|entry| entry.span.start)
    };
    containing
        .or_else(preceding)
        .map_or("", |entry| entry.key.as_str())
}

/// Checks a sandbox name: 1 to [`MAX_NAME_LENGTH`] ASCII letters, digits, `-`, `_` or `.`.
/// A leading `-` is rejected because the name would read as an option. The names `.` and
/// `..` are rejected because they would name another directory when used in a path.
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid_characters = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LENGTH
        && valid_characters
        && !name.starts_with('-')
        && name != "."
        && name != "..";
    // Sandboxes are also found by a prefix of their hex id, which such a name would shadow.
    let like_id = name.len() >= crate::state::MIN_ID_PREFIX
        && name
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if valid && !like_id {
        return Ok(());
    }
    Err(format!(
        "invalid sandbox name {name:?}: expected 1 to {MAX_NAME_LENGTH} letters, digits, '-', \
         '_' or '.', not starting with '-', not \".\" or \"..\", and not 4 or more hex \
         digits, which read as a sandbox id"
    ))
}

impl SpecFile {
    /// Sets each field of `spec` that the file gives, unless the same option was given on the
    /// command line. `given_on_command_line` receives long option names such as "memory",
    /// "tmp-size" or "workspace-mode". A limit taken from the file is requested, so it must be
    /// enforced in full. The file's variables go before the command line's, so that the
    /// command line wins for a variable both set. The file's command is used only when `spec`
    /// has none. The backend is left to the caller, because it is not part of [`Spec`].
    pub fn apply(&self, spec: &mut Spec, given_on_command_line: &dyn Fn(&str) -> bool) {
        let from_file = |option: &str| !given_on_command_line(option);
        self.apply_filesystem(spec, &from_file);
        self.apply_limits(spec, &from_file);
        if let (Some(tty), true) = (self.tty, from_file("tty")) {
            spec.tty = tty;
        }
        if let (Some(allow_weaker), true) = (self.allow_weaker, from_file("allow-weaker")) {
            spec.allow_weaker = allow_weaker;
        }
        if let (Some(user), true) = (self.user, from_file("user")) {
            spec.user = Some(user);
        }
        if let (Some(name), true) = (&self.name, from_file("name")) {
            spec.name = Some(name.clone());
        }
        if let (Some(ttl), true) = (self.ttl, from_file("ttl")) {
            spec.ttl = Some(ttl);
        }
        let command_line_env = std::mem::take(&mut spec.env);
        spec.env = self.env.iter().cloned().chain(command_line_env).collect();
        if let (Some(command), true) = (&self.command, spec.command.is_empty()) {
            spec.command = command.clone();
        }
    }

    fn apply_filesystem(&self, spec: &mut Spec, from_file: &dyn Fn(&str) -> bool) {
        if let (Some(rootfs), true) = (&self.rootfs, from_file("rootfs")) {
            spec.rootfs = RootFs::Directory(rootfs.clone());
        }
        if let (Some(image), true) = (&self.image, from_file("image")) {
            spec.image = Some(image.clone());
        }
        if let (Some(kernel), true) = (&self.kernel, from_file("kernel")) {
            spec.kernel = Some(kernel.clone());
        }
        if let (Some(inner), true) = (self.inner, from_file("inner")) {
            spec.inner = Some(inner);
        }
        if let (Some(workspace), true) = (&self.workspace, from_file("workspace")) {
            spec.workspace = Some(workspace.clone());
        }
        if let (Some(mode), true) = (self.workspace_mode, from_file("workspace-mode")) {
            spec.workspace_mode = mode;
        }
    }

    fn apply_limits(&self, spec: &mut Spec, from_file: &dyn Fn(&str) -> bool) {
        let limits = &mut spec.limits;
        if let (Some(memory), true) = (self.memory, from_file("memory")) {
            limits.memory = Limit::requested(memory);
        }
        if let (Some(cpus), true) = (self.cpus, from_file("cpus")) {
            limits.cpus = Limit::requested(Some(cpus));
        }
        if let (Some(pids), true) = (self.pids, from_file("pids")) {
            limits.pids = Limit::requested(pids);
        }
        if let (Some(tmp_size), true) = (self.tmp_size, from_file("tmp-size")) {
            limits.tmp_size = tmp_size;
        }
        if let (Some(timeout), true) = (self.timeout, from_file("timeout")) {
            limits.timeout = Some(timeout);
        }
    }
}

/// The file's values as deserialized, before validation. Limits stay untyped [`Value`]s, so that their type errors can
/// name the accepted forms, as the command line's messages do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpecFile {
    backend: Option<Spanned<String>>,
    risk: Option<Spanned<String>>,
    rootfs: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    inner: Option<Spanned<String>>,
    workspace: Option<Spanned<String>>,
    workspace_mode: Option<Spanned<String>>,
    env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    memory: Option<Spanned<Value>>,
    cpus: Option<Spanned<Value>>,
    pids: Option<Spanned<Value>>,
    tmp_size: Option<Spanned<Value>>,
    timeout: Option<Spanned<Value>>,
    tty: Option<bool>,
    allow_weaker: Option<bool>,
    user: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    ttl: Option<Spanned<Value>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A top-level key and the span from its key to the end of its value.
struct Entry {
    key: String,
    span: Range<usize>,
}

/// The spec file being parsed, for locating errors and resolving paths.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
}

/// The forms a size, a duration or a count may take in the file.
const SIZE_FORMS: &str = "a size such as \"512M\" or a whole number of bytes";
const DURATION_FORMS: &str = "a duration such as \"30s\" or a whole number of seconds";
const CPUS_FORMS: &str = "a number of CPUs such as 0.5 or \"2\"";

impl Source<'_> {
    /// Locates the start of a byte range of the file.
    fn location(&self, span: Option<Range<usize>>) -> Location {
        Location {
            path: self.path.to_owned(),
            position: span.map(|span| position(self.text, span.start)),
        }
    }

    fn invalid(&self, key: &str, span: Range<usize>, message: String) -> SpecFileError {
        SpecFileError::InvalidValue {
            location: self.location(Some(span)),
            key: key.to_owned(),
            message,
        }
    }

    /// Converts an error of the TOML deserializer, such as a string given for a boolean, and
    /// names the key it is about.
    fn type_error(&self, entries: &[Entry], error: &toml::de::Error) -> SpecFileError {
        let key = error.span().map_or("", |span| key_at(entries, span.start));
        let message = if key.is_empty() {
            error.message().to_owned()
        } else {
            format!("{key}: {}", error.message())
        };
        SpecFileError::InvalidValue {
            location: self.location(error.span()),
            key: key.to_owned(),
            message,
        }
    }

    /// Rejects the first key not in [`KEYS`] and returns the span of every entry.
    fn check_keys(&self, table: &DeTable<'_>) -> Result<Vec<Entry>, SpecFileError> {
        let mut entries = Vec::with_capacity(table.len());
        for (key, value) in table {
            if !KEYS.contains(&key.get_ref().as_ref()) {
                return Err(SpecFileError::UnknownKey {
                    location: self.location(Some(key.span())),
                    key: key.get_ref().to_string(),
                });
            }
            entries.push(Entry {
                key: key.get_ref().to_string(),
                span: key.span().start..value.span().end,
            });
        }
        Ok(entries)
    }

    fn validate(&self, raw: RawSpecFile) -> Result<SpecFile, SpecFileError> {
        Ok(SpecFile {
            backend: raw.backend.map(|value| self.backend(value)).transpose()?,
            risk: raw.risk.map(|value| self.risk(value)).transpose()?,
            rootfs: raw
                .rootfs
                .map(|value| self.path("rootfs", value))
                .transpose()?,
            image: raw.image.map(|value| self.image(value)).transpose()?,
            kernel: raw
                .kernel
                .map(|value| self.path("kernel", value))
                .transpose()?,
            inner: raw.inner.map(|value| self.inner(value)).transpose()?,
            workspace: raw
                .workspace
                .map(|value| self.path("workspace", value))
                .transpose()?,
            workspace_mode: raw
                .workspace_mode
                .map(|value| self.workspace_mode(value))
                .transpose()?,
            env: self.env(raw.env.unwrap_or_default())?,
            memory: raw.memory.map(|value| self.memory(value)).transpose()?,
            cpus: raw.cpus.map(|value| self.cpus(value)).transpose()?,
            pids: raw.pids.map(|value| self.pids(value)).transpose()?,
            tmp_size: raw.tmp_size.map(|value| self.tmp_size(value)).transpose()?,
            timeout: raw
                .timeout
                .map(|value| self.duration("timeout", "timeout", value))
                .transpose()?,
            tty: raw.tty,
            allow_weaker: raw.allow_weaker,
            user: raw.user.map(|value| self.user(value)).transpose()?,
            name: raw.name.map(|value| self.name(value)).transpose()?,
            ttl: raw
                .ttl
                .map(|value| self.duration("ttl", "time to live", value))
                .transpose()?,
            command: raw.command.map(|value| self.command(value)).transpose()?,
        })
    }

    fn backend(&self, value: Spanned<String>) -> Result<String, SpecFileError> {
        BackendKind::from_str(value.get_ref())
            .map_err(|message| self.invalid("backend", value.span(), message))?;
        Ok(value.into_inner())
    }

    fn risk(&self, value: Spanned<String>) -> Result<RiskLevel, SpecFileError> {
        RiskLevel::from_str(value.get_ref())
            .map_err(|message| self.invalid("risk", value.span(), message))
    }

    /// Joins a relative path to the spec file's directory, so that the file means the same
    /// from any current directory.
    fn path(&self, key: &str, value: Spanned<String>) -> Result<PathBuf, SpecFileError> {
        if value.get_ref().is_empty() {
            let expected = if key == "kernel" {
                "a file"
            } else {
                "a directory"
            };
            let message = format!("{key} is empty: expected {expected} path");
            return Err(self.invalid(key, value.span(), message));
        }
        self.reject_nul(key, &value)?;
        let base = self.path.parent().unwrap_or(Path::new(""));
        Ok(base.join(value.get_ref()))
    }

    fn image(&self, value: Spanned<String>) -> Result<String, SpecFileError> {
        spec::parse_image(value.get_ref())
            .map_err(|message| self.invalid("image", value.span(), message))
    }

    fn inner(&self, value: Spanned<String>) -> Result<InnerBackend, SpecFileError> {
        InnerBackend::from_str(value.get_ref())
            .map_err(|message| self.invalid("inner", value.span(), message))
    }

    fn workspace_mode(&self, value: Spanned<String>) -> Result<WorkspaceMode, SpecFileError> {
        WorkspaceMode::from_str(value.get_ref())
            .map_err(|message| self.invalid("workspace_mode", value.span(), message))
    }

    /// Checks each variable as `--env` does.
    fn env(
        &self,
        table: BTreeMap<Spanned<String>, Spanned<String>>,
    ) -> Result<Vec<(String, OsString)>, SpecFileError> {
        let mut env = Vec::with_capacity(table.len());
        for (name, value) in table {
            // A name containing `=` would pass `parse_env`, which splits at the first `=`.
            let valid_name = !name.get_ref().contains('=')
                && spec::parse_env(&format!("{}=", name.get_ref())).is_ok();
            if !valid_name {
                let message = format!(
                    "invalid environment variable name {:?}: expected letters, digits and \
                     underscores, not starting with a digit",
                    name.get_ref()
                );
                return Err(self.invalid("env", name.span(), message));
            }
            if value.get_ref().contains('\0') {
                let message = format!(
                    "environment variable {:?} contains a NUL byte",
                    name.get_ref()
                );
                return Err(self.invalid("env", value.span(), message));
            }
            env.push((name.into_inner(), value.into_inner().into()));
        }
        Ok(env)
    }

    fn memory(&self, value: Spanned<Value>) -> Result<u64, SpecFileError> {
        let text = self.text_of("memory", "memory limit", SIZE_FORMS, &value, false)?;
        let bytes = size::parse_bytes("memory limit", &text)
            .map_err(|error| self.invalid("memory", value.span(), error.to_string()))?;
        if bytes < MIN_MEMORY {
            let message = format!(
                "memory limit {text} is too small: the sandbox needs at least {}",
                format_bytes(MIN_MEMORY)
            );
            return Err(self.invalid("memory", value.span(), message));
        }
        Ok(bytes)
    }

    fn tmp_size(&self, value: Spanned<Value>) -> Result<u64, SpecFileError> {
        let text = self.text_of("tmp_size", "tmp size", SIZE_FORMS, &value, false)?;
        let bytes = size::parse_bytes("tmp size", &text)
            .map_err(|error| self.invalid("tmp_size", value.span(), error.to_string()))?;
        if bytes < MIN_TMP_SIZE {
            let message = spec::tmp_size_too_small(&text);
            return Err(self.invalid("tmp_size", value.span(), message));
        }
        Ok(bytes)
    }

    fn cpus(&self, value: Spanned<Value>) -> Result<f64, SpecFileError> {
        let text = self.text_of("cpus", "cpu limit", CPUS_FORMS, &value, true)?;
        size::parse_cpus("cpu limit", &text)
            .map_err(|error| self.invalid("cpus", value.span(), error.to_string()))
    }

    fn pids(&self, value: Spanned<Value>) -> Result<u64, SpecFileError> {
        let expected = format!("a whole number from 1 to {MAX_PIDS}");
        let pids = match value.get_ref() {
            Value::Integer(pids) => *pids,
            other => {
                let message = format!("process limit must be {expected}, not {}", article(other));
                return Err(self.invalid("pids", value.span(), message));
            }
        };
        match u64::try_from(pids) {
            Ok(pids) if (1..=MAX_PIDS).contains(&pids) => Ok(pids),
            _ => {
                let message = format!("invalid process limit {pids}: expected {expected}");
                Err(self.invalid("pids", value.span(), message))
            }
        }
    }

    fn duration(
        &self,
        key: &str,
        label: &'static str,
        value: Spanned<Value>,
    ) -> Result<Duration, SpecFileError> {
        let text = self.text_of(key, label, DURATION_FORMS, &value, false)?;
        size::parse_duration(label, &text)
            .map_err(|error| self.invalid(key, value.span(), error.to_string()))
    }

    fn user(&self, value: Spanned<String>) -> Result<User, SpecFileError> {
        User::from_str(value.get_ref())
            .map_err(|message| self.invalid("user", value.span(), message))
    }

    fn name(&self, value: Spanned<String>) -> Result<String, SpecFileError> {
        validate_name(value.get_ref())
            .map_err(|message| self.invalid("name", value.span(), message))?;
        Ok(value.into_inner())
    }

    fn command(
        &self,
        value: Spanned<Vec<Spanned<String>>>,
    ) -> Result<Vec<OsString>, SpecFileError> {
        if value.get_ref().is_empty() {
            let message = "command is empty: give the program and its arguments, for example \
                           [\"python3\", \"-V\"]"
                .to_owned();
            return Err(self.invalid("command", value.span(), message));
        }
        let mut command = Vec::with_capacity(value.get_ref().len());
        for argument in value.into_inner() {
            self.reject_nul("command", &argument)?;
            command.push(argument.into_inner().into());
        }
        Ok(command)
    }

    /// Rejects a string with a NUL byte, which no path or argument of a process can contain.
    fn reject_nul(&self, key: &str, value: &Spanned<String>) -> Result<(), SpecFileError> {
        if !value.get_ref().contains('\0') {
            return Ok(());
        }
        let message = format!("{key} {:?} contains a NUL byte", value.get_ref());
        Err(self.invalid(key, value.span(), message))
    }

    /// Returns a string or integer value as text for the command line's parsers, and a float
    /// too when `float` is set. Other types are rejected with a message that names the value
    /// by `label` and lists the accepted `forms`.
    fn text_of(
        &self,
        key: &str,
        label: &str,
        forms: &str,
        value: &Spanned<Value>,
        float: bool,
    ) -> Result<String, SpecFileError> {
        match value.get_ref() {
            Value::String(text) => Ok(text.clone()),
            Value::Integer(number) => Ok(number.to_string()),
            Value::Float(number) if float => Ok(number.to_string()),
            other => {
                let message = format!("{label} must be {forms}, not {}", article(other));
                Err(self.invalid(key, value.span(), message))
            }
        }
    }
}

/// Converts a byte offset into `text` to a line and column.
fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// Names the TOML type of `value` with its article, for messages: "a string", "an array".
fn article(value: &Value) -> String {
    let type_name = value.type_str();
    if type_name.starts_with(|c: char| "aeiou".contains(c)) {
        format!("an {type_name}")
    } else {
        format!("a {type_name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
backend = "namespace"
risk = "medium"
rootfs = "/srv/rootfs"
image = "debian:bookworm"
kernel = "vmlinuz-6.1.0-1-cloud-amd64"
inner = "namespace"
workspace = "project"
workspace_mode = "readonly"
memory = "512M"
cpus = 0.5
pids = 256
tmp_size = 134217728
timeout = "10m"
tty = true
allow_weaker = true
user = "1000:100"
name = "build-1.x_y"
ttl = 7200
command = ["make", "test"]

[env]
RUST_LOG = "debug"
A = "1=2"
"#;

    fn parse_at(text: &str) -> Result<SpecFile, SpecFileError> {
        parse(text, Path::new("dir/spec.toml"))
    }

    /// Returns the file, line and column of an error.
    fn location_of(error: &SpecFileError) -> (String, usize, usize) {
        let location = match error {
            SpecFileError::Syntax { location, .. }
            | SpecFileError::UnknownKey { location, .. }
            | SpecFileError::InvalidValue { location, .. } => location,
            SpecFileError::Read { .. } | SpecFileError::CommandForCreate { .. } => {
                panic!("this error has no location: {error}")
            }
        };
        let position = location.position.expect("error has a position");
        (
            location.path.display().to_string(),
            position.line,
            position.column,
        )
    }

    #[test]
    fn full_file_parses_every_key() {
        let file = parse_at(FULL).unwrap();
        let expected = SpecFile {
            backend: Some("namespace".into()),
            risk: Some(RiskLevel::Medium),
            rootfs: Some("/srv/rootfs".into()),
            image: Some("debian:bookworm".into()),
            kernel: Some("dir/vmlinuz-6.1.0-1-cloud-amd64".into()),
            inner: Some(InnerBackend::Namespace),
            workspace: Some("dir/project".into()),
            workspace_mode: Some(WorkspaceMode::Readonly),
            env: vec![
                ("A".into(), "1=2".into()),
                ("RUST_LOG".into(), "debug".into()),
            ],
            memory: Some(512 << 20),
            cpus: Some(0.5),
            pids: Some(256),
            tmp_size: Some(128 << 20),
            timeout: Some(Duration::from_secs(600)),
            tty: Some(true),
            allow_weaker: Some(true),
            user: Some(User {
                uid: 1000,
                gid: 100,
            }),
            name: Some("build-1.x_y".into()),
            ttl: Some(Duration::from_secs(7200)),
            command: Some(vec!["make".into(), "test".into()]),
        };
        assert_eq!(file, expected);
    }

    #[test]
    fn unknown_inner_backend_reports_value_position() {
        let error = parse_at("tty = true\ninner = \"docker\"\n").unwrap_err();
        assert!(matches!(&error, SpecFileError::InvalidValue { key, .. } if key == "inner"));
        assert_eq!(location_of(&error), ("dir/spec.toml".into(), 2, 9));
        assert!(error.to_string().contains("expected namespace"), "{error}");
    }

    #[test]
    fn kernel_and_inner_applied_from_file() {
        let file =
            parse_at("kernel = \"/boot/vmlinuz-6.1.0-1-cloud-amd64\"\ninner = \"namespace\"")
                .unwrap();
        let mut spec = Spec::new(Vec::new());
        file.apply(&mut spec, &|_| false);
        assert_eq!(
            spec.kernel.as_deref(),
            Some(Path::new("/boot/vmlinuz-6.1.0-1-cloud-amd64"))
        );
        assert_eq!(spec.inner, Some(InnerBackend::Namespace));
        let mut overridden = Spec::new(Vec::new());
        file.apply(&mut overridden, &|option| {
            option == "kernel" || option == "inner"
        });
        assert_eq!(overridden.kernel, None);
        assert_eq!(overridden.inner, None);
    }

    #[test]
    fn empty_file_gives_nothing() {
        assert_eq!(parse_at("").unwrap(), SpecFile::default());
    }

    #[test]
    fn integers_and_strings_are_both_accepted() {
        let file = parse_at("memory = 33554432\ncpus = \"2\"\ntimeout = 90\nttl = \"1h\"").unwrap();
        assert_eq!(file.memory, Some(32 << 20));
        assert_eq!(file.cpus, Some(2.0));
        assert_eq!(file.timeout, Some(Duration::from_secs(90)));
        assert_eq!(file.ttl, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn unknown_key_reports_line_and_column() {
        let error = parse_at("tty = true\n\nmemroy = \"1G\"\n").unwrap_err();
        assert!(matches!(&error, SpecFileError::UnknownKey { key, .. } if key == "memroy"));
        assert_eq!(location_of(&error), ("dir/spec.toml".into(), 3, 1));
        let message = error.to_string();
        assert!(
            message.starts_with(
                "dir/spec.toml:3:1: unknown key \"memroy\": expected one of backend, risk, rootfs,"
            ),
            "{message}"
        );
    }

    #[test]
    fn bad_image_reports_value_position() {
        let error = parse_at("tty = true\nimage = \"Bad Image\"\n").unwrap_err();
        assert!(matches!(&error, SpecFileError::InvalidValue { key, .. } if key == "image"));
        assert_eq!(location_of(&error), ("dir/spec.toml".into(), 2, 9));
        assert!(error.to_string().contains("invalid image"), "{error}");
    }

    #[test]
    fn bad_memory_reports_value_position() {
        let error = parse_at("tty = true\nmemory   = \"12Q\"\n").unwrap_err();
        assert!(matches!(&error, SpecFileError::InvalidValue { key, .. } if key == "memory"));
        assert_eq!(location_of(&error).1, 2);
        assert_eq!(location_of(&error).2, 12);
        let message = error.to_string();
        assert!(
            message.starts_with(
                "dir/spec.toml:2:12: invalid memory limit \"12Q\": expected a whole number"
            ),
            "{message}"
        );
    }

    #[test]
    fn tmp_size_without_unit_is_rejected() {
        let error = parse_at("tmp_size = \"512\"").unwrap_err();
        assert!(error.to_string().contains("too small"), "{error}");
        assert!(error.to_string().contains("512M"), "{error}");
    }

    #[test]
    fn memory_below_minimum_is_rejected() {
        let error = parse_at("memory = \"1M\"").unwrap_err();
        assert!(error.to_string().contains("too small"), "{error}");
    }

    #[test]
    fn bad_type_reports_its_position() {
        let error = parse_at("\npids = \"many\"").unwrap_err();
        assert_eq!(location_of(&error).1, 2);
        assert_eq!(location_of(&error).2, 8);
        assert!(
            error
                .to_string()
                .contains("process limit must be a whole number from 1 to"),
            "{error}"
        );

        let error = parse_at("cpus = 1\ntty = \"yes\"").unwrap_err();
        assert!(matches!(&error, SpecFileError::InvalidValue { key, .. } if key == "tty"));
        assert_eq!(location_of(&error).1, 2);
        assert_eq!(location_of(&error).2, 7);
        assert!(
            error
                .to_string()
                .contains("tty: invalid type: string \"yes\""),
            "{error}"
        );

        let error = parse_at("command = [\"ls\", 1]").unwrap_err();
        assert_eq!(location_of(&error).2, 18);
        assert!(
            error.to_string().contains("command: invalid type: integer"),
            "{error}"
        );

        let error = parse_at("memory = true").unwrap_err();
        assert!(error.to_string().contains("memory limit must be a size such as \"512M\" or a whole number of bytes, not a boolean"), "{error}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        for text in [
            "pids = 0",
            "pids = -1",
            "pids = 4194304",
            "cpus = 0",
            "cpus = 5000",
            "timeout = \"5 days\"",
            "ttl = 0",
            "tmp_size = 0",
            "memory = 1.5",
            "backend = \"qemu\"",
            "risk = \"severe\"",
            "workspace_mode = \"copy\"",
            "workspace = \"\"",
            "rootfs = \"a\\u0000b\"",
            "command = []",
            "command = [\"a\\u0000b\"]",
            "name = \"-x\"",
            "user = \"nobody\"",
            "user = \"1000:\"",
        ] {
            let error = parse_at(text).unwrap_err();
            assert!(
                matches!(&error, SpecFileError::InvalidValue { key, .. } if text.starts_with(key.as_str())),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn syntax_error_reports_position() {
        let error = parse_at("tty = true\nmemory = = 1\n").unwrap_err();
        assert!(matches!(error, SpecFileError::Syntax { .. }), "{error}");
        assert_eq!(location_of(&error).1, 2);
        assert_eq!(location_of(&error).2, 10, "{error}");
        assert!(
            error
                .to_string()
                .starts_with("dir/spec.toml:2:10: invalid TOML:"),
            "{error}"
        );

        let error = parse_at("tty = true\ntty = false\n").unwrap_err();
        assert!(matches!(error, SpecFileError::Syntax { .. }), "{error}");
        assert_eq!(location_of(&error).1, 2);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let error = parse_at("name = \"é\" ; tty = 1").unwrap_err();
        assert_eq!(location_of(&error), ("dir/spec.toml".into(), 1, 12));
    }

    #[test]
    fn relative_paths_resolve_against_file_directory() {
        let file = parse(
            "workspace = \"../project\"\nrootfs = \"trees/debian\"",
            Path::new("/etc/airlock/spec.toml"),
        )
        .unwrap();
        assert_eq!(
            file.workspace,
            Some(PathBuf::from("/etc/airlock/../project"))
        );
        assert_eq!(
            file.rootfs,
            Some(PathBuf::from("/etc/airlock/trees/debian"))
        );

        let file = parse("workspace = \"project\"", Path::new("spec.toml")).unwrap();
        assert_eq!(file.workspace, Some(PathBuf::from("project")));

        let file = parse("workspace = \"/abs\"", Path::new("/etc/spec.toml")).unwrap();
        assert_eq!(file.workspace, Some(PathBuf::from("/abs")));
    }

    #[test]
    fn load_resolves_against_file_directory() {
        let dir = std::env::temp_dir().join(format!("airlock-specfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spec.toml");
        std::fs::write(&path, "workspace = \"project\"\n").unwrap();
        let file = load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(file.unwrap().workspace, Some(dir.join("project")));
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let error = load(Path::new("/nonexistent/airlock/spec.toml")).unwrap_err();
        assert!(matches!(error, SpecFileError::Read { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/airlock/spec.toml"));
    }

    #[test]
    fn command_line_options_win_over_file() {
        let file = parse_at(FULL).unwrap();
        let mut spec = Spec::new(vec!["true".into()]);
        spec.limits.memory = Limit::requested(1 << 30);
        spec.limits.tmp_size = 1 << 20;
        spec.workspace_mode = WorkspaceMode::Bind;
        let given = |option: &str| matches!(option, "memory" | "tmp-size" | "workspace-mode");
        file.apply(&mut spec, &given);

        assert_eq!(spec.limits.memory, Limit::requested(1 << 30));
        assert_eq!(spec.limits.tmp_size, 1 << 20);
        assert_eq!(spec.workspace_mode, WorkspaceMode::Bind);
        assert_eq!(spec.command, [OsString::from("true")]);

        assert_eq!(spec.limits.pids, Limit::requested(256));
        assert_eq!(spec.limits.cpus, Limit::requested(Some(0.5)));
        assert_eq!(spec.limits.timeout, Some(Duration::from_secs(600)));
        assert_eq!(spec.rootfs, RootFs::Directory("/srv/rootfs".into()));
        assert_eq!(spec.workspace, Some("dir/project".into()));
        assert_eq!(spec.name.as_deref(), Some("build-1.x_y"));
        assert_eq!(spec.ttl, Some(Duration::from_secs(7200)));
        assert!(spec.tty);
        assert!(spec.allow_weaker);
        assert_eq!(
            spec.user,
            Some(User {
                uid: 1000,
                gid: 100
            })
        );
    }

    #[test]
    fn user_key_accepts_root_and_ids() {
        let root = parse_at("user = \"root\"").unwrap();
        assert_eq!(root.user, Some(User::ROOT));
        let uid_only = parse_at("user = \"65534\"").unwrap();
        assert_eq!(
            uid_only.user,
            Some(User {
                uid: 65534,
                gid: 65534
            })
        );
        let error = parse_at("tty = true\nuser = \"alice\"").unwrap_err();
        assert_eq!(location_of(&error), ("dir/spec.toml".into(), 2, 8));
        assert!(
            error.to_string().contains("invalid user \"alice\""),
            "{error}"
        );
        let error = parse_at("user = 0").unwrap_err();
        assert!(
            error.to_string().contains("user: invalid type: integer"),
            "{error}"
        );
    }

    #[test]
    fn command_line_user_wins_over_file() {
        let file = parse_at("user = \"root\"").unwrap();
        let mut spec = Spec::new(vec!["true".into()]);
        let given_user = User { uid: 7, gid: 7 };
        spec.user = Some(given_user);
        file.apply(&mut spec, &|option| option == "user");
        assert_eq!(spec.user, Some(given_user));
        file.apply(&mut spec, &|_| false);
        assert_eq!(spec.user, Some(User::ROOT));
    }

    #[test]
    fn file_command_fills_empty_command_line() {
        let file = parse_at(FULL).unwrap();
        let mut spec = Spec::new(vec![]);
        file.apply(&mut spec, &|_| false);
        assert_eq!(spec.command, [OsString::from("make"), "test".into()]);
    }

    #[test]
    fn env_from_file_comes_before_command_line() {
        let file = parse_at("env = { A = \"file\", B = \"file\" }").unwrap();
        let mut spec = Spec::new(vec!["true".into()]);
        spec.env = vec![spec::parse_env("A=cli").unwrap()];
        file.apply(&mut spec, &|option| option == "env");

        let expected: Vec<(String, OsString)> = vec![
            ("A".into(), "file".into()),
            ("B".into(), "file".into()),
            ("A".into(), "cli".into()),
        ];
        assert_eq!(spec.env, expected);
        let environment = spec.environment(|_| None);
        let a = environment.iter().find(|(key, _)| key == "A").unwrap();
        assert_eq!(a.1, "cli");
    }

    #[test]
    fn env_rejects_bad_names_and_values() {
        for text in [
            "[env]\n\"1A\" = \"x\"",
            "[env]\n\"A-B\" = \"x\"",
            "[env]\n\"A=B\" = \"x\"",
            "[env]\n\"\" = \"x\"",
        ] {
            let error = parse_at(text).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("invalid environment variable name"),
                "{text}: {error}"
            );
            assert_eq!(location_of(&error).1, 2, "{text}");
            assert_eq!(location_of(&error).2, 1, "{text}");
        }
        let error = parse_at("[env]\nA = \"x\\u0000\"").unwrap_err();
        assert_eq!(location_of(&error).2, 5, "{error}");
        let error = parse_at("[env]\nA = 1").unwrap_err();
        assert!(
            error.to_string().contains("env: invalid type: integer"),
            "{error}"
        );
    }

    #[test]
    fn name_validation_accepts_and_rejects() {
        let longest = "x".repeat(MAX_NAME_LENGTH);
        for good in [
            "a",
            "build-1",
            "my_box.v2",
            ".hidden",
            "_x",
            "9",
            longest.as_str(),
        ] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        let too_long = "a".repeat(MAX_NAME_LENGTH + 1);
        for bad in [
            "",
            "-x",
            ".",
            "..",
            "d2fdf7e5",
            "cafe",
            "a b",
            "a/b",
            "é",
            "a\0",
            too_long.as_str(),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("a b").unwrap_err().contains("\"a b\""));
    }
}
