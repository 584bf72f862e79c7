//! Resource limits: the pids, memory, CPU and time limits end or throttle the sandbox, nothing
//! the sandbox started outlives `airlock run`, and a large output does not grow Airlock.
//!
//! The helpers at the top are shared with `exit_status.rs`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::{
    describe, json_record, protection, run, sandbox_sh, spawn_airlock, stderr, stdout,
    unique_token, wait_bounded, Caller, Workspace, CALLERS,
};

/// Returns a token unique to this test process and call, for arguments the tests later look
/// for on the host.
/// Returns the pids of host processes that have `argument` as one of their arguments.
pub(super) fn processes_with_argument(argument: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == argument.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `limit` for every process with `argument` to be gone, and returns those left.
pub(super) fn survivors_after(argument: &str, limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let left = processes_with_argument(argument);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Lists the cgroup directories that sandboxes and the harness's delegations create: every
/// `airlock/*` and `airlock-test-*` below each mounted hierarchy.
pub(super) fn airlock_cgroups() -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for hierarchy in hierarchies.flatten() {
        let path = hierarchy.path();
        for entry in fs::read_dir(path.join("airlock")).into_iter().flatten() {
            let entry = entry.expect("read cgroup entry");
            if entry.path().is_dir() {
                found.insert(entry.path());
            }
        }
        for entry in fs::read_dir(&path).into_iter().flatten() {
            let entry = entry.expect("read cgroup entry");
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("airlock-test-") {
                found.insert(entry.path());
            }
        }
    }
    found
}

/// Checks that a cgroup and all cgroups below it have no processes.
fn cgroup_is_empty(dir: &Path) -> bool {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        return false;
    }
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .all(|entry| cgroup_is_empty(&entry.path()))
}

/// Asserts that no empty cgroup directory outside `before` remains. Tests running at the same
/// time create their own cgroups, which hold processes while in use and are removed afterwards.
/// So only a new directory that stays empty and present for 10 seconds counts as left behind.
pub(super) fn assert_no_new_cgroups(before: &BTreeSet<PathBuf>, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<PathBuf> = airlock_cgroups()
            .difference(before)
            .filter(|dir| cgroup_is_empty(dir))
            .cloned()
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: cgroups left behind: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Returns the sandbox's cgroups that remain once its teardown had time to finish. `run`
/// reports the status first and leaves the removal to a child process, which retries for up
/// to a second while dying processes leave.
fn cgroups_left_after_teardown(sandbox_id: &str) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = cgroups_of_sandbox(sandbox_id);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Finds the cgroup directories named after a sandbox, from its `--json` sandbox id.
fn cgroups_of_sandbox(sandbox_id: &str) -> Vec<PathBuf> {
    let name = format!("airlock-{}", &sandbox_id[..12]);
    let mut found = Vec::new();
    for hierarchy in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let root_parent = hierarchy.path().join("airlock").join(&name);
        if root_parent.exists() {
            found.push(root_parent);
        }
        for entry in fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let candidate = entry.path().join(&name);
            if candidate.exists() {
                found.push(candidate);
            }
        }
    }
    found
}

/// A fork bomb whose every level waits for its two children, so the command stays alive and
/// the process count doubles until a limit stops it. With `&` the first shell could exit
/// before the limit is hit, and init would end the bomb instead.
const FORK_BOMB: &str = "bomb() { bomb | bomb; }; bomb";

