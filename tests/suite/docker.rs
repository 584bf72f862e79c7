//! The `docker` backend against each engine that scripts/test starts: Docker Engine and
//! Podman's API service, on private sockets, each with the Debian test image imported. Every
//! test runs once per engine, as root, with a state directory of its own.
//!
//! scripts/test exports the engines' addresses in AIRLOCK_TEST_DOCKER_SOCKETS and the image
//! in AIRLOCK_TEST_IMAGE. Without them the tests fail with the reason, rather than pass
//! without having run. The tests look at the engine directly through its API with curl, which
//! scripts/test installs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::harness::{
    airlock_shell_command, binary, describe, json_record, protection, stderr, stdout, unique_token,
    wait_bounded, Caller, Workspace,
};

/// One engine under test.
pub(super) struct Engine {
    /// `docker` or `podman`, from the socket's file name, for assertion messages.
    pub(super) name: String,
    /// The engine's address, as DOCKER_HOST takes it.
    pub(super) host: String,
    socket: PathBuf,
}

/// Returns the engines that scripts/test started.
pub(super) fn engines() -> Vec<Engine> {
    let sockets = std::env::var("AIRLOCK_TEST_DOCKER_SOCKETS").unwrap_or_else(|_| {
        panic!(
            "AIRLOCK_TEST_DOCKER_SOCKETS is not set: run the tests through scripts/test, which \
             starts Docker Engine and Podman's API service and sets it, or run \
             `scripts/test-engines start` and export the variables it prints"
        )
    });
    let engines: Vec<Engine> = sockets
        .split_whitespace()
        .map(|host| {
            let socket = PathBuf::from(host.strip_prefix("unix://").unwrap_or(host));
            let name = socket.file_stem().map_or_else(
                || host.to_owned(),
                |stem| stem.to_string_lossy().into_owned(),
            );
            Engine {
                name,
                host: host.to_owned(),
                socket,
            }
        })
        .collect();
    assert!(
        !engines.is_empty(),
        "AIRLOCK_TEST_DOCKER_SOCKETS lists no engine"
    );
    engines
}

/// Returns the test image, imported into every engine.
pub(super) fn image() -> String {
    std::env::var("AIRLOCK_TEST_IMAGE").unwrap_or_else(|_| {
        panic!("AIRLOCK_TEST_IMAGE is not set: run the tests through scripts/test")
    })
}

/// Airlock as root with one engine and a state directory of its own. Dropping it removes
/// every sandbox left in that directory, and the directory.
struct Session<'a> {
    engine: &'a Engine,
    state: PathBuf,
}

impl<'a> Session<'a> {
    fn new(engine: &'a Engine) -> Session<'a> {
        let base = binary().parent().expect("binary directory");
        let state = base.join(format!("state-docker-{}", unique_token()));
        fs::create_dir(&state).expect("create state directory");
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod state");
        Session { engine, state }
    }

    fn command(&self, args: &[&str], cwd: &Path) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .current_dir(cwd)
            .env("DOCKER_HOST", &self.engine.host);
        command
    }

    /// Runs `airlock ARGS` with no input.
    fn airlock(&self, args: &[&str], cwd: &Path) -> Output {
        self.command(args, cwd)
            .stdin(Stdio::null())
            .output()
            .expect("run airlock")
    }

    /// Runs `airlock ARGS`, feeding `input` to its stdin.
    fn airlock_with_stdin(&self, args: &[&str], cwd: &Path, input: &[u8]) -> Output {
        let mut child = self
            .command(args, cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn airlock");
        let mut stdin = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("wait for airlock");
        writer.join().expect("stdin writer");
        output
    }

    /// Runs `airlock run --backend docker --image IMAGE EXTRA... -- sh -c SCRIPT`.
    fn run_sh(&self, workspace: &Path, extra: &[&str], script: &str) -> Output {
        let image = image();
        let mut args = vec!["run", "--backend", "docker", "--image", &image];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        self.airlock(&args, workspace)
    }

    /// Creates a sandbox of the test image and returns its id.
    fn create(&self, workspace: &Path, extra: &[&str]) -> String {
        let image = image();
        let mut args = vec!["create", "--backend", "docker", "--image", &image];
        args.extend_from_slice(extra);
        let output = self.airlock(&args, workspace);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            self.engine.name,
            describe(&output)
        );
        stdout(&output).trim().to_owned()
    }

    fn exec_sh(&self, workspace: &Path, id: &str, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[id, "--", "sh", "-c", script]);
        self.airlock(&args, workspace)
    }

    /// Returns the `airlock ls --json` entry of sandbox `id`.
    fn listed(&self, id: &str) -> Option<serde_json::Value> {
        let output = self.airlock(&["ls", "--json"], Path::new("/"));
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ls JSON");
        listed
            .as_array()
            .expect("ls array")
            .iter()
            .find(|entry| entry["id"] == id)
            .cloned()
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let output = self.airlock(&["ls", "--json"], Path::new("/"));
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        for entry in listed.as_array().into_iter().flatten() {
            if let Some(id) = entry["id"].as_str() {
                let _ = self.airlock(&["rm", "--force", id], Path::new("/"));
            }
        }
        let _ = self.airlock(&["gc"], Path::new("/"));
        let _ = fs::remove_dir_all(&self.state);
    }
}

/// Sends a request to the engine's API with curl and parses the JSON response.
fn engine_api(engine: &Engine, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "60", "-X", method])
        .arg("--unix-socket")
        .arg(&engine.socket)
        .arg(format!("http://engine/v1.41{path}"));
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data", body]);
    }
    let output = command.output().expect("run curl");
    assert!(
        output.status.success(),
        "curl {path}: {}",
        describe(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

/// Counts the engine's containers and volumes labeled as sandbox `id`'s.
pub(super) fn labeled(engine: &Engine, id: &str) -> (usize, usize) {
    let filter = format!("%7B%22label%22%3A%5B%22airlock.sandbox%3D{id}%22%5D%7D");
    let containers = engine_api(
        engine,
        "GET",
        &format!("/containers/json?all=1&filters={filter}"),
        None,
    );
    let volumes = engine_api(engine, "GET", &format!("/volumes?filters={filter}"), None);
    let count = |value: &serde_json::Value| value.as_array().map_or(0, Vec::len);
    (count(&containers), count(&volumes["Volumes"]))
}

/// Returns whether the engine has a container or volume named `name`.
fn exists(engine: &Engine, kind: &str, name: &str) -> bool {
    let path = match kind {
        "containers" => format!("/containers/{name}/json"),
        _ => format!("/volumes/{name}"),
    };
    let output = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ])
        .arg("--unix-socket")
        .arg(&engine.socket)
        .arg(format!("http://engine/v1.41{path}"))
        .output()
        .expect("run curl");
    stdout(&output) == "200"
}

