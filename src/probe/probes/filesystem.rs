//! Probes that reach for the host's files: reading and writing outside the workspace,
//! leaving a chroot, mounting, and reading the host's disk through a device node.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use airlock_namespace::sys;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{argument, invalid_arguments, report, Armed, Finding, Probe};
use crate::probe::executor::{Execution, Invocation};
use crate::probe::host::{self, Canary, CanaryFile, Host, HostPath, DISK_SAMPLE};
use crate::probe::system::error_name;

/// Reads up to 4 KiB of `path` as text.
fn read_text(path: &Path) -> io::Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(4096)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Serialize, Deserialize)]
struct FileRead {
    content: Option<String>,
    error: Option<String>,
}

impl FileRead {
    fn of(path: &Path) -> FileRead {
        match read_text(path) {
            Ok(content) => FileRead {
                content: Some(content),
                error: None,
            },
            Err(error) => FileRead {
                content: None,
                error: Some(error_name(&error)),
            },
        }
    }
}

/// Reads a file the host wrote outside the sandbox's root.
pub struct ReadHostFile;

struct ReadFileArmed {
    file: CanaryFile,
    secret: String,
}

impl Probe for ReadHostFile {
    fn name(&self) -> &'static str {
        "read-host-file"
    }

    fn attempt(&self) -> &'static str {
        "read a file the host wrote in the caller's home (or /var/tmp)"
    }

    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String> {
        let secret = host::token(16);
        let file =
            CanaryFile::create(&host.canary_dir, "read", secret.as_bytes()).map_err(|error| {
                format!(
                    "cannot write a canary file in {:?}: {error}",
                    host.canary_dir
                )
            })?;
        Ok(Box::new(ReadFileArmed { file, secret }))
    }

    fn inside(&self, args: &[String]) -> Value {
        match argument::<PathBuf>(args, 0) {
            Ok(path) => report(FileRead::of(&path)),
            Err(message) => invalid_arguments(message),
        }
    }
}

impl Armed for ReadFileArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![self.file.path().display().to_string()])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![self.file.describe()]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(read) = execution.result::<FileRead>() else {
            return Finding::no_result(execution);
        };
        let path = self.file.path();
        match (read.content, read.error) {
            (Some(content), _) if content.contains(&self.secret) => {
                Finding::escaped(format!("read the host's file {path:?}"))
            }
            (Some(_), _) => Finding::contained(format!("{path:?} in the sandbox is another file")),
            (None, error) => Finding::contained(format!(
                "{path:?}: {}",
                error.unwrap_or_else(|| "not read".to_owned())
            )),
        }
    }
}

/// Creates and appends to files outside the workspace.
pub struct WriteOutsideWorkspace;

#[derive(Serialize, Deserialize)]
struct WriteAttempt {
    path: PathBuf,
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WriteReport {
    attempts: Vec<WriteAttempt>,
}

struct WriteArmed {
    existing: CanaryFile,
    created: Vec<HostPath>,
}

impl Probe for WriteOutsideWorkspace {
    fn name(&self) -> &'static str {
        "write-outside-workspace"
    }

    fn attempt(&self) -> &'static str {
        "append to a host file, and create files in the caller's home and in /tmp"
    }

    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String> {
        let existing = CanaryFile::create(&host.canary_dir, "write", b"written by the host\n")
            .map_err(|error| {
                format!(
                    "cannot write a canary file in {:?}: {error}",
                    host.canary_dir
                )
            })?;
        let name = format!(".airlock-probe-created-{}", host::token(6));
        let mut dirs = vec![host.canary_dir.clone(), std::env::temp_dir()];
        dirs.dedup();
        let created = dirs
            .into_iter()
            .map(|dir| HostPath::new(dir.join(&name)))
            .collect();
        Ok(Box::new(WriteArmed { existing, created }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let attempts = args
            .iter()
            .map(|path| {
                let path = PathBuf::from(path);
                let error = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o644)
                    .open(&path)
                    .and_then(|mut file| file.write_all(b"written by airlock probe\n"))
                    .err()
                    .map(|error| error_name(&error));
                WriteAttempt { path, error }
            })
            .collect();
        report(WriteReport { attempts })
    }
}

