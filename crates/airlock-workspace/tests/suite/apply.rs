use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use airlock_workspace::{apply, ConflictReason, Error, SkipReason};

use super::common::*;

fn paths(list: &[&str]) -> Vec<PathBuf> {
    list.iter().map(PathBuf::from).collect()
}

#[test]
fn apply_writes_added_modified_and_deleted() {
    let layers = Layers::new();
    write(&layers.lower.join("edit.txt"), "old\n");
    write(&layers.lower.join("gone.txt"), "gone\n");
    write(&layers.lower.join("d/a.txt"), "a\n");
    write(&layers.upper.join("edit.txt"), "new\n");
    write(&layers.upper.join("new/deep/file.txt"), "added\n");
    whiteout(&layers.upper.join("gone.txt"));
    whiteout(&layers.upper.join("d"));
    let options = layers.options();

    let report = apply(&layers.lower, &layers.upper, &options).unwrap();

    assert_eq!(read(&layers.lower.join("edit.txt")), "new\n");
    assert_eq!(read(&layers.lower.join("new/deep/file.txt")), "added\n");
    assert!(!layers.lower.join("gone.txt").exists());
    assert!(!layers.lower.join("d").exists());
    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.applied.len(), 7, "{:?}", report.applied);
    assert!(
        !layers.journal.exists(),
        "a finished apply deletes its journal"
    );
}

#[test]
fn host_edit_after_baseline_conflicts() {
    let layers = Layers::new();
    write(&layers.lower.join("both.txt"), "original\n");
    write(&layers.lower.join("sandbox-only.txt"), "original\n");
    let options = layers.options();
    tick();
    write(&layers.lower.join("both.txt"), "host edit\n");
    write(&layers.upper.join("both.txt"), "sandbox edit\n");
    write(&layers.upper.join("sandbox-only.txt"), "sandbox edit\n");

    let report = apply(&layers.lower, &layers.upper, &options).unwrap();

    assert_eq!(read(&layers.lower.join("both.txt")), "host edit\n");
    assert_eq!(
        read(&layers.lower.join("sandbox-only.txt")),
        "sandbox edit\n"
    );
    assert_eq!(report.conflicts.len(), 1);
    assert_eq!(report.conflicts[0].path, Path::new("both.txt"));
    assert!(matches!(
        report.conflicts[0].reason,
        ConflictReason::ChangedOnHost { .. }
    ));
    assert_eq!(report.applied, paths(&["sandbox-only.txt"]));
}

#[test]
fn host_file_added_to_deleted_dir_survives() {
    let layers = Layers::new();
    write(&layers.lower.join("d/a.txt"), "a\n");
    let options = layers.options();
    tick();
    write(&layers.lower.join("d/host-new.txt"), "host\n");
    // The sandbox removed `d` before the host added its file; the diff of the live lower
    // directory now lists the host's file as deleted too.
    whiteout(&layers.upper.join("d"));

    let report = apply(&layers.lower, &layers.upper, &options).unwrap();

    assert_eq!(read(&layers.lower.join("d/host-new.txt")), "host\n");
    let conflicted: Vec<&Path> = report.conflicts.iter().map(|c| c.path.as_path()).collect();
    assert!(
        conflicted.contains(&Path::new("d")),
        "{:?}",
        report.conflicts
    );
    assert!(conflicted.contains(&Path::new("d/host-new.txt")));
}

#[test]
fn second_apply_does_not_conflict_with_first() {
    let layers = Layers::new();
    write(&layers.lower.join("d/file.txt"), "v1\n");
    let mut options = layers.options();
    tick();
    write(&layers.upper.join("d/file.txt"), "v2\n");
    write(&layers.upper.join("d/added.txt"), "new\n");
    let first = apply(&layers.lower, &layers.upper, &options).unwrap();
    assert!(first.conflicts.is_empty(), "{:?}", first.conflicts);
    assert!(first.baselines.contains_key(Path::new("d")), "{:?}", first);

    tick();
    options.applied.extend(first.baselines);
    write(&layers.upper.join("d/file.txt"), "v3\n");
    chmod(&layers.upper.join("d"), 0o750);
    let second = apply(&layers.lower, &layers.upper, &options).unwrap();

    assert!(second.conflicts.is_empty(), "{:?}", second.conflicts);
    assert_eq!(read(&layers.lower.join("d/file.txt")), "v3\n");
    assert_eq!(mode(&layers.lower.join("d")), 0o750);
}

