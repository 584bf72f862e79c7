use std::path::PathBuf;

use airlock_workspace::{ChangeKind::*, FileType::*, MAX_DEPTH};

use super::common::*;

#[test]
fn diff_reports_added_modified_and_deleted() {
    let layers = Layers::new();
    write(&layers.lower.join("keep.txt"), "keep\n");
    write(&layers.lower.join("edit.txt"), "old\n");
    write(&layers.lower.join("gone.txt"), "gone\n");
    write(&layers.upper.join("edit.txt"), "new\n");
    write(&layers.upper.join("new.txt"), "new\n");
    whiteout(&layers.upper.join("gone.txt"));

    let expected = vec![
        ("edit.txt".to_owned(), Modified, File),
        ("gone.txt".to_owned(), Deleted, File),
        ("new.txt".to_owned(), Added, File),
    ];
    assert_eq!(layers.summary(), expected);
}

#[test]
fn unchanged_copy_up_is_not_a_change() {
    let layers = Layers::new();
    write(&layers.lower.join("touched.txt"), "same\n");
    write(&layers.upper.join("touched.txt"), "same\n");
    // chmod +x then chmod -x: a copy-up with the original mode.
    write(&layers.lower.join("src/chmod.sh"), "echo\n");
    write(&layers.upper.join("src/chmod.sh"), "echo\n");
    link("target", &layers.lower.join("link"));
    link("target", &layers.upper.join("link"));

    assert_eq!(layers.summary(), vec![]);
}

#[test]
fn permission_change_is_a_modification() {
    let layers = Layers::new();
    write(&layers.lower.join("run.sh"), "echo\n");
    write(&layers.upper.join("run.sh"), "echo\n");
    chmod(&layers.upper.join("run.sh"), 0o755);
    mkdir(&layers.lower.join("private"));
    mkdir(&layers.upper.join("private"));
    chmod(&layers.upper.join("private"), 0o700);

    let expected = vec![
        ("private".to_owned(), Modified, Dir),
        ("run.sh".to_owned(), Modified, File),
    ];
    assert_eq!(layers.summary(), expected);
}

#[test]
fn opaque_dir_deletes_lower_entries_it_lacks() {
    let layers = Layers::new();
    write(&layers.lower.join("d/kept-same.txt"), "same\n");
    write(&layers.lower.join("d/dropped.txt"), "x\n");
    write(&layers.lower.join("d/sub/deep.txt"), "x\n");
    opaque(&layers.upper.join("d"));
    write(&layers.upper.join("d/kept-same.txt"), "same\n");
    write(&layers.upper.join("d/new.txt"), "new\n");

    let expected = vec![
        ("d/dropped.txt".to_owned(), Deleted, File),
        ("d/new.txt".to_owned(), Added, File),
        ("d/sub".to_owned(), Deleted, Dir),
        ("d/sub/deep.txt".to_owned(), Deleted, File),
    ];
    assert_eq!(layers.summary(), expected);
}

#[test]
fn merged_dir_keeps_lower_entries_it_lacks() {
    let layers = Layers::new();
    write(&layers.lower.join("d/untouched.txt"), "x\n");
    mkdir(&layers.upper.join("d"));
    write(&layers.upper.join("d/new.txt"), "new\n");

    assert_eq!(
        layers.summary(),
        vec![("d/new.txt".to_owned(), Added, File)]
    );
}

#[test]
fn whiteout_over_dir_lists_every_entry_deleted() {
    let layers = Layers::new();
    write(&layers.lower.join("d/a.txt"), "a\n");
    write(&layers.lower.join("d/sub/b.txt"), "b\n");
    whiteout(&layers.upper.join("d"));

    let expected = vec![
        ("d".to_owned(), Deleted, Dir),
        ("d/a.txt".to_owned(), Deleted, File),
        ("d/sub".to_owned(), Deleted, Dir),
        ("d/sub/b.txt".to_owned(), Deleted, File),
    ];
    assert_eq!(layers.summary(), expected);
}

#[test]
fn whiteout_without_lower_entry_is_ignored() {
    let layers = Layers::new();
    whiteout(&layers.upper.join("never-existed"));

    assert_eq!(layers.summary(), vec![]);
}

#[test]
fn file_replacing_dir_deletes_its_entries() {
    let layers = Layers::new();
    write(&layers.lower.join("d/a.txt"), "a\n");
    write(&layers.upper.join("d"), "now a file\n");

    let changes = layers.diff();
    let expected = vec![
        ("d".to_owned(), Modified, File),
        ("d/a.txt".to_owned(), Deleted, File),
    ];
    assert_eq!(summarize(&changes), expected);
    assert_eq!(changes[0].lower_type, Some(Dir));
}

#[test]
fn symlink_target_change_is_a_modification() {
    let layers = Layers::new();
    link("old-target", &layers.lower.join("link"));
    link("new-target", &layers.upper.join("link"));

    assert_eq!(
        layers.summary(),
        vec![("link".to_owned(), Modified, Symlink)]
    );
}

#[test]
fn upper_symlink_to_dir_is_not_followed() {
    let layers = Layers::new();
    write(&layers.outside.join("secret.txt"), "secret\n");
    link(
        layers.outside.to_str().unwrap(),
        &layers.upper.join("escape"),
    );

    let changes = layers.diff();
    assert_eq!(
        summarize(&changes),
        vec![("escape".to_owned(), Added, Symlink)]
    );
    assert!(
        changes[0].sensitive,
        "a link to an absolute path is sensitive"
    );
}

#[test]
fn special_files_are_reported_as_other() {
    let layers = Layers::new();
    fifo(&layers.upper.join("pipe"));
    char_device(&layers.upper.join("null"));

    let expected = vec![
        ("null".to_owned(), Added, Other),
        ("pipe".to_owned(), Added, Other),
    ];
    assert_eq!(layers.summary(), expected);
}

#[test]
fn nesting_past_max_depth_is_one_change() {
    let layers = Layers::new();
    let mut deep = PathBuf::new();
    for _ in 0..MAX_DEPTH + 3 {
        deep.push("d");
    }
    write(&layers.upper.join(&deep).join("file"), "x\n");

    let changes = layers.diff();
    assert_eq!(changes.len(), MAX_DEPTH);
    let last = changes.last().unwrap();
    assert_eq!(last.path.components().count(), MAX_DEPTH);
    assert!(last.too_deep);
    assert!(changes[..MAX_DEPTH - 1]
        .iter()
        .all(|change| !change.too_deep));
}
