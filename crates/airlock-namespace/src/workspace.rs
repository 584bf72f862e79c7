//! The host's workspace directory, opened once. Every later use (the owner check, the
//! idmapped mount, the bind mount) goes through this descriptor, so that swapping a path
//! component for a symlink between the checks and the mount cannot point the sandbox at
//! another directory.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use airlock_core::state::RootAttributes;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the workspace {path:?}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the workspace {path:?} changed while it was opened (it now resolves to {now:?}): check who else can rename entries of its parent directories, then try again")]
    Changed { path: PathBuf, now: PathBuf },
    #[error("the workspace {path:?} goes through the symlink {link:?}, which Airlock does not follow when it runs as root, because the link's owner could point it at another directory: pass the real path {resolved:?}")]
    Symlink {
        path: PathBuf,
        link: PathBuf,
        resolved: PathBuf,
    },
    #[error("the workspace {0:?} is a system or shared directory, or a whole home directory, which the sandbox must not write: pass a project directory with --workspace")]
    System(PathBuf),
}

/// Opens the directory `path` one component at a time, refusing any symlink on the way.
fn open_without_symlinks(path: &Path) -> Result<OwnedFd, Error> {
    let open_error = |source| Error::Open {
        path: path.to_owned(),
        source,
    };
    let flags = libc::O_PATH | libc::O_NOFOLLOW;
    let mut dir = sys::open(Path::new("/"), flags | libc::O_DIRECTORY).map_err(open_error)?;
    let mut walked = PathBuf::from("/");
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        walked.push(name);
        let next = sys::openat(dir.as_raw_fd(), name, flags).map_err(open_error)?;
        let kind = sys::fstat_mode(next.as_raw_fd()).map_err(open_error)?;
        match kind.map(|(mode, _)| mode & libc::S_IFMT) {
            Some(libc::S_IFDIR) => dir = next,
            Some(libc::S_IFLNK) => {
                return Err(Error::Symlink {
                    path: path.to_owned(),
                    link: walked,
                    resolved: path.canonicalize().unwrap_or_default(),
                })
            }
            _ => return Err(open_error(io::Error::from_raw_os_error(libc::ENOTDIR))),
        }
    }
    Ok(dir)
}

/// An open workspace directory.
#[derive(Debug)]
pub struct HostWorkspace {
    pub fd: OwnedFd,
    pub path: PathBuf,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// The mode and times that /workspace shows.
    pub attributes: RootAttributes,
    /// Device and inode numbers, which identify the directory across mount namespaces.
    pub identity: (u64, u64),
}

/// The init's description of the workspace to bind: its path as the launcher opened it, and the
/// device and inode numbers to check that the path still names that directory.
#[derive(Debug, Clone)]
pub struct BindSource {
    pub path: PathBuf,
    pub identity: (u64, u64),
}

impl HostWorkspace {
    /// Opens `path`, which the spec has made absolute and lexically normal, and checks that
    /// the directory opened is still the one at that path. With `refuse_symlinks` (when
    /// Airlock runs as root), no component may be a symlink: its owner could point it at a
    /// directory the caller never named.
    pub fn open(path: &Path, refuse_symlinks: bool) -> Result<HostWorkspace, Error> {
        let open_error = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let (fd, expected) = if refuse_symlinks {
            (open_without_symlinks(path)?, path.to_owned())
        } else {
            let resolved = path.canonicalize().map_err(open_error)?;
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            (sys::open(&resolved, flags).map_err(open_error)?, resolved)
        };
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let now = fs::read_link(&link).map_err(open_error)?;
        if now != expected {
            return Err(Error::Changed {
                path: expected,
                now,
            });
        }
        if airlock_core::spec::is_system_path(&now) {
            return Err(Error::System(now));
        }
        let metadata = fs::metadata(&link).map_err(open_error)?;
        Ok(HostWorkspace {
            fd,
            path: now,
            owner_uid: metadata.uid(),
            owner_gid: metadata.gid(),
            attributes: RootAttributes::of(&metadata),
            identity: (metadata.dev(), metadata.ino()),
        })
    }

    /// Describes the workspace for a bind in the init's mount namespace. The init cannot
    /// bind through this descriptor, whose mount belongs to the launcher's namespace, so it
    /// opens the path again and compares device and inode numbers.
    pub fn bind_source(&self) -> BindSource {
        BindSource {
            path: self.path.clone(),
            identity: self.identity,
        }
    }
}
