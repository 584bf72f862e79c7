//! Host directories shared with the guest through virtiofs: the host view as the guest's
//! root, and the project itself for `--workspace-mode bind`.
//!
//! Each share has a virtiofsd of its own, QEMU's C daemon, which serves one directory to
//! one `vhost-user-fs-device`. Airlock starts it through its own binary in share mode
//! ([`SHARE_ARGUMENT`], [`serve`]), which, in order:
//! 1. enters a new mount namespace, inside a new user namespace unless the caller is root;
//! 2. builds the shared tree on an empty directory in the guest's directory: the host view
//!    as read-only bind mounts with the host's secrets hidden, or a bind of the project;
//! 3. execs virtiofsd on that tree, with the listening socket that Airlock created.
//!
//! The daemon serves an untrusted guest kernel, so the host view is read-only in the
//! daemon's mounts, which no request of the guest can change. The C virtiofsd has no
//! read-only option of its own. The daemon also pivots into the tree, so no host path
//! outside it is reachable.

use std::convert::Infallible;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use airlock_host::qemu::VIRTIOFSD_PATHS;
use airlock_namespace::rootfs::{self, HOST_SYSTEM_ENTRIES};
use airlock_namespace::sys::{self, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use serde::{Deserialize, Serialize};

use crate::agent::boot::MOUNT_POINTS;
use crate::error::Error;

/// The argument that starts the Airlock binary in share mode.
pub const SHARE_ARGUMENT: &str = "__vm-share";

/// The descriptor number of the listening socket that the daemon inherits.
const LISTENER_FD: libc::c_int = 3;

/// One directory that the host shares with the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The virtiofs tag the guest mounts the share by.
    pub tag: String,
    /// The daemon's vhost-user socket, which QEMU connects to.
    pub socket: PathBuf,
    pub source: ShareSource,
}

/// The tree a share shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareSource {
    /// The host's system directories, read-only, with its secrets hidden.
    HostView,
    /// A host directory, writable.
    Directory(PathBuf),
}

impl Share {
    /// Returns the empty directory that the daemon's mount namespace builds the shared
    /// tree on. It stays empty on the host.
    pub fn tree(&self) -> PathBuf {
        self.socket.with_extension("tree")
    }

    /// Returns the file that the daemon's messages go to.
    pub fn log(&self) -> PathBuf {
        self.socket.with_extension("log")
    }
}

/// Returns the path of virtiofsd, or the error that names the package to install.
pub fn find_virtiofsd() -> Result<PathBuf, Error> {
    airlock_host::qemu::find_virtiofsd().ok_or(Error::VirtiofsdMissing {
        searched: VIRTIOFSD_PATHS.join(", "),
    })
}

/// A running virtiofsd. Dropping it kills and reaps the daemon.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Kills the daemon at once and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the daemon of `share`: creates its socket and tree directory, then starts the
/// Airlock binary in share mode, which dies with the calling thread.
pub fn start(share: &Share, virtiofsd: &Path) -> Result<Daemon, Error> {
    let (listener, log) = create_files(share)?;
    let stderr = log.try_clone().map_err(|source| Error::ShareFiles {
        path: share.log(),
        source,
    })?;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(SHARE_ARGUMENT)
        .args(share_arguments(share, virtiofsd))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // Its own group, like QEMU's, so a Ctrl-C reaches Airlock, which ends the guest.
        .process_group(0);
    let listener_fd = listener.as_raw_fd();
    // SAFETY: the closure runs between fork and exec, and `prepare_daemon` makes only
    // async-signal-safe calls on integers and a local signal set.
    unsafe {
        command.pre_exec(move || prepare_daemon(listener_fd));
    }
    let child = command.spawn().map_err(|source| Error::SpawnShare {
        tag: share.tag.clone(),
        source,
    })?;
    tracing::info!(pid = child.id(), tag = %share.tag, "virtiofsd started");
    Ok(Daemon { child })
}

/// Creates the share's tree directory, its listening socket and its log file.
fn create_files(share: &Share) -> Result<(UnixListener, File), Error> {
    let tree = share.tree();
    std::fs::create_dir(&tree).map_err(|source| Error::ShareFiles { path: tree, source })?;
    let listener = UnixListener::bind(&share.socket).map_err(|source| Error::ShareFiles {
        path: share.socket.clone(),
        source,
    })?;
    let log = File::create(share.log()).map_err(|source| Error::ShareFiles {
        path: share.log(),
        source,
    })?;
    Ok((listener, log))
}

