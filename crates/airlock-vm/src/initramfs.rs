//! The guest's initramfs: the Airlock binary as `/init`, which runs as the agent, and the
//! kernel modules it loads before it can reach its disks and the host.
//!
//! The archive is cached by a key over its content (the format version, the kernel release,
//! each module's path and bytes, and the agent's bytes), so a new Airlock binary or kernel
//! gets a new archive and an unchanged pair reuses the old one.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::error::Error;
use crate::kernel::Kernel;
use crate::modules::{ModuleIndex, GUEST_MODULES, SHARE_MODULES};

/// Path of the agent in the initramfs; the kernel runs it as PID 1 (`rdinit=`).
pub const AGENT_PATH: &str = "/init";

/// Path of the list of modules to load, one path per line, in load order.
pub const MODULE_LIST_PATH: &str = "/etc/airlock-modules";

/// Path of the list of modules to load when the host shares a directory, after those of
/// [`MODULE_LIST_PATH`], in the same format.
pub const SHARE_MODULE_LIST_PATH: &str = "/etc/airlock-share-modules";

/// Changes whenever the layout of the archive changes, so old cached archives are not used.
const FORMAT: &str = "airlock-initramfs-2";

/// Everything the archive is built from.
pub struct Inputs {
    pub release: String,
    /// Each module's path in the archive and its bytes, in load order.
    pub modules: Vec<(String, Vec<u8>)>,
    /// The modules of virtiofs not in `modules`, in load order after them.
    pub share_modules: Vec<(String, Vec<u8>)>,
    pub agent: Vec<u8>,
}

impl Inputs {
    /// Reads the agent binary and the modules the guest needs from `kernel`.
    pub fn gather(kernel: &Kernel, agent: &Path) -> Result<Inputs, Error> {
        let index = ModuleIndex::load(&kernel.modules)?;
        let guest = index.resolve(&GUEST_MODULES)?;
        let share: Vec<PathBuf> = index
            .resolve(&SHARE_MODULES)?
            .into_iter()
            .filter(|relative| !guest.contains(relative))
            .collect();
        let modules = read_modules(kernel, &guest)?;
        let share_modules = read_modules(kernel, &share)?;
        let agent_bytes = std::fs::read(agent).map_err(|source| Error::ReadAgent {
            path: agent.to_owned(),
            source,
        })?;
        let agent_bytes = stripped(&agent_bytes).unwrap_or(agent_bytes);
        if !is_static_elf(&agent_bytes) {
            return Err(Error::AgentNotStatic {
                path: agent.to_owned(),
            });
        }
        Ok(Inputs {
            release: kernel.release.clone(),
            modules,
            share_modules,
            agent: agent_bytes,
        })
    }

