//! Exit statuses, the `--json` record, the standard streams, signal forwarding, terminals and
//! the rejection of invalid input.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::harness::{
    airlock_shell_command, binary, describe, json_record, protection, run, run_with_stdin,
    sandbox_sh, shell_quote, spawn_airlock, stderr, stdout, unique_token, wait_bounded, Caller,
    Workspace, CALLERS, TEST_USER,
};
use super::limits::{airlock_cgroups, assert_no_new_cgroups};

#[test]
fn exit_codes_pass_through() {
    for caller in CALLERS {
        for code in [0, 1, 3, 255] {
            let output = sandbox_sh(caller, &format!("exit {code}"));
            assert_eq!(
                output.status.code(),
                Some(code),
                "{caller:?}: {}",
                describe(&output)
            );
            assert_eq!(stderr(&output), "", "{caller:?} exit {code}");
        }
    }
}

#[test]
fn signal_death_exits_128_plus_signal() {
    for caller in CALLERS {
        for (signal, number) in [("TERM", 15), ("KILL", 9)] {
            let workspace = Workspace::new(caller);
            let script = format!("kill -{signal} $$");
            let output = run(
                caller,
                &["run", "--json", "--", "sh", "-c", &script],
                workspace.path(),
            );
            assert_eq!(
                output.status.code(),
                Some(128 + number),
                "{caller:?}: {}",
                describe(&output)
            );
            let record = json_record(&output);
            assert_eq!(record["reason"], "exited", "{caller:?}: {record}");
            assert_eq!(record["signal"], number, "{caller:?}: {record}");
            assert_eq!(record["exit_code"], serde_json::Value::Null, "{record}");
        }
    }
}

#[test]
fn missing_command_exits_127() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let name = format!("no-such-command-{}", unique_token());
        let output = run(caller, &["run", "--", &name], workspace.path());
        assert_eq!(
            output.status.code(),
            Some(127),
            "{caller:?}: {}",
            describe(&output)
        );
        let message = stderr(&output);
        assert_eq!(message.lines().count(), 1, "{caller:?}: {message:?}");
        assert!(message.starts_with("airlock: "), "{caller:?}: {message:?}");
        assert!(
            message.contains("command not found"),
            "{caller:?}: {message:?}"
        );
        assert!(message.contains(&name), "{caller:?}: {message:?}");
        assert!(
            message.contains("install it under /usr or /opt on the host"),
            "{caller:?}: {message:?}"
        );
    }
}

#[test]
fn missing_command_advice_names_root_tree() {
    let workspace = Workspace::new(Caller::Root);
    let root = workspace.path().join("root");
    fs::create_dir_all(root.join("usr/bin")).expect("create root tree");
    let root_arg = root.to_str().expect("UTF-8 path");
    let output = run(
        Caller::Root,
        &["run", "--rootfs", root_arg, "--", "no-such-command"],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(127), "{}", describe(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("install it in the root tree {root:?}")),
        "{message:?}"
    );
}

#[test]
fn non_executable_file_exits_126() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let script = workspace.path().join("script.sh");
        fs::write(&script, "#!/bin/sh\necho ran\n").expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod script");
        fs::create_dir(workspace.path().join("directory")).expect("create directory");
        for command in ["./script.sh", "./directory"] {
            let output = run(caller, &["run", "--", command], workspace.path());
            assert_eq!(
                output.status.code(),
                Some(126),
                "{caller:?} {command}: {}",
                describe(&output)
            );
            assert_eq!(stdout(&output), "", "{caller:?} {command}");
            let message = stderr(&output);
            assert_eq!(message.lines().count(), 1, "{caller:?}: {message:?}");
            assert!(
                message.starts_with("airlock: cannot execute"),
                "{caller:?}: {message:?}"
            );
            assert!(message.contains(command), "{caller:?}: {message:?}");
        }
    }
}

