//! The guest's root disk built from a container image of a Docker-compatible engine, the
//! same images the docker backend runs (`--image NAME`).
//!
//! The build goes through these steps, once per image id:
//! 1. look the image up in the engine, whose id (a digest) names the cached disk. A
//!    sandbox's first start records the id and the engine's socket ([`PinnedImage`]), and
//!    its later starts use that id and socket, whatever engine DOCKER_HOST names then;
//! 2. export the image's files as a tar stream ([`airlock_docker::image::ExportContainer`])
//!    and unpack it into a private directory in the cache;
//! 3. build the ext4 image from that directory, as for `--rootfs` ([`crate::disk`]), and
//!    move it into place;
//! 4. remove the directory and the engine's container, on every path.
//!
//! SIGINT, SIGTERM and SIGHUP are held back during steps 2 and 3, and checked between tar
//! entries and while mkfs.ext4 runs, so that an interrupted build still removes what it made.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use airlock_docker::image::{ExportContainer, LocalImage};
use airlock_docker::Engine;
use airlock_namespace::interrupt::Interrupts;
use airlock_namespace::sys;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::owners::Fixups;

/// The start of a cached disk's name, followed by the hexadecimal image id.
// NOTE: change it whenever the way these disks are built changes, so that old ones go
// unused and get pruned.
const DISK_PREFIX: &str = "rootfs-image-1-";

/// The share of the progress bar that the export and unpacking take; mkfs.ext4 takes the
/// rest.
const UNPACK_SHARE: f64 = 0.5;

/// The image a sandbox's root disk was built from, recorded at its first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedImage {
    /// The name the spec gives, such as `debian:bookworm`.
    pub name: String,
    /// The engine's id of the image, `sha256:...`.
    pub id: String,
    /// The engine's socket, where the disk is rebuilt from when the cache lost it.
    pub socket: PathBuf,
}

/// Returns the cached root disk of the engine's image `name`, building it when missing,
/// with the image it was built from. With `pinned`, the image of an earlier start, the disk
/// is that image's, rebuilt from its engine when the cache lost it. While it builds,
/// `progress` receives the share done, from 0.0 to 1.0.
pub fn root_image(
    name: &str,
    pinned: Option<&PinnedImage>,
    cache: &Path,
    progress: &mut dyn FnMut(f64),
) -> Result<(PathBuf, PinnedImage), Error> {
    // A pin of another name would not be this spec's image, so it is ignored.
    let pinned = pinned.filter(|pinned| pinned.name == name);
    if let Some(pinned) = pinned {
        let disk = disk_path(cache, &pinned.id);
        if disk.is_file() {
            tracing::debug!(image = name, disk = %disk.display(), "root disk of the pinned image cached");
            crate::cache::touch(&disk);
            return Ok((disk, pinned.clone()));
        }
    }
    let (engine, image) = match pinned {
        Some(pinned) => find_pinned(pinned)?,
        None => find_by_name(name)?,
    };
    let pinned = PinnedImage {
        name: name.to_owned(),
        id: image.id.clone(),
        socket: engine.socket().to_owned(),
    };
    let disk = disk_path(cache, &image.id);

    if disk.is_file() {
        tracing::debug!(image = name, disk = %disk.display(), "root disk of the image cached");
        crate::cache::touch(&disk);
        return Ok((disk, pinned));
    }

    crate::cache::prune(cache, &["rootfs-", ".rootfs-"]);
    let interrupts = Interrupts::block().map_err(Error::Signals)?;
    let staging = Staging::create(cache)?;
    build(&engine, name, &image, &staging, &interrupts, progress)?;

    let built = staging.disk();
    // The disk contains every file of the image, private ones included, so only its owner
    // may read it, as only the owner may enter the cache directory.
    let placed = crate::cache::make_private(&built).and_then(|()| std::fs::rename(&built, &disk));
    placed.map_err(|source| Error::BuildImage {
        path: disk.clone(),
        source,
    })?;
    tracing::info!(image = name, id = %image.id, disk = %disk.display(), "root disk of the image built");
    Ok((disk, pinned))
}

/// Returns the path of the cached disk of the image `id`.
fn disk_path(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("{DISK_PREFIX}{}.ext4", digest_hex(id)))
}

/// Looks the image `name` up in the engine that DOCKER_HOST names, or the default one.
fn find_by_name(name: &str) -> Result<(Engine, LocalImage), Error> {
    let engine = Engine::connect()?;
    let image =
        airlock_docker::image::inspect(&engine, name)?.ok_or_else(|| Error::ImageNotFound {
            image: name.to_owned(),
            socket: engine.socket().to_owned(),
        })?;
    Ok((engine, image))
}

/// Looks the pinned image up by its id in the engine it came from, to rebuild its disk.
fn find_pinned(pinned: &PinnedImage) -> Result<(Engine, LocalImage), Error> {
    let lost_image = |source| Error::PinnedImageGone {
        image: pinned.name.clone(),
        id: pinned.id.clone(),
        socket: pinned.socket.clone(),
        source,
    };
    let engine = Engine::connect_to(&pinned.socket)
        .map_err(|error| lost_image(Some(Box::new(Error::from(error)))))?;
    let image = airlock_docker::image::inspect(&engine, &pinned.id)
        .map_err(|error| lost_image(Some(Box::new(Error::from(error)))))?
        .ok_or_else(|| lost_image(None))?;
    Ok((engine, image))
}