impl Armed for WriteArmed {
    fn invocation(&self) -> Invocation<'_> {
        let paths =
            std::iter::once(self.existing.path()).chain(self.created.iter().map(HostPath::path));
        Invocation::new(paths.map(|path| path.display().to_string()).collect())
    }

    fn canaries(&self) -> Vec<Canary> {
        let mut canaries = vec![self.existing.describe()];
        canaries.extend(self.created.iter().map(HostPath::describe));
        canaries
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let mut changed: Vec<&Path> = self
            .created
            .iter()
            .filter(|path| path.exists())
            .map(HostPath::path)
            .collect();
        if self.existing.changed() {
            changed.insert(0, self.existing.path());
        }
        if !changed.is_empty() {
            let paths: Vec<String> = changed
                .iter()
                .map(|path| path.display().to_string())
                .collect();
            return Finding::escaped(format!("changed the host's files {}", paths.join(", ")));
        }
        let Some(report) = execution.result::<WriteReport>() else {
            return Finding::no_result(execution);
        };
        let outcomes: Vec<String> = report
            .attempts
            .iter()
            .map(|attempt| match &attempt.error {
                Some(error) => format!("{}: {error}", attempt.path.display()),
                None => format!("{}: written in the sandbox only", attempt.path.display()),
            })
            .collect();
        Finding::contained(outcomes.join("; "))
    }
}

/// The classic escape of a root process from a chroot.
pub struct ChrootEscape;

#[derive(Serialize, Deserialize)]
struct ChrootReport {
    /// The step that failed, with its error.
    failed: Option<String>,
    /// The content or error read at the canary's path after the escape.
    read: Option<FileRead>,
}

struct ChrootArmed {
    file: CanaryFile,
    secret: String,
}

/// How many times the escape changes to the parent directory: more than any path is deep.
const CHDIR_UP: usize = 256;

