//! The `nspawn` backend, run as root. A command runs in a systemd-nspawn container with the
//! host view or a debootstrap tree as its root. The tests cover what it can reach, the
//! persistent sandbox's life, and what is left on the host after `rm` and after a killed
//! supervisor and `gc`.
//!
//! They need systemd-nspawn (the Debian package systemd-container), a tmpfs on
//! /run/systemd/nspawn, and the tree that scripts/test builds with debootstrap.

use std::fs;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::harness::{
    binary, describe, json_record, run, shell_quote, state_dir, stderr, stdout, Caller, Workspace,
};

const ROOT: Caller = Caller::Root;

/// Default place of the debootstrap tree that scripts/test builds.
const DEFAULT_ROOTFS: &str = "/var/cache/airlock-tests/rootfs-bookworm";

/// Returns whether systemd-nspawn is installed, printing why the test is skipped if not.
fn nspawn_installed() -> bool {
    let installed = ["/usr/bin/systemd-nspawn", "/bin/systemd-nspawn"]
        .iter()
        .any(|path| Path::new(path).is_file());
    if !installed {
        eprintln!(
            "skipped: systemd-nspawn is not installed; scripts/test installs systemd-container"
        );
    }
    installed
}

/// Returns the debootstrap tree, or `None` with the reason printed when it was not built.
fn debootstrap_rootfs() -> Option<PathBuf> {
    let path = std::env::var_os("AIRLOCK_TEST_ROOTFS")
        .map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from);
    if path.join("usr/bin/apt-get").is_file() {
        return Some(path);
    }
    eprintln!(
        "skipped: no debootstrap tree at {}; scripts/test builds it, or set AIRLOCK_TEST_ROOTFS",
        path.display()
    );
    None
}

/// Runs `airlock run --backend nspawn EXTRA... -- sh -c SCRIPT` as root in `workspace`.
fn nspawn_sh(workspace: &Path, extra: &[&str], script: &str) -> Output {
    let mut args = vec!["run", "--backend", "nspawn"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    run(ROOT, &args, workspace)
}

/// Lists the processes whose command line contains `needle`, this one excepted.
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Lists what sandbox `id` of the nspawn backend could leave on the host: processes, mounts,
/// cgroups, and directories of Airlock and of systemd-nspawn.
fn leftovers(id: &str) -> Vec<String> {
    let short = &id[..12];
    let machine = format!("airlock-{short}");
    let mut left = processes_naming(&machine);
    let stage = format!("/run/airlock/nspawn/{id}");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mountinfo
            .lines()
            .filter(|line| line.contains(&stage) || line.contains(&machine))
            .map(str::to_owned),
    );
    let mut paths = vec![
        PathBuf::from(&stage),
        Path::new("/run/systemd/nspawn/propagate").join(&machine),
    ];
    for hierarchy in ["memory", "pids", "cpu", "systemd", "unified", ""] {
        paths.push(
            Path::new("/sys/fs/cgroup")
                .join(hierarchy)
                .join("airlock")
                .join(&machine),
        );
    }
    left.extend(
        paths
            .into_iter()
            .filter(|path| path.exists())
            .map(|path| path.display().to_string()),
    );
    left
}

/// Lists systemd-nspawn's UID range and image lock files that no process holds, which a
/// killed systemd-nspawn leaves and the clean-up removes. A file counts only if it is unlocked at two
/// checks 200 ms apart, because a systemd-nspawn of a test running at the same time creates
/// its file a moment before it locks it.
fn stale_locks() -> Vec<PathBuf> {
    let first = unlocked_locks();
    std::thread::sleep(Duration::from_millis(200));
    let second = unlocked_locks();
    first
        .into_iter()
        .filter(|path| second.contains(path))
        .collect()
}

fn unlocked_locks() -> Vec<PathBuf> {
    let dirs = ["/run/systemd/nspawn-uid", "/run/systemd/nspawn/locks"];
    let entries = dirs
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten();
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let Ok(file) = fs::OpenOptions::new().write(true).open(entry.path()) else {
            continue;
        };
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        // SAFETY: `lock` is a live flock structure and the descriptor is open for the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
            stale.push(entry.path());
        }
    }
    stale
}