/// Exports and unpacks the image into the staging directory, then builds its disk there.
fn build(
    engine: &Engine,
    name: &str,
    image: &LocalImage,
    staging: &Staging,
    interrupts: &Interrupts,
    progress: &mut dyn FnMut(f64),
) -> Result<(), Error> {
    let fixups = {
        // By id, so that the files are those of the image the disk is named after, even
        // when the name moves to another image meanwhile.
        let container = ExportContainer::create(engine, &image.id)?;
        let mut watch = |read: u64| {
            interrupts.check().map_err(Error::BuildInterrupted)?;
            let done = read as f64 / image.size.max(1) as f64;
            progress(done.min(1.0) * UNPACK_SHARE);
            Ok(())
        };
        unpack(container.reader(), &staging.tree(), &mut watch).map_err(|source| match source {
            UnpackError::Stopped(error) => error,
            UnpackError::Io(source) => Error::UnpackImage {
                image: name.to_owned(),
                source,
            },
        })?
    };

    let summary = crate::disk::summarize(&staging.tree())?;
    let mut watch = |done: f64| {
        interrupts.check().map_err(Error::BuildInterrupted)?;
        progress(UNPACK_SHARE + done * (1.0 - UNPACK_SHARE));
        Ok(())
    };
    let disk = staging.disk();
    let root_owner = (0, 0);
    crate::disk::build_image(
        &staging.tree(),
        &summary,
        &disk,
        "airlock-root",
        root_owner,
        &mut watch,
    )?;

    fixups.apply(&disk).map_err(|message| Error::FixOwners {
        image: name.to_owned(),
        message,
    })
}

/// The reason unpacking stopped.
enum UnpackError {
    /// The watcher stopped it, with this error.
    Stopped(Error),
    Io(std::io::Error),
}

impl From<std::io::Error> for UnpackError {
    fn from(error: std::io::Error) -> Self {
        UnpackError::Io(error)
    }
}

/// Unpacks the tar stream `reader` into `tree`, passing `watch` the bytes read so far.
///
/// As root, every entry gets its owner, mode and type as the tar states them. For another
/// caller, the files keep that caller as owner, each directory stays writable and each file
/// readable by it, and device nodes are left out. The returned [`Fixups`] then lists what
/// the disk needs to match the tar.
fn unpack(
    reader: impl Read,
    tree: &Path,
    watch: &mut dyn FnMut(u64) -> Result<(), Error>,
) -> Result<Fixups, UnpackError> {
    let is_root = sys::geteuid() == 0;
    // NOTE: extended attributes, file capabilities among them, are not unpacked (the tar
    // crate is built without its `xattr` feature), so a program that relies on one, such
    // as a ping without setuid, lacks it in the guest.
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(is_root);
    archive.set_overwrite(true);

    let mut fixups = Fixups::default();
    let mut read = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        read += entry.header().entry_size().unwrap_or(0) + 512;
        watch(read).map_err(UnpackError::Stopped)?;

        let Some(relative) = inside_path(&entry.path()?) else {
            continue;
        };
        // `unpack_in` skips an entry whose path leaves `tree`, and checks that no symlink
        // on the way points out of it.
        if !entry.unpack_in(tree)? {
            continue;
        }

        let header = entry.header();
        let path = tree.join(&relative);
        let node = special_file(header)?;
        if let Some(node) = &node {
            // The tar crate writes device nodes and FIFOs as empty regular files.
            std::fs::remove_file(&path)?;
            if is_root {
                make_node(&path, node, header)?;
            } else {
                fixups.add_node(&relative, node.mode, node.device);
            }
        }
        if !is_root {
            record_fixups(&mut fixups, &path, &relative, header, node.is_some())?;
        }
    }
    Ok(fixups)
}

/// A device node or FIFO of the tar: its type and permission bits, and device number.
struct SpecialFile {
    mode: u32,
    device: libc::dev_t,
}

fn special_file(header: &tar::Header) -> std::io::Result<Option<SpecialFile>> {
    let type_bits = match header.entry_type() {
        tar::EntryType::Char => libc::S_IFCHR,
        tar::EntryType::Block => libc::S_IFBLK,
        tar::EntryType::Fifo => libc::S_IFIFO,
        _ => return Ok(None),
    };
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    Ok(Some(SpecialFile {
        mode: type_bits | (header.mode()? & 0o7777),
        device: libc::makedev(major, minor),
    }))
}

/// Creates `node` at `path` with the owner and mode of its tar entry `header`.
fn make_node(path: &Path, node: &SpecialFile, header: &tar::Header) -> std::io::Result<()> {
    sys::mknod(path, node.mode, node.device)?;
    let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    // mknod applies the umask, which the tar's mode does not, and chown clears the set-user
    // and set-group bits, so the mode comes last.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777))
}

