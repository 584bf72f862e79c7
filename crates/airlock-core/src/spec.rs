//! The sandbox spec: what a sandbox contains and which limits apply, independent of backend.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::size::format_bytes;

/// Default memory limit: enough for a compiler or a test suite, small enough to stop a leak.
pub const DEFAULT_MEMORY: u64 = 2 << 30;
/// Default limit on processes and threads in the sandbox, low enough to stop a fork bomb.
pub const DEFAULT_PIDS: u64 = 1024;
/// Largest process limit: the kernel's limit on process ids, 2^22, less one for the init.
pub const MAX_PIDS: u64 = (1 << 22) - 1;
/// Smallest memory limit: less cannot start a dynamically linked command and its init.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Describes a `--tmp-size` below [`MIN_TMP_SIZE`], as given in `value`.
pub fn tmp_size_too_small(value: &str) -> String {
    format!(
        "tmp size {value} is too small: /tmp needs at least {}; give a unit, as in 512M",
        crate::size::format_bytes(MIN_TMP_SIZE)
    )
}

/// The smallest `/tmp` a sandbox gets: a bare number is bytes, so this catches a size given
/// without its unit, such as `512` for 512M.
pub const MIN_TMP_SIZE: u64 = 1 << 20;
/// Default size of the sandbox's private /tmp.
pub const DEFAULT_TMP_SIZE: u64 = 512 << 20;
/// Search path inside the sandbox.
pub const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Home directory inside the sandbox; /tmp is writable, so tools can keep caches there.
pub const SANDBOX_HOME: &str = "/tmp";
/// Mount point of the workspace inside the sandbox, also the working directory.
pub const SANDBOX_WORKSPACE: &str = "/workspace";
/// Host variables copied into the sandbox when set. Every other host variable is dropped.
pub const PASSED_HOST_VARIABLES: [&str; 2] = ["LANG", "TERM"];

/// Where a setting came from. A limit the caller asked for must be enforced in full, while a
/// default is applied as far as the host allows and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Default,
    Requested,
}

/// One limit with its origin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limit<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Limit<T> {
    pub fn default_value(value: T) -> Self {
        Self {
            value,
            origin: Origin::Default,
        }
    }

    pub fn requested(value: T) -> Self {
        Self {
            value,
            origin: Origin::Requested,
        }
    }

    /// Whether the caller set this limit, so that a weaker enforcement must fail creation.
    pub fn is_requested(&self) -> bool {
        self.origin == Origin::Requested
    }
}

/// Resource limits of a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory of all processes together, in bytes, /tmp included.
    pub memory: Limit<u64>,
    /// CPU time per wall-clock second, in CPUs; `None` for no cap.
    pub cpus: Limit<Option<f64>>,
    /// Processes and threads alive at once.
    pub pids: Limit<u64>,
    /// Size of the private /tmp, in bytes.
    pub tmp_size: u64,
    /// Wall-clock time before the whole sandbox is killed; `None` for no limit.
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: Limit::default_value(DEFAULT_MEMORY),
            cpus: Limit::default_value(None),
            pids: Limit::default_value(DEFAULT_PIDS),
            tmp_size: DEFAULT_TMP_SIZE,
            timeout: None,
        }
    }
}

impl Limits {
    /// Describes the limits for help text and logs, for example "memory 2G, pids 1024".
    pub fn summary(&self) -> String {
        let cpus = self
            .cpus
            .value
            .map_or_else(|| "all".to_owned(), |cpus| cpus.to_string());
        let timeout = self
            .timeout
            .map_or_else(|| "none".to_owned(), |timeout| format!("{timeout:?}"));
        format!(
            "memory {}, cpus {cpus}, pids {}, tmp {}, timeout {timeout}",
            format_bytes(self.memory.value),
            self.pids.value,
            format_bytes(self.tmp_size),
        )
    }
}

/// The root filesystem a sandbox sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootFs {
    /// A read-only view of the host's system directories, with secrets hidden.
    HostView,
    /// A directory holding a whole root filesystem, such as a debootstrap tree, read-only.
    Directory(PathBuf),
}

/// How the workspace appears in the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    /// The project under a copy-on-write overlay: writes go to an upper layer in the state
    /// directory and reach the host only through `airlock apply`.
    #[default]
    Overlay,
    /// The project itself, read-write: writes reach the host at once.
    Bind,
    /// The project, read-only.
    Readonly,
    /// No workspace: /workspace is an empty directory.
    None,
}

impl WorkspaceMode {
    pub const ALL: [WorkspaceMode; 4] = [
        WorkspaceMode::Overlay,
        WorkspaceMode::Bind,
        WorkspaceMode::Readonly,
        WorkspaceMode::None,
    ];

