//! Builders for lower and upper trees, written by hand the way overlayfs lays them out.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime};

use airlock_workspace::{ApplyOptions, Change, ChangeKind, FileType};
use rustix::fs::{FileType as RawFileType, Mode, XattrFlags, CWD};

/// A lower (host project), upper and work directory in one temporary directory, with room
/// for a journal and for files "outside the workspace".
pub struct Layers {
    _dir: tempfile::TempDir,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub outside: PathBuf,
    pub journal: PathBuf,
}

impl Layers {
    pub fn new() -> Layers {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        for name in ["lower", "upper", "work", "outside"] {
            fs::create_dir(root.join(name)).unwrap();
        }
        Layers {
            lower: root.join("lower"),
            upper: root.join("upper"),
            work: root.join("work"),
            outside: root.join("outside"),
            journal: root.join("apply.journal"),
            _dir: dir,
        }
    }

    /// Options that apply every non-sensitive change, with the baseline now.
    pub fn options(&self) -> ApplyOptions {
        ApplyOptions {
            paths: Vec::new(),
            baseline: SystemTime::now(),
            applied: BTreeMap::new(),
            journal: self.journal.clone(),
        }
    }

    pub fn diff(&self) -> Vec<Change> {
        airlock_workspace::diff(&self.lower, &self.upper).unwrap()
    }

    /// Returns the diff as (path, kind, type) triples, for compact assertions.
    pub fn summary(&self) -> Vec<(String, ChangeKind, FileType)> {
        summarize(&self.diff())
    }
}

pub fn summarize(changes: &[Change]) -> Vec<(String, ChangeKind, FileType)> {
    changes
        .iter()
        .map(|change| {
            let path = change.path.to_str().unwrap().to_owned();
            (path, change.kind, change.file_type)
        })
        .collect()
}

pub fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

pub fn write_bytes(path: &Path, contents: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

pub fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap();
}

pub fn link(target: &str, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Creates an overlay whiteout: a character device 0:0 (needs root).
pub fn whiteout(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    rustix::fs::mknodat(CWD, path, RawFileType::CharacterDevice, Mode::empty(), 0).unwrap();
}

/// Marks an upper directory opaque, as overlayfs does with the userxattr option.
pub fn opaque(path: &Path) {
    mkdir(path);
    rustix::fs::setxattr(path, "user.overlay.opaque", b"y", XattrFlags::empty()).unwrap();
}

pub fn fifo(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mode = Mode::from_raw_mode(0o644);
    rustix::fs::mknodat(CWD, path, RawFileType::Fifo, mode, 0).unwrap();
}

/// Creates a character device with the numbers of /dev/null, 1:3 (needs root).
pub fn char_device(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mode = Mode::from_raw_mode(0o666);
    let dev = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(CWD, path, RawFileType::CharacterDevice, mode, dev).unwrap();
}

/// Waits long enough for a later ctime to differ from an earlier baseline, across the
/// coarse clock that file systems stamp ctime with.
pub fn tick() {
    thread::sleep(Duration::from_millis(30));
}

/// Lists the names in `dir` that start with apply's temporary prefix.
pub fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(airlock_workspace::TEMP_PREFIX))
        .collect()
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}