#[test]
fn fork_bomb_hits_pids_limit() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let path = workspace.path().to_owned();
        let bomb = thread::spawn(move || {
            run(
                caller,
                &["run", "--json", "--", "sh", "-c", FORK_BOMB],
                &path,
            )
        });

        // The host must keep starting processes while the bomb runs. The loop is bounded so a
        // bomb that is never stopped fails the test instead of hanging it.
        let mut slowest = Duration::ZERO;
        for _ in 0..600 {
            let started = Instant::now();
            let status = Command::new("true").status().expect("run host true");
            assert!(status.success(), "{caller:?}: host true failed");
            slowest = slowest.max(started.elapsed());
            if bomb.is_finished() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        assert!(bomb.is_finished(), "{caller:?}: fork bomb still running");
        let output = bomb.join().expect("fork bomb thread");

        assert!(
            slowest < Duration::from_secs(3),
            "{caller:?}: host true took {slowest:?} during the fork bomb"
        );
        assert_eq!(
            output.status.code(),
            Some(122),
            "{caller:?}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains("airlock: pids limit reached"),
            "{caller:?}: {}",
            describe(&output)
        );
        let record = json_record(&output);
        assert_eq!(record["reason"], "pids_limit", "{caller:?}: {record}");
        assert_eq!(protection(&record, "pids limit")["status"], "enforced");
    }
}

/// A caller whose hard process limit is below the sandbox's (the default --pids 1024, plus
/// one for the init) cannot raise it. The lower limit is the stricter one, so the sandbox
/// keeps it instead of failing to start.
#[test]
fn lower_hard_nproc_limit_kept() {
    let caller = Caller::UserWithoutCgroup;
    let workspace = Workspace::new(caller);
    let spawned = spawn_airlock(
        caller,
        &["prlimit", "--nproc=1000:1000"],
        &[
            "run",
            "--",
            "python3",
            "-c",
            "import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[1])",
        ],
        workspace.path(),
        Stdio::piped(),
    );
    let output = spawned.child.wait_with_output().expect("wait for airlock");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(stdout(&output).trim(), "1000", "{}", describe(&output));
}

#[test]
fn memory_bomb_hits_memory_limit() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run(
            caller,
            &[
                "run",
                "--json",
                "--memory",
                "128M",
                "--",
                "sh",
                "-c",
                "x=a; while :; do x=$x$x; done",
            ],
            workspace.path(),
        );
        assert_eq!(
            output.status.code(),
            Some(123),
            "{caller:?}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains("airlock: out of memory"),
            "{caller:?}: {}",
            describe(&output)
        );
        let record = json_record(&output);
        assert_eq!(record["reason"], "out_of_memory", "{caller:?}: {record}");
        assert_eq!(record["signal"], 9, "{caller:?}: {record}");
        let peak = record["peak_memory"].as_u64().expect("peak_memory");
        assert!(peak <= 128 << 20, "{caller:?}: peak {peak} above the limit");
        assert_eq!(protection(&record, "memory limit")["status"], "enforced");
    }
}

#[test]
fn timeout_kills_pipe_holding_grandchild() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let marker = format!("100.{}", unique_token());
        let script = format!("(sleep {marker}; echo late) & sleep {marker}");
        let started = Instant::now();
        let output = run(
            caller,
            &[
                "run",
                "--json",
                "--timeout",
                "1s",
                "--",
                "sh",
                "-c",
                &script,
            ],
            workspace.path(),
        );
        let elapsed = started.elapsed();

        assert!(
            elapsed < Duration::from_secs(10),
            "{caller:?}: run returned after {elapsed:?}"
        );
        assert!(
            elapsed >= Duration::from_secs(1),
            "{caller:?}: run returned after {elapsed:?}, before the timeout"
        );
        assert_eq!(
            output.status.code(),
            Some(124),
            "{caller:?}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains("airlock: timed out"),
            "{caller:?}: {}",
            describe(&output)
        );
        assert_eq!(stdout(&output), "", "{caller:?}");
        let record = json_record(&output);
        assert_eq!(record["reason"], "timed_out", "{caller:?}: {record}");
        let left = survivors_after(&marker, Duration::from_secs(2));
        assert!(
            left.is_empty(),
            "{caller:?}: sleep {marker} survived: {left:?}"
        );
    }
}

