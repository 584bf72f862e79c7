//! The guest's root disk: an ext4 image built once from a root filesystem directory and
//! shared by every sandbox.
//!
//! The guest mounts its root read-only, and QEMU attaches the image read-only too
//! (`readonly=on`), so a guest kernel that tries to write to the block device gets an
//! error, and the shared image stays as it was built whatever a guest does.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::Error;

/// Free space added to the image beyond the tree's size, for ext4's metadata.
const IMAGE_HEADROOM: u64 = 64 << 20;

/// Changes whenever the way images are built changes.
const FORMAT: &str = "airlock-rootfs-2";

/// A summary of a directory tree, as far as the image is concerned.
#[derive(Debug, Default)]
pub struct TreeSummary {
    /// A key over every entry's path, type, mode, owner, size, modification time and link
    /// target.
    pub key: String,
    /// Bytes of file data, for the image's size and the progress bar.
    pub bytes: u64,
    pub entries: u64,
}

/// Walks `root` without following symlinks and summarizes it.
pub fn summarize(root: &Path) -> Result<TreeSummary, Error> {
    let mut hash = Sha256::new();
    hash.update(FORMAT.as_bytes());
    let mut summary = TreeSummary::default();
    let mut pending = vec![root.to_owned()];
    while let Some(directory) = pending.pop() {
        let listing = std::fs::read_dir(&directory).map_err(|source| Error::ReadRootfs {
            path: directory.clone(),
            source,
        })?;
        let mut entries: Vec<_> = listing.filter_map(Result::ok).collect();
        entries.sort_by_key(|entry| entry.path());
        for entry in entries {
            let path = entry.path();
            // Relative to the open directory (fstatat), without following a symlink.
            let metadata = entry.metadata().map_err(|source| Error::ReadRootfs {
                path: path.clone(),
                source,
            })?;
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let target = if metadata.is_symlink() {
                std::fs::read_link(&path).unwrap_or_default()
            } else {
                PathBuf::new()
            };
            let line = format!(
                "{}\0{:o}\0{}:{}\0{}\0{}.{}\0{}\n",
                relative.display(),
                metadata.mode(),
                metadata.uid(),
                metadata.gid(),
                metadata.len(),
                metadata.mtime(),
                metadata.mtime_nsec(),
                target.display()
            );
            hash.update(line.as_bytes());
            summary.entries += 1;
            if metadata.is_dir() {
                pending.push(path);
            } else if metadata.is_file() {
                summary.bytes += metadata.blocks() * 512;
            }
        }
    }
    summary.key = hash
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok(summary)
}

/// Returns the cached image of the tree at `root`, building it when missing. While it
/// builds, `progress` receives the share done, from 0.0 to 1.0.
pub fn root_image(
    root: &Path,
    cache: &Path,
    progress: &mut dyn FnMut(f64),
) -> Result<PathBuf, Error> {
    let summary = summarize(root)?;
    let image = cache.join(format!("rootfs-{}.ext4", summary.key));
    if image.is_file() {
        crate::cache::touch(&image);
        // An image that an earlier version cached with its default mode.
        crate::cache::make_private(&image).map_err(|source| Error::BuildImage {
            path: image.clone(),
            source,
        })?;
        return Ok(image);
    }
    crate::cache::prune(cache, &["rootfs-", ".rootfs-"]);
    let partial = cache.join(format!(
        ".rootfs-{}.partial-{}",
        summary.key,
        std::process::id()
    ));
    let mut watch = |done| {
        progress(done);
        Ok(())
    };
    let result = build_image(root, &summary, &partial, "airlock-root", (0, 0), &mut watch);
    if let Err(error) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    // The image contains every file of the tree, private ones included, so only its owner
    // may read it, as only the owner may enter the cache directory.
    let private = crate::cache::make_private(&partial);
    if let Err(source) = private.and_then(|()| std::fs::rename(&partial, &image)) {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::BuildImage {
            path: image.clone(),
            source,
        });
    }
    Ok(image)
}