/// Runs `script` in a container of the test image that the engine alone confines, as the
/// docker backend's container is confined but without Airlock's init, and returns its log.
fn engine_alone(engine: &Engine, script: &str) -> String {
    let name = format!("airlock-test-control-{}", unique_token());
    let body = serde_json::json!({
        "Image": image(),
        "User": "65534:65534",
        "Cmd": ["sh", "-c", script],
        "HostConfig": {
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "NetworkMode": "none",
            "Tmpfs": { "/tmp": "rw,size=16m" },
            "Ulimits": [{ "Name": "nofile", "Soft": 1024, "Hard": 1024 },
                        { "Name": "nproc", "Soft": 1024, "Hard": 1024 }],
        },
    });
    engine_api(
        engine,
        "POST",
        &format!("/containers/create?name={name}"),
        Some(&body.to_string()),
    );
    engine_api(engine, "POST", &format!("/containers/{name}/start"), None);
    engine_api(engine, "POST", &format!("/containers/{name}/wait"), None);
    let output = Command::new("curl")
        .args(["--silent", "--unix-socket"])
        .arg(&engine.socket)
        .arg(format!(
            "http://engine/v1.41/containers/{name}/logs?stdout=1&stderr=1"
        ))
        .output()
        .expect("run curl");
    engine_api(
        engine,
        "DELETE",
        &format!("/containers/{name}?force=1"),
        None,
    );
    // Each frame of the log starts with an 8-byte header; the text is what matters here.
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn docker_streams_pass_byte_for_byte() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let image = image();
        let input: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let args = [
            "run",
            "--backend",
            "docker",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "cat; printf 'err\\000\\377' >&2",
        ];
        let output = session.airlock_with_stdin(&args, workspace.path(), &input);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert!(
            output.stdout == input,
            "{}: stdout differs from stdin",
            engine.name
        );
        assert_eq!(output.stderr, b"err\0\xff", "{}", engine.name);
    }
}

#[test]
fn docker_exit_statuses_match_other_backends() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let cases: [(&str, i32); 3] = [("exit 3", 3), ("kill -TERM $$", 143), ("exit 0", 0)];
        for (script, expected) in cases {
            let output = session.run_sh(workspace.path(), &[], script);
            assert_eq!(
                output.status.code(),
                Some(expected),
                "{} {script}: {}",
                engine.name,
                describe(&output)
            );
        }
        let image = image();
        let run = |command: &str| {
            let args = [
                "run",
                "--backend",
                "docker",
                "--image",
                &image,
                "--json",
                "--",
                command,
            ];
            session.airlock(&args, workspace.path())
        };
        let missing = run("no-such-command");
        assert_eq!(
            missing.status.code(),
            Some(127),
            "{}: {}",
            engine.name,
            describe(&missing)
        );
        assert_eq!(
            json_record(&missing)["exec_failure"]["not_found"]["command"],
            "no-such-command"
        );
        assert!(
            stderr(&missing).contains(&format!("install it in the image {image}")),
            "{}: {}",
            engine.name,
            describe(&missing)
        );
        let not_executable = run("/etc/hostname");
        assert_eq!(
            not_executable.status.code(),
            Some(126),
            "{}: {}",
            engine.name,
            describe(&not_executable)
        );

        let output = session.run_sh(workspace.path(), &["--json"], "exit 7");
        let record = json_record(&output);
        assert_eq!(record["backend"], "docker", "{record}");
        assert_eq!(record["exit_code"], 7, "{record}");
        assert_eq!(record["reason"], "exited", "{record}");
        assert_eq!(
            protection(&record, "seccomp filter")["status"],
            "enforced",
            "{record}"
        );
    }
}

#[test]
fn docker_memory_limit_exits_123() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        // The shell outlives the killed `tail`, but not the sandbox's end at the limit.
        let script = "head -c 400M /dev/zero | tail > /dev/null; sleep 10; echo survived";
        let output = session.run_sh(workspace.path(), &["--memory", "64M", "--json"], script);
        assert_eq!(
            output.status.code(),
            Some(123),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert!(!stdout(&output).contains("survived"), "{}", engine.name);
        assert_eq!(
            json_record(&output)["reason"],
            "out_of_memory",
            "{}",
            engine.name
        );
    }
}

#[test]
fn docker_timeout_exits_124() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let started = Instant::now();
        let output = session.run_sh(workspace.path(), &["--timeout", "2s"], "sleep 60");
        assert_eq!(
            output.status.code(),
            Some(124),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: took {:?}",
            engine.name,
            started.elapsed()
        );
        assert!(stderr(&output).contains("timed out"), "{}", engine.name);
    }
}

#[test]
fn docker_fork_bomb_exits_122() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let script = "for i in $(seq 60); do sleep 30 & done; wait";
        let output = session.run_sh(workspace.path(), &["--pids", "16", "--json"], script);
        assert_eq!(
            output.status.code(),
            Some(122),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert_eq!(
            json_record(&output)["reason"],
            "pids_limit",
            "{}",
            engine.name
        );
    }
}

/// The CPU, memory and process limits reach the container's cgroup on each engine. The
/// process limit is one more than `--pids`, for the container's init.
#[test]
fn docker_limits_reach_container_cgroup() {
    // cgroup v2 files where the container has the unified hierarchy, else the v1 ones.
    let script = "cd /sys/fs/cgroup; if [ -f cpu.max ]; then cat cpu.max memory.max pids.max; \
                  else echo $(cat cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us); \
                  cat memory/memory.limit_in_bytes pids/pids.max; fi";
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let limits = ["--cpus", "0.5", "--memory", "64M", "--pids", "20", "--json"];
        let output = session.run_sh(workspace.path(), &limits, script);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        let values: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
        assert_eq!(
            values.first().map(String::as_str),
            Some("50000 100000"),
            "{}: cpu quota and period",
            engine.name
        );
        assert_eq!(
            values.get(1).map(String::as_str),
            Some("67108864"),
            "{}: memory limit",
            engine.name
        );
        assert_eq!(
            values.get(2).map(String::as_str),
            Some("21"),
            "{}: process limit",
            engine.name
        );
        let record = json_record(&output);
        for rule in ["cpu limit", "memory limit", "pids limit"] {
            assert_eq!(
                protection(&record, rule)["status"],
                "enforced",
                "{}: {rule}: {record}",
                engine.name
            );
        }
    }
}

