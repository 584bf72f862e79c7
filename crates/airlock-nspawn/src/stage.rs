//! The directory tree systemd-nspawn starts the container from, assembled by the process
//! that then executes systemd-nspawn, inside a mount namespace of its own. The mounts exist
//! only in that namespace, which ends with systemd-nspawn, so nothing stays mounted on the
//! host, even when Airlock is killed. Only the empty staging directory stays until the
//! sandbox's clean-up removes it.
//!
//! The staging directory, a tmpfs in that namespace, holds:
//! - `root/`: the container's root. It has read-only binds of the host's system directories
//!   with the host's secrets covered, or of the entries of `--rootfs`. It also has the Airlock
//!   binary at `/.airlock/airlock`, and empty mount points for what systemd-nspawn mounts.
//! - `workspace/`: the workspace, opened again in the new mount namespace and checked against
//!   the device and inode numbers the launcher found, so that a path swapped for a symlink
//!   since cannot redirect it.
//! - `layers/`: the overlay's `upper` and `work` directories.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use airlock_core::{RootFs, SandboxId};
use airlock_namespace::rootfs::{
    Result, Step, HOST_SYSTEM_ENTRIES, PROVIDED_ENTRIES, SECRET_DIRS, SECRET_FILES,
};
use airlock_namespace::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use airlock_namespace::workspace::BindSource;

use crate::command::{AIRLOCK_DIR, INIT_PATH, OVERLAY_LAYERS, OVERLAY_LOWER};

/// The host directory that contains one staging directory per sandbox.
pub const PARENT: &str = "/run/airlock/nspawn";

/// Mount points of the container's root that systemd-nspawn mounts over, or that Airlock
/// needs; created empty.
const MOUNT_POINTS: [&str; 8] = [
    "proc",
    "dev",
    "sys",
    "run",
    "tmp",
    "workspace",
    "var",
    "root",
];

/// Entries of a `--rootfs` tree left out of the container's root, besides
/// [`PROVIDED_ENTRIES`]: systemd-nspawn mounts a tmpfs on /run, and /.airlock is Airlock's.
const NSPAWN_PROVIDED: [&str; 2] = ["run", ".airlock"];

/// Returns the staging directory of sandbox `id`.
pub fn path(id: &SandboxId) -> PathBuf {
    Path::new(PARENT).join(id.to_string())
}

/// Creates the empty staging directory of sandbox `id` on the host.
pub fn create(id: &SandboxId) -> io::Result<PathBuf> {
    let dir = path(id);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(Path::new(PARENT))?;
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Removes the staging directory of sandbox `id`, which is empty on the host.
pub fn remove(id: &SandboxId) {
    match fs::remove_dir(path(id)) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(sandbox = %id, %error, "cannot remove the staging directory"),
    }
}

/// The sources of the staging directory's mounts.
pub struct Sources<'a> {
    pub rootfs: &'a RootFs,
    /// The workspace as the launcher opened it, for every workspace mode but `none`.
    pub workspace: Option<BindSource>,
    /// The overlay's layers directory, for an overlay workspace.
    pub layers: Option<&'a Path>,
    /// The Airlock binary, which becomes the container's init.
    pub binary: &'a Path,
}

/// Makes every mount of this process's new mount namespace private and assembles the
/// staging directory `stage`. Runs in the child that executes systemd-nspawn.
pub fn build(stage: &Path, sources: &Sources<'_>) -> Result<()> {
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    sys::mount(None, Path::new("/"), None, flags, None)
        .step(|| "make all mounts private".into())?;
    mount_tmpfs(stage, "mode=0755,size=1m")?;
    let root = stage.join("root");
    make_dir(&root)?;
    match sources.rootfs {
        RootFs::HostView => {
            for entry in HOST_SYSTEM_ENTRIES {
                let source = Path::new("/").join(entry);
                if fs::symlink_metadata(&source).is_ok() {
                    mirror_entry(&source, &root.join(entry))?;
                }
            }
            hide_secrets(&root)?;
        }
        RootFs::Directory(dir) => mirror_tree(dir, &root)?,
    }
    for mount_point in MOUNT_POINTS {
        make_dir(&root.join(mount_point))?;
    }
    stage_airlock(&root, sources.binary)?;
    if let Some(workspace) = &sources.workspace {
        let opened = open_workspace(workspace)?;
        let target = stage.join("workspace");
        make_dir(&target)?;
        let source = PathBuf::from(format!("/proc/self/fd/{}", opened.as_raw_fd()));
        bind(
            &source,
            &target,
            false,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )?;
    }
    if let Some(layers) = sources.layers {
        let target = stage.join("layers");
        make_dir(&target)?;
        bind(layers, &target, false, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?;
    }
    Ok(())
}

/// Opens the workspace in this mount namespace, where a descriptor opened before the
/// unshare cannot be bound from, and checks that it is still the launcher's directory.
fn open_workspace(source: &BindSource) -> Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let opened = sys::open(&source.path, flags).step(|| "open the workspace".into())?;
    let metadata = fs::metadata(format!("/proc/self/fd/{}", opened.as_raw_fd()))
        .step(|| "inspect the workspace".into())?;
    if (metadata.dev(), metadata.ino()) != source.identity {
        let changed =
            io::Error::other("the path names another directory than the launcher checked");
        return Err(changed).step(|| format!("open the workspace {}", source.path.display()));
    }
    Ok(opened)
}

