//! `--rootfs`: the command runs in the given tree as its root, and a missing tree is rejected.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::harness::{describe, run, stderr, stdout, Workspace, CALLERS};

/// Programs copied into the tree, by their path on the host and in the tree.
const PROGRAMS: [(&str, &str); 2] = [("/bin/sh", "usr/bin/sh"), ("/bin/cat", "usr/bin/cat")];

/// Returns the absolute paths of the shared libraries `ldd` lists for `program`, the dynamic
/// loader included.
fn shared_libraries(program: &str) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(program).output().expect("run ldd");
    assert!(
        output.status.success(),
        "ldd {program}: {}",
        describe(&output)
    );
    stdout(&output)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved,
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Returns where a host path belongs in a merged-/usr tree: /usr/X stays, and /X moves to
/// usr/X, reached through a top-level symlink.
fn tree_path(host_path: &Path) -> PathBuf {
    let relative = host_path.strip_prefix("/").expect("absolute path");
    if relative.starts_with("usr") {
        relative.to_path_buf()
    } else {
        Path::new("usr").join(relative)
    }
}

/// Copies the file at `source`, following symlinks, to `target`, creating its parents.
fn copy_file(source: &Path, target: &Path) {
    fs::create_dir_all(target.parent().expect("a parent directory")).expect("create directory");
    fs::copy(source, target).unwrap_or_else(|error| {
        panic!("copy {} to {}: {error}", source.display(), target.display())
    });
    fs::set_permissions(target, fs::Permissions::from_mode(0o755)).expect("chmod file");
}

/// Sets every directory below `root`, `root` included, to mode 0755, so that the test user can
/// traverse the tree that root built.
fn make_traversable(root: &Path) {
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod directory");
    for entry in fs::read_dir(root).expect("list directory") {
        let entry = entry.expect("directory entry");
        if entry.file_type().expect("file type").is_dir() {
            make_traversable(&entry.path());
        }
    }
}

/// Builds a root filesystem containing only sh, cat, their libraries and `marker`, whose
/// content is returned with the tree.
fn build_tree() -> (tempfile::TempDir, String) {
    let tree = tempfile::Builder::new()
        .prefix("airlock-rootfs-")
        .tempdir()
        .expect("create the tree directory");
    let root = tree.path();

    let mut top_level_links = BTreeSet::from(["bin".to_owned()]);
    for (host_path, path_in_tree) in PROGRAMS {
        copy_file(Path::new(host_path), &root.join(path_in_tree));
        for library in shared_libraries(host_path) {
            copy_file(&library, &root.join(tree_path(&library)));
            if let Some(Component::Normal(first)) = library.components().nth(1) {
                if first != "usr" {
                    top_level_links.insert(first.to_string_lossy().into_owned());
                }
            }
        }
    }
    for name in top_level_links {
        symlink(format!("usr/{name}"), root.join(&name)).expect("create top-level symlink");
    }

    let marker = format!("rootfs-marker-{}", std::process::id());
    fs::write(root.join("marker"), &marker).expect("write the marker");
    fs::set_permissions(root.join("marker"), fs::Permissions::from_mode(0o644))
        .expect("chmod the marker");
    make_traversable(root);
    (tree, marker)
}

#[test]
fn rootfs_replaces_host_tree() {
    let (tree, marker) = build_tree();
    let tree_dir = tree.path().to_str().expect("UTF-8 path");
    let script = r#"
cat /marker; echo
for path in /usr/bin/python3 /etc /opt /workspace /proc/self /tmp; do
    if [ -e "$path" ]; then echo "$path present"; else echo "$path absent"; fi
done
echo changed > /marker 2>/dev/null; echo "write $?"
"#;
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run(
            caller,
            &["run", "--rootfs", tree_dir, "--", "/bin/sh", "-c", script],
            workspace.path(),
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        let expected = [
            marker.as_str(),
            "/usr/bin/python3 absent",
            "/etc absent",
            "/opt absent",
            "/workspace present",
            "/proc/self present",
            "/tmp present",
        ];
        for line in expected {
            assert!(
                text.lines().any(|printed| printed == line),
                "{caller:?}: {line:?} missing: {text}"
            );
        }
        assert!(
            !text.contains("write 0"),
            "{caller:?}: the tree is writable: {text}"
        );
        let content = fs::read_to_string(tree.path().join("marker")).expect("read the marker");
        assert_eq!(content, marker, "{caller:?}: the marker changed");
    }
}

#[test]
fn missing_rootfs_rejected() {
    let missing = format!("/nonexistent/airlock-rootfs-{}", std::process::id());
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run(
            caller,
            &["run", "--rootfs", &missing, "--", "/bin/sh", "-c", "true"],
            workspace.path(),
        );
        assert_eq!(
            output.status.code(),
            Some(125),
            "{caller:?}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains(&missing),
            "{caller:?}: the error does not name {missing}: {}",
            describe(&output)
        );
    }
}
