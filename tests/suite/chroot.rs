//! The chroot backend, run as root: the command's file tree, user and limits, the lifecycle
//! of a persistent sandbox, and that nothing outlives a sandbox. Every sandbox's processes
//! are found here the way the backend finds them: by the source name of the tree's root
//! tmpfs in their mount table.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use super::harness::{describe, run, state_dir, stderr, stdout, Caller, Workspace};

const ROOT: Caller = Caller::Root;

/// The start of the warning line that `run` and `create` print for this backend.
const WARNING: &str = "airlock: warning: the chroot backend isolates only the file tree";

/// Runs `airlock run --backend chroot EXTRA... -- sh -c SCRIPT` as root in `workspace`.
fn run_sh(workspace: &Path, extra: &[&str], script: &str) -> Output {
    let mut args = vec!["run", "--backend", "chroot"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    run(ROOT, &args, workspace)
}

/// Creates a chroot sandbox for `workspace` and returns its id.
fn create(workspace: &Path, extra: &[&str]) -> String {
    let mut args = vec!["create", "--backend", "chroot"];
    args.extend_from_slice(extra);
    let output = run(ROOT, &args, workspace);
    assert!(output.status.success(), "create: {}", describe(&output));
    let id = stdout(&output).trim().to_owned();
    assert_eq!(id.len(), 32, "create printed {id:?}");
    id
}

fn exec_sh(workspace: &Path, id: &str, script: &str) -> Output {
    run(ROOT, &["exec", id, "--", "sh", "-c", script], workspace)
}

/// Returns the pids of the processes that see the root tmpfs of sandbox `id`: its holder
/// and everything running in its mount namespace.
fn processes_of(id: &str) -> Vec<String> {
    let marker = format!(" airlock-chroot-{id} ");
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("list /proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let mountinfo = fs::read_to_string(entry.path().join("mountinfo")).unwrap_or_default();
        if mountinfo.contains(&marker) {
            found.push(name);
        }
    }
    found
}

/// Returns whether process `pid` exists and is not a zombie.
fn is_alive(pid: &str) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    state.is_some_and(|rest| !rest.starts_with('Z'))
}

/// Returns the first audit log entry of sandbox `id` whose event is `event`.
fn audit_entry(id: &str, event: &str) -> serde_json::Value {
    let log = state_dir(ROOT).join("audit").join(format!("{id}.jsonl"));
    let text = fs::read_to_string(&log).expect("read the audit log");
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON line"))
        .find(|entry| entry["event"] == event)
        .unwrap_or_else(|| panic!("no {event:?} event in {text}"))
}

fn status_of(workspace: &Path, id: &str) -> Option<serde_json::Value> {
    let output = run(ROOT, &["ls", "--json"], workspace);
    assert!(output.status.success(), "ls: {}", describe(&output));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("ls JSON");
    listed
        .as_array()
        .expect("ls array")
        .iter()
        .find(|sandbox| sandbox["id"] == id)
        .cloned()
}

#[test]
fn chroot_command_sees_workspace_and_propagates_status() {
    let workspace = Workspace::new(ROOT);
    fs::write(workspace.path().join("note.txt"), "from the host\n").expect("write note");
    let output = run_sh(
        workspace.path(),
        &[],
        "pwd; cat note.txt; echo to-stderr >&2; exit 3",
    );
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(stdout(&output), "/workspace\nfrom the host\n");
    let errors = stderr(&output);
    assert!(errors.starts_with(WARNING), "{errors}");
    assert!(errors.contains("\nto-stderr\n"), "{errors}");
    assert_eq!(errors.matches("airlock: warning:").count(), 1, "{errors}");
}