#[test]
fn docker_network_has_only_loopback() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let output = session.run_sh(
            workspace.path(),
            &[],
            "tail -n +3 /proc/net/dev | cut -d: -f1",
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        let interfaces: Vec<String> = stdout(&output)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(interfaces, ["lo"], "{}", engine.name);
    }
}

#[test]
fn docker_root_project_warns_of_locked_entries() {
    let engine = &engines()[0];
    let session = Session::new(engine);
    let workspace = Workspace::new(Caller::Root);
    let image = image();
    let args = [
        "run",
        "--backend",
        "docker",
        "--image",
        &image,
        "--",
        "touch",
        "top-level",
    ];
    // An empty project of root's: the command may create files in it, and gets no warning.
    let empty = session.airlock(&args, workspace.path());
    assert_eq!(empty.status.code(), Some(0), "{}", describe(&empty));
    assert!(!stderr(&empty).contains("warning"), "{}", describe(&empty));

    std::fs::create_dir(workspace.path().join("locked")).expect("create directory");
    let locked = session.airlock(
        &[
            "run",
            "--backend",
            "docker",
            "--image",
            &image,
            "--",
            "touch",
            "locked/file",
        ],
        workspace.path(),
    );
    assert_eq!(locked.status.code(), Some(1), "{}", describe(&locked));
    let message = stderr(&locked);
    assert!(
        message.contains("workspace belongs to root") && message.contains("\"locked\""),
        "{message}"
    );
}

#[test]
fn docker_root_read_only_tmp_writable() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        for path in ["/usr/x", "/etc/x", "/x"] {
            let output = session.run_sh(workspace.path(), &[], &format!("touch {path}"));
            assert_ne!(
                output.status.code(),
                Some(0),
                "{} {path}: {}",
                engine.name,
                describe(&output)
            );
            assert!(
                stderr(&output).contains("Read-only file system"),
                "{} {path}: {}",
                engine.name,
                describe(&output)
            );
        }
        let output = session.run_sh(workspace.path(), &[], "echo ok > /tmp/x && cat /tmp/x");
        assert_eq!(
            stdout(&output),
            "ok\n",
            "{}: {}",
            engine.name,
            describe(&output)
        );
    }
}

#[test]
fn docker_command_unprivileged_without_capabilities() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let script = "id -u; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp_filters):' /proc/self/status";
        let output = session.run_sh(workspace.path(), &[], script);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        let text = stdout(&output);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("65534"),
            "a root-owned workspace gives nobody: {text}"
        );
        for line in lines {
            let (field, value) = line.split_once(':').expect("status line");
            match field {
                "NoNewPrivs" => assert_eq!(value.trim(), "1", "{}: {text}", engine.name),
                // The engine's profile and Airlock's filter on top of it.
                "Seccomp_filters" => assert_eq!(value.trim(), "2", "{}: {text}", engine.name),
                _ => assert_eq!(
                    value.trim(),
                    "0000000000000000",
                    "{} {field}: {text}",
                    engine.name
                ),
            }
        }

        let root = session.run_sh(workspace.path(), &["--user", "root"], "id -u");
        assert_eq!(
            root.status.code(),
            Some(125),
            "{}: {}",
            engine.name,
            describe(&root)
        );
        assert!(
            stderr(&root).contains("--allow-weaker"),
            "{}: {}",
            engine.name,
            describe(&root)
        );
    }
}

#[test]
fn docker_seccomp_stacks_airlock_denials() {
    // chmod u+s and ptrace are allowed by both engines' default profiles; the filter that
    // Airlock stacks on top denies them.
    let script = "touch /tmp/f; chmod u+s /tmp/f && echo setuid-allowed; \
                  unshare -U true && echo userns-allowed; echo done";
    for engine in &engines() {
        let control = engine_alone(engine, script);
        assert!(
            control.contains("setuid-allowed"),
            "{}: the engine alone should allow it: {control:?}",
            engine.name
        );

        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let output = session.run_sh(workspace.path(), &[], script);
        assert_eq!(
            stdout(&output),
            "done\n",
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert!(
            stderr(&output).contains("Operation not permitted"),
            "{}: {}",
            engine.name,
            describe(&output)
        );

        let id = session.create(workspace.path(), &[]);
        let output = session.exec_sh(workspace.path(), &id, &[], script);
        assert_eq!(
            stdout(&output),
            "done\n",
            "{} exec: {}",
            engine.name,
            describe(&output)
        );
        let status = session.exec_sh(
            workspace.path(),
            &id,
            &[],
            "grep Seccomp_filters /proc/self/status",
        );
        assert!(
            stdout(&status).contains('2'),
            "{} exec: {}",
            engine.name,
            describe(&status)
        );
    }
}

#[test]
fn docker_overlay_untouched_until_apply() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let project = workspace.path();
        fs::write(project.join("kept.txt"), "original\n").unwrap();
        fs::set_permissions(project.join("kept.txt"), fs::Permissions::from_mode(0o666)).unwrap();
        let output = session.run_sh(
            project,
            &[],
            "echo changed > kept.txt; echo new > added.txt; cat kept.txt",
        );
        assert_eq!(
            stdout(&output),
            "changed\n",
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert_eq!(
            fs::read_to_string(project.join("kept.txt")).unwrap(),
            "original\n"
        );
        assert!(!project.join("added.txt").exists(), "{}", engine.name);

        let kept = stderr(&output);
        let id = kept
            .split_whitespace()
            .map(|word| word.trim_matches(|c: char| !c.is_ascii_hexdigit()))
            .find(|word| word.len() == 32)
            .unwrap_or_else(|| panic!("{}: no kept sandbox in {kept:?}", engine.name))
            .to_owned();
        assert_eq!(
            labeled(engine, &id),
            (0, 0),
            "{}: a finished run keeps no container",
            engine.name
        );
        let diff = session.airlock(&["diff", &id], project);
        assert_eq!(
            stdout(&diff),
            "A added.txt\nM kept.txt\n",
            "{}: {}",
            engine.name,
            describe(&diff)
        );
        let apply = session.airlock(&["apply", &id], project);
        assert_eq!(
            apply.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&apply)
        );
        assert_eq!(
            fs::read_to_string(project.join("kept.txt")).unwrap(),
            "changed\n"
        );
        assert_eq!(
            fs::read_to_string(project.join("added.txt")).unwrap(),
            "new\n"
        );
    }
}

