//! systemd-nspawn, which the nspawn backend starts, and its runtime directory.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{filesystem_type, find_program, Fact};

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The directory where systemd-nspawn keeps the runtime state of its containers.
const RUNTIME_DIRECTORY: &str = "/run/systemd/nspawn";

pub fn facts() -> Vec<Fact> {
    vec![program_fact(), runtime_directory_fact()]
}

fn program_fact() -> Fact {
    let (id, name) = ("systemd_nspawn", "systemd-nspawn");
    let Some(path) = find_program("systemd-nspawn") else {
        return Fact::missing(
            id,
            name,
            "not found in $PATH",
            "install systemd-container (Debian and Ubuntu: `apt-get install systemd-container`)",
        );
    };
    match first_output_line(&path, "--version") {
        Some(version) => Fact::ok(id, name, format!("{}: {version}", path.display())),
        None => Fact::broken(
            id,
            name,
            format!("{} --version failed", path.display()),
            "reinstall systemd-container",
        ),
    }
}

/// Checks that the runtime directory, or the nearest existing directory above it that
/// systemd-nspawn would create it in, is on a tmpfs, as /run is on a host booted by systemd.
fn runtime_directory_fact() -> Fact {
    let (id, name) = ("nspawn_runtime_tmpfs", "/run/systemd/nspawn on a tmpfs");
    let checked = Path::new(RUNTIME_DIRECTORY)
        .ancestors()
        .find(|dir| dir.exists())
        .unwrap_or(Path::new("/"));
    match filesystem_type(checked) {
        Some(TMPFS_MAGIC) => Fact::ok(id, name, format!("{} is a tmpfs", checked.display())),
        Some(magic) => Fact::missing(
            id,
            name,
            format!(
                "{} is not a tmpfs (file system type {magic:#x}), as /run is on a host booted \
                 by systemd; systemd-nspawn keeps its locks and mount propagation directory \
                 there",
                checked.display()
            ),
            format!(
                "as root: `mkdir -p {RUNTIME_DIRECTORY} && mount -t tmpfs -o mode=1777 tmpfs \
                 {RUNTIME_DIRECTORY}`"
            ),
        ),
        None => Fact::broken(
            id,
            name,
            format!("cannot read the file system type of {}", checked.display()),
            "check that /run exists and is readable",
        ),
    }
}

/// Runs `program argument` and returns the first line of its standard output, or `None`
/// when it fails.
pub(crate) fn first_output_line(program: &Path, argument: &str) -> Option<String> {
    let output = Command::new(program)
        .arg(argument)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().map(|line| line.trim().to_owned())
}