#[test]
fn chroot_default_user_writes_only_workspace_and_tmp() {
    let workspace = Workspace::new(ROOT);
    let script = "id -u; id -g; id -G; \
        for dir in / /etc /usr /usr/bin /opt /dev /proc /workspace /tmp /dev/shm; do \
            if touch \"$dir/airlock-probe\" 2>/dev/null; then echo \"writable $dir\"; fi; \
        done";
    let output = run_sh(workspace.path(), &[], script);
    assert!(output.status.success(), "{}", describe(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    assert_eq!(lines[..3], ["65534", "65534", "65534"], "{lines:?}");
    let writable = &lines[3..];
    assert_eq!(
        writable,
        ["writable /workspace", "writable /tmp", "writable /dev/shm"],
        "{}",
        describe(&output)
    );
}

/// The default user's command, and an exec's, hold no capability in any set, the bounding
/// set included, as the spec's "all capabilities dropped" rule requires.
#[test]
fn chroot_default_user_holds_no_capabilities() {
    let workspace = Workspace::new(ROOT);
    let script = "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status";
    let check = |output: &Output, context: &str| {
        assert!(output.status.success(), "{context}: {}", describe(output));
        let lines: Vec<String> = stdout(output).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 5, "{context}: {lines:?}");
        for line in &lines {
            assert!(line.ends_with("0000000000000000"), "{context}: {line}");
        }
    };
    check(&run_sh(workspace.path(), &[], script), "run");
    let id = create(workspace.path(), &[]);
    check(&exec_sh(workspace.path(), &id, script), "exec");
    run(ROOT, &["rm", "--force", &id], workspace.path());
}

#[test]
fn chroot_user_root_runs_as_root() {
    let workspace = Workspace::new(ROOT);
    let root = ["--user", "root", "--allow-weaker"];
    let output = run_sh(workspace.path(), &root, "id -u; id -g");
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "0\n0\n");
    let numeric = run_sh(workspace.path(), &["--user", "4242:4343"], "id -u; id -g");
    assert_eq!(stdout(&numeric), "4242\n4343\n", "{}", describe(&numeric));
}

#[test]
fn chroot_host_shadow_hidden_from_root_and_nobody() {
    let host = fs::read("/etc/shadow").expect("read the host's /etc/shadow");
    assert!(!host.is_empty(), "the host's /etc/shadow is empty");
    let workspace = Workspace::new(ROOT);
    for user in ["root", "65534"] {
        let output = run_sh(
            workspace.path(),
            &["--user", user, "--allow-weaker"],
            "cat /etc/shadow /etc/gshadow 2>/dev/null | wc -c",
        );
        assert!(output.status.success(), "{user}: {}", describe(&output));
        assert_eq!(stdout(&output).trim(), "0", "{user}: {}", describe(&output));
    }
}

#[test]
fn chroot_run_kills_background_processes() {
    let workspace = Workspace::new(ROOT);
    let output = run_sh(
        workspace.path(),
        &[],
        "setsid sleep 300 >/dev/null 2>&1 & echo $!",
    );
    assert!(output.status.success(), "{}", describe(&output));
    let pid = stdout(&output).trim().to_owned();
    assert!(!pid.is_empty(), "{}", describe(&output));
    assert!(!is_alive(&pid), "background process {pid} outlived the run");
}

#[test]
fn chroot_workspace_modes() {
    let workspace = Workspace::new(ROOT);
    fs::write(workspace.path().join("kept.txt"), "kept\n").expect("write kept.txt");
    let bind = run_sh(
        workspace.path(),
        &["--workspace-mode", "bind"],
        "echo b > bound",
    );
    assert!(bind.status.success(), "{}", describe(&bind));
    let bound = fs::read_to_string(workspace.path().join("bound")).expect("read bound");
    assert_eq!(bound, "b\n");
    let readonly = run_sh(
        workspace.path(),
        &["--workspace-mode", "readonly"],
        "cat kept.txt; echo r > refused",
    );
    assert_ne!(readonly.status.code(), Some(0), "{}", describe(&readonly));
    assert_eq!(stdout(&readonly), "kept\n");
    assert!(!workspace.path().join("refused").exists());
    let none = run_sh(workspace.path(), &["--workspace-mode", "none"], "ls -A");
    assert!(none.status.success(), "{}", describe(&none));
    assert_eq!(stdout(&none), "");
}

