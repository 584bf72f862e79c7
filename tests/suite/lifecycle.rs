//! Persistent sandboxes: create, exec, stop, start, rm, ls, stats, cp, ttl, and the audit
//! log, run as root and as the unprivileged test user.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::harness::{
    describe, json_record, make_node, run, state_dir, stderr, stdout, Caller, Workspace, CALLERS,
};

/// Creates a sandbox for `workspace` and returns its id.
pub fn create(caller: Caller, workspace: &Path, extra: &[&str]) -> String {
    let mut args = vec!["create"];
    args.extend_from_slice(extra);
    let output = run(caller, &args, workspace);
    assert!(output.status.success(), "create: {}", describe(&output));
    let id = stdout(&output).trim().to_owned();
    assert_eq!(id.len(), 32, "create printed {id:?}");
    id
}

/// Runs `airlock exec ID -- sh -c SCRIPT`.
pub fn exec_sh(caller: Caller, workspace: &Path, id: &str, script: &str) -> std::process::Output {
    run(caller, &["exec", id, "--", "sh", "-c", script], workspace)
}

/// Removes the sandbox `id`, stopping it first.
pub fn remove(caller: Caller, workspace: &Path, id: &str) {
    let output = run(caller, &["rm", "--force", id], workspace);
    assert!(output.status.success(), "rm: {}", describe(&output));
}

fn status_of(caller: Caller, workspace: &Path, id: &str) -> Option<String> {
    let output = run(caller, &["ls", "--json"], workspace);
    assert!(output.status.success(), "ls: {}", describe(&output));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("ls JSON");
    listed
        .as_array()
        .expect("ls array")
        .iter()
        .find(|sandbox| sandbox["id"] == id)
        .map(|sandbox| sandbox["status"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn exec_shares_files_and_processes_between_commands() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), &[]);
        let started = exec_sh(
            caller,
            workspace.path(),
            &id,
            "echo kept > /tmp/note; sleep 300 >/dev/null 2>&1 & echo $!",
        );
        assert!(
            started.status.success(),
            "{caller:?}: {}",
            describe(&started)
        );
        let pid = stdout(&started).trim().to_owned();
        let seen = exec_sh(
            caller,
            workspace.path(),
            &id,
            &format!("cat /tmp/note; kill -0 {pid} && echo alive; hostname"),
        );
        assert!(seen.status.success(), "{caller:?}: {}", describe(&seen));
        let text = stdout(&seen);
        assert!(
            text.starts_with("kept\nalive\nairlock-"),
            "{caller:?}: {text:?}"
        );
        assert_eq!(
            status_of(caller, workspace.path(), &id).as_deref(),
            Some("running")
        );
        remove(caller, workspace.path(), &id);
        assert_eq!(status_of(caller, workspace.path(), &id), None);
    }
}

#[test]
fn exec_returns_the_command_status_and_json_record() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), &[]);
        let output = run(
            caller,
            &["exec", "--json", &id, "--", "sh", "-c", "echo out; exit 7"],
            workspace.path(),
        );
        assert_eq!(
            output.status.code(),
            Some(7),
            "{caller:?}: {}",
            describe(&output)
        );
        assert_eq!(stdout(&output), "out\n");
        let record = json_record(&output);
        assert_eq!(record["exit_code"], 7, "{record}");
        assert_eq!(record["sandbox_id"], id.as_str(), "{record}");
        let missing = run(
            caller,
            &["exec", &id, "--", "no-such-command"],
            workspace.path(),
        );
        assert_eq!(missing.status.code(), Some(127), "{}", describe(&missing));
        let timed_out = run(
            caller,
            &["exec", "--timeout", "1s", &id, "--", "sleep", "30"],
            workspace.path(),
        );
        assert_eq!(
            timed_out.status.code(),
            Some(124),
            "{}",
            describe(&timed_out)
        );
        remove(caller, workspace.path(), &id);
    }
}