    /// Returns the name users pass to `--workspace-mode`.
    pub fn name(self) -> &'static str {
        match self {
            WorkspaceMode::Overlay => "overlay",
            WorkspaceMode::Bind => "bind",
            WorkspaceMode::Readonly => "readonly",
            WorkspaceMode::None => "none",
        }
    }
}

impl std::fmt::Display for WorkspaceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| {
                format!("unknown workspace mode {name:?}: expected one of overlay, bind, readonly, none")
            })
    }
}

/// Everything needed to create a sandbox and run one command in it. It is stored with a
/// persistent sandbox, so that `airlock start` recreates the same sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The command and its arguments; the first element is searched in the sandbox's PATH.
    pub command: Vec<OsString>,
    pub rootfs: RootFs,
    /// Host directory shown at /workspace, or `None` for an empty /workspace.
    pub workspace: Option<PathBuf>,
    /// How the workspace is shown: overlay, bind, read-only or not at all.
    pub workspace_mode: WorkspaceMode,
    /// A readable name for a persistent sandbox, unique among the caller's sandboxes.
    pub name: Option<String>,
    /// How long a persistent sandbox lives before it removes itself; `None` for no limit.
    pub ttl: Option<Duration>,
    /// Variables set inside the sandbox besides the defaults, in order; later ones win.
    pub env: Vec<(String, OsString)>,
    pub limits: Limits,
    /// Give the command a new pseudo-terminal.
    pub tty: bool,
    /// Accept protections weaker than the spec requires instead of failing creation.
    pub allow_weaker: bool,
    /// The user the command runs as inside; `None` for the backend's default.
    #[serde(default)]
    pub user: Option<User>,
    /// A local image of the container engine that the docker backend runs, such as
    /// `debian:bookworm`; the other backends reject a spec that names one.
    #[serde(default)]
    pub image: Option<String>,
    /// The guest kernel image of a virtual machine backend; `None` for the backend's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// The backend that runs each command inside the machine of a virtual machine backend;
    /// `None` to run commands in the machine directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner: Option<InnerBackend>,
}

/// A process-level backend that runs inside the machine a machine-level backend provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InnerBackend {
    /// Airlock's namespace backend, run by the agent inside the machine.
    Namespace,
}

impl InnerBackend {
    /// Returns the name users pass to `--inner`.
    pub fn name(self) -> &'static str {
        match self {
            InnerBackend::Namespace => "namespace",
        }
    }
}

impl std::str::FromStr for InnerBackend {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "namespace" => Ok(InnerBackend::Namespace),
            other => Err(format!(
                "unknown inner backend {other:?}: expected namespace, the one a machine can run inside it"
            )),
        }
    }
}

/// A user and group id inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub const ROOT: User = User { uid: 0, gid: 0 };
}

impl std::str::FromStr for User {
    type Err = String;

    /// Parses `root`, `UID` (the group is the same number) or `UID:GID`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "root" {
            return Ok(User::ROOT);
        }
        let number = |part: &str| match part.parse::<u32>() {
            // The kernel reads -1 as "leave unchanged" in setresuid and friends.
            Ok(u32::MAX) => Err(format!(
                "invalid user {text:?}: {} is reserved and names no user; pick another id",
                u32::MAX
            )),
            Ok(id) => Ok(id),
            Err(_) => Err(format!(
                "invalid user {text:?}: expected root, a numeric UID, or UID:GID"
            )),
        };
        match text.split_once(':') {
            Some((uid, gid)) => Ok(User {
                uid: number(uid)?,
                gid: number(gid)?,
            }),
            None => {
                let uid = number(text)?;
                Ok(User { uid, gid: uid })
            }
        }
    }
}