/// Prepares the forked daemon before its exec: the kernel kills it if the spawning thread
/// ends first, the listening socket moves to [`LISTENER_FD`] without close-on-exec, and no
/// signal stays blocked. It runs between fork and exec, so it makes only async-signal-safe
/// calls.
fn prepare_daemon(listener_fd: libc::c_int) -> io::Result<()> {
    let check = |result: libc::c_int| match result {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    };
    // SAFETY: prctl takes integers only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) })?;
    // SAFETY: fcntl and dup2 take integers only.
    check(unsafe {
        if listener_fd == LISTENER_FD {
            libc::fcntl(LISTENER_FD, libc::F_SETFD, 0)
        } else {
            libc::dup2(listener_fd, LISTENER_FD)
        }
    })?;
    // A supervisor blocks its stop signals, and virtiofsd's child process ends on the
    // SIGTERM that its parent's death sends.
    // SAFETY: sigset_t is plain data, valid when zeroed, and sigemptyset and sigprocmask
    // get pointers to that local set, or null for the old mask, which is not wanted.
    check(unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
    })
}

/// Returns the arguments of share mode for `share`.
fn share_arguments(share: &Share, virtiofsd: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![virtiofsd.into(), share.tree().into()];
    match &share.source {
        ShareSource::HostView => args.push("host-view".into()),
        ShareSource::Directory(directory) => {
            args.push("directory".into());
            args.push(directory.into());
        }
    }
    args
}

