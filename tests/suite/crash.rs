//! Airlock killed at random points: every sandbox left behind is either usable or removed
//! completely by `airlock gc`, with no process, mount, cgroup or state directory left over.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::harness::Caller;
use super::harness::{binary, describe, stdout, Workspace};

/// A small deterministic generator, seeded from the clock and printed, so a failing run
/// can be repeated.
struct Random(u64);

impl Random {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

fn airlock(state: &Path, workspace: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("--state-dir")
        .arg(state)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn listed(state: &Path, workspace: &Path) -> Vec<serde_json::Value> {
    let output = airlock(state, workspace)
        .args(["ls", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "ls: {}", describe(&output));
    serde_json::from_str(&stdout(&output)).expect("ls JSON")
}

/// Processes whose command line names `needle`.
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

#[test]
fn killed_commands_leave_a_usable_sandbox_or_one_gc_removes() {
    let workspace = Workspace::new(Caller::Root);
    let root = workspace.path();
    fs::write(root.join("file.txt"), "original\n").unwrap();
    let state_holder = tempfile::tempdir().unwrap();
    let state = state_holder.path().join("state");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut random = Random(seed);
    let mut ids = BTreeSet::new();

    let base = airlock(&state, root).arg("create").output().unwrap();
    assert!(base.status.success(), "{}", describe(&base));
    let base = stdout(&base).trim().to_owned();
    let edit = airlock(&state, root)
        .args([
            "exec",
            &base,
            "--",
            "sh",
            "-c",
            "echo changed > file.txt; echo new > new.txt",
        ])
        .output()
        .unwrap();
    assert!(edit.status.success(), "{}", describe(&edit));

    for round in 0..96 {
        for sandbox in listed(&state, root) {
            ids.insert(sandbox["id"].as_str().unwrap().to_owned());
        }
        let running: Vec<String> = listed(&state, root)
            .iter()
            .filter(|sandbox| sandbox["status"] == "running")
            .map(|sandbox| sandbox["id"].as_str().unwrap().to_owned())
            .collect();
        let target = running
            .get(random.next(running.len().max(1) as u64) as usize)
            .cloned()
            .unwrap_or_else(|| base.clone());
        let args: Vec<String> = match round % 6 {
            0 | 1 => vec!["create".into()],
            2 => vec![
                "exec".into(),
                target.clone(),
                "--".into(),
                "sleep".into(),
                "5".into(),
            ],
            3 => vec!["apply".into(), "--running".into(), base.clone()],
            4 => vec!["rm".into(), "--force".into(), target.clone()],
            _ => vec!["stop".into(), target.clone()],
        };
        let mut child = airlock(&state, root).args(&args).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(random.next(50_000)));
        let _ = child.kill();
        let _ = child.wait();
        if round % 7 == 3 {
            // Kill a supervisor too, as an OOM killer or an administrator might.
            if let Some(pid) = listed(&state, root)
                .iter()
                .filter_map(|sandbox| sandbox["supervisor_pid"].as_i64())
                .next()
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
    for sandbox in listed(&state, root) {
        ids.insert(sandbox["id"].as_str().unwrap().to_owned());
    }
    // A `stop` or `rm` killed after it signalled a supervisor leaves that supervisor ending
    // its sandbox, which takes a few milliseconds, more on a loaded host, and gc skips a
    // sandbox while a process holds its lock. So gc runs until every sandbox left is
    // running or stopped, or 10 s have passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let gc = airlock(&state, root).arg("gc").output().unwrap();
        assert!(gc.status.success(), "gc: {}", describe(&gc));
        let settled = listed(&state, root)
            .iter()
            .all(|sandbox| sandbox["status"] == "running" || sandbox["status"] == "stopped");
        if settled || Instant::now() >= deadline {
            break;
        }
    }
    for sandbox in listed(&state, root) {
        let id = sandbox["id"].as_str().unwrap();
        let status = sandbox["status"].as_str().unwrap();
        assert!(
            status == "running" || status == "stopped",
            "seed {seed}: gc left {id} {status}"
        );
        if status == "stopped" {
            let start = airlock(&state, root).args(["start", id]).output().unwrap();
            assert!(
                start.status.success(),
                "seed {seed}: start {id}: {}",
                describe(&start)
            );
        }
        let exec = airlock(&state, root)
            .args(["exec", id, "--", "true"])
            .output()
            .unwrap();
        assert!(
            exec.status.success(),
            "seed {seed}: exec in {id}: {}",
            describe(&exec)
        );
        let rm = airlock(&state, root)
            .args(["rm", "--force", id])
            .output()
            .unwrap();
        assert!(
            rm.status.success(),
            "seed {seed}: rm {id}: {}",
            describe(&rm)
        );
    }

    assert!(listed(&state, root).is_empty());
    let left: Vec<_> = fs::read_dir(state.join("sandboxes"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        left.is_empty(),
        "seed {seed}: state directories left: {left:?}"
    );
    let state_text = state.to_string_lossy().into_owned();
    assert_eq!(
        processes_naming(&state_text),
        Vec::<String>::new(),
        "seed {seed}"
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&state_text),
        "seed {seed}: a mount names the state dir"
    );
    for id in &ids {
        for controller in ["memory", "pids", "cpu"] {
            let cgroup = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("airlock")
                .join(format!("airlock-{}", &id[..12]));
            assert!(!cgroup.exists(), "seed {seed}: cgroup {cgroup:?} left");
        }
    }
    let temporary: Vec<_> = fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(".airlock-apply")
        })
        .collect();
    assert!(
        temporary.is_empty(),
        "seed {seed}: apply left {temporary:?}"
    );
}