/// A spec that cannot describe a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command given: pass one after `--`, for example `airlock run -- python3 -V`")]
    NoCommand,
    #[error(
        "workspace {0:?} does not exist: create it or pass another directory with --workspace"
    )]
    WorkspaceMissing(PathBuf),
    #[error("workspace {0:?} is not a directory: pass a directory with --workspace")]
    WorkspaceNotDirectory(PathBuf),
    #[error("root filesystem {0:?} does not exist: pass a directory holding a root filesystem to --rootfs")]
    RootFsMissing(PathBuf),
    #[error("root filesystem {0:?} is not a directory: pass a directory holding a root filesystem to --rootfs")]
    RootFsNotDirectory(PathBuf),
    #[error("root filesystem {0:?} has no usr/ or bin/ directory: pass the top of a root filesystem, such as a debootstrap tree")]
    RootFsNotRoot(PathBuf),
    #[error("workspace {path:?} cannot be read by this user ({cause}): pass a directory you can read and write")]
    WorkspaceUnreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("workspace {0:?} is a system or shared directory, or a whole home directory, which the sandbox must not write: pass a project directory with --workspace")]
    WorkspaceIsSystem(PathBuf),
    #[error("root filesystem \"/\" would show the host's secrets: omit --rootfs to get a read-only view of the host with secrets hidden")]
    RootFsIsHostRoot,
    #[error("invalid environment variable {0:?}: expected KEY=VALUE with a non-empty KEY of letters, digits and underscores")]
    InvalidEnv(String),
    #[error("cannot resolve {path:?}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Spec {
    /// Creates a spec for `command` with every other field at its default.
    pub fn new(command: Vec<OsString>) -> Self {
        Self {
            command,
            rootfs: RootFs::HostView,
            workspace: None,
            workspace_mode: WorkspaceMode::default(),
            name: None,
            ttl: None,
            env: Vec::new(),
            limits: Limits::default(),
            tty: false,
            allow_weaker: false,
            user: None,
            image: None,
            kernel: None,
            inner: None,
        }
    }

    /// Checks the spec against the host and makes its paths absolute and free of symlinks, so
    /// a backend can mount them from anywhere.
    pub fn validate(&mut self) -> Result<(), SpecError> {
        if self.command.is_empty() {
            return Err(SpecError::NoCommand);
        }
        self.validate_sandbox()
    }

    /// Checks everything but the command, for a sandbox created without one.
    pub fn validate_sandbox(&mut self) -> Result<(), SpecError> {
        if let Some(workspace) = &self.workspace {
            let workspace = resolve_directory(
                workspace,
                SpecError::WorkspaceMissing,
                SpecError::WorkspaceNotDirectory,
            )?;
            if is_system_path(&workspace) {
                return Err(SpecError::WorkspaceIsSystem(workspace));
            }
            if let Err(cause) = std::fs::read_dir(&workspace) {
                return Err(SpecError::WorkspaceUnreadable {
                    path: workspace,
                    cause,
                });
            }
            // The path stays as the caller gave it, made absolute and lexically normal, so a
            // backend running as root can refuse symlinks that the checks above followed.
            let given = self.workspace.take().unwrap_or_default();
            self.workspace =
                Some(
                    lexically_absolute(&given).map_err(|source| SpecError::Resolve {
                        path: given.clone(),
                        source,
                    })?,
                );
        }
        if let RootFs::Directory(root) = &self.rootfs {
            let root = resolve_directory(
                root,
                SpecError::RootFsMissing,
                SpecError::RootFsNotDirectory,
            )?;
            if root == Path::new("/") {
                return Err(SpecError::RootFsIsHostRoot);
            }
            if !root.join("usr").is_dir() && !root.join("bin").is_dir() {
                return Err(SpecError::RootFsNotRoot(root));
            }
            self.rootfs = RootFs::Directory(root);
        }
        Ok(())
    }

    /// Builds the sandbox's environment: the defaults, the passed host variables, then the
    /// caller's variables.
    pub fn environment(&self, host: impl Fn(&str) -> Option<OsString>) -> Vec<(String, OsString)> {
        let mut env: Vec<(String, OsString)> = vec![
            ("PATH".into(), SANDBOX_PATH.into()),
            ("HOME".into(), SANDBOX_HOME.into()),
        ];
        for name in PASSED_HOST_VARIABLES {
            if let Some(value) = host(name) {
                env.push((name.into(), value));
            }
        }
        for (key, value) in &self.env {
            env.retain(|(existing, _)| existing != key);
            env.push((key.clone(), value.clone()));
        }
        env
    }
}

/// Host trees that no workspace may be in: the system directories, whose files run as root
/// on the host, the kernel's and runtime file systems, the spools of cron and mail, and the
/// state, logs and caches of system services (Airlock's own state among them).
const SYSTEM_TREES: [&str; 17] = [
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/spool",
    "/var/lib",
    "/var/log",
    "/var/cache",
];
/// Directory names that hold credentials; no workspace may be in one.
const SECRET_DIR_NAMES: [&str; 2] = [".ssh", ".gnupg"];
/// Host directories that may hold projects but are too broad to be a workspace themselves:
/// the whole of them would be writable, other users' files included.
const SHARED_DIRS: [&str; 9] = [
    "/", "/var", "/opt", "/srv", "/home", "/tmp", "/var/tmp", "/mnt", "/media",
];

