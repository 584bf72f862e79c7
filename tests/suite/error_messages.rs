//! Errors that exit 125 and name the value at fault and the fix: an unwritable state
//! directory, a project moved after `create`, a project with a mount point inside, and
//! command-line values.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::harness::{binary, describe, run, stderr, test_user, Caller, Workspace};
use super::lifecycle::{create, exec_sh, remove};

#[test]
fn unwritable_state_dir_names_options() {
    let (uid, gid) = test_user();
    let output = Command::new(binary())
        .arg("ls")
        .env_remove("AIRLOCK_STATE_DIR")
        .env("HOME", "/nonexistent")
        .env("XDG_STATE_HOME", "/nonexistent/state")
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output()
        .expect("run airlock as the test user");

    let context = describe(&output);
    assert_eq!(output.status.code(), Some(125), "{context}");
    let message = stderr(&output);
    assert!(message.contains("/nonexistent/state/airlock"), "{context}");
    assert!(message.contains("--state-dir"), "{context}");
    assert!(message.contains("AIRLOCK_STATE_DIR"), "{context}");
    assert!(message.contains("XDG_STATE_HOME"), "{context}");
}

/// `diff` after the project was renamed away, and after a symlink took its place.
#[test]
fn moved_project_named_in_diff() {
    let caller = Caller::Root;
    let parent = Workspace::new(caller);
    let project = parent.path().join("project");
    fs::create_dir(&project).unwrap();
    let id = create(caller, &project, &[]);
    let changed = exec_sh(caller, &project, &id, "echo new > new");
    assert!(changed.status.success(), "{}", describe(&changed));
    let moved = parent.path().join("moved");
    fs::rename(&project, &moved).unwrap();

    let missing = run(caller, &["diff", &id], parent.path());
    std::os::unix::fs::symlink(&moved, &project).unwrap();
    let linked = run(caller, &["diff", &id], parent.path());
    fs::remove_file(&project).unwrap();
    fs::rename(&moved, &project).unwrap();

    for (case, output) in [("missing", &missing), ("symlink", &linked)] {
        let context = format!("{case}: {}", describe(output));
        assert_eq!(output.status.code(), Some(125), "{context}");
        let message = stderr(output);
        assert!(message.contains(&format!("{project:?}")), "{context}");
        assert!(
            message.contains("moved, removed or replaced by a symlink"),
            "{context}"
        );
        assert!(message.contains("airlock rm"), "{context}");
    }
    let restored = run(caller, &["diff", &id], &project);
    assert_eq!(restored.status.code(), Some(0), "{}", describe(&restored));
    remove(caller, &project, &id);
}

/// Unmounts its path when dropped, so a failed assertion leaves no mount behind.
struct BindMount<'a>(&'a Path);

impl Drop for BindMount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// The test user's sandbox cannot bind a project with a mount point inside. The error names
/// both paths.
#[test]
fn project_mount_point_named() {
    let caller = Caller::User;
    let workspace = Workspace::new(caller);
    let elsewhere = tempfile::tempdir().unwrap();
    let inner = workspace.path().join("inner");
    fs::create_dir(&inner).unwrap();
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(elsewhere.path())
        .arg(&inner)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mount --bind failed");
    let _unmount = BindMount(&inner);

    let output = run(caller, &["run", "--", "true"], workspace.path());

    let context = describe(&output);
    assert_eq!(output.status.code(), Some(125), "{context}");
    let message = stderr(&output);
    assert!(
        message.contains(&format!("{:?}", workspace.path())),
        "{context}"
    );
    assert!(message.contains(&format!("{inner:?}")), "{context}");
}

#[test]
fn command_line_values_name_fix() {
    let workspace = Workspace::new(Caller::Root);
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["run", "--cpus", "-1", "--", "true"],
            "invalid cpu limit \"-1\"",
            "'-- -1'",
        ),
        (
            &["diff", "abcd", "--patch", "extra"],
            "unexpected argument 'extra'",
            "put the command after",
        ),
        (&["run", "true"], "put the command after `--`", "'-- true'"),
        (
            &[
                "run",
                "--backend",
                "vm",
                "--kernel",
                "/nonexistent",
                "--",
                "true",
            ],
            "kernel image \"/nonexistent\" does not exist",
            "vmlinuz-RELEASE",
        ),
    ];
    for (args, expected, unexpected) in cases {
        let output = run(Caller::Root, args, workspace.path());

        let context = format!("{args:?}: {}", describe(&output));
        assert_eq!(output.status.code(), Some(125), "{context}");
        assert!(stderr(&output).contains(expected), "{context}");
        assert!(!stderr(&output).contains(unexpected), "{context}");
    }
}

/// Each subcommand's help starts with its own description, not with that of the options it
/// shares with others, and `run`'s lists its exit statuses.
#[test]
fn subcommand_help_starts_with_its_description() {
    let cases = [
        ("run", "Run one command in a fresh sandbox"),
        ("create", "Create a sandbox that keeps running"),
        ("exec", "Run a command in a running sandbox"),
    ];
    for (subcommand, description) in cases {
        let output = Command::new(binary())
            .args([subcommand, "--help"])
            .stdin(Stdio::null())
            .output()
            .expect("run airlock --help");
        let context = describe(&output);
        assert_eq!(output.status.code(), Some(0), "{context}");
        let help = String::from_utf8_lossy(&output.stdout);
        let first_line = help.lines().next().unwrap_or_default();
        assert!(
            first_line.starts_with(description),
            "{subcommand}: {first_line:?}"
        );
        if subcommand == "run" {
            assert!(help.contains("124 (timed out)"), "{context}");
        }
    }
}

/// A hidden container mode called with an option prints its help instead of taking the
/// option for its socket.
#[test]
fn container_mode_help_not_socket() {
    let output = Command::new(binary())
        .args(["__docker-exec", "--help"])
        .stdin(Stdio::null())
        .output()
        .expect("run airlock __docker-exec --help");
    let context = describe(&output);
    assert_eq!(output.status.code(), Some(0), "{context}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Usage:"),
        "{context}"
    );
}

/// The nspawn container's init, started by hand without the descriptors that Airlock passes
/// it, prints what it is instead of failing silently.
#[test]
fn nspawn_init_by_hand_explains_itself() {
    let output = Command::new(binary())
        .arg("__nspawn-init")
        .stdin(Stdio::null())
        .output()
        .expect("run airlock __nspawn-init");
    let context = describe(&output);
    assert_eq!(output.status.code(), Some(125), "{context}");
    assert!(
        stderr(&output).contains("not a command to run by hand"),
        "{context}"
    );
}

/// A negative value after an option gets no advice to put it after `--`, which would make it
/// the command.
#[test]
fn negative_value_not_sent_after_separator() {
    let workspace = Workspace::new(Caller::Root);
    for value in ["-5", "-5M", "-1s"] {
        let output = run(
            Caller::Root,
            &["run", "--memory", value, "--", "true"],
            workspace.path(),
        );
        let context = describe(&output);
        assert_eq!(output.status.code(), Some(125), "{context}");
        let message = stderr(&output);
        assert!(message.contains("negative value"), "{value}: {context}");
        assert!(!message.contains("use '--"), "{value}: {context}");
    }
}