/// `discard` of a running sandbox drops the changes of its workspace, restarts it on its
/// own engine, and leaves the project as it was.
#[test]
fn docker_discard_drops_changes() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let project = workspace.path();
        fs::write(project.join("kept.txt"), "original\n").unwrap();
        fs::set_permissions(project.join("kept.txt"), fs::Permissions::from_mode(0o666)).unwrap();
        let id = session.create(project, &[]);
        let changed = session.exec_sh(
            project,
            &id,
            &[],
            "echo changed > kept.txt; echo new > added.txt",
        );
        assert_eq!(
            changed.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&changed)
        );

        let discard = session
            .command(&["discard", &id], project)
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .output()
            .expect("run airlock");
        assert_eq!(
            discard.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&discard)
        );
        let diff = session.airlock(&["diff", &id], project);
        assert_eq!(stdout(&diff), "", "{}: {}", engine.name, describe(&diff));
        let inside = session.exec_sh(project, &id, &[], "cat kept.txt; test ! -e added.txt");
        assert_eq!(
            inside.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&inside)
        );
        assert_eq!(stdout(&inside), "original\n", "{}", engine.name);
        assert_eq!(
            fs::read_to_string(project.join("kept.txt")).unwrap(),
            "original\n",
            "{}",
            engine.name
        );
        assert!(!project.join("added.txt").exists(), "{}", engine.name);
        assert_eq!(labeled(engine, &id), (1, 1), "{}", engine.name);
    }
}

#[test]
fn docker_cp_copies_both_ways() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("in.txt"), "from the host\n").unwrap();
        fs::create_dir(host.path().join("tree")).unwrap();
        fs::write(host.path().join("tree/leaf.txt"), "leaf\n").unwrap();
        let id = session.create(workspace.path(), &[]);

        let source = host.path().join("in.txt");
        let into = session.airlock(
            &["cp", source.to_str().unwrap(), &format!("{id}:copied.txt")],
            workspace.path(),
        );
        assert_eq!(
            into.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&into)
        );
        let tree = host.path().join("tree");
        let into = session.airlock(
            &["cp", tree.to_str().unwrap(), &format!("{id}:/workspace")],
            workspace.path(),
        );
        assert_eq!(
            into.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&into)
        );
        let inside = session.exec_sh(
            workspace.path(),
            &id,
            &[],
            "cat copied.txt tree/leaf.txt; stat -c %u copied.txt; echo more >> copied.txt",
        );
        assert_eq!(
            stdout(&inside),
            "from the host\nleaf\n65534\n",
            "{}: {}",
            engine.name,
            describe(&inside)
        );

        let out = host.path().join("out.txt");
        let copied = session.airlock(
            &["cp", &format!("{id}:copied.txt"), out.to_str().unwrap()],
            workspace.path(),
        );
        assert_eq!(
            copied.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&copied)
        );
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            "from the host\nmore\n",
            "{}",
            engine.name
        );
        let back = host.path().join("back");
        fs::create_dir(&back).unwrap();
        let copied = session.airlock(
            &[
                "cp",
                &format!("{id}:/workspace/tree"),
                back.to_str().unwrap(),
            ],
            workspace.path(),
        );
        assert_eq!(
            copied.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&copied)
        );
        assert_eq!(
            fs::read_to_string(back.join("tree/leaf.txt")).unwrap(),
            "leaf\n"
        );
    }
}

/// The container's tmpfs mounts, which Docker Engine's archive API does not reach, take
/// copies both ways on each engine. What arrives belongs to the sandbox's user with its
/// setuid bit dropped, and FIFOs are skipped in both directions.
#[test]
fn docker_cp_reaches_tmpfs_mounts() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let host = tempfile::tempdir().unwrap();
        let tree = host.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("leaf.txt"), "leaf\n").unwrap();
        fs::write(tree.join("tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(tree.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        let fifo = Command::new("mkfifo")
            .arg(tree.join("fifo"))
            .status()
            .expect("run mkfifo");
        assert!(fifo.success(), "mkfifo failed");
        let id = session.create(workspace.path(), &[]);

        for target in ["/tmp", "/dev/shm"] {
            let into = session.airlock(
                &["cp", tree.to_str().unwrap(), &format!("{id}:{target}")],
                workspace.path(),
            );
            assert_eq!(
                into.status.code(),
                Some(0),
                "{} into {target}: {}",
                engine.name,
                describe(&into)
            );
            let warning = format!("skipped {:?}: a FIFO", tree.join("fifo"));
            assert!(
                stderr(&into).contains(&warning),
                "{} into {target}: {}",
                engine.name,
                describe(&into)
            );
            let inside = session.exec_sh(
                workspace.path(),
                &id,
                &[],
                &format!("cd {target}/tree && cat leaf.txt && stat -c '%u %a' leaf.txt tool && ls"),
            );
            assert_eq!(
                stdout(&inside),
                "leaf\n65534 644\n65534 755\nleaf.txt\ntool\n",
                "{} in {target}: {}",
                engine.name,
                describe(&inside)
            );
        }

        let created = session.exec_sh(
            workspace.path(),
            &id,
            &[],
            "mkdir /tmp/made && printf 'made inside\\n' > /tmp/made/note.txt \
             && mkfifo /tmp/made/pipe",
        );
        assert_eq!(
            created.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&created)
        );
        let out = host.path().join("out");
        let copied = session.airlock(
            &["cp", &format!("{id}:/tmp/made"), out.to_str().unwrap()],
            workspace.path(),
        );
        assert_eq!(
            copied.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&copied)
        );
        assert_eq!(
            fs::read_to_string(out.join("note.txt")).unwrap(),
            "made inside\n",
            "{}",
            engine.name
        );
        assert!(
            !out.join("pipe").exists(),
            "{}: the FIFO was copied",
            engine.name
        );
        assert!(
            stderr(&copied).contains("skipped \"/tmp/made/pipe\": a FIFO"),
            "{}: {}",
            engine.name,
            describe(&copied)
        );
        let file = host.path().join("single.txt");
        let copied = session.airlock(
            &[
                "cp",
                &format!("{id}:/tmp/made/note.txt"),
                file.to_str().unwrap(),
            ],
            workspace.path(),
        );
        assert_eq!(
            copied.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&copied)
        );
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "made inside\n",
            "{}",
            engine.name
        );

        let missing = session.airlock(
            &[
                "cp",
                &format!("{id}:/tmp/absent"),
                host.path().to_str().unwrap(),
            ],
            workspace.path(),
        );
        assert_eq!(
            missing.status.code(),
            Some(125),
            "{}: {}",
            engine.name,
            describe(&missing)
        );
        assert!(
            stderr(&missing).contains("/tmp/absent"),
            "{}: {}",
            engine.name,
            describe(&missing)
        );
    }
}