#[test]
fn background_process_dies_with_run() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let marker = format!("300.{}", unique_token());
        let script = format!("sleep {marker} & echo started");
        let started = Instant::now();
        let output = run(
            caller,
            &["run", "--", "sh", "-c", &script],
            workspace.path(),
        );
        let elapsed = started.elapsed();

        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert_eq!(stdout(&output), "started\n", "{caller:?}");
        assert!(
            elapsed < Duration::from_secs(10),
            "{caller:?}: run returned after {elapsed:?}"
        );
        let left = survivors_after(&marker, Duration::from_secs(2));
        assert!(
            left.is_empty(),
            "{caller:?}: sleep {marker} survived: {left:?}"
        );
    }
}

/// Runs `airlock ARGS` under `/usr/bin/time`, counts what it writes to the stream `counted`
/// (1 or 2), and returns (bytes counted, other bytes, exit status, Airlock's peak RSS in KiB).
/// The other bytes are the whole stderr when stdout is counted, and the last bytes of stderr
/// when stderr is counted. The RSS is `/usr/bin/time`'s %M, the maximum over Airlock and the
/// processes it waited for, so it is an upper bound on Airlock's own.
fn count_output_and_peak_rss(
    caller: Caller,
    workspace: &Workspace,
    args: &[&str],
    counted: i32,
) -> (u64, Vec<u8>, i32, u64) {
    let rss_file = workspace.path().join(format!("rss.{}", unique_token()));
    let rss_arg = rss_file.to_str().expect("UTF-8 path").to_owned();
    let wrapper = ["/usr/bin/time", "-f", "%M", "-o", rss_arg.as_str()];
    let mut spawned = spawn_airlock(caller, &wrapper, args, workspace.path(), Stdio::piped());
    let out = spawned.child.stdout.take().expect("stdout pipe");
    let err = spawned.child.stderr.take().expect("stderr pipe");
    let (mut counted_stream, mut other_stream): (Box<dyn Read + Send>, Box<dyn Read + Send>) =
        if counted == 1 {
            (Box::new(out), Box::new(err))
        } else {
            (Box::new(err), Box::new(out))
        };
    let other = thread::spawn(move || {
        let mut bytes = Vec::new();
        other_stream
            .read_to_end(&mut bytes)
            .expect("read other stream");
        bytes
    });

    let mut total = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    let mut tail = Vec::new();
    loop {
        let n = counted_stream
            .read(&mut buffer)
            .expect("read counted stream");
        if n == 0 {
            break;
        }
        total += n as u64;
        // Keep the last bytes, where a --json record follows the flood on stderr.
        tail.extend_from_slice(&buffer[..n]);
        if tail.len() > 1 << 16 {
            tail.drain(..tail.len() - 4096);
        }
    }
    let other = other.join().expect("reader thread");
    let status = wait_bounded(&mut spawned.child, Duration::from_secs(120), "flood");
    let rss = fs::read_to_string(&rss_file).expect("read /usr/bin/time output");
    let rss_kib: u64 = rss
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS in {rss:?}"));
    let other_and_tail = if counted == 2 { tail } else { other };
    (total, other_and_tail, status, rss_kib)
}

#[test]
fn gigabyte_output_keeps_airlock_small() {
    const GIB: u64 = 1 << 30;
    const MAX_RSS_KIB: u64 = 64 << 10;
    for caller in CALLERS {
        let workspace = Workspace::new(caller);

        // A pipe on stdout is handed to the command, so Airlock does not copy it.
        let (count, stderr_bytes, status, rss) = count_output_and_peak_rss(
            caller,
            &workspace,
            &["run", "--", "head", "-c", "1G", "/dev/zero"],
            1,
        );
        assert_eq!(
            status,
            0,
            "{caller:?}: stderr {:?}",
            String::from_utf8_lossy(&stderr_bytes)
        );
        assert_eq!(count, GIB, "{caller:?}: stdout bytes");
        assert!(
            rss < MAX_RSS_KIB,
            "{caller:?}: peak RSS {rss} KiB with stdout piped"
        );

        // With --json, Airlock relays stderr itself to see where its last line ended.
        let (count, tail, status, rss) = count_output_and_peak_rss(
            caller,
            &workspace,
            &[
                "run",
                "--json",
                "--",
                "sh",
                "-c",
                "head -c 1G /dev/zero >&2",
            ],
            2,
        );
        assert_eq!(status, 0, "{caller:?}");
        let tail = String::from_utf8_lossy(&tail);
        let record = tail.rsplit('\0').next().unwrap_or_default();
        assert!(
            record.starts_with("\n{") && record.ends_with("}\n"),
            "{caller:?}: stderr does not end with a record on its own line: {record:?}"
        );
        assert_eq!(count, GIB + record.len() as u64, "{caller:?}: stderr bytes");
        assert!(
            rss < MAX_RSS_KIB,
            "{caller:?}: peak RSS {rss} KiB relaying stderr"
        );
    }
}