/// Returns the home directory that `path` is in or is: /root, or /home/NAME.
fn home_of(path: &Path) -> Option<PathBuf> {
    if path.starts_with("/root") {
        return Some(PathBuf::from("/root"));
    }
    let name = path.strip_prefix("/home").ok()?.components().next()?;
    Some(Path::new("/home").join(name))
}

/// Returns whether `path`, absolute and free of symlinks, must not be a workspace: inside a
/// system tree, one of the shared directories, a whole home directory (/root or /home/NAME),
/// or inside a hidden directory of a home, where shells and tools keep their start-up files.
pub fn is_system_path(path: &Path) -> bool {
    let in_tree = SYSTEM_TREES.iter().any(|tree| path.starts_with(tree));
    let shared = SHARED_DIRS.iter().any(|dir| path == Path::new(dir));
    let home = home_of(path).is_some_and(|home| {
        let below = path
            .strip_prefix(&home)
            .map(|rest| rest.components().next());
        match below {
            Ok(None) => true,
            Ok(Some(first)) => first.as_os_str().to_string_lossy().starts_with('.'),
            Err(_) => false,
        }
    });
    let secret = path.components().any(|component| {
        SECRET_DIR_NAMES
            .iter()
            .any(|name| component.as_os_str() == *name)
    });
    in_tree || shared || home || secret
}

/// Maximum length of an image reference, in bytes: the limit Docker Engine puts on a
/// repository name.
pub const MAX_IMAGE_LENGTH: usize = 255;

/// Checks an image reference such as `debian:bookworm`, `registry.example:5000/team/tool:1.2`
/// or `name@sha256:HEX`: letters, digits and `.`, `_`, `-`, `/`, `:`, `@`, starting with a
/// letter or digit, in the grammar of [`ImageRef`](crate::image_ref::ImageRef).
pub fn parse_image(text: &str) -> Result<String, String> {
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@');
    let valid = !text.is_empty()
        && text.len() <= MAX_IMAGE_LENGTH
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.chars().all(allowed)
        && !text.contains("//");
    if !valid {
        return Err(format!(
            "invalid image {text:?}: expected a reference such as debian:bookworm or \
             registry.example/team/tool:1.2, of at most {MAX_IMAGE_LENGTH} letters, digits \
             and '.', '_', '-', '/', ':', '@'"
        ));
    }
    crate::image_ref::ImageRef::parse(text).map_err(|rule| {
        format!(
            "invalid image {text:?}: {rule}; for example debian:bookworm or 127.0.0.1:5000/tools:1"
        )
    })?;
    Ok(text.to_owned())
}

/// Parses one `KEY=VALUE` environment assignment.
pub fn parse_env(assignment: &str) -> Result<(String, OsString), SpecError> {
    let invalid = || SpecError::InvalidEnv(assignment.to_owned());
    let (key, value) = assignment.split_once('=').ok_or_else(invalid)?;
    let valid_key = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key || value.contains('\0') {
        return Err(invalid());
    }
    Ok((key.to_owned(), value.into()))
}