/// Lists the sandboxes of `workspace` as `ls --json` shows them. Tests running at the same
/// time share the state directory, each with its own workspace.
fn sandboxes_of(workspace: &Path) -> Vec<serde_json::Value> {
    let output = run(ROOT, &["ls", "--json"], workspace);
    assert!(output.status.success(), "ls: {}", describe(&output));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("ls JSON");
    let canonical = workspace.canonicalize().unwrap();
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|sandbox| sandbox["workspace"].as_str().map(Path::new) == Some(canonical.as_path()))
        .cloned()
        .collect()
}

#[test]
fn nspawn_output_and_exit_status_propagate() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let output = nspawn_sh(
        workspace.path(),
        &["--json"],
        "echo out; echo err >&2; exit 3",
    );
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(stdout(&output), "out\n");
    assert!(
        stderr(&output).starts_with("err\n"),
        "{}",
        describe(&output)
    );
    let record = json_record(&output);
    assert_eq!(record["backend"], "nspawn");
    assert_eq!(record["exit_code"], 3);

    let cases: [(&[&str], u8); 4] = [
        (&["--", "no-such-command-airlock"], 127),
        (&["--", "/etc/hostname"], 126),
        (&["--", "sh", "-c", "kill -TERM $$"], 143),
        (&["--timeout", "1s", "--", "sleep", "30"], 124),
    ];
    for (args, expected) in cases {
        let mut full = vec!["run", "--backend", "nspawn", "--workspace-mode", "none"];
        full.extend_from_slice(args);
        let started = Instant::now();
        let output = run(ROOT, &full, workspace.path());
        assert_eq!(
            output.status.code(),
            Some(i32::from(expected)),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?} took too long"
        );
    }
}

#[test]
fn nspawn_input_reaches_command() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let output = super::harness::run_with_stdin(
        ROOT,
        &["run", "--backend", "nspawn", "--", "tr", "a-z", "A-Z"],
        workspace.path(),
        b"piped input\n",
    );
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "PIPED INPUT\n");
}

#[test]
fn nspawn_host_view_hides_secrets_and_host_processes() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let marker = format!("airlock-nspawn-canary-{}", std::process::id());
    let mut canary = Command::new("bash")
        .args(["-c", "exec -a \"$0\" sleep 60", &marker])
        .spawn()
        .expect("start the host canary");

    let script = format!(
        "wc -c < /etc/shadow; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c '[{first}]{rest}'; ls /proc | grep -c '^[0-9]'; kill -0 {} 2>/dev/null && echo reached",
        canary.id(),
        first = &marker[..1],
        rest = &marker[1..],
    );
    let output = nspawn_sh(workspace.path(), &[], &script);
    let _ = canary.kill();
    let _ = canary.wait();

    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"0"),
        "/etc/shadow is readable: {}",
        describe(&output)
    );
    assert_eq!(
        lines.get(1),
        Some(&"0"),
        "the host canary is visible: {}",
        describe(&output)
    );
    let processes: u32 = lines
        .get(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX);
    assert!(
        processes < 10,
        "{processes} processes visible: {}",
        describe(&output)
    );
    assert!(
        !text.contains("reached"),
        "the host canary was signalled: {text}"
    );
}

#[test]
fn nspawn_network_has_only_loopback() {
    if !nspawn_installed() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on the host's loopback");
    let port = listener.local_addr().unwrap().port();
    let workspace = Workspace::new(ROOT);
    let script = format!(
        "ls /sys/class/net; python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)' 2>/dev/null && echo connected || echo refused"
    );
    let output = nspawn_sh(workspace.path(), &[], &script);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "lo\nrefused\n");
}

#[test]
fn nspawn_writes_outside_workspace_and_tmp_fail() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let script = "for dir in / /etc /usr /var /run /opt /.airlock; do \
                  touch $dir/airlock-probe 2>/dev/null && echo \"wrote $dir\"; done; \
                  touch /tmp/ok /workspace/ok && echo writable";
    let output = nspawn_sh(workspace.path(), &[], script);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "writable\n", "{}", describe(&output));
    assert!(
        !workspace.path().join("ok").exists(),
        "an overlay write reached the host's workspace"
    );

    let readonly = nspawn_sh(
        workspace.path(),
        &["--workspace-mode", "readonly"],
        "touch /workspace/ro 2>/dev/null && echo wrote; true",
    );
    assert_eq!(stdout(&readonly), "", "{}", describe(&readonly));

    let bind = nspawn_sh(
        workspace.path(),
        &["--workspace-mode", "bind"],
        "echo through > /workspace/bound",
    );
    assert!(bind.status.success(), "{}", describe(&bind));
    assert_eq!(
        fs::read_to_string(workspace.path().join("bound")).unwrap(),
        "through\n"
    );
    let metadata = fs::metadata(workspace.path().join("bound")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&metadata),
        0,
        "root inside wrote as another user"
    );
}