/// A symlink that a sandbox plants arrives on the host as a symlink, and a later copy with a
/// directory at the link's path cannot write through the link to the host. A copy in through
/// a planted link cannot reach the host either.
#[test]
fn docker_cp_planted_symlink_stays_inside() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let host = tempfile::tempdir().unwrap();
        let outside = host.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let back = host.path().join("back");
        fs::create_dir(&back).unwrap();
        let id = session.create(workspace.path(), &[]);

        // The first copy brings a symlink to the host directory `outside` into `back`.
        let plant = format!(
            "mkdir /tmp/tree && ln -s {} /tmp/tree/link",
            outside.display()
        );
        let planted = session.exec_sh(workspace.path(), &id, &[], &plant);
        assert_eq!(
            planted.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&planted)
        );
        let first = session.airlock(
            &["cp", &format!("{id}:/tmp/tree"), back.to_str().unwrap()],
            workspace.path(),
        );
        assert_eq!(
            first.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&first)
        );
        let link = back.join("tree/link");
        assert_eq!(
            fs::read_link(&link).ok(),
            Some(outside.clone()),
            "{}",
            engine.name
        );
        assert!(
            stderr(&first).contains("a path outside the copy"),
            "{}: {}",
            engine.name,
            describe(&first)
        );

        // The second copy has a directory where the link now is on the host.
        let swap =
            "rm /tmp/tree/link && mkdir /tmp/tree/link && echo escaped > /tmp/tree/link/file";
        let swapped = session.exec_sh(workspace.path(), &id, &[], swap);
        assert_eq!(
            swapped.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&swapped)
        );
        let second = session.airlock(
            &["cp", &format!("{id}:/tmp/tree"), back.to_str().unwrap()],
            workspace.path(),
        );
        assert_eq!(
            second.status.code(),
            Some(125),
            "{}: {}",
            engine.name,
            describe(&second)
        );
        assert!(
            !outside.join("file").exists(),
            "{}: the copy wrote through the planted link",
            engine.name
        );
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "{}",
            engine.name
        );

        // A copy in writes in the container only, as the sandbox's user: a link to the
        // host's run directory, bound read-only, leads nowhere writable.
        let plant = "ln -s /.airlock/run /tmp/drop";
        let planted = session.exec_sh(workspace.path(), &id, &[], plant);
        assert_eq!(
            planted.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&planted)
        );
        let source = host.path().join("dropped.txt");
        fs::write(&source, "dropped\n").unwrap();
        let into = session.airlock(
            &["cp", source.to_str().unwrap(), &format!("{id}:/tmp/drop")],
            workspace.path(),
        );
        assert_eq!(
            into.status.code(),
            Some(125),
            "{}: {}",
            engine.name,
            describe(&into)
        );
        let run_dir = session.state.join("sandboxes").join(&id).join("docker");
        assert!(
            run_dir.is_dir(),
            "{}: no run directory at {run_dir:?}",
            engine.name
        );
        assert!(
            !run_dir.join("dropped.txt").exists(),
            "{}: the copy wrote into the host's run directory",
            engine.name
        );
    }
}

/// A copy into the container whose write fails exits 125 with the helper's error and leaves
/// nothing at the target: a read-only path, a copy larger than the 512 MiB /tmp, and a
/// helper killed by a process of the sandbox during the copy.
#[test]
fn docker_cp_failed_write_leaves_nothing() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let id = session.create(workspace.path(), &[]);
        fs::write(workspace.path().join("big"), vec![b'x'; 20 << 20]).unwrap();
        let sparse = fs::File::create(workspace.path().join("sparse")).unwrap();
        sparse.set_len(600 << 20).unwrap();
        let cases = [
            ("big", "/usr/f", "Read-only file system"),
            ("sparse", "/tmp/big", "No space left on device"),
        ];
        for (source, target, error) in cases {
            let copied =
                session.airlock(&["cp", source, &format!("{id}:{target}")], workspace.path());

            let context = format!("{} {target}: {}", engine.name, describe(&copied));
            assert_eq!(copied.status.code(), Some(125), "{context}");
            assert!(stderr(&copied).contains(target), "{context}");
            assert!(stderr(&copied).contains(error), "{context}");
            let left = session.exec_sh(workspace.path(), &id, &[], "ls -A /tmp /usr");
            assert!(
                !stdout(&left).contains("airlock-cp"),
                "{context}: {}",
                describe(&left)
            );
            assert!(
                !stdout(&left).contains("big\n"),
                "{context}: {}",
                describe(&left)
            );
        }

        // The killer waits for the helper's staging directory, then kills every process
        // whose command line names the helper. It builds the name, so that its own command
        // line does not contain it.
        let killer_script = "name=docker; name=$name-cp; \
             for i in $(seq 100000); do ls -A /tmp | grep -q airlock-cp && break; done; \
             for p in /proc/[0-9]*; do \
             grep -q -- $name $p/cmdline 2>/dev/null && kill -9 ${p#/proc/}; done; true";
        let mut killer = session
            .command(
                &["exec", &id, "--", "sh", "-c", killer_script],
                workspace.path(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the killer");
        std::thread::sleep(Duration::from_secs(1));
        fs::remove_file(workspace.path().join("sparse")).unwrap();
        let zeros = fs::File::create(workspace.path().join("zeros")).unwrap();
        zeros.set_len(450 << 20).unwrap();
        let copied = session.airlock(
            &["cp", "zeros", &format!("{id}:/tmp/big")],
            workspace.path(),
        );
        wait_bounded(&mut killer, Duration::from_secs(60), "the killer");

        let context = format!("{} killed helper: {}", engine.name, describe(&copied));
        assert_eq!(copied.status.code(), Some(125), "{context}");
        assert!(
            stderr(&copied).contains("ended without reporting that it finished"),
            "{context}"
        );
        let left = session.exec_sh(workspace.path(), &id, &[], "ls -A /tmp");
        assert_eq!(stdout(&left), "", "{context}: {}", describe(&left));
    }
}