#[test]
fn sandbox_cgroups_removed_after_runs() {
    let scripts: [(&[&str], &str); 4] = [
        (&[], "true"),
        (&["--timeout", "1s"], "sleep 30"),
        (&["--memory", "64M"], "x=a; while :; do x=$x$x; done"),
        (&["--pids", "16"], FORK_BOMB),
    ];
    for caller in CALLERS {
        for (options, script) in scripts {
            let workspace = Workspace::new(caller);
            let mut args = vec!["run", "--json"];
            args.extend_from_slice(options);
            args.extend_from_slice(&["--", "sh", "-c", script]);
            let output = run(caller, &args, workspace.path());
            let record = json_record(&output);
            let id = record["sandbox_id"].as_str().expect("sandbox_id");
            assert_eq!(id.len(), 32, "{caller:?}: {record}");
            let left = cgroups_left_after_teardown(id);
            assert!(
                left.is_empty(),
                "{caller:?} {script:?}: cgroups left: {left:?}"
            );
        }
    }
}

/// SIGINT at moments spread over the second half of `airlock run`, up to where it hands the
/// cgroup's removal to a child process, leaves no cgroup.
#[test]
fn interrupted_runs_leave_no_cgroups() {
    let workspace = Workspace::new(Caller::Root);
    let state = tempfile::Builder::new()
        .prefix("airlock-interrupted-")
        .tempdir()
        .expect("create a state directory");
    let start = || {
        Command::new(super::harness::binary())
            .args(["run", "--memory", "100M", "--", "true"])
            .env("AIRLOCK_STATE_DIR", state.path())
            .current_dir(workspace.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn airlock run")
    };
    let mut durations: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            start().wait().expect("wait for airlock run");
            started.elapsed()
        })
        .collect();
    durations.sort();
    let typical = durations[2];

    const ROUNDS: u32 = 100;
    for round in 0..ROUNDS {
        let mut child = start();
        // From half the typical run to a little past its end.
        thread::sleep(typical / 2 + typical * 3 * round / (5 * ROUNDS));
        // SAFETY: kill takes integers; the child is not reaped yet, so its pid is its own.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        child.wait().expect("wait for airlock run");
    }
    let mut ids = BTreeSet::new();
    for (dir, suffix) in [("sandboxes", ""), ("spares", ""), ("audit", ".jsonl")] {
        for entry in fs::read_dir(state.path().join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(suffix).filter(|id| id.len() == 32) {
                ids.insert(id.to_owned());
            }
        }
    }
    assert!(ids.len() >= 50, "sandbox ids found: {}", ids.len());
    for id in &ids {
        let left = cgroups_left_after_teardown(id);
        assert!(left.is_empty(), "sandbox {id}: cgroups left: {left:?}");
    }
}