/// Makes `path` absolute against the current directory and removes `.` and `..` components
/// without looking at the file system.
pub fn lexically_absolute(path: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path)?;
    let mut normal = PathBuf::from("/");
    for component in absolute.components() {
        match component {
            Component::Normal(name) => normal.push(name),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(normal)
}

fn resolve_directory(
    path: &Path,
    missing: fn(PathBuf) -> SpecError,
    not_directory: fn(PathBuf) -> SpecError,
) -> Result<PathBuf, SpecError> {
    let resolved = match path.canonicalize() {
        Ok(resolved) => resolved,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(missing(path.to_owned()))
        }
        Err(source) => {
            return Err(SpecError::Resolve {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !resolved.is_dir() {
        return Err(not_directory(path.to_owned()));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_parses_root_ids_and_rejects_reserved() {
        assert_eq!("root".parse::<User>(), Ok(User::ROOT));
        assert_eq!(
            "1000".parse::<User>(),
            Ok(User {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!("1000:50".parse::<User>(), Ok(User { uid: 1000, gid: 50 }));
        assert!("4294967295".parse::<User>().is_err());
        assert!("5:4294967295".parse::<User>().is_err());
        assert!("bob".parse::<User>().is_err());
    }

    #[test]
    fn validate_rejects_empty_command() {
        let mut spec = Spec::new(vec![]);
        assert!(matches!(spec.validate(), Err(SpecError::NoCommand)));
    }

    #[test]
    fn validate_rejects_missing_workspace() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.workspace = Some("/nonexistent/airlock-workspace".into());
        let error = spec.validate().unwrap_err();
        assert!(matches!(error, SpecError::WorkspaceMissing(_)));
        assert!(error.to_string().contains("/nonexistent/airlock-workspace"));
    }

    #[test]
    fn validate_rejects_file_as_workspace() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.workspace = Some("/etc/hostname".into());
        assert!(matches!(
            spec.validate(),
            Err(SpecError::WorkspaceNotDirectory(_))
        ));
    }

    #[test]
    fn validate_rejects_system_workspaces() {
        let rejected = [
            "/",
            "/usr",
            "/usr/local/bin",
            "/etc",
            "/etc/ssh",
            "/root",
            "/home",
            "/tmp",
            "/var/tmp",
            "/proc/self",
            "/sys",
            "/dev",
            "/dev/shm",
        ];
        for system in rejected {
            let mut spec = Spec::new(vec!["true".into()]);
            spec.workspace = Some(system.into());
            let error = spec.validate().unwrap_err();
            assert!(
                matches!(error, SpecError::WorkspaceIsSystem(_)),
                "{system}: {error}"
            );
        }
        let allowed = std::env::temp_dir().join(format!("airlock-spec-{}", std::process::id()));
        std::fs::create_dir_all(&allowed).unwrap();
        let mut spec = Spec::new(vec!["true".into()]);
        spec.workspace = Some(allowed.clone());
        let result = spec.validate();
        std::fs::remove_dir(&allowed).unwrap();
        assert!(
            result.is_ok(),
            "a directory below /tmp is an ordinary project directory"
        );
        assert!(!is_system_path(Path::new("/home/alice/project")));
        assert!(is_system_path(Path::new("/home/alice")));
        assert!(is_system_path(Path::new("/home/alice/.ssh")));
        assert!(is_system_path(Path::new("/home/alice/.config/autostart")));
        assert!(is_system_path(Path::new("/root")));
        assert!(is_system_path(Path::new("/root/.cache")));
        assert!(!is_system_path(Path::new("/root/project")));
        assert!(!is_system_path(Path::new("/root/project/.git")));
        assert!(is_system_path(Path::new("/var/spool/cron/crontabs")));
    }

    #[test]
    fn lexical_paths_drop_dots() {
        assert_eq!(
            lexically_absolute(Path::new("/a/./b/../c")).unwrap(),
            Path::new("/a/c")
        );
        assert_eq!(
            lexically_absolute(Path::new("/..")).unwrap(),
            Path::new("/")
        );
        assert!(lexically_absolute(Path::new("rel")).unwrap().is_absolute());
    }

    #[test]
    fn validate_rejects_host_root_as_rootfs() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.rootfs = RootFs::Directory("/".into());
        assert!(matches!(spec.validate(), Err(SpecError::RootFsIsHostRoot)));
    }

    #[test]
    fn validate_rejects_directory_that_is_not_a_root() {
        let mut spec = Spec::new(vec!["true".into()]);
        spec.rootfs = RootFs::Directory("/proc/self".into());
        assert!(matches!(spec.validate(), Err(SpecError::RootFsNotRoot(_))));
    }

    #[test]
    fn environment_drops_host_secrets_and_applies_overrides() {
        let host = |name: &str| match name {
            "LANG" => Some(OsString::from("C.UTF-8")),
            "AWS_SECRET_ACCESS_KEY" => Some(OsString::from("secret")),
            _ => None,
        };
        let mut spec = Spec::new(vec!["true".into()]);
        spec.env = vec![
            parse_env("HOME=/workspace").unwrap(),
            parse_env("A=1").unwrap(),
        ];
        let env = spec.environment(host);
        let names: Vec<&str> = env.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(names, ["PATH", "LANG", "HOME", "A"]);
        assert_eq!(env[2].1, "/workspace");
    }

    #[test]
    fn parse_image_accepts_references_and_rejects_the_rest() {
        for good in [
            "debian:bookworm",
            "airlock-test/bookworm:latest",
            "registry.example:5000/team/tool:1.2",
            &format!("alpine@sha256:{}", "0123abcd".repeat(8)),
        ] {
            assert_eq!(parse_image(good).as_deref(), Ok(good));
        }
        let bad_cases = [
            "",
            "-x",
            "/abs",
            "a b",
            "a\nb",
            "a//b",
            &"a".repeat(256),
            "UPPER/Bad",
            "debian:",
            "alpine@sha256:0123abcd",
        ];
        for bad in bad_cases {
            assert!(parse_image(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_env_rejects_bad_keys() {
        for bad in ["NOEQUALS", "=x", "1A=x", "A-B=x", "A=\0"] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_env("A=b=c").unwrap().1, "b=c");
    }
}
