//! The sandbox's file tree, built inside its new mount namespace by the init process.
//!
//! The steps, in order:
//! 1. Make every mount private, so nothing done here propagates to the host.
//! 2. Open the workspace and the `--rootfs` directory, which may lie below /tmp, because the
//!    next step covers the host's /tmp.
//! 3. Mount the sandbox's root, a tmpfs, on /tmp; bind the system directories (or the entries
//!    of `--rootfs`, through its descriptor) read-only into it, and hide host secrets.
//! 4. Mount a fresh /proc with its dangerous files masked, a minimal /dev, /tmp and the
//!    workspace.
//! 5. Make the root tmpfs read-only, pivot into it, and detach the host's tree with one
//!    unmount. Each detaching unmount waits for an RCU grace period (up to 2 ms measured on
//!    an idle 2-CPU VM), so there is only one. No host path is reachable afterwards.
//!
//! The chroot backend's holder runs steps 1 to 4 through [`assemble`], then chroots into the
//! tree instead of step 5, so the host's tree stays in its mount namespace.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_core::{RootFs, Spec, WorkspaceMode};

use crate::fsmount;
use crate::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use crate::workspace::BindSource;

/// A failed step, named by what it tried to do.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct Error {
    pub step: String,
    #[source]
    pub source: io::Error,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Names the step of an I/O result that failed.
pub trait Step<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error {
            step: step(),
            source,
        })
    }
}

/// The host directory the sandbox's root is built on: one that every system has, whose own
/// contents the sandbox never needs.
pub const NEW_ROOT: &str = "/tmp";

/// The parts of the tree that differ between the backends that build one.
#[derive(Debug, Clone, Copy)]
pub struct TreeOptions<'a> {
    /// Source name of the root tmpfs, shown in /proc/PID/mountinfo of every process that
    /// sees the tree.
    pub root_source: &'a str,
    /// Options of the /proc mount, such as `hidepid=invisible` for a /proc that shows the
    /// host's processes.
    pub proc_options: Option<&'a str>,
    /// Whether to create /dev's nodes with mknod(2), one call each instead of a file, a bind
    /// and a flag change. Only a builder that is root in the host's user namespace can, so
    /// other builders bind the host's nodes.
    pub device_nodes: bool,
}

impl TreeOptions<'_> {
    /// The namespace backend's tree, whose /proc shows only the sandbox's PID namespace.
    pub const NAMESPACE: TreeOptions<'static> = TreeOptions {
        root_source: "tmpfs",
        proc_options: None,
        device_nodes: false,
    };
}

/// Host directories that make up the read-only system view.
pub const HOST_SYSTEM_ENTRIES: [&str; 9] = [
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt",
];

/// Entries of a `--rootfs` tree that the sandbox provides itself.
pub const PROVIDED_ENTRIES: [&str; 5] = ["proc", "dev", "sys", "tmp", "workspace"];

/// Host files below /etc that hold secrets: password hashes, sudo rules, Kerberos keys. SSH
/// host keys (`etc/ssh/ssh_host_*_key`) are found by name.
pub const SECRET_FILES: [&str; 7] = [
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/sudoers",
    "etc/security/opasswd",
    "etc/krb5.keytab",
];
pub const SECRET_DIRS: [&str; 2] = ["etc/ssl/private", "etc/sudoers.d"];

/// Files of /proc that expose host kernel memory, keys, timers or page and allocator state,
/// hidden behind /dev/null.
const PROC_MASKED_FILES: [&str; 12] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kallsyms",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "vmallocinfo",
    "slabinfo",
    "pagetypeinfo",
];
/// Directories of /proc hidden behind an empty read-only tmpfs.
const PROC_MASKED_DIRS: [&str; 3] = ["acpi", "scsi", "asound"];
/// Parts of /proc that stay readable but can never be written.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Device nodes of the sandbox's /dev, with their device numbers.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const LOCKDOWN: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