#[test]
fn json_record_describes_run() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run(
            caller,
            &[
                "run",
                "--json",
                "--",
                "sh",
                "-c",
                "printf partial >&2; exit 4",
            ],
            workspace.path(),
        );
        assert_eq!(
            output.status.code(),
            Some(4),
            "{caller:?}: {}",
            describe(&output)
        );

        // The command's unterminated line is ended before the record, so the record is a
        // whole line of its own and the last one.
        let text = stderr(&output);
        let (command_part, record_line) = text
            .strip_suffix('\n')
            .and_then(|text| text.rsplit_once('\n'))
            .unwrap_or_else(|| panic!("{caller:?}: {text:?}"));
        assert_eq!(command_part, "partial", "{caller:?}: {text:?}");
        assert!(record_line.starts_with('{'), "{caller:?}: {text:?}");

        let record = json_record(&output);
        let sandbox_id = record["sandbox_id"].as_str().expect("sandbox_id");
        assert_eq!(sandbox_id.len(), 32, "{record}");
        assert!(
            sandbox_id.chars().all(|c| c.is_ascii_hexdigit()),
            "{record}"
        );
        assert_eq!(record["backend"], "namespace", "{record}");
        assert_eq!(record["reason"], "exited", "{record}");
        assert_eq!(record["exit_code"], 4, "{record}");
        assert_eq!(record["signal"], serde_json::Value::Null, "{record}");
        assert_eq!(record["exec_failure"], serde_json::Value::Null, "{record}");
        let duration = record["duration"].as_f64().expect("duration in seconds");
        assert!(duration > 0.0, "{record}");
        assert!(duration < 60.0, "{record}");
        let peak = record["peak_memory"].as_u64().expect("peak_memory");
        assert!(peak > 0, "{record}");

        let landlock = protection(&record, "landlock");
        if landlock["status"] == "enforced" {
            let abi = record["landlock_abi"].as_u64().expect("landlock_abi");
            assert!(abi >= 1, "{record}");
        } else {
            assert_eq!(record["landlock_abi"], serde_json::Value::Null, "{record}");
        }
        for protection in record["enforcement"].as_array().expect("enforcement") {
            assert!(protection["rule"].is_string(), "{protection}");
            assert!(protection["status"].is_string(), "{protection}");
            assert!(protection["required"].is_boolean(), "{protection}");
        }
    }
}

#[test]
fn streams_keep_exact_bytes() {
    for caller in CALLERS {
        let output = sandbox_sh(
            caller,
            r"printf '\377\000\200a'; printf '\377\000\201b' >&2",
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert_eq!(output.stdout, b"\xff\x00\x80a", "{caller:?}");
        assert_eq!(output.stderr, b"\xff\x00\x81b", "{caller:?}");
    }
}

#[test]
fn stdin_reaches_command() {
    let mut input: Vec<u8> = (0..=255u8).collect();
    input.extend((0..(1 << 20)).map(|i: u32| (i % 251) as u8));
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run_with_stdin(caller, &["run", "--", "cat"], workspace.path(), &input);
        assert!(output.status.success(), "{caller:?}: {}", stderr(&output));
        assert_eq!(output.stdout.len(), input.len(), "{caller:?}");
        assert!(
            output.stdout == input,
            "{caller:?}: stdout differs from stdin"
        );
    }
}

