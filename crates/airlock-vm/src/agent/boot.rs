//! The agent's first steps as PID 1, in order: the kernel's file systems, the modules,
//! the disks, and the move into the sandbox's root.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_namespace::sys;

use crate::initramfs::{MODULE_LIST_PATH, SHARE_MODULE_LIST_PATH};

/// The virtio-serial port's name, given to QEMU's `virtserialport` device.
pub const PORT_NAME: &str = "airlock.agent";

/// The serial number of the root disk, given to QEMU's `virtio-blk-device`.
pub const ROOT_DISK_SERIAL: &str = "airlock-root";

/// The serial number of the workspace disk, a copy of the project.
pub const WORKSPACE_DISK_SERIAL: &str = "airlock-workspace";

/// The virtiofs tag of the host view, the guest's root without a root disk.
pub const ROOT_SHARE_TAG: &str = "airlock-root";

/// The virtiofs tag of the project itself, for [`WorkspaceMount::Bind`].
pub const WORKSPACE_SHARE_TAG: &str = "airlock-workspace";

/// Directory of the workspace overlay's layers, below the sandbox's /run. The
/// host reads the changes from the upper layer there once the command ended.
pub const LAYERS: &str = "/run/airlock/layers";

/// Mount point of the workspace disk, read-only, below the sandbox's /run.
const LOWER: &str = "/run/airlock/lower";

/// How long the agent waits for a device to appear after its driver loaded. Software
/// emulation probes devices slowly.
const DEVICE_WAIT: Duration = Duration::from_secs(30);

/// Mount point of the root disk before it becomes `/`.
const DISK: &str = "/root";

/// Empty directories that become mount points in the sandbox's root, since the root disk,
/// mounted read-only, may lack them. The host view has them already.
pub const MOUNT_POINTS: [&str; 6] = ["proc", "sys", "dev", "tmp", "run", "workspace"];

/// Mount point of the sandbox's root: the read-only union of the mount points and the root
/// disk, or the host view.
const NEW_ROOT: &str = "/newroot";

/// A step of the boot that failed, with the path or module it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{step} {subject}")]
pub struct BootError {
    step: &'static str,
    subject: String,
    #[source]
    source: io::Error,
}

fn failed(
    step: &'static str,
    subject: impl std::fmt::Display,
) -> impl FnOnce(io::Error) -> BootError {
    let subject = subject.to_string();
    move |source| BootError {
        step,
        subject,
        source,
    }
}

/// The guest's setup that the host requests, read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Whether the root is the host view, shared with the guest through virtiofs, rather
    /// than the root disk.
    pub root_share: bool,
    /// Size of /tmp, and of the workspace's upper layer, in bytes.
    pub tmp_size: u64,
    /// The way the workspace disk is shown at /workspace, or `None` without one.
    pub workspace: Option<WorkspaceMount>,
    /// The commands' process limit, their threads included.
    pub pids: u64,
    /// The commands' memory limit in bytes, or `None` for the guest's whole memory.
    pub memory: Option<u64>,
    /// The guest's hostname, or `None` to keep the kernel's `(none)`.
    pub hostname: Option<String>,
    /// Whether the commands run in an inner layer, whose root must own the workspace
    /// without being the guest's root.
    pub inner: bool,
}

/// The way the guest shows the workspace disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMount {
    /// Read-only.
    Readonly,
    /// Under an overlay whose upper layer is in guest memory.
    Overlay,
    /// The project itself, writable, shared through virtiofs.
    Bind,
}

impl WorkspaceMount {
    pub fn name(self) -> &'static str {
        match self {
            WorkspaceMount::Readonly => "readonly",
            WorkspaceMount::Overlay => "overlay",
            WorkspaceMount::Bind => "bind",
        }
    }
}

/// The kernel command line parameter that carries [`BootConfig::tmp_size`].
pub const TMP_SIZE_PARAMETER: &str = "airlock.tmp_size";

/// The kernel command line parameter that carries [`BootConfig::pids`].
pub const PIDS_PARAMETER: &str = "airlock.pids";

/// The kernel command line parameter that carries [`BootConfig::memory`].
pub const MEMORY_PARAMETER: &str = "airlock.memory";

/// The kernel command line parameter that carries [`BootConfig::workspace`].
pub const WORKSPACE_PARAMETER: &str = "airlock.workspace";

/// The kernel command line parameter that carries [`BootConfig::hostname`].
pub const HOSTNAME_PARAMETER: &str = "airlock.hostname";