#[test]
fn nspawn_debootstrap_rootfs_replaces_host_tree() {
    if !nspawn_installed() {
        return;
    }
    let Some(rootfs) = debootstrap_rootfs() else {
        return;
    };
    let rootfs = rootfs.to_str().expect("UTF-8 path");
    let workspace = Workspace::new(ROOT);
    fs::write(workspace.path().join("input.txt"), "from the host\n").unwrap();
    let script = "cat /etc/debian_version; test -e /usr/bin/cargo && echo host-tree; \
                  cat input.txt; touch /usr/probe 2>/dev/null && echo wrote-usr; \
                  echo result > output.txt";
    let output = nspawn_sh(workspace.path(), &["--rootfs", rootfs], script);
    assert!(output.status.success(), "{}", describe(&output));
    let text = stdout(&output);
    assert!(text.starts_with("12."), "not the bookworm tree: {text}");
    assert!(
        !text.contains("host-tree"),
        "the host's /usr is visible: {text}"
    );
    assert!(text.contains("from the host\n"), "{text}");
    assert!(!text.contains("wrote-usr"), "the tree is writable: {text}");

    assert!(!Path::new(rootfs).join("usr/probe").exists());
    assert!(
        !Path::new(rootfs).join("workspace").exists(),
        "the tree was modified"
    );
    let kept: Vec<_> = sandboxes_of(workspace.path())
        .into_iter()
        .filter_map(|sandbox| sandbox["id"].as_str().map(str::to_owned))
        .collect();
    for id in kept {
        let removed = run(ROOT, &["rm", "--force", &id], workspace.path());
        assert!(removed.status.success(), "{}", describe(&removed));
    }
}

#[test]
fn nspawn_sandbox_lifecycle_leaves_nothing() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let root = workspace.path();
    fs::write(root.join("file.txt"), "original\n").unwrap();
    let created = run(ROOT, &["create", "--backend", "nspawn"], root);
    assert!(created.status.success(), "create: {}", describe(&created));
    let id = stdout(&created).trim().to_owned();

    let background = format!("airlock-nspawn-background-{}", &id[..12]);
    let script = format!(
        "cat file.txt; echo changed > file.txt; bash -c 'exec -a {background} sleep 300' >/dev/null 2>&1 & hostname"
    );
    let exec = run(ROOT, &["exec", &id, "--", "sh", "-c", &script], root);
    assert!(exec.status.success(), "exec: {}", describe(&exec));
    assert_eq!(stdout(&exec), format!("original\nairlock-{}\n", &id[..12]));
    assert_eq!(
        processes_naming(&background).len(),
        1,
        "the background process is not running"
    );

    let host_file = root.join("copied-in.txt");
    fs::write(&host_file, "copied\n").unwrap();
    let copy_in = run(
        ROOT,
        &["cp", host_file.to_str().unwrap(), &format!("{id}:/tmp/")],
        root,
    );
    assert!(copy_in.status.success(), "cp in: {}", describe(&copy_in));
    let read = run(
        ROOT,
        &["exec", &id, "--", "cat", "/tmp/copied-in.txt"],
        root,
    );
    assert_eq!(stdout(&read), "copied\n", "{}", describe(&read));
    let out_dir = tempfile::tempdir().unwrap();
    let copy_out = run(
        ROOT,
        &[
            "cp",
            &format!("{id}:/workspace/file.txt"),
            out_dir.path().to_str().unwrap(),
        ],
        root,
    );
    assert!(copy_out.status.success(), "cp out: {}", describe(&copy_out));
    assert_eq!(
        fs::read_to_string(out_dir.path().join("file.txt")).unwrap(),
        "changed\n"
    );

    let diff = run(ROOT, &["diff", &id], root);
    assert_eq!(stdout(&diff), "M file.txt\n", "{}", describe(&diff));
    let stop = run(ROOT, &["stop", &id], root);
    assert!(stop.status.success(), "stop: {}", describe(&stop));
    let apply = run(ROOT, &["apply", &id], root);
    assert!(apply.status.success(), "apply: {}", describe(&apply));
    assert_eq!(
        fs::read_to_string(root.join("file.txt")).unwrap(),
        "changed\n"
    );

    let start = run(ROOT, &["start", &id], root);
    assert!(start.status.success(), "start: {}", describe(&start));
    let again = run(ROOT, &["exec", &id, "--", "cat", "file.txt"], root);
    assert_eq!(stdout(&again), "changed\n", "{}", describe(&again));
    let removed = run(ROOT, &["rm", "--force", &id], root);
    assert!(removed.status.success(), "rm: {}", describe(&removed));
    assert_eq!(leftovers(&id), Vec::<String>::new());
    assert_eq!(processes_naming(&background), Vec::<String>::new());

    let audit = run(ROOT, &["audit", "show", &id], root);
    let log = stdout(&audit);
    for event in [
        "created", "started", "exec", "copy", "stopped", "apply", "removed",
    ] {
        let logged = log
            .lines()
            .any(|line| line.split_whitespace().nth(3) == Some(event));
        assert!(logged, "no {event} entry: {log}");
    }
    assert!(log.contains("backend=\"nspawn\""), "{log}");
}