/// Records, for a caller other than root, the owner and mode that the entry at `path`
/// should have, and makes a directory writable and a file readable for the caller, so that
/// unpacking and mkfs.ext4 can go on.
fn record_fixups(
    fixups: &mut Fixups,
    path: &Path,
    relative: &Path,
    header: &tar::Header,
    is_node: bool,
) -> std::io::Result<()> {
    let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
    if is_node {
        fixups.add_owner(relative, uid, gid);
        return Ok(());
    }
    let metadata = std::fs::symlink_metadata(path)?;
    if (metadata.uid(), metadata.gid()) != (uid, gid) {
        fixups.add_owner(relative, uid, gid);
    }
    let needed = match metadata.file_type() {
        kind if kind.is_dir() => 0o700,
        kind if kind.is_file() => 0o400,
        _ => return Ok(()),
    };
    let mode = metadata.mode();
    if mode & needed != needed {
        std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode((mode | needed) & 0o7777),
        )?;
        fixups.add_mode(relative, mode);
    }
    Ok(())
}

/// Returns the path of a tar entry relative to the tree's root, or `None` for an entry
/// that would leave it (a `..` component) or names the root itself.
fn inside_path(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::ParentDir => return None,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    (!relative.as_os_str().is_empty()).then_some(relative)
}

/// Returns the hexadecimal part of an image id such as `sha256:HEX`, or of any other id
/// with every character outside `[0-9a-zA-Z]` dropped, so that it fits in a file name.
fn digest_hex(id: &str) -> String {
    let digest = id.split_once(':').map_or(id, |(_, digest)| digest);
    digest.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// The private directory in the cache where one build unpacks the image and builds its
/// disk. Dropping it removes it, whatever it contains.
struct Staging {
    directory: tempfile::TempDir,
}

impl Staging {
    fn create(cache: &Path) -> Result<Staging, Error> {
        // The leading dot keeps it out of the disks' names, and `prune` removes one that a
        // killed build left, once it went unused for as long as any other entry.
        let failed = |source| Error::BuildImage {
            path: cache.to_owned(),
            source,
        };
        let directory = tempfile::Builder::new()
            .prefix(".rootfs-image-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(cache)
            .map_err(failed)?;
        std::fs::create_dir(directory.path().join("tree")).map_err(failed)?;
        Ok(Staging { directory })
    }

    fn tree(&self) -> PathBuf {
        self.directory.path().join("tree")
    }

    fn disk(&self) -> PathBuf {
        self.directory.path().join("disk.ext4")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let path = self.directory.path().to_owned();
        if std::fs::remove_dir_all(&path).is_err() {
            // A directory of the tree without write permission, as unpacking leaves one
            // when it stops between an entry and the fix of its mode.
            make_directories_writable(&path);
            if let Err(error) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove the image's staging directory");
            }
        }
    }
}

/// Sets every directory below `root`, and `root`, to mode 0700, so that their owner may
/// remove their entries.
fn make_directories_writable(root: &Path) {
    let mut pending = vec![root.to_owned()];
    while let Some(directory) = pending.pop() {
        let _ = std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o700));
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_path_drops_root_and_rejects_parent() {
        assert_eq!(
            inside_path(Path::new("/etc/passwd")),
            Some("etc/passwd".into())
        );
        assert_eq!(inside_path(Path::new("./usr/bin/")), Some("usr/bin".into()));
        assert_eq!(inside_path(Path::new("usr/../../etc")), None);
        assert_eq!(inside_path(Path::new("./")), None);
    }

    fn pinned() -> PinnedImage {
        PinnedImage {
            name: "debian:bookworm".into(),
            id: "sha256:00ab".into(),
            socket: "/nonexistent/docker.sock".into(),
        }
    }

    #[test]
    fn pinned_image_uses_cached_disk_without_engine() {
        let cache = tempfile::tempdir().expect("temp dir");
        let disk = disk_path(cache.path(), "sha256:00ab");
        std::fs::write(&disk, b"disk").expect("write disk");

        let found = root_image(
            "debian:bookworm",
            Some(&pinned()),
            cache.path(),
            &mut |_| {},
        );

        let (found, image) = found.expect("the cached disk");
        assert_eq!(found, disk);
        assert_eq!(image, pinned());
    }

    #[test]
    fn pinned_image_lost_names_image_engine_and_fix() {
        let cache = tempfile::tempdir().expect("temp dir");

        let result = root_image(
            "debian:bookworm",
            Some(&pinned()),
            cache.path(),
            &mut |_| {},
        );

        let message = result.expect_err("no disk and no engine").to_string();
        assert!(
            message.contains("\"debian:bookworm\" (sha256:00ab)"),
            "{message}"
        );
        assert!(message.contains("/nonexistent/docker.sock"), "{message}");
        assert!(
            message.contains("remove this sandbox and create a new one"),
            "{message}"
        );
    }

    #[test]
    fn digest_hex_keeps_only_the_digest() {
        assert_eq!(digest_hex("sha256:7fe7ab"), "7fe7ab");
        assert_eq!(digest_hex("7fe7ab"), "7fe7ab");
        assert_eq!(digest_hex("sha256:../x"), "x");
    }
}