/// The kernel command line parameter that carries [`BootConfig::inner`], as `1`.
pub const INNER_PARAMETER: &str = "airlock.inner";

/// The kernel command line parameter that carries [`BootConfig::root_share`]: the tag of
/// the share to boot from.
pub const ROOT_PARAMETER: &str = "airlock.root";

impl BootConfig {
    /// Returns whether the guest mounts a virtiofs share.
    pub fn uses_share(&self) -> bool {
        self.root_share || self.workspace == Some(WorkspaceMount::Bind)
    }

    pub fn from_cmdline(cmdline: &str) -> BootConfig {
        let value = |parameter: &str| {
            cmdline
                .split_whitespace()
                .find_map(|word| word.strip_prefix(parameter)?.strip_prefix('='))
        };
        let tmp_size = value(TMP_SIZE_PARAMETER)
            .and_then(|value| value.parse().ok())
            .unwrap_or(airlock_core::spec::DEFAULT_TMP_SIZE);
        let workspace = match value(WORKSPACE_PARAMETER) {
            Some("readonly") => Some(WorkspaceMount::Readonly),
            Some("overlay") => Some(WorkspaceMount::Overlay),
            Some("bind") => Some(WorkspaceMount::Bind),
            _ => None,
        };
        let root_share = value(ROOT_PARAMETER) == Some(ROOT_SHARE_TAG);
        let pids = value(PIDS_PARAMETER)
            .and_then(|value| value.parse().ok())
            .unwrap_or(airlock_core::spec::DEFAULT_PIDS);
        let memory = value(MEMORY_PARAMETER).and_then(|value| value.parse().ok());
        let hostname = value(HOSTNAME_PARAMETER).map(str::to_owned);
        let inner = value(INNER_PARAMETER) == Some("1");
        BootConfig {
            root_share,
            tmp_size,
            workspace,
            pids,
            memory,
            hostname,
            inner,
        }
    }
}

/// Sets the guest's hostname from `config`, when it names one.
pub fn set_hostname(config: &BootConfig) -> Result<(), BootError> {
    match &config.hostname {
        Some(hostname) => {
            sys::sethostname(hostname).map_err(failed("cannot set the hostname", hostname))
        }
        None => Ok(()),
    }
}

/// Mounts /proc, /sys and /dev in the initramfs and sends the agent's output to the console.
pub fn mount_kernel_filesystems() -> Result<(), BootError> {
    let mounts = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ];
    for (source, target, fstype) in mounts {
        let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
        sys::mount(
            Some(Path::new(source)),
            Path::new(target),
            Some(fstype),
            flags,
            None,
        )
        .map_err(failed("cannot mount", target))?;
    }
    if let Ok(console) = sys::open(Path::new("/dev/console"), libc::O_RDWR) {
        for fd in 0..3 {
            let _ = sys::dup2(console.as_raw_fd(), fd);
        }
    }
    Ok(())
}

/// Loads the modules every guest needs, then those of virtiofs when `config` uses a
/// share, so that guests without shares boot without them. Returns how many loaded.
pub fn load_modules(config: &BootConfig) -> Result<usize, BootError> {
    let mut loaded = load_module_list(MODULE_LIST_PATH)?;
    if config.uses_share() {
        loaded += load_module_list(SHARE_MODULE_LIST_PATH)?;
    }
    Ok(loaded)
}

/// Loads the modules that the initramfs lists in `list_path`, in order. A module already
/// loaded is skipped.
fn load_module_list(list_path: &str) -> Result<usize, BootError> {
    let list = std::fs::read_to_string(list_path)
        .map_err(failed("cannot read the module list", list_path))?;
    let mut loaded = 0;
    for path in list.lines().filter(|line| !line.is_empty()) {
        let file = std::fs::File::open(path).map_err(failed("cannot open module", path))?;
        let compressed = [".xz", ".zst", ".gz"]
            .iter()
            .any(|suffix| path.ends_with(suffix));
        match finit_module(&file, compressed) {
            Ok(()) => loaded += 1,
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(error) => return Err(failed("cannot load module", path)(error)),
        }
    }
    Ok(loaded)
}

fn finit_module(file: &std::fs::File, compressed: bool) -> io::Result<()> {
    /// MODULE_INIT_COMPRESSED_FILE of linux/module.h: the kernel decompresses the module.
    const COMPRESSED_FILE: libc::c_long = 4;
    let flags = if compressed { COMPRESSED_FILE } else { 0 };
    let params = c"";
    // SAFETY: the descriptor is open for the call and `params` is a NUL-terminated string.
    let result = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            flags,
        )
    };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `find` returns a path, or [`DEVICE_WAIT`] passes.