/// Returns the path of `fd` through /proc, which reaches the file it was opened on even
/// where a later mount covers its path.
fn through_fd(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn new(path: impl AsRef<Path>) -> PathBuf {
    Path::new(NEW_ROOT).join(path.as_ref().strip_prefix("/").unwrap_or(path.as_ref()))
}

fn mount_tmpfs(target: &Path, options: &str, flags: libc::c_ulong) -> Result<()> {
    mount_labelled_tmpfs("tmpfs", target, options, flags)
}

/// Mounts a tmpfs whose source, shown in mountinfo, is `source`.
fn mount_labelled_tmpfs(
    source: &str,
    target: &Path,
    options: &str,
    flags: libc::c_ulong,
) -> Result<()> {
    sys::mount(
        Some(Path::new(source)),
        target,
        Some("tmpfs"),
        flags,
        Some(options),
    )
    .step(|| format!("mount tmpfs on {}", target.display()))
}

/// Binds `source` onto `target` with its submounts and adds `attributes` to all of them.
fn bind(source: &Path, target: &Path, attributes: u64) -> Result<()> {
    let flags = libc::MS_BIND | libc::MS_REC;
    sys::mount(Some(source), target, None, flags, None)
        .step(|| format!("bind {} to {}", source.display(), target.display()))?;
    sys::mount_setattr(target, attributes, true)
        .step(|| format!("restrict mount flags of {}", target.display()))
}

/// Turns "not found" into success, for masks over paths that this kernel or host may lack.
fn unless_missing(result: Result<()>) -> Result<()> {
    match result {
        Err(error) if error.source.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Binds the host device node `source` onto the file `target`, read-only. A device can
/// still be read and written on a read-only mount, but its host inode cannot be changed
/// (chmod, utimes, xattrs) through it.
fn bind_device(source: &Path, target: &Path) -> Result<()> {
    sys::mount(Some(source), target, None, libc::MS_BIND, None)
        .step(|| format!("bind {} to {}", source.display(), target.display()))?;
    let attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC;
    sys::mount_setattr(target, attributes, false)
        .step(|| format!("make {} read-only", target.display()))
}

/// Covers the file `target` with the host's /dev/null, so it reads as empty and swallows
/// writes.
fn mask_with_null(target: &Path) -> Result<()> {
    unless_missing(bind_device(Path::new("/dev/null"), target))
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).step(|| format!("create directory {}", path.display()))
}

fn make_file(path: &Path) -> Result<()> {
    fs::File::create(path)
        .map(drop)
        .step(|| format!("create mount point {}", path.display()))
}

/// Recreates the entry `source` at `target`: a symlink is copied, a directory or file is
/// bound read-only.
pub fn mirror_entry(source: &Path, target: &Path) -> Result<()> {
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
    bind(source, target, MOUNT_ATTR_RDONLY | LOCKDOWN)
}

/// Step 1: no mount made here reaches the host.
fn make_private() -> Result<()> {
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    sys::mount(None, Path::new("/"), None, flags, None).step(|| "make all mounts private".into())
}

/// Opens a directory that a later mount may cover.
fn open_dir(path: &Path, what: &str) -> Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    sys::open(path, flags).step(|| format!("open the {what} {}", path.display()))
}

/// Step 3: the system directories, read-only.
fn mount_system(rootfs: &RootFs, rootfs_dir: Option<&OwnedFd>, root_source: &str) -> Result<()> {
    mount_labelled_tmpfs(root_source, Path::new(NEW_ROOT), "mode=0755,size=64k", 0)?;
    match (rootfs, rootfs_dir) {
        (RootFs::Directory(dir), Some(opened)) => {
            let source_dir = through_fd(opened);
            let entries = fs::read_dir(&source_dir).step(|| format!("list {}", dir.display()))?;
            for entry in entries {
                let name = entry
                    .step(|| format!("list {}", dir.display()))?
                    .file_name();
                if PROVIDED_ENTRIES.iter().any(|provided| name == *provided) {
                    continue;
                }
                mirror_entry(&source_dir.join(&name), &new(&name))?;
            }
            Ok(())
        }
        _ => {
            for entry in HOST_SYSTEM_ENTRIES {
                let source = Path::new("/").join(entry);
                if fs::symlink_metadata(&source).is_ok() {
                    mirror_entry(&source, &new(entry))?;
                }
            }
            hide_secrets(Path::new(NEW_ROOT))
        }
    }
}

/// Hides the host's secrets in the host view built at `root`: files behind /dev/null,
/// directories behind an empty read-only tmpfs.
pub fn hide_secrets(root: &Path) -> Result<()> {
    for file in SECRET_FILES {
        mask_with_null(&root.join(file))?;
    }
    let ssh_keys = fs::read_dir(root.join("etc/ssh"))
        .into_iter()
        .flatten()
        .flatten();
    for entry in ssh_keys {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ssh_host_") && name.ends_with("_key") {
            mask_with_null(&entry.path())?;
        }
    }
    for dir in SECRET_DIRS {
        hide_dir(&root.join(dir))?;
    }
    Ok(())
}