#[test]
fn docker_exec_and_stats_reach_container() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let id = session.create(workspace.path(), &[]);
        let output = session.exec_sh(
            workspace.path(),
            &id,
            &["--json"],
            "echo first > /tmp/shared; exit 7",
        );
        assert_eq!(
            output.status.code(),
            Some(7),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert_eq!(json_record(&output)["backend"], "docker");
        let output = session.exec_sh(workspace.path(), &id, &[], "cat /tmp/shared; hostname");
        assert_eq!(
            stdout(&output),
            format!("first\nairlock-{}\n", &id[..12]),
            "{}: {}",
            engine.name,
            describe(&output)
        );

        let started = Instant::now();
        let output = session.exec_sh(workspace.path(), &id, &["--timeout", "1s"], "sleep 60");
        assert_eq!(
            output.status.code(),
            Some(124),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            engine.name
        );
        assert_eq!(
            session.listed(&id).expect("listed")["status"],
            "running",
            "{}",
            engine.name
        );

        let output = session.exec_sh(workspace.path(), &id, &["--user", "root"], "id -u");
        assert_eq!(
            output.status.code(),
            Some(125),
            "{}: {}",
            engine.name,
            describe(&output)
        );

        let _background =
            session.exec_sh(workspace.path(), &id, &[], "sleep 60 > /dev/null 2>&1 &");
        let stats = session.airlock(&["stats", "--json", &id], workspace.path());
        assert_eq!(
            stats.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&stats)
        );
        let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
        assert!(
            stats["processes"].as_u64() >= Some(2),
            "{}: {stats}",
            engine.name
        );
        assert!(
            stats["memory"].as_u64() > Some(0),
            "{}: {stats}",
            engine.name
        );
    }
}

#[test]
fn docker_stop_start_keep_workspace() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let id = session.create(workspace.path(), &[]);
        assert_eq!(labeled(engine, &id), (1, 1), "{}", engine.name);
        let output = session.exec_sh(workspace.path(), &id, &[], "echo kept > note.txt");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );

        let stop = session.airlock(&["stop", &id], workspace.path());
        assert_eq!(
            stop.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&stop)
        );
        assert_eq!(session.listed(&id).expect("listed")["status"], "stopped");
        assert_eq!(
            labeled(engine, &id),
            (0, 0),
            "{}: stop removes the container",
            engine.name
        );

        let start = session.airlock(&["start", &id], workspace.path());
        assert_eq!(
            start.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&start)
        );
        let output = session.exec_sh(workspace.path(), &id, &[], "cat note.txt");
        assert_eq!(
            stdout(&output),
            "kept\n",
            "{}: {}",
            engine.name,
            describe(&output)
        );

        let stop = session.airlock(&["stop", &id], workspace.path());
        assert_eq!(
            stop.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&stop)
        );
        // The stop removed the container, so removing the sandbox needs no engine, whatever
        // DOCKER_HOST names now.
        let removed = session
            .command(&["rm", &id], workspace.path())
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .output()
            .expect("run airlock");
        assert_eq!(
            removed.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&removed)
        );
        assert!(
            !stderr(&removed).contains("cannot reach the engine"),
            "{}: {}",
            engine.name,
            describe(&removed)
        );
        assert_eq!(labeled(engine, &id), (0, 0), "{}", engine.name);

        let audit = stdout(&session.airlock(&["audit", "show", &id], workspace.path()));
        let events: Vec<&str> = audit
            .lines()
            .filter_map(|line| line.split_whitespace().nth(3))
            .collect();
        let expected = [
            "created",
            "started",
            "exec_started",
            "exec",
            "stopped",
            "started",
            "exec_started",
            "exec",
            "stopped",
            "removed",
        ];
        assert_eq!(events, expected, "{}: {audit}", engine.name);
        assert!(
            audit.contains(&format!("image={:?}", image())),
            "{}: {audit}",
            engine.name
        );
    }
}

/// A stopped sandbox starts again on the engine that created it, whatever DOCKER_HOST
/// names at the start: another engine, or none.
#[test]
fn docker_start_uses_creating_engine() {
    let engines = engines();
    assert!(
        engines.len() >= 2,
        "this test needs two engines in AIRLOCK_TEST_DOCKER_SOCKETS"
    );
    for (index, engine) in engines.iter().enumerate() {
        let other = &engines[(index + 1) % engines.len()];
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let id = session.create(workspace.path(), &[]);
        let stop = session.airlock(&["stop", &id], workspace.path());
        assert_eq!(
            stop.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&stop)
        );

        for docker_host in [Some(other.host.as_str()), None] {
            let mut start = session.command(&["start", &id], workspace.path());
            match docker_host {
                Some(host) => start.env("DOCKER_HOST", host),
                None => start.env_remove("DOCKER_HOST"),
            };
            let start = start.stdin(Stdio::null()).output().expect("run airlock");
            assert_eq!(
                start.status.code(),
                Some(0),
                "{} with DOCKER_HOST={docker_host:?}: {}",
                engine.name,
                describe(&start)
            );
            assert!(
                !stderr(&start).contains("cannot reach the engine"),
                "{} with DOCKER_HOST={docker_host:?}: {}",
                engine.name,
                describe(&start)
            );
            assert_eq!(
                labeled(engine, &id),
                (1, 1),
                "{}: the container is not on the creating engine",
                engine.name
            );
            assert_eq!(
                labeled(other, &id),
                (0, 0),
                "{}: a container of the sandbox is on {}",
                engine.name,
                other.name
            );

            let mut exec = session.command(&["exec", &id, "--", "true"], workspace.path());
            let exec = exec
                .env("DOCKER_HOST", &other.host)
                .stdin(Stdio::null())
                .output()
                .expect("run airlock");
            assert_eq!(
                exec.status.code(),
                Some(0),
                "{}: {}",
                engine.name,
                describe(&exec)
            );
            let stop = session.airlock(&["stop", &id], workspace.path());
            assert_eq!(
                stop.status.code(),
                Some(0),
                "{}: {}",
                engine.name,
                describe(&stop)
            );
        }
        assert_eq!(labeled(engine, &id), (0, 0), "{}", engine.name);
    }
}