/// A failed step of share mode, with the path it concerned.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("usage: airlock {SHARE_ARGUMENT} VIRTIOFSD TREE (host-view | directory DIR); Airlock starts this mode itself for the vm backend")]
    Usage,
    #[error("cannot create the daemon's user and mount namespaces")]
    Namespaces(#[source] io::Error),
    #[error("cannot write {path:?}")]
    IdMap {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the shared tree on {tree:?}")]
    Tree {
        tree: PathBuf,
        #[source]
        source: rootfs::Error,
    },
    #[error("cannot install the setgroups filter")]
    Filter(#[source] io::Error),
    #[error("cannot run {virtiofsd:?}")]
    Exec {
        virtiofsd: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Runs share mode with the arguments after [`SHARE_ARGUMENT`]: builds the tree in new
/// namespaces and execs virtiofsd. Returns only on failure.
pub fn serve(args: &[OsString]) -> Result<Infallible, ServeError> {
    let (virtiofsd, tree, source) = parse_arguments(args)?;
    let is_root = sys::geteuid() == 0;
    enter_namespaces(is_root)?;
    let built = match &source {
        ShareSource::HostView => build_host_view(&tree),
        ShareSource::Directory(directory) => bind_directory(directory, &tree),
    };
    built.map_err(|source| ServeError::Tree {
        tree: tree.clone(),
        source,
    })?;
    if !is_root {
        allow_group_drop()?;
    }
    Err(exec_virtiofsd(&virtiofsd, &tree))
}

fn parse_arguments(args: &[OsString]) -> Result<(PathBuf, PathBuf, ShareSource), ServeError> {
    let [virtiofsd, tree, kind, rest @ ..] = args else {
        return Err(ServeError::Usage);
    };
    let source = match (kind.to_str(), rest) {
        (Some("host-view"), []) => ShareSource::HostView,
        (Some("directory"), [directory]) => ShareSource::Directory(directory.into()),
        _ => return Err(ServeError::Usage),
    };
    Ok((virtiofsd.into(), tree.into(), source))
}

/// Step 1: a private mount namespace, and for an unprivileged caller a user namespace in
/// which it is root, mapped to its own ids, as the only ids it may map.
fn enter_namespaces(is_root: bool) -> Result<(), ServeError> {
    let (uid, gid) = (sys::geteuid(), sys::getegid());
    let flags = if is_root {
        libc::CLONE_NEWNS
    } else {
        libc::CLONE_NEWUSER | libc::CLONE_NEWNS
    };
    sys::unshare(flags).map_err(ServeError::Namespaces)?;
    if !is_root {
        let write = |path: &'static str, content: String| {
            std::fs::write(path, content).map_err(|source| ServeError::IdMap { path, source })
        };
        write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
        write("/proc/self/setgroups", "deny".to_owned())?;
        write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    }
    // Set again in case the move to the new user namespace reset it.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .map_err(ServeError::Namespaces)?;
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    sys::mount(None, Path::new("/"), None, flags, None).map_err(ServeError::Namespaces)
}

/// Step 2 for the host view: a tmpfs with the host's system directories bound read-only,
/// its secrets hidden, and the guest's mount points, then the tmpfs made read-only.
fn build_host_view(tree: &Path) -> Result<(), rootfs::Error> {
    use rootfs::Step;
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount(
        Some(Path::new("airlock-host-view")),
        tree,
        Some("tmpfs"),
        flags,
        Some("mode=0755,size=64k"),
    )
    .step(|| format!("mount tmpfs on {}", tree.display()))?;
    for entry in HOST_SYSTEM_ENTRIES {
        let source = Path::new("/").join(entry);
        if std::fs::symlink_metadata(&source).is_ok() {
            rootfs::mirror_entry(&source, &tree.join(entry))?;
        }
    }
    rootfs::hide_secrets(tree)?;
    for point in MOUNT_POINTS {
        let path = tree.join(point);
        std::fs::create_dir(&path).step(|| format!("create mount point {}", path.display()))?;
    }
    let attributes = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    sys::mount_setattr(tree, attributes, true).step(|| format!("make {} read-only", tree.display()))
}

/// Step 2 for a writable directory: a bind of it without the mounts below it, as the
/// namespace backend binds a workspace, and without setuid files or devices.
fn bind_directory(directory: &Path, tree: &Path) -> Result<(), rootfs::Error> {
    use rootfs::Step;
    sys::mount(Some(directory), tree, None, libc::MS_BIND, None)
        .step(|| format!("bind {} to {}", directory.display(), tree.display()))?;
    sys::mount_setattr(tree, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, false)
        .step(|| format!("restrict mount flags of {}", tree.display()))
}

/// Lets virtiofsd's drop of supplementary groups succeed in a user namespace, where the
/// kernel forbids setgroups(2) to an unprivileged caller, if the caller has any.
// NOTE: the daemon then keeps the caller's supplementary groups, which give it no access
// the caller lacks.
fn allow_group_drop() -> Result<(), ServeError> {
    // SAFETY: getgroups with a zero size only counts the groups and writes nothing.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if count == 0 {
        return Ok(());
    }
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(ServeError::Filter)?;
    airlock_namespace::seccomp::build_setgroups_no_op()
        .install()
        .map_err(ServeError::Filter)
}

/// Step 3: virtiofsd on the tree, serving the inherited socket. Its own sandbox pivots
/// into the tree and drops every capability that file serving does not need. Returns the
/// error of a failed exec.
fn exec_virtiofsd(virtiofsd: &Path, tree: &Path) -> ServeError {
    let source = format!("source={}", tree.display());
    let error = Command::new(virtiofsd)
        .arg(format!("--fd={LISTENER_FD}"))
        .args(["-o", &source, "-o", "sandbox=namespace", "-o", "cache=auto"])
        .args(["-o", "no_posix_lock", "-o", "no_flock", "-o", "no_xattr"])
        .exec();
    ServeError::Exec {
        virtiofsd: virtiofsd.to_owned(),
        source: error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(source: ShareSource) -> Share {
        Share {
            tag: "airlock-root".into(),
            socket: "/tmp/airlock-vm-x/root.sock".into(),
            source,
        }
    }

    #[test]
    fn tree_and_log_beside_socket() {
        let share = share(ShareSource::HostView);
        assert_eq!(share.tree(), Path::new("/tmp/airlock-vm-x/root.tree"));
        assert_eq!(share.log(), Path::new("/tmp/airlock-vm-x/root.log"));
    }

    #[test]
    fn arguments_parse_back() {
        let virtiofsd = Path::new("/usr/lib/qemu/virtiofsd");
        for source in [
            ShareSource::HostView,
            ShareSource::Directory("/srv/project".into()),
        ] {
            let share = share(source.clone());
            let args = share_arguments(&share, virtiofsd);
            let (parsed_virtiofsd, tree, parsed) = parse_arguments(&args).unwrap();
            assert_eq!(parsed_virtiofsd, virtiofsd);
            assert_eq!(tree, share.tree());
            assert_eq!(parsed, source);
        }
    }

    #[test]
    fn unknown_kind_is_usage_error() {
        let args: Vec<OsString> = ["v", "t", "everything"].map(OsString::from).to_vec();
        assert!(matches!(parse_arguments(&args), Err(ServeError::Usage)));
    }
}
