//! Whether this host and caller can run systemd-nspawn the way the backend needs it.

use std::path::{Path, PathBuf};

use airlock_core::Unavailable;
use airlock_namespace::sys;

/// Directories searched for the `systemd-nspawn` binary, in order. A fixed list rather than
/// the caller's PATH, because the binary runs as root.
const SEARCH_DIRS: [&str; 4] = ["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"];

/// The directory of systemd-nspawn's per-container state: mount propagation directories and
/// image locks.
pub const STATE_DIR: &str = "/run/systemd/nspawn";

/// The oldest systemd-nspawn whose `--bind=` accepts the `rootidmap` option, which the
/// workspace needs so that root inside writes files as the workspace's owner.
const MIN_VERSION: u32 = 252;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Returns the path of the systemd-nspawn binary, if it is installed.
pub fn binary() -> Option<PathBuf> {
    SEARCH_DIRS
        .iter()
        .map(|dir| Path::new(dir).join("systemd-nspawn"))
        .find(|path| path.is_file())
}

/// Checks, without starting a container, everything the backend needs from the host.
pub fn check() -> Result<PathBuf, Unavailable> {
    let Some(binary) = binary() else {
        return Err(Unavailable {
            reason: "systemd-nspawn is not installed".into(),
            fix: "install it with `apt-get install systemd-container`, or use --backend namespace"
                .into(),
        });
    };
    if sys::geteuid() != 0 {
        return Err(Unavailable {
            reason: "systemd-nspawn needs root: it mounts the container's file systems and creates its namespaces as root, and unlike the namespace backend it cannot run unprivileged".into(),
            fix: "run airlock as root, or use --backend namespace, which works unprivileged"
                .into(),
        });
    }
    check_state_dir(Path::new(STATE_DIR))?;
    check_version(&binary)?;
    Ok(binary)
}

/// Checks that systemd-nspawn's state directory is, or would be created, on a tmpfs.
/// systemd-nspawn removes a container's directories there at exit only on a memory file
/// system: on a disk it refuses, leaves them, and prints "Attempted to remove disk file
/// system" on the command's stderr after every run.
pub fn check_state_dir(path: &Path) -> Result<(), Unavailable> {
    let existing = path.ancestors().find(|dir| dir.exists()).unwrap_or(path);
    let kind = filesystem_type(existing);
    if matches!(kind, Some(TMPFS_MAGIC | RAMFS_MAGIC)) {
        return Ok(());
    }
    Err(Unavailable {
        reason: format!(
            "{} is not on a tmpfs ({} is on {}), so systemd-nspawn cannot remove its per-container directories there and reports an error after every run",
            path.display(),
            existing.display(),
            kind.map_or_else(|| "an unknown file system".to_owned(), describe_filesystem),
        ),
        fix: format!(
            "mkdir -p {0} && mount -t tmpfs tmpfs {0}",
            path.display()
        ),
    })
}

/// Names a file system by its statfs(2) magic number.
fn describe_filesystem(magic: i64) -> String {
    let name = match magic {
        0xef53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x794c_7630 => "overlayfs",
        _ => return format!("a file system of type {magic:#x}"),
    };
    name.to_owned()
}

fn filesystem_type(path: &Path) -> Option<i64> {
    let path = sys::cstring(path).ok()?;
    // SAFETY: statfs is plain data, so an all-zero value is valid for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a live statfs for the call.
    let result = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    (result == 0).then(|| sys::fs_type(&stat))
}

/// Directories where systemd keeps the shared library that its programs, systemd-nspawn
/// among them, link: `libsystemd-shared-VERSION.so`.
const SHARED_LIBRARY_DIRS: [&str; 4] = [
    "/usr/lib/systemd",
    "/lib/systemd",
    "/usr/lib64/systemd",
    "/usr/lib/x86_64-linux-gnu/systemd",
];

/// Checks that the installed systemd-nspawn is new enough. The version comes from the name of
/// systemd's shared library where one is found, which costs a directory listing, and
/// otherwise from `systemd-nspawn --version`, which costs a start of the program (about
/// 4 ms here). Each process checks once.
fn check_version(binary: &Path) -> Result<(), Unavailable> {
    static VERSION: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let found = *VERSION.get_or_init(|| shared_library_version().or_else(|| run_version(binary)));
    match found {
        Some(version) if version >= MIN_VERSION => Ok(()),
        found => Err(Unavailable {
            reason: format!(
                "{} is version {}, but the backend needs systemd {MIN_VERSION} or later for the rootidmap bind option",
                binary.display(),
                found.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
            ),
            fix: "install systemd-container from a newer release (Debian 12 ships 252)".into(),
        }),
    }
}

/// Reads the systemd version from the name of its shared library, `libsystemd-shared-252.so`.
fn shared_library_version() -> Option<u32> {
    SHARED_LIBRARY_DIRS.iter().find_map(|dir| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
            let name = entry.file_name();
            parse_library_version(name.to_str()?)
        })
    })
}

/// Parses the version in a file name such as `libsystemd-shared-252.so`.
fn parse_library_version(name: &str) -> Option<u32> {
    name.strip_prefix("libsystemd-shared-")?
        .strip_suffix(".so")?
        .parse()
        .ok()
}

fn run_version(binary: &Path) -> Option<u32> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .env_clear()
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&output.stdout))
}

/// Reads the version from `systemd-nspawn --version`, whose first line is "systemd 252 (...)".
fn parse_version(text: &str) -> Option<u32> {
    let mut words = text.lines().next()?.split_whitespace();
    (words.next()? == "systemd").then_some(())?;
    words.next()?.parse().ok()
}

/// Returns whether this kernel lets root create user namespaces.
pub fn user_namespaces() -> bool {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_version_parsed_from_file_name() {
        assert_eq!(parse_library_version("libsystemd-shared-252.so"), Some(252));
        assert_eq!(parse_library_version("libsystemd-shared-256.7.so"), None);
        assert_eq!(parse_library_version("libsystemd-core-252.so"), None);
    }

    #[test]
    fn version_parsed_from_first_line() {
        let text = "systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT\n";
        assert_eq!(parse_version(text), Some(252));
        assert_eq!(parse_version("something else"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn disk_state_dir_rejected_with_fix() {
        let dir = std::env::current_dir().unwrap();
        let on_disk = filesystem_type(&dir).is_some_and(|kind| kind != TMPFS_MAGIC);
        if !on_disk {
            eprintln!("skipped: the working directory is on a tmpfs");
            return;
        }
        let error = check_state_dir(&dir.join("nspawn-state")).unwrap_err();
        assert!(error.fix.contains("mount -t tmpfs"), "{error}");
        assert!(error.reason.contains("not on a tmpfs"), "{error}");
    }
}