#[test]
fn stop_ends_processes_and_start_keeps_workspace_changes() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), &["--name", "keeper"]);
        let wrote = exec_sh(caller, workspace.path(), &id, "echo v1 > /workspace/made");
        assert!(wrote.status.success(), "{}", describe(&wrote));
        let stop = run(caller, &["stop", "keeper"], workspace.path());
        assert!(stop.status.success(), "{}", describe(&stop));
        assert_eq!(
            status_of(caller, workspace.path(), &id).as_deref(),
            Some("stopped")
        );
        let refused = exec_sh(caller, workspace.path(), &id, "true");
        assert_eq!(refused.status.code(), Some(125));
        assert!(
            stderr(&refused).contains("not running"),
            "{}",
            describe(&refused)
        );
        let start = run(caller, &["start", "keeper"], workspace.path());
        assert!(start.status.success(), "{}", describe(&start));
        let read = exec_sh(caller, workspace.path(), "keeper", "cat /workspace/made");
        assert_eq!(stdout(&read), "v1\n", "{caller:?}: {}", describe(&read));
        assert!(
            !workspace.path().join("made").exists(),
            "{caller:?}: the overlay wrote through to the host"
        );
        let refused = run(caller, &["rm", &id], workspace.path());
        assert_eq!(refused.status.code(), Some(125), "{}", describe(&refused));
        assert!(
            stderr(&refused).contains("--force"),
            "{}",
            describe(&refused)
        );
        remove(caller, workspace.path(), &id);
    }
}

#[test]
fn ttl_removes_a_forgotten_sandbox() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let id = create(caller, workspace.path(), &["--ttl", "1s"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_of(caller, workspace.path(), &id).is_some() {
        assert!(Instant::now() < deadline, "the sandbox outlived its ttl");
        std::thread::sleep(Duration::from_millis(100));
    }
    let audit = run(caller, &["audit", "show", &id], workspace.path());
    let text = stdout(&audit);
    assert!(
        text.contains("expired") && text.contains("removed"),
        "{text}"
    );
}

#[test]
fn stats_counts_processes_and_memory() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), &[]);
        let started = exec_sh(caller, workspace.path(), &id, "sleep 300 >/dev/null 2>&1 &");
        assert!(started.status.success(), "{}", describe(&started));
        let output = run(caller, &["stats", "--json", &id], workspace.path());
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let stats: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
        assert_eq!(stats["processes"], 2, "{caller:?}: init and sleep: {stats}");
        assert!(stats["memory"].as_u64().unwrap_or(0) > 0, "{stats}");
        remove(caller, workspace.path(), &id);
    }
}

#[test]
fn cp_copies_into_and_out_of_a_sandbox() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), &[]);
        let source = workspace.path().join("input.txt");
        fs::write(&source, "from the host\n").expect("write input");
        let into = run(
            caller,
            &["cp", "input.txt", &format!("{id}:/tmp/copied.txt")],
            workspace.path(),
        );
        assert!(into.status.success(), "{caller:?}: {}", describe(&into));
        let read = exec_sh(caller, workspace.path(), &id, "cat /tmp/copied.txt");
        assert_eq!(stdout(&read), "from the host\n", "{}", describe(&read));
        let made = exec_sh(
            caller,
            workspace.path(),
            &id,
            "mkdir -p /tmp/out/sub && echo inside > /tmp/out/sub/file",
        );
        assert!(made.status.success(), "{}", describe(&made));
        let out = run(
            caller,
            &["cp", &format!("{id}:/tmp/out"), "fetched"],
            workspace.path(),
        );
        assert!(out.status.success(), "{caller:?}: {}", describe(&out));
        let fetched = fs::read_to_string(workspace.path().join("fetched/sub/file"))
            .expect("read the copied file");
        assert_eq!(fetched, "inside\n");
        remove(caller, workspace.path(), &id);
    }
}

