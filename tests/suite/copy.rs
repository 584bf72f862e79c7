//! `airlock cp` failures and the entries it cannot copy, on the namespace backend (as root
//! and as the unprivileged test user) and on the chroot backend. A failed write in the
//! sandbox exits 125 with that write's error and leaves nothing at the target, and so does a
//! target that ends with '/' but is no directory. Symlink targets arrive byte for byte.

use std::fs;
use std::path::Path;

use super::harness::{describe, run, stderr, stdout, Caller, Workspace, CALLERS};
use super::lifecycle::{create, exec_sh, remove};

/// Returns each caller with the backend options of its sandbox.
fn sandboxes() -> Vec<(Caller, &'static [&'static str])> {
    let mut sandboxes: Vec<(Caller, &'static [&'static str])> =
        CALLERS.iter().map(|&caller| (caller, &[][..])).collect();
    sandboxes.push((Caller::Root, &["--backend", "chroot"]));
    sandboxes
}

/// Lists /tmp and `dir` in the sandbox, hidden entries included, one line per entry.
fn listing(caller: Caller, workspace: &Path, id: &str, dir: &str) -> String {
    let listed = exec_sh(caller, workspace, id, &format!("ls -A /tmp {dir}"));
    assert!(listed.status.success(), "{}", describe(&listed));
    stdout(&listed)
}

#[test]
fn cp_into_read_only_path_exits_125() {
    for (caller, backend) in sandboxes() {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), backend);
        // Larger than a pipe's buffer, so the host still writes when the sandbox side fails.
        fs::write(workspace.path().join("big"), vec![b'x'; 20 << 20]).expect("write big");

        let copied = run(
            caller,
            &["cp", "big", &format!("{id}:/usr/f")],
            workspace.path(),
        );

        let context = format!("{caller:?} {backend:?}: {}", describe(&copied));
        assert_eq!(copied.status.code(), Some(125), "{context}");
        assert!(stderr(&copied).contains("/usr/f"), "{context}");
        assert!(
            stderr(&copied).contains("Read-only file system"),
            "{context}"
        );
        let left = listing(caller, workspace.path(), &id, "/usr");
        assert!(!left.contains("airlock-cp"), "{context}\n{left}");
        assert!(!left.lines().any(|entry| entry == "f"), "{context}\n{left}");
        remove(caller, workspace.path(), &id);
    }
}

/// A copy larger than the sandbox's 512 MiB /tmp fails with ENOSPC, and removes what it wrote
/// instead of leaving /tmp full.
#[test]
fn cp_into_full_tmp_leaves_nothing() {
    for (caller, backend) in sandboxes() {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), backend);
        let sparse = fs::File::create(workspace.path().join("sparse")).expect("create sparse");
        sparse.set_len(600 << 20).expect("size sparse");

        let copied = run(
            caller,
            &["cp", "sparse", &format!("{id}:/tmp/big")],
            workspace.path(),
        );

        let context = format!("{caller:?} {backend:?}: {}", describe(&copied));
        assert_eq!(copied.status.code(), Some(125), "{context}");
        assert!(stderr(&copied).contains("/tmp/big"), "{context}");
        assert!(
            stderr(&copied).contains("No space left on device"),
            "{context}"
        );
        let left = exec_sh(caller, workspace.path(), &id, "ls -A /tmp");
        assert_eq!(stdout(&left), "", "{context}\n{}", describe(&left));
        remove(caller, workspace.path(), &id);
    }
}

/// A target that ends with '/' names a directory, as for cp(1): when none is there, the copy
/// fails in both directions instead of creating a file of that name.
#[test]
fn cp_to_missing_directory_with_slash_fails() {
    for (caller, backend) in sandboxes() {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), backend);
        fs::write(workspace.path().join("note"), "hello\n").expect("write note");

        let into = run(
            caller,
            &["cp", "note", &format!("{id}:/tmp/missing/")],
            workspace.path(),
        );
        let context = format!("{caller:?} {backend:?}: {}", describe(&into));
        assert_eq!(into.status.code(), Some(125), "{context}");
        assert!(stderr(&into).contains("no directory"), "{context}");
        let left = exec_sh(caller, workspace.path(), &id, "ls -A /tmp");
        assert_eq!(stdout(&left), "", "{context}\n{}", describe(&left));

        let out = run(
            caller,
            &["cp", &format!("{id}:/workspace/note"), "missing/"],
            workspace.path(),
        );
        let context = format!("{caller:?} {backend:?}: {}", describe(&out));
        assert_eq!(out.status.code(), Some(125), "{context}");
        assert!(stderr(&out).contains("no directory"), "{context}");
        assert!(!workspace.path().join("missing").exists(), "{context}");
        remove(caller, workspace.path(), &id);
    }
}

/// The tar crate turns a link to `/` into `//` and collapses repeated slashes; cp keeps the
/// target as the link holds it, also past the 100 bytes of a tar header's link field.
#[test]
fn cp_keeps_symlink_targets_byte_for_byte() {
    let long = format!("/{}//end", "d".repeat(120));
    for (caller, backend) in sandboxes() {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), backend);
        let script = format!("mkdir /tmp/t && ln -s / /tmp/t/root && ln -s '{long}' /tmp/t/long");
        let made = exec_sh(caller, workspace.path(), &id, &script);
        assert!(made.status.success(), "{}", describe(&made));

        let out = run(
            caller,
            &["cp", &format!("{id}:/tmp/t"), "t"],
            workspace.path(),
        );
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let copied = workspace.path().join("t");
        let root = fs::read_link(copied.join("root")).expect("read root link");
        assert_eq!(root, Path::new("/"), "{caller:?} {backend:?} out");
        let long_copy = fs::read_link(copied.join("long")).expect("read long link");
        assert_eq!(long_copy, Path::new(&long), "{caller:?} {backend:?} out");

        let into = run(
            caller,
            &["cp", "t", &format!("{id}:/tmp/back")],
            workspace.path(),
        );
        assert_eq!(into.status.code(), Some(0), "{}", describe(&into));
        let read = exec_sh(
            caller,
            workspace.path(),
            &id,
            "readlink /tmp/back/root /tmp/back/long",
        );
        let expected = format!("/\n{long}\n");
        assert_eq!(stdout(&read), expected, "{caller:?} {backend:?} in");
        remove(caller, workspace.path(), &id);
    }
}