fn wait_for(what: &'static str, find: impl Fn() -> Option<PathBuf>) -> Result<PathBuf, BootError> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        if let Some(path) = find() {
            return Ok(path);
        }
        if Instant::now() >= deadline {
            let timed_out = io::Error::new(io::ErrorKind::TimedOut, "no such device appeared");
            return Err(failed("cannot find", what)(timed_out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finds the block device whose virtio serial number is `serial`.
pub fn find_disk(serial: &str) -> Result<PathBuf, BootError> {
    wait_for("the root disk", || {
        std::fs::read_dir("/sys/block")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let found = std::fs::read_to_string(entry.path().join("serial")).ok()?;
                (found.trim() == serial).then(|| Path::new("/dev").join(entry.file_name()))
            })
    })
}

/// Finds the virtio-serial port named [`PORT_NAME`].
pub fn find_port() -> Result<PathBuf, BootError> {
    wait_for("the virtio-serial port to the host", || {
        std::fs::read_dir("/sys/class/virtio-ports")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
                let device = Path::new("/dev").join(entry.file_name());
                (name.trim() == PORT_NAME && device.exists()).then_some(device)
            })
    })
}

/// The file system the guest's root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// The root disk, a block device.
    Disk(PathBuf),
    /// The host view, shared through virtiofs under [`ROOT_SHARE_TAG`].
    HostView,
}

impl std::fmt::Display for RootSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootSource::Disk(disk) => write!(f, "{}", disk.display()),
            RootSource::HostView => write!(f, "the host view (virtiofs {ROOT_SHARE_TAG})"),
        }
    }
}

/// Finds the root named by `config`: the root disk, or the host view's share.
pub fn find_root(config: &BootConfig) -> Result<RootSource, BootError> {
    if config.root_share {
        return Ok(RootSource::HostView);
    }
    find_disk(ROOT_DISK_SERIAL).map(RootSource::Disk)
}

/// Mounts the root disk read-only and covers it at [`NEW_ROOT`] with a read-only union
/// that adds the mount points.
fn mount_root_disk(disk: &Path) -> Result<(), BootError> {
    let ro = libc::MS_RDONLY;
    sys::mount(
        Some(disk),
        Path::new(DISK),
        Some("ext4"),
        ro,
        Some("noload"),
    )
    .map_err(failed("cannot mount the root disk", disk.display()))?;
    let points = Path::new("/mount-points");
    std::fs::create_dir_all(points).map_err(failed("cannot create", points.display()))?;
    for point in MOUNT_POINTS {
        let path = points.join(point);
        std::fs::create_dir_all(&path).map_err(failed("cannot create", path.display()))?;
    }
    // An overlay with two lower layers and no upper layer is read-only by construction.
    let layers = format!("lowerdir={}:{DISK}", points.display());
    sys::mount(
        Some(Path::new("overlay")),
        Path::new(NEW_ROOT),
        Some("overlay"),
        ro,
        Some(&layers),
    )
    .map_err(failed("cannot mount the root overlay on", NEW_ROOT))
}

/// Mounts the virtiofs share `tag` on `target`, waiting for its device to appear: the
/// kernel rejects an unknown tag with EINVAL until the device's probe has run.
fn mount_share(tag: &str, target: &Path, flags: libc::c_ulong) -> Result<(), BootError> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        let result = sys::mount(Some(Path::new(tag)), target, Some("virtiofs"), flags, None);
        match result {
            Ok(()) => return Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                if Instant::now() >= deadline {
                    return Err(failed("cannot mount the virtiofs share", tag)(error));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => return Err(failed("cannot mount the virtiofs share", tag)(error)),
        }
    }
}