#[test]
fn passwd_symlink_applied_as_link() {
    let layers = Layers::new();
    link("/etc/passwd", &layers.upper.join("passwd"));
    let mut options = layers.options();
    options.paths = paths(&["passwd"]);

    let report = apply(&layers.lower, &layers.upper, &options).unwrap();

    let applied = layers.lower.join("passwd");
    assert!(fs::symlink_metadata(&applied)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&applied).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(report.applied, paths(&["passwd"]));
}

#[test]
fn symlink_replacing_host_file_is_not_written_through() {
    let layers = Layers::new();
    write(&layers.outside.join("victim.txt"), "victim\n");
    write(&layers.lower.join("config"), "old\n");
    let options = layers.options();
    // The sandbox turns `config` into a link to a host file, then the write of `config`
    // must replace the link's place, not the victim.
    link(
        layers.outside.join("victim.txt").to_str().unwrap(),
        &layers.upper.join("config"),
    );
    let mut named = options.clone();
    named.paths = paths(&["config"]);

    apply(&layers.lower, &layers.upper, &named).unwrap();

    assert_eq!(read(&layers.outside.join("victim.txt")), "victim\n");
    assert!(fs::symlink_metadata(layers.lower.join("config"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn host_parent_swapped_for_symlink_is_conflict() {
    let layers = Layers::new();
    write(&layers.lower.join("dir/a.txt"), "a\n");
    let options = layers.options();
    write(&layers.upper.join("dir/a.txt"), "sandbox\n");
    write(&layers.upper.join("dir/b.txt"), "sandbox\n");
    tick();
    fs::rename(layers.lower.join("dir"), layers.lower.join("moved")).unwrap();
    link(layers.outside.to_str().unwrap(), &layers.lower.join("dir"));

    let everything = apply(&layers.lower, &layers.upper, &options).unwrap();
    let mut named = options.clone();
    named.paths = paths(&["dir/b.txt"]);
    let only_b = apply(&layers.lower, &layers.upper, &named).unwrap();

    assert_eq!(
        fs::read_dir(&layers.outside).unwrap().count(),
        0,
        "wrote outside"
    );
    assert!(fs::symlink_metadata(layers.lower.join("dir"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(everything.applied.is_empty(), "{:?}", everything.applied);
    assert!(!everything.conflicts.is_empty());
    let expected = ConflictReason::SymlinkParent {
        parent: PathBuf::from("dir"),
    };
    assert_eq!(only_b.conflicts.len(), 1);
    assert_eq!(only_b.conflicts[0].reason, expected);
}

/// A bind mount below the project, which the sandbox saw as an empty directory, is never
/// written into. Mounting needs root, so as another user the test prints that and returns.
#[test]
fn mount_point_in_project_never_written_into() {
    let layers = Layers::new();
    mkdir(&layers.lower.join("inner"));
    write(&layers.outside.join("change"), "host\n");
    let mounted = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&layers.outside)
        .arg(layers.lower.join("inner"))
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        eprintln!("skipped: bind mounts need root");
        return;
    }
    write(&layers.upper.join("inner/new"), "sandbox\n");
    write(&layers.upper.join("inner/change"), "sandbox\n");

    let report = apply(&layers.lower, &layers.upper, &layers.options());
    let _ = std::process::Command::new("umount")
        .arg(layers.lower.join("inner"))
        .status();
    let report = report.unwrap();

    assert!(!layers.outside.join("new").exists(), "wrote into the mount");
    assert_eq!(read(&layers.outside.join("change")), "host\n");
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    let expected = ConflictReason::MountPointParent {
        parent: PathBuf::from("inner"),
    };
    assert!(
        report
            .conflicts
            .iter()
            .all(|conflict| conflict.reason == expected),
        "{:?}",
        report.conflicts
    );
    assert_eq!(report.conflicts.len(), 2);
}

/// An entry that is itself a mount point on the host is neither changed nor replaced: a
/// directory whose mode the sandbox changed, and a file it rewrote. Mounting needs root, so
/// as another user the test prints that and returns.
#[test]
fn mount_point_entry_never_changed() {
    let layers = Layers::new();
    mkdir(&layers.lower.join("mounted"));
    write(&layers.lower.join("bound"), "project\n");
    chmod(&layers.outside, 0o755);
    write(&layers.outside.join("file"), "host\n");
    let bind = |source: &Path, target: &Path| {
        std::process::Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(target)
            .status()
            .is_ok_and(|status| status.success())
    };
    if !bind(&layers.outside, &layers.lower.join("mounted")) {
        eprintln!("skipped: bind mounts need root");
        return;
    }
    let bound = bind(&layers.outside.join("file"), &layers.lower.join("bound"));
    mkdir(&layers.upper.join("mounted"));
    chmod(&layers.upper.join("mounted"), 0o1777);
    write(&layers.upper.join("bound"), "sandbox\n");

    let report = apply(&layers.lower, &layers.upper, &layers.options());
    for target in ["bound", "mounted"] {
        let _ = std::process::Command::new("umount")
            .arg(layers.lower.join(target))
            .status();
    }
    let report = report.unwrap();

    assert!(bound, "mount --bind of a file failed");
    assert_eq!(mode(&layers.outside), 0o755);
    assert_eq!(read(&layers.outside.join("file")), "host\n");
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    assert_eq!(report.conflicts.len(), 2, "{:?}", report.conflicts);
    assert!(report
        .conflicts
        .iter()
        .all(|conflict| conflict.reason == ConflictReason::MountPoint));
}

/// Root mounts the overlay for the docker backend, so a rename in the sandbox copies up a
/// file of another owner that the sandbox could not read. Apply leaves such a file out, and
/// applies the sandbox's own private files and readable files of others. Changing owners
/// needs root, so as another user the test prints that and returns.
#[test]
fn unreadable_file_of_another_owner_never_applied() {
    let layers = Layers::new();
    let (sandbox, other) = (1234, 0);
    for (path, owner, mode) in [
        (layers.lower.clone(), sandbox, 0o755),
        (layers.upper.clone(), sandbox, 0o755),
    ] {
        if std::os::unix::fs::chown(&path, Some(owner), Some(owner)).is_err() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        chmod(&path, mode);
    }
    for (name, owner, mode) in [
        ("secret", other, 0o600),
        ("readable", other, 0o644),
        ("private", sandbox, 0o600),
    ] {
        let path = layers.upper.join(name);
        write(&path, "data\n");
        std::os::unix::fs::chown(&path, Some(owner), Some(owner)).unwrap();
        chmod(&path, mode);
    }

    let report = apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    assert!(
        !layers.lower.join("secret").exists(),
        "handed the secret over"
    );
    assert!(layers.lower.join("readable").exists());
    assert!(layers.lower.join("private").exists());
    let skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|skip| (skip.path.clone(), skip.reason))
        .collect();
    assert_eq!(
        skipped,
        vec![(PathBuf::from("secret"), SkipReason::NotReadableByOwner)]
    );
}

#[test]
fn setuid_and_sticky_bits_are_stripped() {
    let layers = Layers::new();
    write(&layers.upper.join("tool"), "#!/bin/sh\n");
    chmod(&layers.upper.join("tool"), 0o6755);
    mkdir(&layers.upper.join("shared"));
    chmod(&layers.upper.join("shared"), 0o1777);

    apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    assert_eq!(mode(&layers.lower.join("tool")), 0o755);
    assert_eq!(mode(&layers.lower.join("shared")), 0o777);
}

#[test]
fn device_node_and_fifo_are_skipped() {
    let layers = Layers::new();
    fifo(&layers.upper.join("pipe"));
    char_device(&layers.upper.join("null"));
    let mut options = layers.options();
    options.paths = paths(&["pipe", "null"]);

    let report = apply(&layers.lower, &layers.upper, &options).unwrap();

    assert!(fs::symlink_metadata(layers.lower.join("pipe")).is_err());
    assert!(fs::symlink_metadata(layers.lower.join("null")).is_err());
    assert!(report.applied.is_empty());
    let reasons: Vec<SkipReason> = report
        .skipped
        .iter()
        .map(|skipped| skipped.reason)
        .collect();
    assert_eq!(
        reasons,
        vec![SkipReason::SpecialFile, SkipReason::SpecialFile]
    );
}

#[test]
fn file_is_replaced_by_rename_of_temp_file() {
    let layers = Layers::new();
    write(&layers.lower.join("d/file.txt"), "old\n");
    let inode_before = fs::metadata(layers.lower.join("d/file.txt")).unwrap().ino();
    write(&layers.upper.join("d/file.txt"), "new\n");

    apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    let inode_after = fs::metadata(layers.lower.join("d/file.txt")).unwrap().ino();
    assert_ne!(inode_before, inode_after, "the file was rewritten in place");
    assert_eq!(read(&layers.lower.join("d/file.txt")), "new\n");
    assert_eq!(temp_files(&layers.lower.join("d")), Vec::<String>::new());
}

#[test]
fn ownership_follows_replaced_file_or_parent_dir() {
    let layers = Layers::new();
    write(&layers.lower.join("owned.txt"), "old\n");
    rustix_chown(&layers.lower.join("owned.txt"), 1234, 1235);
    mkdir(&layers.lower.join("user-dir"));
    rustix_chown(&layers.lower.join("user-dir"), 2000, 2001);
    write(&layers.upper.join("owned.txt"), "new\n");
    write(&layers.upper.join("user-dir/new.txt"), "new\n");
    write(&layers.upper.join("user-dir/sub/inner.txt"), "new\n");
    link("owned.txt", &layers.upper.join("user-dir/link"));

    apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    let owner = |path: &str| {
        let metadata = fs::symlink_metadata(layers.lower.join(path)).unwrap();
        (metadata.uid(), metadata.gid())
    };
    assert_eq!(owner("owned.txt"), (1234, 1235));
    assert_eq!(owner("user-dir/new.txt"), (2000, 2001));
    assert_eq!(owner("user-dir/sub"), (2000, 2001));
    assert_eq!(owner("user-dir/sub/inner.txt"), (2000, 2001));
    assert_eq!(owner("user-dir/link"), (2000, 2001));
}

#[test]
fn sparse_file_keeps_its_holes() {
    let layers = Layers::new();
    let file = fs::File::create(layers.upper.join("sparse.img")).unwrap();
    file.set_len(1 << 30).unwrap();
    drop(file);

    apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    let metadata = fs::metadata(layers.lower.join("sparse.img")).unwrap();
    assert_eq!(metadata.len(), 1 << 30);
    assert!(
        metadata.blocks() < 1024,
        "{} blocks allocated",
        metadata.blocks()
    );
}

#[test]
fn type_change_dir_to_file_is_applied() {
    let layers = Layers::new();
    write(&layers.lower.join("thing/a.txt"), "a\n");
    write(&layers.upper.join("thing"), "file now\n");

    let report = apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert_eq!(read(&layers.lower.join("thing")), "file now\n");
}

#[test]
fn type_change_file_to_dir_is_applied() {
    let layers = Layers::new();
    write(&layers.lower.join("thing"), "a file\n");
    link("elsewhere", &layers.lower.join("was-link"));
    opaque(&layers.upper.join("thing"));
    write(&layers.upper.join("thing/sub/inner.txt"), "inner\n");
    opaque(&layers.upper.join("was-link"));
    write(&layers.upper.join("was-link/file.txt"), "file\n");

    let report = apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    assert!(report.conflicts.is_empty(), "{:?}", report.conflicts);
    assert_eq!(read(&layers.lower.join("thing/sub/inner.txt")), "inner\n");
    assert!(fs::symlink_metadata(layers.lower.join("was-link"))
        .unwrap()
        .is_dir());
    assert_eq!(read(&layers.lower.join("was-link/file.txt")), "file\n");
}

#[test]
fn path_outside_workspace_is_rejected() {
    let layers = Layers::new();
    let mut options = layers.options();
    options.paths = paths(&["../outside"]);

    let result = apply(&layers.lower, &layers.upper, &options);

    assert!(
        matches!(result, Err(Error::InvalidSelection { .. })),
        "{result:?}"
    );
}

#[test]
fn named_path_without_change_is_reported() {
    let layers = Layers::new();
    let mut options = layers.options();
    options.paths = paths(&["nothing-here"]);

    let report = apply(&layers.lower, &layers.upper, &options).unwrap();

    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].reason, SkipReason::NoChange);
}

#[test]
fn new_dir_takes_upper_mode_despite_umask() {
    let layers = Layers::new();
    mkdir(&layers.upper.join("open"));
    chmod(&layers.upper.join("open"), 0o775);

    apply(&layers.lower, &layers.upper, &layers.options()).unwrap();

    let permissions = fs::metadata(layers.lower.join("open"))
        .unwrap()
        .permissions();
    assert_eq!(permissions.mode() & 0o777, 0o775);
}

fn rustix_chown(path: &Path, uid: u32, gid: u32) {
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(uid),
        Some(gid),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
}