/// Runs `sh -c SCRIPT` in a sandbox as `caller`, waits until the script has created the file
/// `{ready}` in the workspace and, if `started` names a program, until a process of the
/// sandbox runs it; then sends `signal` to the airlock process and returns its exit status.
fn signal_running_command(
    caller: Caller,
    script_template: &str,
    started: Option<&str>,
    signal: libc::c_int,
) -> i32 {
    let workspace = Workspace::new(caller);
    let ready = format!("ready.{}", unique_token());
    let script = script_template.replace("{ready}", &ready);
    let mut spawned = spawn_airlock(
        caller,
        &[],
        &["run", "--workspace-mode", "bind", "--", "sh", "-c", &script],
        workspace.path(),
        Stdio::piped(),
    );

    // The command creates the file once it is set up, and Airlock has exec'd by then.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !workspace.path().join(&ready).exists() {
        if Instant::now() >= deadline {
            let _ = spawned.child.kill();
            let _ = spawned.child.wait();
            panic!("{caller:?}: command never became ready");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let pid = spawned.child.id() as libc::pid_t;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("read exe link");
    assert_eq!(exe, binary(), "{caller:?}: pid {pid} is not airlock");
    if let Some(program) = started {
        // A shell's forked child runs the shell's SIGINT handler until it executes the
        // program, so a signal in that window is lost to it, outside a sandbox as well.
        while !descendant_runs(pid, program) {
            if Instant::now() >= deadline {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
                panic!("{caller:?}: no process of the sandbox ever ran {program}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: kill has no memory-safety preconditions, and `pid` is our own child.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill airlock");
    wait_bounded(
        &mut spawned.child,
        Duration::from_secs(10),
        "signalled airlock",
    )
}

/// Returns whether a descendant of `ancestor` runs `program`, by its name in /proc.
fn descendant_runs(ancestor: libc::pid_t, program: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    let mut parents = std::collections::HashMap::new();
    let mut running = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may contain spaces; the parent pid is the second
        // field after it.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let parent: libc::pid_t = match stat[close + 1..].split_whitespace().nth(1) {
            Some(field) => field.parse().unwrap_or(0),
            None => continue,
        };
        parents.insert(pid, parent);
        if name == program {
            running.push(pid);
        }
    }
    running.into_iter().any(|mut pid: libc::pid_t| {
        while let Some(&parent) = parents.get(&pid) {
            if parent == ancestor {
                return true;
            }
            pid = parent;
        }
        false
    })
}

#[test]
fn sigterm_reaches_command() {
    for caller in CALLERS {
        let script = "trap 'exit 7' TERM; touch {ready}; while :; do sleep 0.1; done";
        let status = signal_running_command(caller, script, None, libc::SIGTERM);
        assert_eq!(status, 7, "{caller:?}: airlock exited {status}");
    }
}

#[test]
fn sigint_reaches_shell_children() {
    for caller in CALLERS {
        // The shell waits for sleep, so only a signal to the whole group ends it early.
        let script = "touch {ready}; sleep 30; echo not-reached";
        let status = signal_running_command(caller, script, Some("sleep"), libc::SIGINT);
        assert_eq!(status, 130, "{caller:?}: the shell's child outlived SIGINT");
    }
}

/// Runs `airlock ARGS` as `caller` with a terminal on its standard streams, by `script(1)`,
/// and returns its output with the terminal's carriage returns removed.
fn run_in_terminal(caller: Caller, args: &[&str], cwd: &Path) -> Output {
    let (command, _delegation) = airlock_shell_command(caller, &[], args);
    let output = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    Output {
        stdout: output.stdout.into_iter().filter(|&b| b != b'\r').collect(),
        ..output
    }
}

#[test]
fn tty_option_gives_pseudo_terminal() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run_in_terminal(
            caller,
            &[
                "run",
                "--tty",
                "--",
                "sh",
                "-c",
                "tty; test -t 0 && echo stdin-terminal; test -t 1 && echo stdout-terminal",
            ],
            workspace.path(),
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        let tty = text
            .lines()
            .find_map(|line| line.split("/dev/pts/").nth(1))
            .unwrap_or_else(|| panic!("{caller:?}: no /dev/pts/N in {text:?}"));
        assert!(
            !tty.is_empty() && tty.chars().all(|c| c.is_ascii_digit()),
            "{caller:?}: {text:?}"
        );
        assert!(
            text.lines().any(|l| l == "stdin-terminal"),
            "{caller:?}: {text:?}"
        );
        assert!(
            text.lines().any(|l| l == "stdout-terminal"),
            "{caller:?}: {text:?}"
        );
    }
}

#[test]
fn caller_terminal_never_passed_through() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run_in_terminal(
            caller,
            &[
                "run",
                "--workspace-mode",
                "bind",
                "--",
                "sh",
                "-c",
                "tty; test -t 0 || echo stdin-not-terminal; test -t 1 || echo stdout-not-terminal",
            ],
            workspace.path(),
        );
        let text = stdout(&output);
        assert!(
            text.lines().any(|l| l == "not a tty"),
            "{caller:?}: {text:?}"
        );
        assert!(
            text.lines().any(|l| l == "stdin-not-terminal"),
            "{caller:?}: {text:?}"
        );
        assert!(
            text.lines().any(|l| l == "stdout-not-terminal"),
            "{caller:?}: {text:?}"
        );
    }
}

/// Asserts the shape every rejection of invalid input has: exit 125, nothing on stdout and
/// exactly one line on stderr that starts with "airlock: " and contains `needle`.
fn assert_rejected(output: &Output, needle: &str, context: &str) {
    assert_eq!(
        output.status.code(),
        Some(125),
        "{context}: {}",
        describe(output)
    );
    assert_eq!(stdout(output), "", "{context}");
    let message = stderr(output);
    assert!(message.ends_with('\n'), "{context}: {message:?}");
    assert_eq!(message.lines().count(), 1, "{context}: {message:?}");
    assert!(message.starts_with("airlock: "), "{context}: {message:?}");
    assert!(
        message.contains(needle),
        "{context}: {message:?} lacks {needle:?}"
    );
}

#[test]
fn invalid_input_rejected_with_one_line() {
    let cgroups_before = airlock_cgroups();
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let missing = workspace.path().join("missing");
        let file = workspace.path().join("file");
        fs::write(&file, "").expect("write file");
        let missing = missing.to_str().expect("UTF-8 path");
        let file = file.to_str().expect("UTF-8 path");
        let cases: [(&[&str], &str); 9] = [
            (&["run"], "no command"),
            (&["run", "--tmp-size", "512", "--", "true"], "512"),
            (&["run", "--bogus", "--", "true"], "--bogus"),
            (&["run", "--workspace", missing, "--", "true"], missing),
            (&["run", "--workspace", file, "--", "true"], file),
            (&["run", "--rootfs", missing, "--", "true"], missing),
            (&["run", "--memory", "12X", "--", "true"], "12X"),
            (&["run", "--timeout", "5x", "--", "true"], "5x"),
            (&["run", "--env", "NOEQUALS", "--", "true"], "NOEQUALS"),
        ];
        for (args, needle) in cases {
            let output = run(caller, args, workspace.path());
            assert_rejected(&output, needle, &format!("{caller:?} {args:?}"));
        }
        assert!(
            !Path::new(missing).exists(),
            "{caller:?}: {missing} created"
        );
        let entries: Vec<_> = fs::read_dir(workspace.path())
            .expect("read workspace")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(entries, ["file"], "{caller:?}: workspace changed");
    }
    assert_no_new_cgroups(&cgroups_before, "invalid input");
}