/// A run reports the command's status before its cgroups, staging directory and what
/// systemd-nspawn leaves are removed, which a child process finishes: this pins that the
/// child really does, promptly.
#[test]
fn nspawn_run_leaves_nothing_once_its_teardown_finishes() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let ran = run(
        ROOT,
        &["run", "--json", "--backend", "nspawn", "--", "true"],
        workspace.path(),
    );
    assert!(ran.status.success(), "run: {}", describe(&ran));
    let id = json_record(&ran)["sandbox_id"]
        .as_str()
        .expect("sandbox id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = leftovers(&id);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = leftovers(&id);
    }
    assert_eq!(left, Vec::<String>::new(), "still there after 5 s");
}

#[test]
fn nspawn_killed_supervisor_leaves_nothing_after_gc() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let root = workspace.path();
    let created = run(ROOT, &["create", "--backend", "nspawn"], root);
    assert!(created.status.success(), "create: {}", describe(&created));
    let id = stdout(&created).trim().to_owned();
    let background = format!("airlock-nspawn-orphan-{}", &id[..12]);
    let script = format!("bash -c 'exec -a {background} sleep 300' >/dev/null 2>&1 &");
    let exec = run(ROOT, &["exec", &id, "--", "sh", "-c", &script], root);
    assert!(exec.status.success(), "exec: {}", describe(&exec));
    let listed = sandboxes_of(root);
    let sandbox = listed
        .iter()
        .find(|sandbox| sandbox["id"] == id.as_str())
        .expect("listed");
    let supervisor = sandbox["supervisor_pid"]
        .as_i64()
        .expect("a supervisor pid");
    let init = sandbox["init_pid"].as_i64().expect("an init pid");
    let killed = Command::new("kill")
        .args(["-9", &supervisor.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // The container's init ends the container once the supervisor is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{init}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = fs::read_to_string(format!("/proc/{init}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "the container's init {init} outlived its supervisor"
    );
    assert_eq!(processes_naming(&background), Vec::<String>::new());
    let gc = run(ROOT, &["gc"], root);
    assert!(gc.status.success(), "gc: {}", describe(&gc));
    assert_eq!(leftovers(&id), Vec::<String>::new());
    assert_eq!(stale_locks(), Vec::<PathBuf>::new());
    let removed = run(ROOT, &["rm", "--force", &id], root);
    assert!(removed.status.success(), "rm: {}", describe(&removed));
    assert_eq!(leftovers(&id), Vec::<String>::new());
}