/// Covers a directory with an empty read-only tmpfs, if it exists.
fn hide_dir(target: &Path) -> Result<()> {
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    unless_missing(mount_tmpfs(target, "mode=0555,size=4k", flags))
}

/// Step 4a: a fresh /proc with its dangerous parts masked.
fn mount_proc(options: Option<&str>) -> Result<()> {
    let proc = new("proc");
    make_dir(&proc)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(Some(Path::new("proc")), &proc, Some("proc"), flags, options)
        .step(|| "mount /proc".into())?;
    for entry in PROC_READ_ONLY {
        let target = proc.join(entry);
        let attributes = MOUNT_ATTR_RDONLY | LOCKDOWN | MOUNT_ATTR_NOEXEC;
        unless_missing(bind(&target, &target, attributes))?;
    }
    for file in PROC_MASKED_FILES {
        mask_with_null(&proc.join(file))?;
    }
    for dir in PROC_MASKED_DIRS {
        hide_dir(&proc.join(dir))?;
    }
    Ok(())
}

/// Creates the device nodes in `dev`: made with mknod(2) where `device_nodes` allows, bound
/// from the host's /dev otherwise.
fn make_devices(dev: &Path, device_nodes: bool) -> Result<()> {
    if !device_nodes {
        for (name, _, _) in DEVICES {
            let target = dev.join(name);
            make_file(&target)?;
            bind_device(&Path::new("/dev").join(name), &target)?;
        }
        return Ok(());
    }
    // The caller's umask would take write access from the nodes, so it is cleared here and
    // restored for the command.
    // SAFETY: umask only swaps the process's file creation mask.
    let umask = unsafe { libc::umask(0) };
    let made = DEVICES.iter().try_for_each(|&(name, major, minor)| {
        let target = dev.join(name);
        sys::mknod(&target, libc::S_IFCHR | 0o666, libc::makedev(major, minor))
            .step(|| format!("create device node {}", target.display()))
    });
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    made
}

/// Step 4b: /dev with the harmless devices, a private devpts and /dev/shm.
fn mount_dev(shm_size: u64, device_nodes: bool) -> Result<()> {
    let dev = new("dev");
    make_dir(&dev)?;
    mount_tmpfs(
        &dev,
        "mode=0755,size=64k",
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?;
    make_devices(&dev, device_nodes)?;
    let pts = dev.join("pts");
    make_dir(&pts)?;
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    let options = "newinstance,ptmxmode=0666,mode=0620";
    sys::mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        flags,
        Some(options),
    )
    .step(|| "mount a private devpts on /dev/pts".into())?;
    let shm = dev.join("shm");
    make_dir(&shm)?;
    let shm_options = format!("mode=1777,size={shm_size}");
    mount_tmpfs(&shm, &shm_options, libc::MS_NOSUID | libc::MS_NODEV)?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        symlink(target, dev.join(name)).step(|| format!("create symlink /dev/{name}"))?;
    }
    Ok(())
}