/// `cp` leaves a FIFO in a copied tree out in both directions, with a warning naming it,
/// instead of making it an empty file in the sandbox or a FIFO on the host.
#[test]
fn cp_skips_fifos_both_ways() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let id = create(caller, workspace.path(), &[]);
    let tree = workspace.path().join("tree");
    fs::create_dir(&tree).expect("mkdir tree");
    fs::write(tree.join("file"), "data\n").expect("write file");
    make_node(&tree.join("fifo"), libc::S_IFIFO | 0o600, 0);

    let into = run(
        caller,
        &["cp", "tree", &format!("{id}:/tmp/")],
        workspace.path(),
    );
    assert!(into.status.success(), "{}", describe(&into));
    // The warning names the path as the command line gave the tree.
    let warning = "skipped \"tree/fifo\": a FIFO";
    assert!(stderr(&into).contains(warning), "{}", describe(&into));
    let listed = exec_sh(
        caller,
        workspace.path(),
        &id,
        "find /tmp/tree -printf '%P %y\\n'",
    );
    assert_eq!(stdout(&listed), " d\nfile f\n", "{}", describe(&listed));

    let prepared = exec_sh(
        caller,
        workspace.path(),
        &id,
        "mkdir /tmp/out && echo data > /tmp/out/file && mkfifo /tmp/out/fifo",
    );
    assert!(prepared.status.success(), "{}", describe(&prepared));
    let out = run(
        caller,
        &["cp", &format!("{id}:/tmp/out"), "fetched"],
        workspace.path(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let warning = "skipped \"/tmp/out/fifo\": a FIFO";
    assert!(stderr(&out).contains(warning), "{}", describe(&out));
    let fetched = workspace.path().join("fetched");
    assert!(fetched.join("file").is_file());
    assert!(!fetched.join("fifo").exists(), "the FIFO was copied");
    remove(caller, workspace.path(), &id);
}

/// A file that grows while `cp` packs it arrives as it was up to its size when packing began,
/// and none of its bytes are read as tar headers. A /proc file, whose size reads as 0,
/// arrives with its content.
#[test]
fn cp_copies_growing_and_proc_files() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let id = create(caller, workspace.path(), &[]);
    let line = "a line of a log that grows while cp packs it";
    let writer = format!(
        "mkdir -p /tmp/g; (while :; do echo '{line}'; done >> /tmp/g/log) \
         >/dev/null 2>&1 </dev/null &"
    );
    let started = exec_sh(caller, workspace.path(), &id, &writer);
    assert!(started.status.success(), "{}", describe(&started));

    for copy in ["g1", "g2", "g3"] {
        let out = run(
            caller,
            &["cp", &format!("{id}:/tmp/g"), copy],
            workspace.path(),
        );
        assert!(out.status.success(), "{copy}: {}", describe(&out));
        let log = fs::read_to_string(workspace.path().join(copy).join("log")).expect("read log");
        // A write can be seen half done, so the last line may be cut short.
        let (whole, last) = log.rsplit_once('\n').unwrap_or(("", &log));
        let other = whole.lines().find(|found| *found != line);
        assert_eq!(other, None, "{copy}: a line that the writer never wrote");
        assert!(line.starts_with(last), "{copy}: the last line is {last:?}");
    }
    let status = run(
        caller,
        &["cp", &format!("{id}:/proc/1/status"), "status"],
        workspace.path(),
    );
    assert!(status.status.success(), "{}", describe(&status));
    let copied = fs::read_to_string(workspace.path().join("status")).expect("read status");
    assert!(copied.starts_with("Name:"), "{copied}");
    assert!(copied.contains("\nPid:"), "{copied}");
    remove(caller, workspace.path(), &id);
}

#[test]
fn audit_log_names_edited_line() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let id = create(caller, workspace.path(), &["--env", "SECRET_TOKEN=hunter2"]);
    let output = exec_sh(caller, workspace.path(), &id, "exit 3");
    assert_eq!(output.status.code(), Some(3));
    remove(caller, workspace.path(), &id);
    let log = state_dir(caller).join("audit").join(format!("{id}.jsonl"));
    let text = fs::read_to_string(&log).expect("read the audit log");
    assert!(
        !text.contains("hunter2"),
        "an environment value reached the audit log"
    );
    let events: Vec<String> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON line"))
        .map(|entry| entry["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        events,
        ["created", "started", "exec_started", "exec", "removed"],
        "{text}"
    );
    let verify = run(caller, &["audit", "verify", &id], workspace.path());
    assert!(verify.status.success(), "{}", describe(&verify));
    let edited = text.replacen("\"exit_code\":3", "\"exit_code\":0", 1);
    assert_ne!(edited, text);
    fs::write(&log, edited).expect("edit the audit log");
    let verify = run(caller, &["audit", "verify", &id], workspace.path());
    assert_eq!(verify.status.code(), Some(1));
    assert!(stderr(&verify).contains("line 4"), "{}", describe(&verify));
}