#[test]
fn nspawn_killed_run_leaves_nothing_after_gc() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let mut child = Command::new(binary())
        .arg("--state-dir")
        .arg(state_dir(ROOT))
        .args(["run", "--backend", "nspawn", "--", "sleep", "300"])
        .current_dir(workspace.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start airlock run");
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let running: Vec<String> = sandboxes_of(workspace.path())
            .iter()
            .filter_map(|sandbox| sandbox["id"].as_str().map(str::to_owned))
            .collect();
        if let Some(id) = running.first() {
            if !processes_naming(&format!("airlock-{}", &id[..12])).is_empty() {
                break id.clone();
            }
        }
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(20));
    };

    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_naming(&format!("airlock-{}", &id[..12])).is_empty()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let gc = run(ROOT, &["gc"], workspace.path());
    assert!(gc.status.success(), "gc: {}", describe(&gc));
    assert_eq!(leftovers(&id), Vec::<String>::new());
    assert_eq!(stale_locks(), Vec::<PathBuf>::new());
}

/// Runs `airlock ARGS` as root in a private mount namespace in which /run/systemd/nspawn is
/// a directory on the same disk as the state directory, not a tmpfs.
fn run_with_state_dir_on_disk(workspace: &Path, args: &[&str]) -> Output {
    let plain = tempfile::tempdir().expect("a directory on disk");
    let mut words = vec![binary().to_str().unwrap().to_owned(), "--state-dir".into()];
    words.push(state_dir(ROOT).to_str().unwrap().to_owned());
    words.extend(args.iter().map(|arg| (*arg).to_owned()));
    let quoted: Vec<String> = words
        .iter()
        .map(|word| super::harness::shell_quote(word))
        .collect();
    let script = format!(
        "mkdir -p /run/systemd/nspawn && mount --bind {} /run/systemd/nspawn && exec {}",
        super::harness::shell_quote(plain.path().to_str().unwrap()),
        quoted.join(" ")
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(workspace)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare")
}

#[test]
fn nspawn_state_dir_on_disk_fails_with_fix() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let before = sandboxes_of(workspace.path()).len();
    for args in [
        &["run", "--backend", "nspawn", "--", "true"][..],
        &["create", "--backend", "nspawn"][..],
    ] {
        let output = run_with_state_dir_on_disk(workspace.path(), args);
        assert_eq!(
            output.status.code(),
            Some(125),
            "{args:?}: {}",
            describe(&output)
        );
        let message = stderr(&output);
        assert!(message.contains("not on a tmpfs"), "{args:?}: {message}");
        assert!(
            message.contains("mount -t tmpfs tmpfs /run/systemd/nspawn"),
            "{args:?}: no fix in {message}"
        );
    }
    // The failed run leaves a directory that its background bookkeeping recycles.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sandboxes_of(workspace.path()).len(),
        before,
        "a failed creation left a sandbox"
    );
}

#[test]
fn nspawn_unavailable_to_unprivileged_user() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(Caller::User);
    let output = run(
        Caller::User,
        &["run", "--backend", "nspawn", "--", "true"],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(message.contains("needs root"), "{message}");
    assert!(message.contains("--backend namespace"), "{message}");
}

#[test]
fn nspawn_rootfs_without_usr_rejected() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let tree = tempfile::tempdir().unwrap();
    fs::create_dir(tree.path().join("bin")).unwrap();
    let tree_path = tree.path().to_str().unwrap();
    let output = run(
        ROOT,
        &[
            "run",
            "--backend",
            "nspawn",
            "--rootfs",
            tree_path,
            "--",
            "true",
        ],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(message.contains("has no usr/ directory"), "{message}");
    assert!(message.contains(tree_path), "{message}");
}

