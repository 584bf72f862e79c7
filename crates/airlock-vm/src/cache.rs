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
    // The disk images hold every file of their trees, private ones such as /etc/shadow
    // included, so only their owner may reach them.
    make_private(&directory).map_err(|source| Error::CacheDirectory {
        path: directory.clone(),
        source,
    })?;
    Ok(directory)
}

/// Takes every permission from group and others on `path`, where it has any.
pub fn make_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}

/// How long a cached archive or image may go unused before a new build removes it.
pub const UNUSED_LIFETIME: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Marks a cached file as used now, through its modification time, so that pruning keeps it.
pub fn touch(path: &std::path::Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the entries in `cache` whose names start with one of `prefixes` and that went
/// unused for [`UNUSED_LIFETIME`]: archives of old Airlock binaries, images of trees that
/// changed, directories that a killed build left. Each build calls it, so the cache does
/// not grow without bound.
pub fn prune(cache: &std::path::Path, prefixes: &[&str]) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        let unused = metadata
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age > UNUSED_LIFETIME);
        if !unused {
            continue;
        }
        tracing::info!(path = %entry.path().display(), "removing an unused cache entry");
        let _ = if metadata.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_only_old_matching_entries() {
        let cache = tempfile::tempdir().unwrap();
        let old =
            std::time::SystemTime::now() - UNUSED_LIFETIME - std::time::Duration::from_secs(60);
        for name in [
            "initramfs-old.cpio",
            "rootfs-old.ext4",
            "initramfs-new.cpio",
        ] {
            std::fs::write(cache.path().join(name), b"x").unwrap();
        }
        for name in ["initramfs-old.cpio", "rootfs-old.ext4"] {
            let file = std::fs::File::options()
                .append(true)
                .open(cache.path().join(name))
                .unwrap();
            file.set_modified(old).unwrap();
        }
        let staging = cache.path().join("initramfs-old.staging");
        std::fs::create_dir_all(staging.join("tree")).unwrap();
        std::fs::File::open(&staging)
            .unwrap()
            .set_modified(old)
            .unwrap();
        prune(cache.path(), &["initramfs-"]);
        assert!(!cache.path().join("initramfs-old.cpio").exists());
        assert!(!staging.exists(), "an old directory was kept");
        assert!(cache.path().join("initramfs-new.cpio").exists());
        assert!(
            cache.path().join("rootfs-old.ext4").exists(),
            "another prefix was pruned"
        );
    }
}