impl Probe for ChrootEscape {
    fn name(&self) -> &'static str {
        "chroot-escape"
    }

    fn attempt(&self) -> &'static str {
        "as root: chroot into a subdirectory, chdir up past the old root, chroot(\".\")"
    }

    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String> {
        let secret = host::token(16);
        let file =
            CanaryFile::create(&host.canary_dir, "chroot", secret.as_bytes()).map_err(|error| {
                format!(
                    "cannot write a canary file in {:?}: {error}",
                    host.canary_dir
                )
            })?;
        Ok(Box::new(ChrootArmed { file, secret }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let path: PathBuf = match argument(args, 0) {
            Ok(path) => path,
            Err(message) => return invalid_arguments(message),
        };
        let failed = |step: &str, error: io::Error| ChrootReport {
            failed: Some(format!("{step}: {}", error_name(&error))),
            read: None,
        };
        let jail = match make_jail() {
            Ok(jail) => jail,
            Err(error) => return report(failed("mkdir", error)),
        };
        if let Err(error) = chroot(jail) {
            return report(failed("chroot into a subdirectory", error));
        }
        // The working directory is still outside the new root, so ".." climbs past it.
        for _ in 0..CHDIR_UP {
            if let Err(error) = sys::chdir(Path::new("..")) {
                return report(failed("chdir(\"..\")", error));
            }
        }
        if let Err(error) = chroot(Path::new(".")) {
            return report(failed("chroot(\".\")", error));
        }
        report(ChrootReport {
            failed: None,
            read: Some(FileRead::of(&path)),
        })
    }
}

/// The directories the chroot probe tries to make and chroot into, in order: one in the
/// working directory, and one in /tmp for root without capabilities, which cannot write a
/// workspace that belongs to the sandbox's user (docker).
const JAIL_DIRS: [&str; 2] = [".airlock-probe-chroot", "/tmp/.airlock-probe-chroot"];

/// Makes the first of [`JAIL_DIRS`] it can; returns it, or the last error.
fn make_jail() -> io::Result<&'static Path> {
    let mut last_error = None;
    for dir in JAIL_DIRS.map(Path::new) {
        match std::fs::create_dir(dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(dir),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no directory to try")))
}

fn chroot(path: &Path) -> io::Result<()> {
    let path = sys::cstring(path)?;
    // SAFETY: `path` is NUL-terminated and alive for the call.
    if unsafe { libc::chroot(path.as_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Armed for ChrootArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation {
            as_root: true,
            ..Invocation::new(vec![self.file.path().display().to_string()])
        }
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![self.file.describe()]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(report) = execution.result::<ChrootReport>() else {
            return Finding::no_result(execution);
        };
        let path = self.file.path();
        let content = report
            .read
            .as_ref()
            .and_then(|read| read.content.as_deref());
        if content.is_some_and(|content| content.contains(&self.secret)) {
            return Finding::escaped(format!("left the chroot and read the host's file {path:?}"));
        }
        match (report.failed, report.read.and_then(|read| read.error)) {
            (Some(step), _) => Finding::contained(step),
            (None, Some(error)) => Finding::contained(format!(
                "the chroot steps worked, but {path:?} is out of reach: {error}"
            )),
            (None, None) => Finding::contained(format!(
                "the chroot steps worked, but {path:?} there is another file"
            )),
        }
    }
}

/// Mounts a tmpfs in the workspace and looks for it in the host's mount table.
pub struct MountFilesystem;

#[derive(Serialize, Deserialize)]
struct MountReport {
    mounted: bool,
    error: Option<String>,
}

struct MountArmed {
    source: String,
}

impl Drop for MountArmed {
    fn drop(&mut self) {
        host::unmount_source(&self.source);
    }
}

impl Probe for MountFilesystem {
    fn name(&self) -> &'static str {
        "mount-filesystem"
    }

    fn attempt(&self) -> &'static str {
        "mount a tmpfs, and look for it in the host's mount table"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(MountArmed {
            source: format!("airlock-probe-{}", host::token(6)),
        }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let source: String = match argument(args, 0) {
            Ok(source) => source,
            Err(message) => return invalid_arguments(message),
        };
        let target = Path::new(".airlock-probe-mount");
        let _ = std::fs::create_dir(target);
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // The mount stays: the host looks for it in its own table, and unmounts it there.
        let mounted = sys::mount(
            Some(Path::new(&source)),
            target,
            Some("tmpfs"),
            flags,
            Some("size=64k"),
        );
        report(MountReport {
            mounted: mounted.is_ok(),
            error: mounted.err().map(|error| error_name(&error)),
        })
    }
}

impl Armed for MountArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![self.source.clone()])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![Canary::Mount {
            source: self.source.clone(),
        }]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let on_host = host::unmount_source(&self.source);
        if let Some(target) = on_host.first() {
            return Finding::escaped(format!(
                "its tmpfs appeared in the host's mount table at {target:?}; the host unmounted it"
            ));
        }
        match execution.result::<MountReport>() {
            Some(MountReport { mounted: true, .. }) => {
                Finding::contained("mounted a tmpfs in its own mount namespace only")
            }
            Some(MountReport { error, .. }) => Finding::contained(format!(
                "mount: {}",
                error.unwrap_or_else(|| "failed".to_owned())
            )),
            None => Finding::no_result(execution),
        }
    }
}

/// Creates a device node of the host's disk and reads it.
pub struct DeviceNode;

#[derive(Serialize, Deserialize)]
struct DeviceReport {
    /// The directory where the node could be created and read.
    read_in: Option<String>,
    /// How many bytes it read, and their digest.
    bytes: usize,
    digest: Option<String>,
    /// The error in each directory tried.
    errors: Vec<String>,
}

struct DeviceArmed {
    disk: host::Disk,
}

/// The directories the probe tries to create the node in: the workspace, /tmp, /dev/shm.
const NODE_DIRS: [&str; 3] = [".", "/tmp", "/dev/shm"];

