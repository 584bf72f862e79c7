use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use airlock_workspace::{apply, recover, TEMP_PREFIX};

use super::common::*;

/// Writes a journal in the documented format: NUL-terminated records, the root first.
fn write_journal(journal: &Path, root: &Path, temps: &[&str], torn_tail: &str) {
    let mut bytes = root.as_os_str().as_bytes().to_vec();
    bytes.push(0);
    for temp in temps {
        bytes.extend_from_slice(temp.as_bytes());
        bytes.push(0);
    }
    bytes.extend_from_slice(torn_tail.as_bytes());
    fs::write(journal, bytes).unwrap();
}

#[test]
fn recover_removes_leftovers_listed_in_journal() {
    let layers = Layers::new();
    let leftover = format!("sub/{TEMP_PREFIX}0001");
    let leftover_link = format!("{TEMP_PREFIX}0002");
    let not_ours_dir = format!("{TEMP_PREFIX}0003");
    let unlisted = format!("{TEMP_PREFIX}0004");
    let torn = format!("{TEMP_PREFIX}0005");
    write(&layers.lower.join(&leftover), "partial");
    write(&layers.outside.join("victim.txt"), "victim\n");
    link(
        layers.outside.join("victim.txt").to_str().unwrap(),
        &layers.lower.join(&leftover_link),
    );
    mkdir(&layers.lower.join(&not_ours_dir));
    write(&layers.lower.join(&unlisted), "keep");
    write(&layers.lower.join(&torn), "keep");
    write(&layers.lower.join("README"), "keep");
    let listed = [
        leftover.as_str(),
        leftover_link.as_str(),
        not_ours_dir.as_str(),
        "README",
    ];
    write_journal(&layers.journal, &layers.lower, &listed, &torn);

    recover(&layers.journal).unwrap();

    assert!(!layers.lower.join(&leftover).exists());
    assert!(fs::symlink_metadata(layers.lower.join(&leftover_link)).is_err());
    assert_eq!(read(&layers.outside.join("victim.txt")), "victim\n");
    assert!(
        layers.lower.join(&not_ours_dir).is_dir(),
        "a directory is never ours"
    );
    assert!(layers.lower.join(&unlisted).exists());
    assert!(
        layers.lower.join(&torn).exists(),
        "a torn record is ignored"
    );
    assert!(
        layers.lower.join("README").exists(),
        "a name without the prefix is ignored"
    );
    assert!(!layers.journal.exists());
}

#[test]
fn recover_does_not_walk_through_symlinked_parent() {
    let layers = Layers::new();
    let target = format!("{TEMP_PREFIX}0001");
    write(&layers.outside.join(&target), "outside\n");
    link(
        layers.outside.to_str().unwrap(),
        &layers.lower.join("linked"),
    );
    let listed = format!("linked/{target}");
    write_journal(&layers.journal, &layers.lower, &[listed.as_str()], "");

    recover(&layers.journal).unwrap();

    assert_eq!(read(&layers.outside.join(&target)), "outside\n");
}

#[test]
fn recover_without_journal_does_nothing() {
    let layers = Layers::new();

    recover(&layers.journal).unwrap();
}

#[test]
fn apply_recovers_stale_journal_first() {
    let layers = Layers::new();
    let leftover = format!("{TEMP_PREFIX}0001");
    write(&layers.lower.join(&leftover), "partial");
    write_journal(&layers.journal, &layers.lower, &[leftover.as_str()], "");
    write(&layers.upper.join("new.txt"), "new\n");

    apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    assert!(!layers.lower.join(&leftover).exists());
    assert_eq!(read(&layers.lower.join("new.txt")), "new\n");
    assert!(!layers.journal.exists());
}
