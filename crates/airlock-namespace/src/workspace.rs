//! The host's workspace directory, opened once. Every later use (the owner check, the
//! idmapped mount, the bind mount) goes through this descriptor, so that swapping a path
//! component for a symlink between the checks and the mount cannot point the sandbox at
//! another directory.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    #[error("the workspace {0:?} is a system or shared directory, or a whole home directory, which the sandbox must not write: pass a project directory with --workspace")]
    System(PathBuf),
}

/// An open workspace directory.
#[derive(Debug)]
pub struct HostWorkspace {
    pub fd: OwnedFd,
    pub path: PathBuf,
    pub owner_uid: u32,
    /// Device and inode numbers, which identify the directory across mount namespaces.
    pub identity: (u64, u64),
}

/// What the init needs to bind the workspace: its path as the launcher opened it, and the
/// device and inode numbers to check that the path still names that directory.
#[derive(Debug, Clone)]
pub struct BindSource {
    pub path: PathBuf,
    pub identity: (u64, u64),
}

impl HostWorkspace {
    /// Opens `path`, which the spec has made absolute and free of symlinks, and checks that
    /// the directory opened is still the one at that path.
    pub fn open(path: &Path) -> Result<HostWorkspace, Error> {
        let open_error = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = sys::open(path, flags).map_err(open_error)?;
        let now = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(open_error)?;
        if now != path {
            return Err(Error::Changed {
                path: path.to_owned(),
                now,
            });
        }
        if airlock_core::spec::is_system_path(&now) {
            return Err(Error::System(now));
        }
        let metadata =
            fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(open_error)?;
        Ok(HostWorkspace {
            fd,
            path: now,
            owner_uid: metadata.uid(),
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