#[test]
fn chroot_create_exec_cp_diff_apply_rm() {
    let workspace = Workspace::new(ROOT);
    // --allow-weaker accepts the exec as host root below.
    let id = create(
        workspace.path(),
        &["--name", "chroot-life", "--allow-weaker"],
    );
    let listed = status_of(workspace.path(), &id).expect("listed");
    assert_eq!(listed["backend"], "chroot", "{listed}");
    assert_eq!(listed["status"], "running", "{listed}");

    let wrote = exec_sh(
        workspace.path(),
        "chroot-life",
        "echo made > made.txt; id -u",
    );
    assert_eq!(stdout(&wrote), "65534\n", "{}", describe(&wrote));
    let status = exec_sh(workspace.path(), &id, "exit 7");
    assert_eq!(status.status.code(), Some(7), "{}", describe(&status));
    let missing = run(
        ROOT,
        &["exec", &id, "--", "no-such-command"],
        workspace.path(),
    );
    assert_eq!(missing.status.code(), Some(127), "{}", describe(&missing));
    let timed_out = run(
        ROOT,
        &["exec", "--timeout", "1s", &id, "--", "sleep", "30"],
        workspace.path(),
    );
    assert_eq!(
        timed_out.status.code(),
        Some(124),
        "{}",
        describe(&timed_out)
    );
    let as_root = run(
        ROOT,
        &["exec", "--user", "root", &id, "--", "id", "-u"],
        workspace.path(),
    );
    assert_eq!(stdout(&as_root), "0\n", "{}", describe(&as_root));

    fs::write(workspace.path().join("input.txt"), "from the host\n").expect("write input");
    let into = run(
        ROOT,
        &["cp", "input.txt", &format!("{id}:/tmp/in.txt")],
        workspace.path(),
    );
    assert!(into.status.success(), "{}", describe(&into));
    let read = exec_sh(workspace.path(), &id, "cat /tmp/in.txt");
    assert_eq!(stdout(&read), "from the host\n", "{}", describe(&read));
    let out = run(
        ROOT,
        &["cp", &format!("{id}:made.txt"), "fetched.txt"],
        workspace.path(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let fetched = fs::read_to_string(workspace.path().join("fetched.txt")).expect("fetched");
    assert_eq!(fetched, "made\n");

    let diff = run(ROOT, &["diff", &id], workspace.path());
    assert_eq!(stdout(&diff), "A made.txt\n", "{}", describe(&diff));
    let stop = run(ROOT, &["stop", &id], workspace.path());
    assert!(stop.status.success(), "{}", describe(&stop));
    assert!(processes_of(&id).is_empty(), "processes left after stop");
    let start = run(ROOT, &["start", &id], workspace.path());
    assert!(start.status.success(), "{}", describe(&start));
    let again = exec_sh(workspace.path(), &id, "cat made.txt");
    assert_eq!(stdout(&again), "made\n", "{}", describe(&again));
    let stop = run(ROOT, &["stop", &id], workspace.path());
    assert!(stop.status.success(), "{}", describe(&stop));
    let apply = run(ROOT, &["apply", &id], workspace.path());
    assert!(apply.status.success(), "{}", describe(&apply));
    let applied = fs::read_to_string(workspace.path().join("made.txt")).expect("applied");
    assert_eq!(applied, "made\n");

    let remove = run(ROOT, &["rm", &id], workspace.path());
    assert!(remove.status.success(), "{}", describe(&remove));
    assert!(status_of(workspace.path(), &id).is_none());
    assert!(processes_of(&id).is_empty());
}

#[test]
fn chroot_rm_kills_background_processes() {
    let workspace = Workspace::new(ROOT);
    let id = create(workspace.path(), &[]);
    let started = exec_sh(
        workspace.path(),
        &id,
        "setsid sleep 300 >/dev/null 2>&1 & echo $!",
    );
    assert!(started.status.success(), "{}", describe(&started));
    let pid = stdout(&started).trim().to_owned();
    assert!(is_alive(&pid), "the background process is not running");
    let stats = run(ROOT, &["stats", "--json", &id], workspace.path());
    let stats: serde_json::Value = serde_json::from_str(&stdout(&stats)).expect("stats JSON");
    assert_eq!(stats["processes"], 2, "holder and sleep: {stats}");
    assert_eq!(processes_of(&id).len(), 2);
    let remove = run(ROOT, &["rm", "--force", &id], workspace.path());
    assert!(remove.status.success(), "{}", describe(&remove));
    assert!(!is_alive(&pid), "process {pid} outlived rm");
    assert_eq!(processes_of(&id), Vec::<String>::new());
    assert!(
        !mounted_on_host(&id),
        "the sandbox's tree is mounted on the host"
    );
}

/// Returns whether the host's mount table shows the tree of sandbox `id` or its layers.
fn mounted_on_host(id: &str) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo.contains(&format!("airlock-chroot-{id}")) || mountinfo.contains(id)
}

#[test]
fn chroot_killed_supervisor_leaves_nothing_after_gc() {
    let workspace = Workspace::new(ROOT);
    let id = create(workspace.path(), &[]);
    let started = exec_sh(
        workspace.path(),
        &id,
        "setsid sleep 300 >/dev/null 2>&1 & echo $!",
    );
    let pid = stdout(&started).trim().to_owned();
    assert!(is_alive(&pid), "{}", describe(&started));
    let listed = status_of(workspace.path(), &id).expect("listed");
    let supervisor = listed["supervisor_pid"].as_i64().expect("supervisor pid");
    let holder = listed["init_pid"].as_i64().expect("holder pid");
    // SAFETY: kill sends a signal to the supervisor this test created; it touches no memory.
    assert_eq!(unsafe { libc::kill(supervisor as i32, libc::SIGKILL) }, 0);
    // A process that received SIGKILL may run for a moment more, and gc leaves a sandbox
    // whose supervisor runs alone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(&supervisor.to_string()) {
        assert!(Instant::now() < deadline, "the supervisor survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    let gc = run(ROOT, &["gc"], workspace.path());
    assert!(gc.status.success(), "{}", describe(&gc));
    assert!(
        !is_alive(&pid),
        "process {pid} outlived its killed supervisor and gc"
    );
    assert!(!is_alive(&holder.to_string()), "the holder outlived gc");
    assert_eq!(processes_of(&id), Vec::<String>::new());
    assert!(!mounted_on_host(&id));
    let listed = status_of(workspace.path(), &id).expect("still listed");
    assert_eq!(listed["status"], "stopped", "{listed}");
    let remove = run(ROOT, &["rm", &id], workspace.path());
    assert!(remove.status.success(), "{}", describe(&remove));
}

#[test]
fn chroot_requested_cpus_need_allow_weaker() {
    let workspace = Workspace::new(ROOT);
    let rejected = run_sh(workspace.path(), &["--cpus", "1"], "true");
    assert_eq!(rejected.status.code(), Some(125), "{}", describe(&rejected));
    let message = stderr(&rejected);
    assert!(message.contains("cpu limit: not enforced"), "{message}");
    assert!(message.contains("--allow-weaker"), "{message}");
    let rejected_create = run(
        ROOT,
        &["create", "--backend", "chroot", "--cpus", "1"],
        workspace.path(),
    );
    assert_eq!(
        rejected_create.status.code(),
        Some(125),
        "{}",
        describe(&rejected_create)
    );

    let allowed = run_sh(workspace.path(), &["--cpus", "1", "--allow-weaker"], "true");
    assert!(allowed.status.success(), "{}", describe(&allowed));
    let warned =
        "airlock: warning: running with weaker isolation than the spec requires: cpu limit";
    assert!(stderr(&allowed).contains(warned), "{}", describe(&allowed));
    let id = create(workspace.path(), &["--cpus", "1", "--allow-weaker"]);
    let started = audit_entry(&id, "started");
    let cpu = started["enforcement"]
        .as_array()
        .expect("enforcement list")
        .iter()
        .find(|protection| protection["rule"] == "cpu limit")
        .cloned()
        .unwrap_or_else(|| panic!("no cpu limit in {started}"));
    assert_eq!(cpu["status"], "unsupported", "{cpu}");
    assert_eq!(cpu["required"], true, "{cpu}");
    let remove = run(ROOT, &["rm", "--force", &id], workspace.path());
    assert!(remove.status.success(), "{}", describe(&remove));
}

#[test]
fn chroot_rejects_non_root_caller() {
    let caller = Caller::UserWithoutCgroup;
    let workspace = Workspace::new(caller);
    for action in ["run", "create"] {
        let mut args = vec![action, "--backend", "chroot"];
        if action == "run" {
            args.extend_from_slice(&["--", "true"]);
        }
        let output = run(caller, &args, workspace.path());
        assert_eq!(
            output.status.code(),
            Some(125),
            "{action}: {}",
            describe(&output)
        );
        let message = stderr(&output);
        assert!(
            message.contains("the chroot backend needs root"),
            "{message}"
        );
        assert!(message.contains("--backend namespace"), "{message}");
        assert!(!message.contains(WARNING), "{message}");
    }
}

/// Returns the Debian tree for `--rootfs` tests: `AIRLOCK_TEST_ROOTFS`, or the one
/// scripts/test builds.
fn test_rootfs() -> PathBuf {
    std::env::var_os("AIRLOCK_TEST_ROOTFS").map_or_else(
        || "/var/cache/airlock-tests/rootfs-bookworm".into(),
        PathBuf::from,
    )
}

#[test]
fn chroot_runs_in_a_debian_rootfs() {
    let rootfs = test_rootfs();
    if !rootfs.join("etc/debian_version").is_file() {
        eprintln!(
            "skipped: no Debian tree at {} (build it with debootstrap, or set AIRLOCK_TEST_ROOTFS)",
            rootfs.display()
        );
        return;
    }
    let workspace = Workspace::new(ROOT);
    let rootfs_arg = rootfs.to_str().expect("UTF-8 rootfs path");
    let output = run_sh(
        workspace.path(),
        &["--rootfs", rootfs_arg],
        ". /etc/os-release; echo $VERSION_CODENAME; id -u; pwd",
    );
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "bookworm\n65534\n/workspace\n");
}

#[test]
fn chroot_host_root_needs_allow_weaker() {
    let workspace = Workspace::new(ROOT);
    let output = run_sh(workspace.path(), &["--user", "root"], "id -u");
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let root_group = run_sh(workspace.path(), &["--user", "1000:0"], "id -g");
    assert_eq!(
        root_group.status.code(),
        Some(125),
        "{}",
        describe(&root_group)
    );
    assert_eq!(
        stdout(&output),
        "",
        "the command ran: {}",
        describe(&output)
    );
    assert!(
        stderr(&output).contains("--allow-weaker"),
        "{}",
        describe(&output)
    );

    let id = create(workspace.path(), &[]);
    let exec = run(
        ROOT,
        &["exec", "--user", "root", &id, "--", "id", "-u"],
        workspace.path(),
    );
    assert_eq!(exec.status.code(), Some(125), "{}", describe(&exec));
    assert!(
        stderr(&exec).contains("--allow-weaker"),
        "{}",
        describe(&exec)
    );
    let removed = run(ROOT, &["rm", "--force", &id], workspace.path());
    assert!(removed.status.success(), "{}", describe(&removed));
}

#[test]
fn chroot_command_cannot_plant_setuid_files_on_host() {
    let workspace = Workspace::new(ROOT);
    let script = "cp /bin/true planted; chmod 4755 planted; chmod 2755 planted; \
                  install -m 4755 /bin/true installed; \
                  python3 -c 'import os; os.close(os.open(\"opened\", os.O_CREAT | os.O_WRONLY, 0o4755))'; \
                  true";
    let output = run_sh(workspace.path(), &["--workspace-mode", "bind"], script);
    assert!(output.status.success(), "{}", describe(&output));
    // io_uring's requests carry modes that seccomp cannot read, so io_uring is denied.
    let uring = "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
                 params = ctypes.create_string_buffer(120); \
                 print(libc.syscall(425, 8, params), ctypes.get_errno())";
    let denied = run_sh(
        workspace.path(),
        &["--workspace-mode", "bind"],
        &format!("python3 -c '{uring}'"),
    );
    assert_eq!(stdout(&denied), "-1 1\n", "{}", describe(&denied));
    for name in ["planted", "installed", "opened"] {
        let Ok(metadata) = fs::metadata(workspace.path().join(name)) else {
            continue;
        };
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions());
        assert_eq!(mode & 0o6000, 0, "{name} has mode {mode:o} on the host");
    }
}