#[test]
fn create_rejects_a_taken_name_and_leaves_nothing() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let id = create(caller, workspace.path(), &["--name", "twin"]);
    let output = run(caller, &["create", "--name", "twin"], workspace.path());
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    assert!(stderr(&output).contains("twin"), "{}", describe(&output));
    remove(caller, workspace.path(), &id);
}

#[test]
fn exec_gets_the_same_protections_as_run() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let id = create(caller, workspace.path(), &[]);
        let script = r#"
unshare --user true 2>/dev/null; echo "unshare $?"
grep -c ':' /proc/net/dev
ls /proc | grep -c '^[0-9]'
grep CapEff /proc/self/status
grep NoNewPrivs /proc/self/status
grep Seccomp: /proc/self/status
echo x > /etc/hostname 2>/dev/null; echo "write $?"
"#;
        let output = exec_sh(caller, workspace.path(), &id, script);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
        assert_ne!(lines[0], "unshare 0", "{caller:?}: {lines:?}");
        assert_eq!(lines[1], "1", "{caller:?}: only lo: {lines:?}");
        let processes: u32 = lines[2].parse().unwrap();
        assert!(processes <= 5, "{caller:?}: {processes} processes visible");
        assert_eq!(lines[3], "CapEff:\t0000000000000000", "{caller:?}");
        assert_eq!(lines[4], "NoNewPrivs:\t1", "{caller:?}");
        assert_eq!(lines[5], "Seccomp:\t2", "{caller:?}");
        assert_ne!(lines[6], "write 0", "{caller:?}");
        remove(caller, workspace.path(), &id);
    }
}

#[test]
fn spec_file_sets_options_and_names_bad_keys() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let spec = workspace.path().join("sandbox.toml");
    fs::write(
        &spec,
        "workspace_mode = \"none\"\ncommand = [\"sh\", \"-c\", \"echo $GREETING; ls -A /workspace | wc -l\"]\n\n[env]\nGREETING = \"hello\"\n",
    )
    .unwrap();
    let output = run(caller, &["run", "--spec", "sandbox.toml"], workspace.path());
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "hello\n0\n");
    fs::write(&spec, "memory = \"1G\"\nmemroy = \"2G\"\n").unwrap();
    let output = run(
        caller,
        &["create", "--spec", "sandbox.toml"],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(message.contains("sandbox.toml:2:1"), "{message}");
    assert!(message.contains("memroy"), "{message}");
}

/// A stopped sandbox whose project was replaced by a symlink does not start. The error names
/// what happened to the project and the fix.
#[test]
fn start_refuses_project_replaced_by_symlink() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let project = workspace.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let id = create(caller, &project, &[]);
    let stop = run(caller, &["stop", &id], &project);
    assert!(stop.status.success(), "{}", describe(&stop));
    let elsewhere = workspace.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::rename(&project, workspace.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &project).unwrap();

    let start = run(caller, &["start", &id], workspace.path());

    assert_eq!(start.status.code(), Some(125), "{}", describe(&start));
    assert!(
        stderr(&start).contains("replaced by a symlink"),
        "{}",
        describe(&start)
    );
    assert!(
        stderr(&start).contains("airlock rm"),
        "{}",
        describe(&start)
    );
    assert_eq!(
        status_of(caller, workspace.path(), &id).as_deref(),
        Some("stopped")
    );
    std::fs::remove_file(&project).unwrap();
    std::fs::rename(workspace.path().join("moved"), &project).unwrap();
    remove(caller, workspace.path(), &id);
}