/// Mounts the root read-only at [`NEW_ROOT`], mounts the sandbox's file systems in it, and
/// makes it the root.
pub fn enter_root(root: &RootSource, config: &BootConfig) -> Result<(), BootError> {
    std::fs::create_dir_all(NEW_ROOT).map_err(failed("cannot create", NEW_ROOT))?;
    match root {
        RootSource::Disk(disk) => mount_root_disk(disk)?,
        // The host's tree has the mount points already. The host serves it read-only
        // whatever the guest requests, so the flag only spares writes a round trip. No overlay
        // covers it: overlayfs opens lower files with O_NOATIME, which an unprivileged
        // caller's virtiofsd may not use on host files that another user owns.
        RootSource::HostView => mount_share(
            ROOT_SHARE_TAG,
            Path::new(NEW_ROOT),
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
        )?,
    }
    mount_sandbox_filesystems(Path::new(NEW_ROOT), config)?;
    crate::agent::cgroup::set_up(Path::new(NEW_ROOT), config.pids, config.memory).map_err(
        failed(
            "cannot set up the process and memory limits in",
            "/sys/fs/cgroup",
        ),
    )?;
    if let Some(mount) = config.workspace {
        mount_workspace(Path::new(NEW_ROOT), mount, config)?;
    }
    sys::chdir(Path::new(NEW_ROOT)).map_err(failed("cannot enter", NEW_ROOT))?;
    sys::mount(
        Some(Path::new(".")),
        Path::new("/"),
        None,
        libc::MS_MOVE,
        None,
    )
    .map_err(failed("cannot move the new root to", "/"))?;
    let dot = c".";
    // SAFETY: `dot` is a NUL-terminated string alive for the call.
    if unsafe { libc::chroot(dot.as_ptr()) } == -1 {
        return Err(failed("cannot change root to", NEW_ROOT)(
            io::Error::last_os_error(),
        ));
    }
    sys::chdir(Path::new("/")).map_err(failed("cannot enter", "/"))
}

fn mount_sandbox_filesystems(root: &Path, config: &BootConfig) -> Result<(), BootError> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
    let tmp = format!("mode=1777,size={}", config.tmp_size);
    let mounts: [(&str, &str, &str, libc::c_ulong, Option<&str>); 7] = [
        ("proc", "proc", "proc", nosuid | libc::MS_NOEXEC, None),
        (
            "sysfs",
            "sys",
            "sysfs",
            nosuid | libc::MS_NOEXEC | libc::MS_RDONLY,
            None,
        ),
        ("devtmpfs", "dev", "devtmpfs", libc::MS_NOSUID, None),
        // Not nodev: the kernel refuses to open /dev/pts/ptmx, a device node, on a nodev
        // mount.
        (
            "devpts",
            "dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        ),
        ("tmpfs", "dev/shm", "tmpfs", nosuid, Some("mode=1777")),
        ("tmpfs", "tmp", "tmpfs", nosuid, Some(&tmp)),
        ("tmpfs", "run", "tmpfs", nosuid, Some("mode=755")),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let target = root.join(target);
        if fstype == "devpts" || target.ends_with("dev/shm") {
            std::fs::create_dir_all(&target).map_err(failed("cannot create", target.display()))?;
        }
        sys::mount(Some(Path::new(source)), &target, Some(fstype), flags, data)
            .map_err(failed("cannot mount", target.display()))?;
    }
    // /dev/ptmx must open the new devpts instance, not the one devtmpfs offers.
    let ptmx = root.join("dev/ptmx");
    let _ = std::fs::remove_file(&ptmx);
    std::os::unix::fs::symlink("pts/ptmx", &ptmx).map_err(failed("cannot create", ptmx.display()))
}

