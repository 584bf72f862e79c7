//! The directory of what guests share and Airlock builds once: initramfs archives, root
//! disk images and the verdict on KVM.

use std::path::PathBuf;

use crate::error::Error;

/// Overrides the cache directory.
pub const CACHE_DIR_VARIABLE: &str = "AIRLOCK_CACHE_DIR";

/// Returns `$AIRLOCK_CACHE_DIR`, else `/var/cache/airlock/vm` for root and
/// `$XDG_CACHE_HOME/airlock/vm` (by default `~/.cache/airlock/vm`) for others, and creates it.
pub fn directory() -> Result<PathBuf, Error> {
    let variable = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    let directory = if let Some(explicit) = variable(CACHE_DIR_VARIABLE) {
        PathBuf::from(explicit).join("vm")
    } else if airlock_namespace::sys::geteuid() == 0 {
        PathBuf::from("/var/cache/airlock/vm")
    } else if let Some(xdg) = variable("XDG_CACHE_HOME") {
        PathBuf::from(xdg).join("airlock/vm")
    } else if let Some(home) = variable("HOME") {
        PathBuf::from(home).join(".cache/airlock/vm")
    } else {
        return Err(Error::NoCacheDirectory);
    };
    std::fs::create_dir_all(&directory).map_err(|source| Error::CacheDirectory {
        path: directory.clone(),
        source,
    })?;
    Ok(directory)
}