#[test]
fn nspawn_terminal_interrupt_reaches_command() {
    if !nspawn_installed() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let workspace = Workspace::new(ROOT);
    // The command's name is put together inside, so that airlock's own command line, which
    // carries the script, does not contain it.
    let prefix = format!("airlock-nspawn-{}", std::process::id());
    let marker = format!("{prefix}-interrupted");
    // Ctrl-C sends SIGINT to the terminal's foreground process group: here, the group that
    // airlock leads.
    let mut child = Command::new(binary())
        .arg("--state-dir")
        .arg(state_dir(ROOT))
        .args(["run", "--backend", "nspawn", "--workspace-mode", "none"])
        .args([
            "--",
            "bash",
            "-c",
            "exec -a \"$0-interrupted\" sleep 30",
            &prefix,
        ])
        .current_dir(workspace.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start airlock run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_naming(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the command did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    // SAFETY: kill takes integers only; the group is the child's, which this test started.
    let sent = unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    assert_eq!(sent, 0, "cannot signal airlock's process group");
    let code = super::harness::wait_bounded(&mut child, Duration::from_secs(10), "airlock run");
    let mut message = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut message).unwrap();
    assert_eq!(code, 130, "{message}");
}

#[test]
fn nspawn_tty_output_is_only_the_commands() {
    if !nspawn_installed() {
        return;
    }
    let Some(rootfs) = debootstrap_rootfs() else {
        return;
    };
    let workspace = Workspace::new(ROOT);
    let command = [
        binary().to_str().expect("UTF-8 path").to_owned(),
        "--state-dir".to_owned(),
        state_dir(ROOT).to_str().expect("UTF-8 path").to_owned(),
        "run".to_owned(),
        "--backend".to_owned(),
        "nspawn".to_owned(),
        "--rootfs".to_owned(),
        rootfs.to_str().expect("UTF-8 path").to_owned(),
        "-t".to_owned(),
        "--".to_owned(),
        "sh".to_owned(),
        "-c".to_owned(),
        // Field 7 of /proc/PID/stat is the controlling terminal, 0 without one.
        "[ \"$(cut -d' ' -f7 /proc/$$/stat)\" != 0 ] && echo from-the-command; exit 3".to_owned(),
    ]
    .map(|word| shell_quote(&word))
    .join(" ");
    // script(1) gives airlock a terminal. Its input stays open until airlock exits: at end of
    // input, script(1) would write an end-of-file character to the terminal, which the
    // command's terminal would echo.
    let mut script = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .current_dir(workspace.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let input = script.stdin.take();
    let output = script.wait_with_output().expect("wait for script");
    drop(input);
    let text = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(text, "from-the-command\n", "{}", describe(&output));
}

#[test]
fn nspawn_overlay_removes_and_renames_host_directories() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    fs::create_dir_all(workspace.path().join("old/sub")).unwrap();
    fs::write(workspace.path().join("old/sub/file"), "x").unwrap();
    fs::create_dir(workspace.path().join("src")).unwrap();
    fs::write(workspace.path().join("src/a"), "a").unwrap();
    let output = nspawn_sh(
        workspace.path(),
        &[],
        "rm -rf old && mv src moved && mkdir old && ls old moved",
    );
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        stdout(&output),
        "moved:\na\n\nold:\n",
        "{}",
        describe(&output)
    );
    assert!(
        workspace.path().join("old/sub/file").exists(),
        "an overlay change reached the host"
    );
}

#[test]
fn nspawn_supervisor_stays_outside_the_memory_limit() {
    if !nspawn_installed() {
        return;
    }
    let workspace = Workspace::new(ROOT);
    let created = run(
        ROOT,
        &["create", "--backend", "nspawn", "--workspace-mode", "none"],
        workspace.path(),
    );
    assert!(created.status.success(), "{}", describe(&created));
    let id = stdout(&created).trim().to_owned();
    let exec = run(
        ROOT,
        &[
            "exec",
            &id,
            "--",
            "cat",
            "/proc/self/oom_score_adj",
            "/proc/1/oom_score_adj",
        ],
        workspace.path(),
    );
    assert_eq!(stdout(&exec), "300\n0\n", "{}", describe(&exec));
    // systemd-nspawn, counted against the limit, would be the OOM killer's first choice and
    // end the container with it.
    let limit_cgroup = format!("/airlock/airlock-{}", &id[..12]);
    let supervisors: Vec<String> = processes_naming(&id[..12])
        .iter()
        .filter_map(|found| found.split(':').next().map(str::to_owned))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "systemd-nspawn")
        })
        .collect();
    assert!(!supervisors.is_empty(), "no systemd-nspawn of {id} found");
    for pid in supervisors {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let memory = cgroups.lines().find(|line| line.contains(":memory:"));
        assert!(
            !memory.is_some_and(|line| line.ends_with(&limit_cgroup)),
            "systemd-nspawn {pid} is in the limit cgroup: {cgroups}"
        );
    }
    let removed = run(ROOT, &["rm", "--force", &id], workspace.path());
    assert!(removed.status.success(), "{}", describe(&removed));
}
