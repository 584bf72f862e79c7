//! The main job on real input: a real project's test suite, run inside the sandbox with the
//! project's source as the workspace, passes exactly as it does on the host.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::harness::{describe, run, stdout, Caller, Workspace, CALLERS};

/// A small pure-Python package whose source distribution ships its test suite.
const PACKAGE: &str = "six==1.16.0";
const SDIST: &str = "six-1.16.0.tar.gz";
const SOURCE_DIR: &str = "six-1.16.0";

/// Downloads the source distribution once per target directory, from PyPI.
fn sdist() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdists");
    let archive = cache.join(SDIST);
    if archive.exists() {
        return archive;
    }
    let status = Command::new("/usr/bin/python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--quiet",
            PACKAGE,
            "-d",
        ])
        .arg(&cache)
        .status()
        .expect("run pip download (install python3-pip)");
    assert!(status.success(), "pip download {PACKAGE} failed");
    archive
}

/// Unpacks the source into a fresh workspace owned by `caller`.
fn unpack(caller: Caller) -> (Workspace, PathBuf) {
    let workspace = Workspace::new(caller);
    let status = Command::new("tar")
        .arg("xzf")
        .arg(sdist())
        .arg("-C")
        .arg(workspace.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let source = workspace.path().join(SOURCE_DIR);
    if caller != Caller::Root {
        let status = Command::new("chown")
            .arg("-R")
            .arg(super::harness::TEST_USER)
            .arg(workspace.path())
            .status()
            .expect("run chown");
        assert!(status.success(), "chown failed");
    }
    (workspace, source)
}

/// Returns pytest's summary line, such as "200 passed, 1 skipped in 0.50s", without timing.
fn summary(output: &str) -> String {
    let line = output
        .lines()
        .rev()
        .find(|line| line.contains(" passed") || line.contains(" failed"))
        .unwrap_or_else(|| panic!("no pytest summary in {output:?}"));
    line.trim_matches('=')
        .trim()
        .split(" in ")
        .next()
        .unwrap_or_default()
        .to_owned()
}

const PYTEST: [&str; 6] = [
    "/usr/bin/python3",
    "-m",
    "pytest",
    "-q",
    "-p",
    "no:cacheprovider",
];

#[test]
fn python_package_tests_pass_as_on_host() {
    let (host_workspace, host_source) = unpack(Caller::Root);
    let host = Command::new(PYTEST[0])
        .args(&PYTEST[1..])
        .current_dir(&host_source)
        .output()
        .expect("run pytest on the host (install python3-pytest)");
    let host_output = String::from_utf8_lossy(&host.stdout).into_owned();
    assert!(
        host.status.success(),
        "pytest fails on the host: {host_output}"
    );
    let expected = summary(&host_output);
    drop(host_workspace);

    for caller in CALLERS {
        let (_workspace, source) = unpack(caller);
        let mut args = vec!["run", "--"];
        args.extend(PYTEST);
        let output = run(caller, &args, &source);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert_eq!(summary(&stdout(&output)), expected, "{caller:?}");
    }
}