impl Probe for DeviceNode {
    fn name(&self) -> &'static str {
        "device-node"
    }

    fn attempt(&self) -> &'static str {
        "mknod the host's disk as a block device and read it"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(DeviceArmed {
            disk: host::root_disk()?,
        }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let numbers = argument::<u32>(args, 0).and_then(|major| Ok((major, argument(args, 1)?)));
        let (major, minor) = match numbers {
            Ok(numbers) => numbers,
            Err(message) => return invalid_arguments(message),
        };
        let mut device_report = DeviceReport {
            read_in: None,
            bytes: 0,
            digest: None,
            errors: Vec::new(),
        };
        for dir in NODE_DIRS {
            match read_through_node(Path::new(dir), major, minor) {
                Ok(sample) => {
                    device_report.read_in = Some(dir.to_owned());
                    device_report.bytes = sample.len();
                    device_report.digest = Some(host::fnv1a(&sample));
                    break;
                }
                Err(error) => device_report.errors.push(format!("{dir}: {error}")),
            }
        }
        report(device_report)
    }
}

/// Creates a block device node in `dir` for `major:minor`, reads its first bytes, and
/// removes the node.
fn read_through_node(dir: &Path, major: u32, minor: u32) -> Result<Vec<u8>, String> {
    let path = dir.join(format!(".airlock-probe-disk-{}", sys::getpid()));
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c_path` is NUL-terminated and alive for the call.
    let made = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(major, minor),
        )
    };
    if made == -1 {
        return Err(format!(
            "mknod: {}",
            error_name(&io::Error::last_os_error())
        ));
    }
    let mut sample = Vec::new();
    let read = std::fs::File::open(&path)
        .and_then(|file| file.take(DISK_SAMPLE as u64).read_to_end(&mut sample));
    let _ = std::fs::remove_file(&path);
    match read {
        Ok(0) => Err("read: no bytes".to_owned()),
        Ok(_) => Ok(sample),
        Err(error) => Err(format!("open or read: {}", error_name(&error))),
    }
}

impl Armed for DeviceArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![
            self.disk.major.to_string(),
            self.disk.minor.to_string(),
        ])
    }

    fn canaries(&self) -> Vec<Canary> {
        Vec::new()
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(report) = execution.result::<DeviceReport>() else {
            return Finding::no_result(execution);
        };
        let device = format!("{}:{}", self.disk.major, self.disk.minor);
        let Some(dir) = report.read_in else {
            return Finding::contained(report.errors.join("; "));
        };
        // NOTE: without root on the host, the bytes cannot be compared, and any read counts:
        // a machine-level backend reading its own disk of the same numbers would show here.
        match &self.disk.digest {
            Some(digest) if report.digest.as_ref() != Some(digest) => Finding::contained(format!(
                "the node {device} in {dir} reads another disk than the host's"
            )),
            Some(_) => Finding::escaped(format!(
                "read {} bytes of the host's disk {device} through a node made in {dir}",
                report.bytes
            )),
            None => Finding::escaped(format!(
                "read {} bytes through a node {device} made in {dir}; the host cannot read its disk to compare",
                report.bytes
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::probe::probes::testing::{executed, host, run_unconfined};
    use crate::probe::probes::Verdict;

    #[test]
    fn read_of_missing_file_names_error() {
        let read = FileRead::of(Path::new("/nonexistent/airlock-probe"));
        assert_eq!(read.error.as_deref(), Some("ENOENT"));
        assert!(read.content.is_none());
    }

    #[test]
    fn read_judged_escaped_when_secret_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut armed = ReadHostFile.arm(&host(&dir)).unwrap();
        let execution = run_unconfined(&ReadHostFile, armed.as_ref());
        assert_eq!(armed.judge(&execution).verdict, Verdict::Escaped);
        let other = json!({ "result": { "content": "another file", "error": null } });
        assert_eq!(armed.judge(&executed(other)).verdict, Verdict::Contained);
    }

    #[test]
    fn write_judged_escaped_when_host_file_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut armed = WriteOutsideWorkspace.arm(&host(&dir)).unwrap();
        let refused = executed(json!({ "result": { "attempts": [] } }));
        assert_eq!(armed.judge(&refused).verdict, Verdict::Contained);
        let execution = run_unconfined(&WriteOutsideWorkspace, armed.as_ref());
        assert_eq!(armed.judge(&execution).verdict, Verdict::Escaped);
        let paths = armed.invocation().args;
        drop(armed);
        for path in paths {
            assert!(!Path::new(&path).exists(), "{path} left");
        }
    }
}