/// Mounts the workspace disk read-only and shows it at /workspace, under an overlay whose
/// layers are on a tmpfs of [`BootConfig::tmp_size`] bytes for [`WorkspaceMount::Overlay`].
/// For an inner layer, a root-owned disk is idmapped so that its root's files belong to
/// [`airlock_namespace::userns::UNUSED_HOST_ID`] ([`super::idmap`]).
fn mount_workspace(
    root: &Path,
    mount: WorkspaceMount,
    config: &BootConfig,
) -> Result<(), BootError> {
    let inside = |path: &str| root.join(path.trim_start_matches('/'));
    let (lower, workspace) = (inside(LOWER), inside("/workspace"));
    if mount == WorkspaceMount::Bind {
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        return mount_share(WORKSPACE_SHARE_TAG, &workspace, flags);
    }
    let disk = find_disk(WORKSPACE_DISK_SERIAL)?;
    std::fs::create_dir_all(&lower).map_err(failed("cannot create", lower.display()))?;
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount(Some(&disk), &lower, Some("ext4"), ro, Some("noload"))
        .map_err(failed("cannot mount the workspace disk", disk.display()))?;
    let project = std::fs::metadata(&lower).map_err(failed("cannot read", lower.display()))?;
    if config.inner && project.uid() == 0 {
        super::idmap::map_root_to_unused(&lower).map_err(failed(
            "cannot idmap the workspace disk at",
            lower.display(),
        ))?;
    }
    if mount == WorkspaceMount::Readonly {
        return sys::mount(Some(&lower), &workspace, None, libc::MS_BIND, None)
            .and_then(|()| {
                let flags = libc::MS_REMOUNT | libc::MS_BIND | ro;
                sys::mount(None, &workspace, None, flags, None)
            })
            .map_err(failed("cannot mount the workspace on", workspace.display()));
    }
    let layers = inside(LAYERS);
    std::fs::create_dir_all(&layers).map_err(failed("cannot create", layers.display()))?;
    let size = format!("mode=700,size={}", config.tmp_size);
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount(
        Some(Path::new("tmpfs")),
        &layers,
        Some("tmpfs"),
        flags,
        Some(&size),
    )
    .map_err(failed("cannot mount", layers.display()))?;
    for layer in ["upper", "work"] {
        let path = layers.join(layer);
        std::fs::create_dir(&path).map_err(failed("cannot create", path.display()))?;
    }
    if config.inner {
        copy_owner_and_mode(&lower, &layers.join("upper"))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        layers.join("upper").display(),
        layers.join("work").display()
    );
    sys::mount(
        Some(Path::new("overlay")),
        &workspace,
        Some("overlay"),
        flags,
        Some(&options),
    )
    .map_err(failed(
        "cannot mount the workspace overlay on",
        workspace.display(),
    ))
}

/// Gives `upper` the owner and mode of `lower`'s root. The overlay's root directory shows
/// the upper layer's, so without this /workspace would belong to the guest's root, and an
/// inner layer would map its root to an id that owns nothing in it.
fn copy_owner_and_mode(lower: &Path, upper: &Path) -> Result<(), BootError> {
    let project = std::fs::metadata(lower).map_err(failed("cannot read", lower.display()))?;
    let owner = (Some(project.uid()), Some(project.gid()));
    std::os::unix::fs::chown(upper, owner.0, owner.1)
        .map_err(failed("cannot change the owner of", upper.display()))?;
    let mode = std::fs::Permissions::from_mode(project.mode() & 0o7777);
    std::fs::set_permissions(upper, mode)
        .map_err(failed("cannot change the mode of", upper.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_size_read_from_cmdline() {
        let config = BootConfig::from_cmdline("console=ttyS0 airlock.tmp_size=1048576 quiet");
        assert_eq!(config.tmp_size, 1 << 20);
        let default = BootConfig::from_cmdline("console=ttyS0 airlock.tmp_size=lots");
        assert_eq!(default.tmp_size, airlock_core::spec::DEFAULT_TMP_SIZE);
        assert_eq!(default.workspace, None);
        let overlay = BootConfig::from_cmdline("airlock.workspace=overlay -- __vm-agent");
        assert_eq!(overlay.workspace, Some(WorkspaceMount::Overlay));
    }

    #[test]
    fn shares_read_from_cmdline() {
        let config =
            BootConfig::from_cmdline("airlock.root=airlock-root airlock.workspace=bind -- x");
        assert!(config.root_share);
        assert_eq!(config.workspace, Some(WorkspaceMount::Bind));
        assert!(config.uses_share());
        let disk = BootConfig::from_cmdline("airlock.workspace=overlay -- x");
        assert!(!disk.root_share);
        assert!(!disk.uses_share());
    }

    #[test]
    fn memory_limit_read_from_cmdline() {
        let config = BootConfig::from_cmdline("airlock.memory=134217728 -- __vm-agent");
        assert_eq!(config.memory, Some(128 << 20));
        let without = BootConfig::from_cmdline("airlock.pids=64 -- __vm-agent");
        assert_eq!(without.memory, None);
    }

    #[test]
    fn inner_read_from_cmdline() {
        let config = BootConfig::from_cmdline("airlock.workspace=overlay airlock.inner=1 -- x");
        assert!(config.inner);
        let without = BootConfig::from_cmdline("airlock.workspace=overlay -- x");
        assert!(!without.inner);
    }

    #[test]
    fn hostname_read_from_cmdline() {
        let config = BootConfig::from_cmdline("airlock.hostname=airlock-0123456789ab -- x");
        assert_eq!(config.hostname.as_deref(), Some("airlock-0123456789ab"));
        let without = BootConfig::from_cmdline("airlock.pids=64 -- __vm-agent");
        assert_eq!(without.hostname, None);
    }
}