/// Step 4c: /tmp and the workspace.
fn mount_work_dirs(spec: &Spec, workspace: Option<&OwnedFd>) -> Result<()> {
    let tmp = new("tmp");
    make_dir(&tmp)?;
    let options = format!("mode=1777,size={}", spec.limits.tmp_size);
    mount_tmpfs(&tmp, &options, libc::MS_NOSUID | libc::MS_NODEV)?;
    let target = new(SANDBOX_WORKSPACE);
    make_dir(&target)?;
    if let Some(opened) = workspace {
        bind_workspace(opened, &target)?;
    }
    Ok(())
}

/// Makes the root tmpfs at [`NEW_ROOT`] read-only, once everything is mounted on it.
pub fn seal_root() -> Result<()> {
    sys::mount_setattr(Path::new(NEW_ROOT), MOUNT_ATTR_RDONLY | LOCKDOWN, false)
        .step(|| "make the root read-only".into())
}

/// Step 5: seal the root and leave the host's tree behind. After pivot_root(".", "."), the
/// host's root is stacked on top of the new one, and detaching "." removes all of it.
fn enter_new_root() -> Result<()> {
    seal_root()?;
    let root = Path::new(NEW_ROOT);
    sys::chdir(root).step(|| "change directory to the new root".into())?;
    sys::pivot_root(Path::new("."), Path::new("."))
        .step(|| "pivot_root into the new root".into())?;
    sys::umount_detach(Path::new(".")).step(|| "detach the host's root".into())?;
    sys::chdir(Path::new("/")).step(|| "change directory to /".into())
}

/// Opens the workspace and checks it against the launcher's device and inode numbers, so a
/// path swapped since the launcher checked it is rejected rather than mounted.
fn open_workspace(source: &BindSource) -> Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let opened = sys::open(&source.path, flags).step(|| "open the workspace".into())?;
    check_workspace_identity(&opened, source)?;
    Ok(opened)
}

/// Checks that `opened` is the directory that the launcher checked.
fn check_workspace_identity(opened: &OwnedFd, source: &BindSource) -> Result<()> {
    let identity =
        sys::fstat_identity(opened.as_raw_fd()).step(|| "inspect the workspace".into())?;
    if identity != source.identity {
        let changed =
            io::Error::other("the path names another directory than the launcher checked");
        return Err(changed).step(|| "open the workspace".into());
    }
    Ok(())
}

/// Binds the workspace without the mounts below it. In a user namespace the kernel refuses
/// such a bind (EINVAL) when mounts below would be uncovered, so a workspace with mount
/// points inside fails here instead of bringing them along.
fn bind_workspace(opened: &OwnedFd, target: &Path) -> Result<()> {
    let step = || workspace_bind_step(opened);
    sys::mount(Some(&through_fd(opened)), target, None, libc::MS_BIND, None).step(step)?;
    sys::mount_setattr(target, LOCKDOWN, false)
        .step(|| "restrict the workspace's mount flags".into())
}

/// Names the step that binds the workspace, with the workspace's path and the first mount
/// point below it, which makes the bind fail in a user namespace.
fn workspace_bind_step(opened: &OwnedFd) -> String {
    match fs::read_link(through_fd(opened)) {
        Ok(path) => mount_points_step(&path),
        Err(_) => "use the workspace (it must not contain mount points)".into(),
    }
}

/// Names the step that mounts the workspace at `path`, with the first mount point below it.
fn mount_points_step(path: &Path) -> String {
    match first_mount_below(path) {
        Some(mount) => format!(
            "use the workspace {path:?}, which contains the mount point {mount:?} (unmount \
             it, or pass a project without mount points)"
        ),
        None => format!("use the workspace {path:?} (it must not contain mount points)"),
    }
}

