//! What `run` does after the command has ended: it prints the result, exits with the
//! command's status, and leaves the audit entries and the removal of the sandbox to a child.
//! The audit entries and the status survive a signal for the caller's process group, a caller
//! that is the PID 1 of a PID namespace, and a reader that closed stderr. A sandbox's
//! directory is reused only once its overlay is unmounted.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::{binary, describe, json_record, stderr, Caller, Workspace};

/// Returns `airlock --state-dir STATE ARGS...` run from `workspace`.
fn airlock(state: &Path, workspace: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .current_dir(workspace)
        .stdin(Stdio::null());
    command
}

/// Waits up to 10 s for every run in `state` to have its audit log with a final entry, and
/// for no sandbox directory to remain, then returns the logs that lack one.
fn logs_without_end(state: &Path, runs: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs: Vec<String> = fs::read_dir(state.join("audit"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| fs::read_to_string(entry.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        let ended = |log: &String| log.contains("\"event\":\"removed\"");
        let missing: Vec<String> = logs.iter().filter(|log| !ended(log)).cloned().collect();
        let sandboxes_left = fs::read_dir(state.join("sandboxes"))
            .map(|entries| entries.count())
            .unwrap_or(0);
        let done = logs.len() == runs && missing.is_empty() && sandboxes_left == 0;
        if done || Instant::now() >= deadline {
            let mut problems = missing;
            if logs.len() != runs {
                problems.push(format!("{} audit logs for {runs} runs", logs.len()));
            }
            if sandboxes_left != 0 {
                problems.push(format!("{sandboxes_left} sandbox directories left"));
            }
            return problems;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to the run's process group as soon as `run` has exited reaches the clean-up child,
/// which is still in that group until its setsid: it must still write every audit entry.
#[test]
fn group_signal_after_run_keeps_audit_entries() {
    const RUNS: usize = 40;
    let workspace = Workspace::new(Caller::Root);
    let state = tempfile::tempdir().expect("state directory");
    for _ in 0..RUNS {
        let mut child = airlock(state.path(), workspace.path(), &["run", "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start airlock");
        let group = child.id() as libc::pid_t;
        let status = child.wait().expect("wait for airlock");
        assert_eq!(status.code(), Some(0), "{status:?}");
        // SAFETY: kill takes plain values; the group is the one this test just started.
        unsafe { libc::kill(-group, libc::SIGTERM) };
    }
    let problems = logs_without_end(state.path(), RUNS);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// As the PID 1 of a PID namespace, as in a container whose entrypoint it is, Airlock's exit
/// would end every process of the namespace, so it cleans up before it exits.
#[test]
fn pid_namespace_init_keeps_audit_entries() {
    const RUNS: usize = 3;
    let workspace = Workspace::new(Caller::Root);
    let state = tempfile::tempdir().expect("state directory");
    for _ in 0..RUNS {
        let output = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(binary())
            .arg("--state-dir")
            .arg(state.path())
            .args(["run", "--", "true"])
            .current_dir(workspace.path())
            .stdin(Stdio::null())
            .output()
            .expect("run unshare");
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    }
    let problems = logs_without_end(state.path(), RUNS);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// With `--json`, the record stays the last line of stderr when the workspace changed, after
/// the message that the sandbox is kept, and its `kept` field is true.
#[test]
fn json_record_last_when_changes_kept() {
    let workspace = Workspace::new(Caller::Root);
    let state = tempfile::tempdir().expect("state directory");
    let output = airlock(
        state.path(),
        workspace.path(),
        &["run", "--json", "--", "sh", "-c", "echo z > z.txt"],
    )
    .output()
    .expect("run airlock");
    let context = describe(&output);
    assert_eq!(output.status.code(), Some(0), "{context}");
    assert!(stderr(&output).contains("changes are kept"), "{context}");
    let record = json_record(&output);
    assert_eq!(record["kept"], true, "{context}");
    let id = record["sandbox_id"]
        .as_str()
        .expect("sandbox id")
        .to_owned();
    let removed = airlock(state.path(), workspace.path(), &["rm", &id])
        .output()
        .expect("rm");
    assert!(removed.status.success(), "{}", describe(&removed));

    let output = airlock(
        state.path(),
        workspace.path(),
        &["run", "--json", "--", "true"],
    )
    .output()
    .expect("run airlock");
    assert_eq!(json_record(&output)["kept"], false, "{}", describe(&output));
}

/// A reader that closed stderr before the message about kept changes does not make Airlock
/// abort: it exits with the command's status, and the sandbox is kept.
#[test]
fn closed_stderr_keeps_run_status() {
    let workspace = Workspace::new(Caller::Root);
    let state = tempfile::tempdir().expect("state directory");
    let mut child = airlock(
        state.path(),
        workspace.path(),
        &["run", "--", "sh", "-c", "sleep 0.2; echo x > k.txt"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start airlock");
    drop(child.stderr.take());
    let status = child.wait().expect("wait for airlock");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let sandboxes_left = fs::read_dir(state.path().join("sandboxes"))
        .expect("sandboxes")
        .count();
    assert_eq!(sandboxes_left, 1, "the changed sandbox is kept");
}

/// A sandbox's directory goes back to the spares only after its init has exited, which
/// unmounts its overlay: the kernel warns when an upper or work directory is mounted twice.
#[test]
fn layers_reused_only_after_overlay_unmounted() {
    const RUNS: usize = 60;
    const WARNING: &str = "in-use as upperdir/workdir of another mount";
    let count_warnings = || {
        let output = Command::new("dmesg").output().expect("run dmesg");
        assert!(output.status.success(), "dmesg: {}", describe(&output));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains(WARNING))
            .count()
    };
    let workspace = Workspace::new(Caller::Root);
    let state = tempfile::tempdir().expect("state directory");
    let before = count_warnings();
    for _ in 0..RUNS {
        let output = airlock(state.path(), workspace.path(), &["run", "--", "true"])
            .output()
            .expect("run airlock");
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    }
    assert_eq!(count_warnings(), before, "the kernel warned: {WARNING}");
}