#[test]
fn docker_gc_spares_users_containers() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let name = format!("airlock-test-users-own-{}", unique_token());
        let body = serde_json::json!({ "Image": image(), "Cmd": ["sleep", "600"] });
        engine_api(
            engine,
            "POST",
            &format!("/containers/create?name={name}"),
            Some(&body.to_string()),
        );
        engine_api(engine, "POST", &format!("/containers/{name}/start"), None);
        engine_api(
            engine,
            "POST",
            "/volumes/create",
            Some(&serde_json::json!({ "Name": name }).to_string()),
        );

        let removed = session.create(workspace.path(), &[]);
        let rm = session.airlock(&["rm", "--force", &removed], workspace.path());
        assert_eq!(
            rm.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&rm)
        );

        // A supervisor killed with SIGKILL leaves its container for gc.
        let abandoned = session.create(workspace.path(), &[]);
        let supervisor = session.listed(&abandoned).expect("listed")["supervisor_pid"]
            .as_i64()
            .expect("supervisor pid");
        // SAFETY: kill takes integers only; the pid is the supervisor this test started.
        unsafe { libc::kill(supervisor as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while session.listed(&abandoned).expect("listed")["status"] == "running"
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let gc = session.airlock(&["gc"], workspace.path());
        assert_eq!(
            gc.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&gc)
        );
        assert_eq!(
            labeled(engine, &abandoned),
            (0, 0),
            "{}: {}",
            engine.name,
            describe(&gc)
        );
        assert_eq!(labeled(engine, &removed), (0, 0), "{}", engine.name);

        let container_survived = exists(engine, "containers", &name);
        let volume_survived = exists(engine, "volumes", &name);
        engine_api(
            engine,
            "DELETE",
            &format!("/containers/{name}?force=1"),
            None,
        );
        engine_api(engine, "DELETE", &format!("/volumes/{name}"), None);
        assert!(
            container_survived,
            "{}: the user's container was removed",
            engine.name
        );
        assert!(
            volume_survived,
            "{}: the user's volume was removed",
            engine.name
        );
    }
}

/// Creates a container that is never started and a volume, labeled as sandbox `id` of
/// the state directory `state_dir`, as Airlock labels its own.
fn create_labeled(engine: &Engine, id: &str, state_dir: &str) {
    let labels = serde_json::json!({ "airlock.sandbox": id, "airlock.state-dir": state_dir });
    let name = format!("airlock-test-labeled-{id}");
    let body = serde_json::json!({ "Image": image(), "Cmd": ["true"], "Labels": labels });
    engine_api(
        engine,
        "POST",
        &format!("/containers/create?name={name}"),
        Some(&body.to_string()),
    );
    let volume = serde_json::json!({ "Name": name, "Labels": labels });
    engine_api(engine, "POST", "/volumes/create", Some(&volume.to_string()));
}

/// `gc` removes the containers and volumes of its state directory whose sandbox's record is
/// gone, and leaves those of another state directory and of its live sandboxes. It finds
/// them on the engine a live sandbox was created on, also when DOCKER_HOST names another.
#[test]
fn docker_gc_removes_only_own_orphans() {
    let engines = engines();
    for (index, engine) in engines.iter().enumerate() {
        let other = &engines[(index + 1) % engines.len()];
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let live = session.create(workspace.path(), &[]);
        let filter = format!("%7B%22label%22%3A%5B%22airlock.sandbox%3D{live}%22%5D%7D");
        let listed = engine_api(
            engine,
            "GET",
            &format!("/containers/json?all=1&filters={filter}"),
            None,
        );
        let state_dir = listed[0]["Labels"]["airlock.state-dir"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no state directory label in {listed}", engine.name))
            .to_owned();
        let orphan = format!("{:0>32}", unique_token());
        let foreign = format!("{:0>32}", unique_token());
        create_labeled(engine, &orphan, &state_dir);
        create_labeled(engine, &foreign, "/nonexistent/airlock-other-state");

        let gc = session
            .command(&["gc"], workspace.path())
            .env("DOCKER_HOST", &other.host)
            .stdin(Stdio::null())
            .output()
            .expect("run airlock");
        let foreign_left = labeled(engine, &foreign);
        let name = format!("airlock-test-labeled-{foreign}");
        engine_api(
            engine,
            "DELETE",
            &format!("/containers/{name}?force=1"),
            None,
        );
        engine_api(engine, "DELETE", &format!("/volumes/{name}"), None);
        assert_eq!(
            gc.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&gc)
        );
        assert_eq!(
            labeled(engine, &orphan),
            (0, 0),
            "{}: the orphan is left: {}",
            engine.name,
            describe(&gc)
        );
        assert_eq!(
            foreign_left,
            (1, 1),
            "{}: gc removed another state directory's container or volume",
            engine.name
        );
        assert_eq!(
            labeled(engine, &live),
            (1, 1),
            "{}: gc removed a live sandbox's container or volume",
            engine.name
        );
    }
}

#[test]
fn docker_signal_reaches_command() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let image = image();
        let script = "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done";
        let mut child = session
            .command(
                &[
                    "run",
                    "--backend",
                    "docker",
                    "--image",
                    &image,
                    "--",
                    "sh",
                    "-c",
                    script,
                ],
                workspace.path(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn airlock");
        let mut stdout_pipe = child.stdout.take().expect("stdout");
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(&mut stdout_pipe, &mut ready).expect("ready line");
        // SAFETY: kill takes integers only; the pid is the airlock this test started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let code = wait_bounded(&mut child, Duration::from_secs(30), &engine.name);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout_pipe, &mut rest).expect("rest of stdout");
        assert_eq!(code, 9, "{}: {rest}", engine.name);
        assert_eq!(rest, "got-term\n", "{}", engine.name);
    }
}

#[test]
fn docker_tty_gives_a_terminal() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let image = image();
        let command = format!(
            "{} --state-dir {} run -t --backend docker --image {image} -- sh -c 'test -t 0 && test -t 1 && tty'",
            binary().display(),
            session.state.display()
        );
        // script(1) gives Airlock a terminal of its own, as a person's shell would.
        let output = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("DOCKER_HOST", &engine.host)
            .current_dir(workspace.path())
            .stdin(Stdio::piped())
            .output()
            .expect("run script");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        assert!(
            stdout(&output).contains("/dev/pts/"),
            "{}: {}",
            engine.name,
            describe(&output)
        );
    }
}