#[test]
fn memory_limit_without_cgroup_rejected() {
    let caller = Caller::UserWithoutCgroup;
    let workspace = Workspace::new(caller);
    let output = run(
        caller,
        &["run", "--memory", "256M", "--", "true"],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message:?}");
    assert!(message.starts_with("airlock: "), "{message:?}");
    assert!(message.contains("memory limit"), "{message:?}");
    assert!(message.contains("--allow-weaker"), "{message:?}");
    assert_eq!(stdout(&output), "");

    let output = run(
        caller,
        &[
            "run",
            "--json",
            "--allow-weaker",
            "--memory",
            "256M",
            "--",
            "sh",
            "-c",
            "echo ran",
        ],
        workspace.path(),
    );
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output), "ran\n");
    let record = json_record(&output);
    let memory = protection(&record, "memory limit");
    assert_eq!(memory["status"], "unsupported", "{record}");
    assert_eq!(memory["required"], true, "{record}");
}

#[test]
fn half_cpu_limit_throttles_busy_loop() {
    // USER_HZ is 100 on Linux, so the busy loop may use at most 100 ticks in 2 seconds at
    // half a CPU. 150 leaves room for the first period and for scheduling noise.
    const MAX_TICKS: u64 = 150;
    let script =
        "while :; do :; done & sleep 2; set -- $(cat /proc/$!/stat); echo $((${14} + ${15}))";
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run(
            caller,
            &["run", "--json", "--cpus", "0.5", "--", "sh", "-c", script],
            workspace.path(),
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let record = json_record(&output);
        let cpu = protection(&record, "cpu limit");
        assert_eq!(cpu["status"], "enforced", "{caller:?}: {record}");
        assert_eq!(cpu["required"], true, "{caller:?}: {record}");
        let ticks: u64 = stdout(&output)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{caller:?}: {}", describe(&output)));
        assert!(ticks > 10, "{caller:?}: busy loop used only {ticks} ticks");
        assert!(
            ticks <= MAX_TICKS,
            "{caller:?}: busy loop used {ticks} ticks in 2 s at --cpus 0.5"
        );
    }
}

/// Creates an empty directory below every v1 `airlock` parent that exists, aged by
/// `minutes` with touch(1).
fn fake_sandbox_cgroups(name: &str, minutes: u32) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    for controller in ["memory", "pids"] {
        let parent = Path::new("/sys/fs/cgroup").join(controller).join("airlock");
        if !parent.is_dir() {
            continue;
        }
        let dir = parent.join(name);
        fs::create_dir(&dir).expect("create fake cgroup");
        let age = format!("{minutes} minutes ago");
        let status = Command::new("touch").arg("-d").arg(&age).arg(&dir).status();
        assert!(status.is_ok_and(|s| s.success()), "touch {dir:?}");
        dirs.push(dir);
    }
    dirs
}

#[test]
fn stale_cgroups_swept_by_next_run() {
    // Make sure the parents exist, then plant one stale and one fresh empty cgroup.
    assert!(sandbox_sh(Caller::Root, "true").status.success());
    let token = unique_token();
    let stale = fake_sandbox_cgroups(&format!("airlock-stale-{token}"), 5);
    let fresh = fake_sandbox_cgroups(&format!("airlock-fresh-{token}"), 0);
    if stale.is_empty() {
        eprintln!("skipped: no cgroup v1 airlock parent on this host");
        return;
    }
    let output = sandbox_sh(Caller::Root, "true");
    assert!(output.status.success(), "{}", describe(&output));
    for dir in &stale {
        assert!(!dir.exists(), "{dir:?} was left behind");
    }
    for dir in &fresh {
        assert!(
            dir.exists(),
            "{dir:?} was removed while it could still be in use"
        );
        fs::remove_dir(dir).expect("remove fresh cgroup");
    }
}

#[test]
fn oom_killer_prefers_command_over_init() {
    // Over the memory limit, the kernel kills the process with the highest score: a
    // command's, not the init, whose death would end a held sandbox.
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run(
            caller,
            &[
                "run",
                "--",
                "cat",
                "/proc/self/oom_score_adj",
                "/proc/1/oom_score_adj",
            ],
            workspace.path(),
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert_eq!(
            stdout(&output),
            "300\n0\n",
            "{caller:?}: {}",
            describe(&output)
        );
    }
}