/// Binds the entries of a `--rootfs` tree into `root`, read-only.
fn mirror_tree(dir: &Path, root: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).step(|| format!("list {}", dir.display()))?;
    for entry in entries {
        let name = entry
            .step(|| format!("list {}", dir.display()))?
            .file_name();
        let provided = PROVIDED_ENTRIES.iter().chain(&NSPAWN_PROVIDED);
        if provided.into_iter().any(|entry| name == *entry) {
            continue;
        }
        mirror_entry(&dir.join(&name), &root.join(&name))?;
    }
    Ok(())
}

/// Puts the Airlock binary at /.airlock/airlock, read-only, with empty mount points for the
/// overlay's layers beside it.
fn stage_airlock(root: &Path, binary: &Path) -> Result<()> {
    let inside = |path: &str| root.join(path.trim_start_matches('/'));
    make_dir(&inside(AIRLOCK_DIR))?;
    make_dir(&inside(OVERLAY_LOWER))?;
    make_dir(&inside(OVERLAY_LAYERS))?;
    let target = inside(INIT_PATH);
    make_file(&target)?;
    let attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    bind(binary, &target, false, attributes)
}

fn hide_secrets(root: &Path) -> Result<()> {
    for file in SECRET_FILES {
        let target = root.join(file);
        if target.exists() {
            let attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID;
            bind(Path::new("/dev/null"), &target, false, attributes)?;
        }
    }
    let ssh_keys = fs::read_dir(root.join("etc/ssh"))
        .into_iter()
        .flatten()
        .flatten();
    for entry in ssh_keys {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ssh_host_") && name.ends_with("_key") {
            let attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID;
            bind(Path::new("/dev/null"), &entry.path(), false, attributes)?;
        }
    }
    for dir in SECRET_DIRS {
        let target = root.join(dir);
        if target.is_dir() {
            let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            sys::mount(
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                flags,
                Some("mode=0555,size=4k"),
            )
            .step(|| format!("hide {}", target.display()))?;
        }
    }
    Ok(())
}

/// Recreates the entry `source` at `target`: a symlink is copied, a directory or file is
/// bound read-only with everything mounted below it.
fn mirror_entry(source: &Path, target: &Path) -> Result<()> {
    let metadata = fs::symlink_metadata(source).step(|| format!("inspect {}", source.display()))?;
    if metadata.file_type().is_symlink() {
        let link = fs::read_link(source).step(|| format!("read link {}", source.display()))?;
        return symlink(&link, target).step(|| format!("create symlink {}", target.display()));
    }
    if metadata.is_dir() {
        make_dir(target)?;
    } else {
        make_file(target)?;
    }
    let attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    bind(source, target, true, attributes)
}

/// Binds `source` onto `target`, with its submounts when `recursive`, and adds
/// `attributes` to every mount made.
fn bind(source: &Path, target: &Path, recursive: bool, attributes: u64) -> Result<()> {
    let mut flags = libc::MS_BIND;
    if recursive {
        flags |= libc::MS_REC;
    }
    sys::mount(Some(source), target, None, flags, None)
        .step(|| format!("bind {} to {}", source.display(), target.display()))?;
    sys::mount_setattr(target, attributes, recursive)
        .step(|| format!("restrict mount flags of {}", target.display()))
}

fn mount_tmpfs(target: &Path, options: &str) -> Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some(options),
    )
    .step(|| format!("mount tmpfs on {}", target.display()))
}

fn make_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error).step(|| format!("create directory {}", path.display())),
    }
}

fn make_file(path: &Path) -> Result<()> {
    fs::File::create(path)
        .map(drop)
        .step(|| format!("create mount point {}", path.display()))
}
