//! The host directory of one probe run: the workspace the probes' sandbox is created from,
//! and a copy of the running binary to put into it. It is private to the caller and removed
//! when dropped.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::host::token;

/// Name, in the workspace, of the root-owned setuid copy of Airlock.
pub const SETUID_COPY: &str = ".airlock-probe-setuid";

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("cannot create the probe directory {path:?}: check that the temporary directory (TMPDIR) is writable")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot copy the running Airlock binary (/proc/self/exe) to {path:?}")]
    CopyBinary {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub struct Staging {
    root: PathBuf,
    setuid_copy: Result<String, String>,
}

impl Staging {
    /// Creates `TMPDIR/airlock-probe-TOKEN` with an empty workspace and a copy of this
    /// binary. As root it also places a root-owned setuid copy in the workspace, which
    /// no other user can reach, because the directory is private to its owner.
    pub fn create(is_root: bool) -> Result<Staging, StagingError> {
        let root = std::env::temp_dir().join(format!("airlock-probe-{}", token(6)));
        let create_dir = |path: &Path, mode: u32| {
            DirBuilder::new()
                .mode(mode)
                .create(path)
                .map_err(|source| StagingError::CreateDir {
                    path: path.to_owned(),
                    source,
                })
        };
        create_dir(&root, 0o700)?;
        let mut staging = Staging {
            root,
            setuid_copy: Err(String::new()),
        };
        // Mode 0755 is safe below the private root. The docker backend gives the workspace's
        // mode to /workspace, which belongs to the sandbox's user, and root in a container
        // without capabilities cannot enter it at 0700.
        create_dir(&staging.workspace(), 0o755)?;
        let binary = staging.binary();
        copy_running_binary(&binary).map_err(|source| StagingError::CopyBinary {
            path: binary,
            source,
        })?;
        staging.setuid_copy = if is_root {
            staging.place_setuid_copy()
        } else {
            Err("placing a root-owned setuid binary needs root on the host".to_owned())
        };
        Ok(staging)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the directory the probes' sandbox gets as its workspace.
    pub fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }

    /// Returns the copy of the running binary that goes into the sandbox.
    pub fn binary(&self) -> PathBuf {
        self.root.join("airlock")
    }

    /// Returns the name of the setuid copy in the workspace, or why there is none.
    pub fn setuid_copy(&self) -> Result<String, String> {
        self.setuid_copy.clone()
    }

    fn place_setuid_copy(&self) -> Result<String, String> {
        let path = self.workspace().join(SETUID_COPY);
        let placed = std::fs::copy(self.binary(), &path).and_then(|_| {
            std::os::unix::fs::chown(&path, Some(0), Some(0))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755))
        });
        match placed {
            Ok(()) => Ok(SETUID_COPY.to_owned()),
            Err(error) => Err(format!("cannot place a setuid copy at {path:?}: {error}")),
        }
    }
}

/// Copies the running binary through /proc/self/exe, which opens the file this process
/// executes even when its path was replaced since, as a rebuild does.
fn copy_running_binary(target: &Path) -> io::Result<()> {
    std::fs::copy("/proc/self/exe", target)?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