#[test]
fn docker_errors_name_the_fix() {
    let engine = &engines()[0];
    let session = Session::new(engine);
    let workspace = Workspace::new(Caller::Root);
    let image = image();

    let no_image = session.airlock(
        &["run", "--backend", "docker", "--", "true"],
        workspace.path(),
    );
    assert_eq!(no_image.status.code(), Some(125), "{}", describe(&no_image));
    assert!(
        stderr(&no_image).contains("--image") && stderr(&no_image).contains("airlock image import"),
        "{}",
        describe(&no_image)
    );

    // Uppercase passes the character check but not the reference grammar, which the
    // engine would report as a bare status 400.
    let uppercase = [
        "run",
        "--backend",
        "docker",
        "--image",
        "UPPER/Bad",
        "--",
        "true",
    ];
    let invalid = session.airlock(&uppercase, workspace.path());
    assert_eq!(invalid.status.code(), Some(125), "{}", describe(&invalid));
    let message = stderr(&invalid);
    assert!(
        message.contains("invalid image \"UPPER/Bad\"") && message.contains("lowercase"),
        "{message}"
    );

    let other = session.airlock(&["run", "--image", &image, "--", "true"], workspace.path());
    assert_eq!(other.status.code(), Some(125), "{}", describe(&other));
    assert!(
        stderr(&other).contains("--image needs --backend docker"),
        "{}",
        describe(&other)
    );

    let mut unreachable = session.command(
        &[
            "run",
            "--backend",
            "docker",
            "--image",
            &image,
            "--",
            "true",
        ],
        workspace.path(),
    );
    let output = unreachable
        .env("DOCKER_HOST", "unix:///nonexistent/airlock-test.sock")
        .output()
        .expect("run airlock");
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(
        message.contains("/nonexistent/airlock-test.sock") && message.contains("dockerd"),
        "{message}"
    );
}

/// The errors that depend on the engine name the fix on Docker Engine and on Podman alike:
/// an image the engine does not have, and a socket the caller may not open.
#[test]
fn docker_engine_errors_name_the_fix() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let image = image();

        let args = [
            "run",
            "--backend",
            "docker",
            "--image",
            "airlock-test/missing:1",
            "--",
            "true",
        ];
        let missing = session.airlock(&args, workspace.path());
        assert_eq!(
            missing.status.code(),
            Some(125),
            "{}: {}",
            engine.name,
            describe(&missing)
        );
        let message = stderr(&missing);
        assert!(
            message.contains("airlock-test/missing:1"),
            "{}: {message}",
            engine.name
        );
        assert!(
            message.contains("airlock image pull"),
            "{}: {message}",
            engine.name
        );

        // Neither engine's socket is open to an ordinary user outside the docker group.
        let host = format!("DOCKER_HOST={}", engine.host);
        let args = [
            "run",
            "--backend",
            "docker",
            "--image",
            &image,
            "--",
            "true",
        ];
        let (script, _delegation) =
            airlock_shell_command(Caller::UserWithoutCgroup, &["env", &host], &args);
        let denied = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .output()
            .expect("run sh");
        assert_eq!(
            denied.status.code(),
            Some(125),
            "{}: {}",
            engine.name,
            describe(&denied)
        );
        let message = stderr(&denied);
        assert!(
            message.contains("permission denied on the engine socket"),
            "{}: {message}",
            engine.name
        );
        assert!(
            message.contains(&format!("{:?}", engine.socket)),
            "{}: {message}",
            engine.name
        );
    }
}

/// Starts a fake engine on a socket in `dir` that responds to every request as an engine of
/// API 1.40 (Docker Engine 19.03) responds to a ping, and returns the socket. The thread ends
/// with the test process.
fn old_engine(dir: &Path) -> PathBuf {
    use std::io::{BufRead, BufReader};
    let socket = dir.join("old-engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind the fake engine");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone the connection"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                line.clear();
            }
            let response = "HTTP/1.1 200 OK\r\nApi-Version: 1.40\r\nContent-Type: text/plain\r\n\
                            Content-Length: 2\r\nConnection: close\r\n\r\nOK";
            let _ = stream.write_all(response.as_bytes());
        }
    });
    socket
}

/// An engine older than API 1.41 fails the run with its version and the upgrade to make.
#[test]
fn docker_old_engine_names_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let socket = old_engine(dir.path());
    let engine = Engine {
        name: "fake engine of API 1.40".to_owned(),
        host: format!("unix://{}", socket.display()),
        socket,
    };
    let session = Session::new(&engine);
    let workspace = Workspace::new(Caller::Root);
    let output = session.run_sh(workspace.path(), &[], "true");
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(message.contains("speaks API 1.40"), "{message}");
    assert!(message.contains("older than 1.41"), "{message}");
    assert!(
        message.contains("upgrade it to Docker Engine 20.10 or Podman 4"),
        "{message}"
    );
}

/// `policy check` reports, per engine, the protections of a spec with CPU and memory limits
/// as enforced, from the container's configuration and the engine's `GET /info`.
#[test]
fn docker_policy_check_lists_engine_rules() {
    let expected = [
        "read-only root filesystem",
        "network limited to a private loopback",
        "all capabilities dropped",
        "no_new_privs",
        "seccomp filter",
        "memory limit",
        "cpu limit",
        "pids limit",
    ];
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let image = image();
        let args = [
            "policy",
            "check",
            "--backend",
            "docker",
            "--image",
            &image,
            "--cpus",
            "1",
            "--memory",
            "64M",
            "--json",
        ];
        let output = session.airlock(&args, workspace.path());
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("policy JSON");
        let rules = report["rules"].as_array().expect("rules");
        for name in expected {
            let rule = rules
                .iter()
                .find(|rule| rule["rule"] == name)
                .unwrap_or_else(|| panic!("{}: no rule {name:?} in {report}", engine.name));
            assert_eq!(
                rule["backends"]["docker"]["status"], "enforced",
                "{}: {rule}",
                engine.name
            );
        }
    }
}

#[test]
fn docker_policy_check_reads_user_remapping() {
    for engine in &engines() {
        let session = Session::new(engine);
        let workspace = Workspace::new(Caller::Root);
        let image = image();
        let check = |extra: &[&str]| {
            let mut args = vec![
                "policy",
                "check",
                "--backend",
                "docker",
                "--image",
                &image,
                "--json",
            ];
            args.extend_from_slice(extra);
            session.airlock(&args, workspace.path())
        };
        let output = check(&[]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        let output = check(&["--user", "root"]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}: {}",
            engine.name,
            describe(&output)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("policy JSON");
        let user = report["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|rule| rule["rule"] == "root inside holds no privilege on the host")
            .expect("user rule");
        assert!(
            user.to_string().contains("does not remap users"),
            "{}: {user}",
            engine.name
        );
    }
}