    /// Returns the content key, as lowercase hex.
    pub fn key(&self) -> String {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(FORMAT.as_bytes());
        field(self.release.as_bytes());
        for (path, bytes) in self.modules.iter().chain(&self.share_modules) {
            field(path.as_bytes());
            field(bytes);
        }
        field(&self.agent);
        hash.finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Writes the archive.
    pub fn write_archive(&self, out: impl Write) -> std::io::Result<()> {
        let mut cpio = CpioWriter::new(out);
        for directory in ["dev", "proc", "sys", "etc", "root", "tmp"] {
            cpio.directory(directory, 0o755)?;
        }
        let mut created = std::collections::BTreeSet::new();
        for (path, _) in self.modules.iter().chain(&self.share_modules) {
            for ancestor in Path::new(path).ancestors().skip(1) {
                if !ancestor.as_os_str().is_empty() {
                    created.insert(ancestor.to_owned());
                }
            }
        }
        // A BTreeSet of paths lists each parent before its children.
        for directory in &created {
            cpio.directory(&directory.to_string_lossy(), 0o755)?;
        }
        for (list_path, modules) in [
            (MODULE_LIST_PATH, &self.modules),
            (SHARE_MODULE_LIST_PATH, &self.share_modules),
        ] {
            let mut list = String::new();
            for (path, bytes) in modules {
                cpio.file(path, 0o644, bytes)?;
                list.push('/');
                list.push_str(path);
                list.push('\n');
            }
            cpio.file(&list_path[1..], 0o644, list.as_bytes())?;
        }
        cpio.file(&AGENT_PATH[1..], 0o755, &self.agent)?;
        cpio.finish()?;
        Ok(())
    }
}

/// Reads the modules at `relative` paths below `kernel`'s modules directory, each with its
/// path in the archive.
fn read_modules(kernel: &Kernel, relative: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut modules = Vec::new();
    for relative in relative {
        let path = kernel.modules.join(relative);
        let bytes = std::fs::read(&path).map_err(|source| Error::ReadModule {
            path: path.clone(),
            source,
        })?;
        let inside = format!("lib/modules/{}/{}", kernel.release, relative.display());
        modules.push((inside, bytes));
    }
    Ok(modules)
}

/// Returns the cached archive for the agent binary `agent` and `kernel`'s modules.
///
/// Reading, stripping and hashing the agent takes about half a second for a debug build, so
/// an index file maps the identity of the inputs (the agent's device, inode, size, change and
/// modification times, and those of `modules.dep`) to the archive's path. A rebuilt binary
/// or reinstalled kernel has a new identity and goes through the content key again.
pub fn find_or_build(kernel: &Kernel, agent: &Path, cache: &Path) -> Result<PathBuf, Error> {
    let index = identity(kernel, agent).map(|key| cache.join(format!("initramfs-index-{key}")));
    if let Some(index) = &index {
        if let Ok(recorded) = std::fs::read_to_string(index) {
            let archive = PathBuf::from(recorded.trim());
            if archive.is_file() {
                crate::cache::touch(&archive);
                crate::cache::touch(index);
                return Ok(archive);
            }
        }
    }
    crate::cache::prune(cache, &["initramfs-"]);
    let inputs = Inputs::gather(kernel, agent)?;
    let archive = build_cached(&inputs, cache)?;
    if let Some(index) = index {
        // A missing index only costs the next run the content key again.
        let partial = index.with_extension(format!("partial-{}", std::process::id()));
        let written = std::fs::write(&partial, archive.to_string_lossy().as_bytes())
            .and_then(|()| std::fs::rename(&partial, &index));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
    }
    Ok(archive)
}

/// Returns a key over the identity of the agent and of the kernel's module index, or
/// `None` when either cannot be read.
fn identity(kernel: &Kernel, agent: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let describe = |path: &Path| -> Option<String> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(format!(
            "{}:{}:{}:{}.{}:{}.{}",
            metadata.dev(),
            metadata.ino(),
            metadata.len(),
            metadata.mtime(),
            metadata.mtime_nsec(),
            metadata.ctime(),
            metadata.ctime_nsec()
        ))
    };
    let line = format!(
        "{FORMAT}|{}|{}|{}",
        kernel.release,
        describe(&kernel.modules.join("modules.dep"))?,
        describe(agent)?
    );
    let digest = Sha256::digest(line.as_bytes());
    Some(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Returns the cached archive for `inputs` in `cache`, building it first when missing.
pub fn build_cached(inputs: &Inputs, cache: &Path) -> Result<PathBuf, Error> {
    let path = cache.join(format!("initramfs-{}.cpio", inputs.key()));
    if path.is_file() {
        tracing::debug!(path = %path.display(), "initramfs cached");
        crate::cache::touch(&path);
        return Ok(path);
    }
    let failed = |source| Error::WriteInitramfs {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(cache).map_err(failed)?;
    // Written under a temporary name and renamed, so a killed build leaves no partial
    // archive under the final name.
    let mut temporary = tempfile_in(cache).map_err(failed)?;
    inputs
        .write_archive(std::io::BufWriter::new(&mut temporary.1))
        .map_err(failed)?;
    temporary.1.sync_all().map_err(failed)?;
    std::fs::rename(&temporary.0, &path).map_err(failed)?;
    tracing::info!(path = %path.display(), "initramfs built");
    Ok(path)
}

/// Creates a new file named `.partial-PID-N` in `directory`.
fn tempfile_in(directory: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    for attempt in 0..100 {
        let path = directory.join(format!(".partial-{}-{attempt}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&path);
            }
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::other("cannot create a temporary file"))
}

/// Returns the agent without its symbols and debug information, through binutils' `strip`
/// where it is installed. A debug build shrinks from about 66 MB to 13 MB, and the guest
/// keeps the whole initramfs in memory. `None` when `strip` is missing or fails.
fn stripped(agent: &[u8]) -> Option<Vec<u8>> {
    let strip = crate::availability::find("strip")?;
    let directory = tempfile::tempdir().ok()?;
    let (input, output) = (
        directory.path().join("agent"),
        directory.path().join("stripped"),
    );
    std::fs::write(&input, agent).ok()?;
    let status = std::process::Command::new(strip)
        .arg("-o")
        .arg(&output)
        .arg(&input)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    std::fs::read(&output).ok()
}

/// Returns whether `bytes` are a 64-bit ELF executable without a program interpreter, one
/// that runs without a dynamic loader or C library in the guest.
pub fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let program_headers = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    let (entry_size, count) = (u16_at(54), u16_at(56));
    (0..count).all(|index| {
        let at = program_headers + index * entry_size;
        match bytes.get(at..at + 4) {
            Some(kind) => u32::from_le_bytes(kind.try_into().expect("4 bytes")) != PT_INTERP,
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            release: "6.1.0-1-cloud-amd64".into(),
            modules: vec![(
                "lib/modules/6.1.0-1-cloud-amd64/kernel/fs/overlayfs/overlay.ko".into(),
                b"module".to_vec(),
            )],
            share_modules: vec![(
                "lib/modules/6.1.0-1-cloud-amd64/kernel/fs/fuse/virtiofs.ko".into(),
                b"share module".to_vec(),
            )],
            agent: b"agent".to_vec(),
        }
    }

    #[test]
    fn key_changes_with_agent() {
        let first = inputs();
        let mut second = inputs();
        second.agent.push(b'!');
        assert_eq!(first.key(), inputs().key());
        assert_ne!(first.key(), second.key());
    }

    #[test]
    fn archive_lists_modules_and_agent() {
        let mut archive = Vec::new();
        inputs().write_archive(&mut archive).unwrap();
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("lib/modules/6.1.0-1-cloud-amd64/kernel/fs/overlayfs\0"));
        assert!(text.contains("/lib/modules/6.1.0-1-cloud-amd64/kernel/fs/overlayfs/overlay.ko\n"));
        assert!(text.contains("etc/airlock-share-modules\0"));
        assert!(text.contains("/lib/modules/6.1.0-1-cloud-amd64/kernel/fs/fuse/virtiofs.ko\n"));
        assert!(text.contains("init\0"));
    }

    #[test]
    fn cached_archive_reused() {
        let cache = tempfile::tempdir().unwrap();
        use std::os::unix::fs::MetadataExt;
        let first = build_cached(&inputs(), cache.path()).unwrap();
        let inode = std::fs::metadata(&first).unwrap().ino();
        let second = build_cached(&inputs(), cache.path()).unwrap();
        assert_eq!(first, second);
        // A rebuild would rename a new file into place, with a new inode.
        assert_eq!(std::fs::metadata(&second).unwrap().ino(), inode);
    }

    #[test]
    fn running_test_binary_static_only_under_musl() {
        let bytes = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(is_static_elf(&bytes), cfg!(target_env = "musl"));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