/// Runs `mkfs.ext4 -d`, which copies the tree into a new file system without root, and
/// passes `watch` the share done, from the image's allocated size. An error from `watch`
/// kills mkfs.ext4 and ends the build with that error. mkfs.ext4 copies the owner of every
/// entry but the root directory, which gets `root_owner` (uid, gid).
pub(crate) fn build_image(
    root: &Path,
    summary: &TreeSummary,
    image: &Path,
    label: &str,
    root_owner: (u32, u32),
    watch: &mut dyn FnMut(f64) -> Result<(), Error>,
) -> Result<(), Error> {
    // Inodes take room too: 256 bytes each plus a block for small directories.
    let size = summary.bytes * 5 / 4 + summary.entries * 4096 + IMAGE_HEADROOM;
    let size_kib = size.div_ceil(1024).to_string();
    let mkfs = crate::availability::find("mkfs.ext4").unwrap_or_else(|| "mkfs.ext4".into());
    let mut child = Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-L",
            label,
            "-E",
        ])
        .arg(format!("root_owner={}:{}", root_owner.0, root_owner.1))
        .arg("-d")
        .arg(root)
        .arg(image)
        .arg(size_kib)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Mkfs {
            root: root.to_owned(),
            message: source.to_string(),
        })?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|source| Error::BuildImage {
            path: image.to_owned(),
            source,
        })? {
            break status;
        }
        let done = std::fs::metadata(image).map_or(0.0, |metadata| {
            (metadata.blocks() * 512) as f64 / summary.bytes.max(1) as f64
        });
        if let Err(error) = watch(done.min(0.99)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        let mut message = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut message);
        }
        return Err(Error::Mkfs {
            root: root.to_owned(),
            message: message.trim().to_owned(),
        });
    }
    remove_lost_and_found(image);
    watch(1.0)
}

/// Removes the empty `lost+found` that mkfs.ext4 adds, which would otherwise show in the
/// guest's workspace and root as an entry the tree does not have. Skipped where debugfs
/// (e2fsprogs, like mkfs.ext4) is missing; a tree's own `lost+found` stays unless empty.
fn remove_lost_and_found(image: &Path) {
    let Some(debugfs) = crate::availability::find("debugfs") else {
        return;
    };
    let _ = Command::new(debugfs)
        .args(["-w", "-R", "rmdir lost+found"])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Builds an image of the project at `workspace` for one sandbox, not cached: the project
/// changes between runs, and the guest gets the copy made at its start. With `inner`, the
/// image's root directory keeps the project's owner, whom an inner layer maps its root to.
/// Otherwise it belongs to root, like the guest's command.
pub fn workspace_image(workspace: &Path, image: &Path, inner: bool) -> Result<(), Error> {
    let summary = summarize(workspace)?;
    let mut owner = (0, 0);
    if inner {
        let metadata = std::fs::metadata(workspace).map_err(|source| Error::ProjectOwner {
            path: workspace.to_owned(),
            source,
        })?;
        owner = (metadata.uid(), metadata.gid());
    }
    build_image(workspace, &summary, image, "airlock-ws", owner, &mut |_| {
        Ok(())
    })?;
    Ok(())
}

/// Prints a progress bar on stderr while an image builds, when stderr is a terminal, and
/// a line at the start and end otherwise.
pub struct ProgressBar {
    terminal: bool,
    started: bool,
    last_percent: Option<u32>,
}

impl ProgressBar {
    pub fn new() -> ProgressBar {
        ProgressBar {
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            started: false,
            last_percent: None,
        }
    }

    pub fn update(&mut self, done: f64) {
        let mut stderr = std::io::stderr().lock();
        if !self.started {
            self.started = true;
            let _ = writeln!(
                stderr,
                "airlock: building the root disk image once; later sandboxes reuse it"
            );
        }
        let percent = (done * 100.0).round() as u32;
        if self.last_percent == Some(percent) {
            return;
        }
        self.last_percent = Some(percent);
        if self.terminal {
            let filled = (percent / 5) as usize;
            let bar = format!("{}{}", "#".repeat(filled), ".".repeat(20 - filled));
            let _ = write!(stderr, "\rairlock: [{bar}] {percent:3}%");
            if percent == 100 {
                let _ = writeln!(stderr);
            }
        } else if percent == 100 {
            let _ = writeln!(stderr, "airlock: root disk image built");
        }
    }
}

impl Default for ProgressBar {
    fn default() -> Self {
        ProgressBar::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_key_changes_with_file_size() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("usr")).unwrap();
        std::fs::write(root.path().join("usr/a"), b"one").unwrap();
        let first = summarize(root.path()).unwrap();
        assert_eq!(first.key, summarize(root.path()).unwrap().key);
        assert_eq!(first.entries, 2);
        std::fs::write(root.path().join("usr/a"), b"one more").unwrap();
        assert_ne!(first.key, summarize(root.path()).unwrap().key);
    }

    #[test]
    fn image_built_once_and_reused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/tool"), vec![7u8; 100_000]).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut reports = Vec::new();
        let image = root_image(root.path(), cache.path(), &mut |done| reports.push(done)).unwrap();
        assert!(image.is_file());
        assert_eq!(reports.last(), Some(&1.0));
        let mut again = Vec::new();
        let second = root_image(root.path(), cache.path(), &mut |done| again.push(done)).unwrap();
        assert_eq!(image, second);
        assert!(again.is_empty(), "the cached image was rebuilt");
    }
}