/// Returns the first mount point strictly below `dir` in this process's mount namespace.
fn first_mount_below(dir: &Path) -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .find(|mount| mount != dir && mount.starts_with(dir))
}

/// Decodes the `\NNN` octal escapes that /proc/self/mountinfo uses in paths for spaces,
/// tabs, newlines and backslashes.
pub fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes
            .get(index + 1..index + 4)
            .filter(|_| bytes[index] == b'\\');
        let value = escape
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match value {
            Some(value) => {
                decoded.push(value);
                index += 4;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(decoded)
}

/// Attaches a detached mount made for the workspace at /workspace: the idmapped project or
/// the overlay over it.
pub fn attach_workspace(tree: &OwnedFd) -> Result<()> {
    sys::move_mount(tree.as_raw_fd(), Path::new(SANDBOX_WORKSPACE))
        .step(|| "attach the workspace".into())
}

/// Opens the directory holding the workspace overlay's `upper` and `work` directories, as a
/// detached copy of its mount that belongs to this mount namespace. Overlayfs takes layers
/// only from mounts of the mounter's namespace or from such detached trees; the host's tree
/// is gone after the pivot. Called before the init changes its ids, while it can still
/// reach the caller's state directory.
pub fn open_layers(layers: &Path) -> Result<OwnedFd> {
    sys::open_tree_clone_path(layers).step(|| format!("take the workspace layers {layers:?} along"))
}

/// Overlay options besides the layers, the same wherever the workspace overlay is mounted.
/// userxattr: in a user namespace overlayfs keeps its markers in user.* xattrs.
/// volatile: the overlay's end does not sync the whole file system of the state directory,
/// which costs a journal commit and a disk flush per sandbox. Writes still reach the disk by
/// the kernel's usual writeback; the launcher clears the marker this leaves in the work
/// directory before the next mount.
const OVERLAY_FLAGS: [&str; 2] = ["userxattr", "volatile"];

/// Creates the workspace's copy-on-write overlay as a detached mount, for
/// [`attach_workspace`]: the project at `lower` under the `upper` and `work` directories of
/// `layers`. A caller that is root in the host's user namespace can mount it outside the
/// sandbox's mount namespace, at the same time as the rest of the tree is built.
pub fn detached_overlay(lower: &Path, layers: &Path) -> io::Result<OwnedFd> {
    overlay_request(lower, layers)?.make()
}

/// The overlay of [`detached_overlay`], ready to be created here or by a helper.
fn overlay_request(lower: &Path, layers: &Path) -> io::Result<fsmount::Request> {
    let (upper, work) = (layers.join("upper"), layers.join("work"));
    let mut parameters = vec![
        fsmount::Parameter::Text("source", OsStr::new("overlay")),
        fsmount::Parameter::Text("lowerdir", lower.as_os_str()),
        fsmount::Parameter::Text("upperdir", upper.as_os_str()),
        fsmount::Parameter::Text("workdir", work.as_os_str()),
    ];
    parameters.extend(OVERLAY_FLAGS.map(fsmount::Parameter::Flag));
    fsmount::Request::new(
        c"overlay",
        &parameters,
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
}

/// The workspace's copy-on-write overlay, which a helper process creates while the init builds
/// the rest of the tree. The mount took 0.2 to 0.4 ms with the state directory on ext4 (a
/// 2-vCPU VM, `perf record` timelines), most of it in the checks that overlayfs makes in its
/// work directory: a temporary file, a whiteout, an xattr.
///
/// Once attached, the overlay no longer needs the detached mounts of its layers nor the
/// helper's stack, but dropping this value releases them, which is best left until the
/// command no longer waits on the init. The last close of a detached mount unmounts it and
/// waits for an RCU grace period (0.04 to 0.4 ms in the same timelines), and unmapping the
/// stack flushes the TLB of the CPU that the helper ran on.
pub struct Overlay {
    helper: fsmount::Helper,
    /// The project's detached mount, the overlay's lower layer.
    _lower: OwnedFd,
    /// The detached mount that contains the upper and work directories, from [`open_layers`].
    _layers: OwnedFd,
}

/// Starts mounting the overlay of the project `source` under the layers opened by
/// [`open_layers`]. The project is taken along as a detached copy of its mount, as the layers
/// are. The helper may still be looking up its layers when the init pivots into the new root
/// and detaches the host's tree, and overlayfs rejects a layer on a detached mount that is
/// not such a copy. The caller must be single-threaded.
pub fn start_overlay(source: &BindSource, layers: OwnedFd) -> Result<Overlay> {
    let lower = sys::open_tree_clone_path(&source.path).map_err(|error| Error {
        // In a user namespace the kernel rejects the clone (EINVAL) when mounts below the
        // project would be uncovered, as it rejects a bind.
        step: match error.raw_os_error() {
            Some(libc::EINVAL) => mount_points_step(&source.path),
            _ => format!("open the workspace {:?}", source.path),
        },
        source: error,
    })?;
    check_workspace_identity(&lower, source)?;
    let step = || "mount the copy-on-write overlay on /workspace".to_owned();
    let request = overlay_request(&through_fd(&lower), &through_fd(&layers)).step(step)?;
    let helper = request.start().step(step)?;
    Ok(Overlay {
        helper,
        _lower: lower,
        _layers: layers,
    })
}

impl Overlay {
    /// Waits for the helper and attaches the overlay at /workspace.
    pub fn attach(&mut self) -> Result<()> {
        let tree = self
            .helper
            .finish()
            .step(|| "mount the copy-on-write overlay on /workspace".into())?;
        attach_workspace(&tree)
    }
}

/// Makes /workspace read-only for a read-only workspace, once the project is mounted there.
pub fn finish_workspace(mode: WorkspaceMode) -> Result<()> {
    if mode != WorkspaceMode::Readonly {
        return Ok(());
    }
    sys::mount_setattr(
        Path::new(SANDBOX_WORKSPACE),
        MOUNT_ATTR_RDONLY | LOCKDOWN,
        false,
    )
    .step(|| "make the workspace read-only".into())
}

/// Makes /workspace the working directory, once the workspace is mounted there.
pub fn enter_workspace() -> Result<()> {
    sys::chdir(Path::new(SANDBOX_WORKSPACE)).step(|| "change directory to /workspace".into())
}

/// Builds the sandbox's file tree and makes it the root of this mount namespace, binding the
/// workspace from `workspace_source`. Without one, /workspace stays empty for
/// [`attach_workspace`].
pub fn build(spec: &Spec, workspace_source: Option<&BindSource>) -> Result<()> {
    assemble(spec, workspace_source, &TreeOptions::NAMESPACE)?;
    enter_new_root()
}

/// Builds the sandbox's file tree at [`NEW_ROOT`] (steps 1 to 4), binding the workspace from
/// `workspace_source`, and leaves the root writable and the host's tree in place.
pub fn assemble(
    spec: &Spec,
    workspace_source: Option<&BindSource>,
    options: &TreeOptions<'_>,
) -> Result<()> {
    make_private()?;
    let workspace = workspace_source.map(open_workspace).transpose()?;
    let rootfs_dir = match &spec.rootfs {
        RootFs::Directory(dir) => Some(open_dir(dir, "root filesystem")?),
        RootFs::HostView => None,
    };
    mount_system(&spec.rootfs, rootfs_dir.as_ref(), options.root_source)?;
    mount_proc(options.proc_options)?;
    mount_dev(spec.limits.tmp_size, options.device_nodes)?;
    mount_work_dirs(spec, workspace.as_ref())
}