#[test]
fn disabled_user_namespaces_rejected() {
    let cgroups_before = airlock_cgroups();
    // user.max_user_namespaces belongs to the user namespace it is read in, so setting it
    // to 0 in a new namespace disables nested ones there and leaves the host's value alone.
    // Root of the outer user namespace is no one on the host, so both callers get a state
    // directory that anyone may create entries in.
    let state = tempfile::tempdir().expect("state directory");
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod the state directory");
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && AIRLOCK_STATE_DIR=$(mktemp -d -p {}) exec {} run -- true",
        shell_quote(state.path().to_str().expect("UTF-8 state path")),
        shell_quote(binary().to_str().expect("UTF-8 binary path"))
    );
    let unshare = ["unshare", "--user", "--map-root-user", "sh", "-c", &script];
    let user = format!("--reuid={TEST_USER}");
    let group = format!("--regid={TEST_USER}");
    let as_user = [
        &["setpriv", &user, &group, "--init-groups", "--"][..],
        &unshare,
    ]
    .concat();
    for (context, argv) in [("root", &unshare[..]), ("test user", &as_user[..])] {
        let workspace = Workspace::new(if context == "root" {
            Caller::Root
        } else {
            Caller::UserWithoutCgroup
        });
        let output = Command::new(argv[0])
            .args(&argv[1..])
            .current_dir(workspace.path())
            .stdin(Stdio::null())
            .output()
            .expect("run unshare");
        assert_rejected(&output, "user.max_user_namespaces", context);
        let entries = fs::read_dir(workspace.path())
            .expect("read workspace")
            .count();
        assert_eq!(entries, 0, "{context}: workspace changed");
    }
    assert_no_new_cgroups(&cgroups_before, "disabled user namespaces");
}

#[test]
fn failure_prints_json_record() {
    let workspace = Workspace::new(Caller::Root);
    let missing = workspace.path().join("missing");
    let args = [
        "run",
        "--json",
        "--workspace",
        missing.to_str().unwrap(),
        "--",
        "true",
    ];
    let output = run(Caller::Root, &args, workspace.path());
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let record = json_record(&output);
    assert_eq!(record["reason"], "airlock_failed", "{record}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("does not exist"), "{record}");
}

#[test]
fn unreadable_workspace_rejected() {
    let workspace = Workspace::new(Caller::Root);
    let private = workspace.path().join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(workspace.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let user_workspace = Workspace::new(Caller::User);
    let args = [
        "run",
        "--workspace",
        private.to_str().unwrap(),
        "--",
        "true",
    ];
    let output = run(Caller::User, &args, user_workspace.path());
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(message.contains("cannot be read by this user"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
}

/// Runs `airlock ARGS` as `caller` in `workspace` through `sh -c`, with `redirect`, such as
/// `> /dev/full`, after it.
fn run_redirected(caller: Caller, workspace: &Workspace, args: &[&str], redirect: &str) -> Output {
    let (script, _delegation) = airlock_shell_command(caller, &[], args);
    Command::new("sh")
        .arg("-c")
        .arg(format!("{script} {redirect}"))
        .current_dir(workspace.path())
        .stdin(Stdio::null())
        .output()
        .expect("run airlock")
}

/// Output that cannot be written, as to a full device, is reported on stderr instead of being
/// dropped without a word. A reader that went away, as in `| head`, gets no report.
#[test]
fn unwritable_output_reported() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let output = run_redirected(
            caller,
            &workspace,
            &["run", "--", "echo", "hi"],
            "> /dev/full",
        );
        let context = format!("{caller:?}: {}", describe(&output));
        assert_eq!(output.status.code(), Some(0), "{context}");
        assert!(
            stderr(&output).contains("cannot write the command's stdout"),
            "{context}"
        );
        assert!(stderr(&output).contains("No space left"), "{context}");

        let args = ["run", "--", "seq", "1", "100000"];
        let output = run_redirected(caller, &workspace, &args, "| head -c 1 > /dev/null");
        let context = format!("{caller:?}: {}", describe(&output));
        assert!(!stderr(&output).contains("cannot write"), "{context}");
    }
}
