//! Checks the format assumptions against the kernel: a real overlay mount, written through by
//! a shell, then read back by diff, apply and discard.

use std::process::Command;

use airlock_workspace::{apply, discard, ChangeKind::*, FileType::*};

use super::common::*;

/// Exit status of the script when the mount itself fails.
const MOUNT_FAILED: i32 = 42;

/// What the sandbox does through the merged view.
const SANDBOX_SCRIPT: &str = r#"
set -e
cd "$MERGED"
printf 'changed\n' >> edit.txt
printf 'new\n' > added.txt
rm gone.txt
rm -r dir
rm -r replaced
mkdir replaced
printf 'fresh\n' > replaced/fresh.txt
touch touched.txt
chmod +x chmod.txt
chmod -x chmod.txt
ln -s /etc/passwd passwd-link
printf '#!/bin/sh\n' > .git/hooks/pre-commit
mv moved-from.txt moved-to.txt
"#;

/// Mounts the overlay with Airlock's options in a mount namespace of its own, so the mount
/// disappears with the shell, and runs `SANDBOX_SCRIPT` through it. Returns false if the
/// overlay cannot be mounted here.
fn run_in_overlay(layers: &Layers, merged: &std::path::Path) -> bool {
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        layers.lower.display(),
        layers.upper.display(),
        layers.work.display()
    );
    let script = format!(
        "mount -t overlay overlay -o \"$OPTIONS\" \"$MERGED\" || exit {MOUNT_FAILED}\n{SANDBOX_SCRIPT}"
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("OPTIONS", options)
        .env("MERGED", merged)
        .output()
        .expect("cannot run unshare");
    if output.status.code() == Some(MOUNT_FAILED) || output.status.code().is_none() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("skipped: cannot mount an overlay here: {stderr}");
        return false;
    }
    assert!(
        output.status.success(),
        "the sandbox script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

#[test]
fn real_overlay_diff_matches_kernel_format() {
    let layers = Layers::new();
    write(&layers.lower.join("edit.txt"), "original\n");
    write(&layers.lower.join("gone.txt"), "gone\n");
    write(&layers.lower.join("dir/a.txt"), "a\n");
    write(&layers.lower.join("dir/sub/b.txt"), "b\n");
    write(&layers.lower.join("replaced/old.txt"), "old\n");
    write(&layers.lower.join("touched.txt"), "touched\n");
    write(&layers.lower.join("chmod.txt"), "chmod\n");
    write(&layers.lower.join("moved-from.txt"), "moved\n");
    mkdir(&layers.lower.join(".git/hooks"));
    let merged = layers.outside.join("merged");
    mkdir(&merged);
    let options = layers.options();
    tick();

    if !run_in_overlay(&layers, &merged) {
        return;
    }

    let changes = layers.diff();
    let expected = vec![
        (".git/hooks/pre-commit".to_owned(), Added, File),
        ("added.txt".to_owned(), Added, File),
        ("dir".to_owned(), Deleted, Dir),
        ("dir/a.txt".to_owned(), Deleted, File),
        ("dir/sub".to_owned(), Deleted, Dir),
        ("dir/sub/b.txt".to_owned(), Deleted, File),
        ("edit.txt".to_owned(), Modified, File),
        ("gone.txt".to_owned(), Deleted, File),
        ("moved-from.txt".to_owned(), Deleted, File),
        ("moved-to.txt".to_owned(), Added, File),
        ("passwd-link".to_owned(), Added, Symlink),
        ("replaced/fresh.txt".to_owned(), Added, File),
        ("replaced/old.txt".to_owned(), Deleted, File),
    ];
    assert_eq!(summarize(&changes), expected);
    let sensitive: Vec<&str> = changes
        .iter()
        .filter(|change| change.sensitive)
        .map(|change| change.path.to_str().unwrap())
        .collect();
    assert_eq!(sensitive, vec![".git/hooks/pre-commit", "passwd-link"]);

    let report = apply(&layers.lower, &layers.upper, &options).unwrap();
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(read(&layers.lower.join("edit.txt")), "original\nchanged\n");
    assert_eq!(read(&layers.lower.join("replaced/fresh.txt")), "fresh\n");
    assert!(!layers.lower.join("replaced/old.txt").exists());
    assert!(!layers.lower.join("dir").exists());
    assert!(!layers.lower.join(".git/hooks/pre-commit").exists());
    assert_eq!(
        summarize(&layers.diff()).len(),
        2,
        "only the sensitive changes are left"
    );

    discard(&layers.upper, &layers.work).unwrap();
    assert_eq!(std::fs::read_dir(&layers.upper).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&layers.work).unwrap().count(), 0);
}
