//! The `vm` backend, run as root, and the host view and bind workspace also as the
//! unprivileged caller: each test boots a real QEMU guest with Debian's cloud kernel and the
//! debootstrap tree as its root disk, or the host view shared through virtiofs, under KVM
//! when it works here and under software emulation (TCG) otherwise, which takes a few
//! seconds per guest.
//!
//! Each test gives Airlock a private TMPDIR, where each guest's socket, workspace disk and
//! logs live, so it can check that no QEMU of its own is left and nothing is left there.
//! They need QEMU, mkfs.ext4, linux-image-cloud-amd64 and the debootstrap tree,
//! which scripts/test installs and builds.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use super::harness::{
    describe, json_record, make_node, run, spawn_airlock, stderr, stdout, test_user, wait_bounded,
    Caller, Workspace, CALLERS,
};

const ROOT: Caller = Caller::Root;

/// Default place of the debootstrap tree that scripts/test builds.
const DEFAULT_ROOTFS: &str = "/var/cache/airlock-tests/rootfs-bookworm";

/// The maximum time a test waits for one `airlock run`: a boot under TCG on a loaded 2-core host,
/// and the root disk image built by the first test.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn rootfs() -> PathBuf {
    let path = std::env::var_os("AIRLOCK_TEST_ROOTFS")
        .map_or_else(|| PathBuf::from(DEFAULT_ROOTFS), PathBuf::from);
    assert!(
        path.join("usr/bin/perl").is_file(),
        "no debootstrap tree at {}: scripts/test builds it, or set AIRLOCK_TEST_ROOTFS",
        path.display()
    );
    path
}

/// A workspace directory and a private TMPDIR for one test's guests, owned by the caller
/// that runs them.
struct Scene {
    caller: Caller,
    workspace: Workspace,
    tmp: tempfile::TempDir,
    /// The guest image cache of an unprivileged caller, whose HOME is root's.
    cache: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        Scene::for_caller(ROOT)
    }

    fn for_caller(caller: Caller) -> Scene {
        let private_dir = |prefix: &str| {
            let dir = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("tempdir");
            if caller != ROOT {
                let (uid, gid) = test_user();
                std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
            }
            dir
        };
        Scene {
            caller,
            workspace: Workspace::new(caller),
            tmp: private_dir("airlock-vm-test-"),
            cache: private_dir("airlock-vm-cache-"),
        }
    }

    /// Returns the `env` wrapper that gives Airlock the scene's TMPDIR, and an unprivileged
    /// caller its cache directory.
    fn environment(&self) -> Vec<String> {
        let mut wrapper = vec![
            "env".to_owned(),
            format!("TMPDIR={}", self.tmp.path().display()),
        ];
        if self.caller != ROOT {
            wrapper.push(format!("AIRLOCK_CACHE_DIR={}", self.cache.path().display()));
        }
        wrapper
    }

    /// Runs `airlock run --backend vm --rootfs TREE EXTRA... -- ARGV` in the scene's
    /// workspace and checks that it left no QEMU and no guest files.
    fn run(&self, extra: &[&str], argv: &[&str]) -> Output {
        let rootfs = rootfs();
        let mut with_root = vec!["--rootfs", rootfs.to_str().expect("UTF-8 path")];
        with_root.extend_from_slice(extra);
        self.run_host_view(&with_root, argv)
    }

    /// Runs `airlock run --backend vm EXTRA... -- ARGV`, on the host view unless EXTRA
    /// names a root, and checks that it left no QEMU, virtiofsd or guest files.
    fn run_host_view(&self, extra: &[&str], argv: &[&str]) -> Output {
        self.run_with_env(&[], extra, argv)
    }

    /// Runs `airlock run --backend vm EXTRA... -- ARGV` with the variables `env` (each
    /// `NAME=VALUE`) as [`Scene::run_host_view`] does.
    fn run_with_env(&self, env: &[&str], extra: &[&str], argv: &[&str]) -> Output {
        let mut args = vec!["run", "--backend", "vm"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(argv);
        let environment = self.environment();
        let mut wrapper: Vec<&str> = environment.iter().map(String::as_str).collect();
        wrapper.extend_from_slice(env);
        let mut spawned = spawn_airlock(
            self.caller,
            &wrapper,
            &args,
            self.workspace.path(),
            Stdio::piped(),
        );
        let started = Instant::now();
        let code = wait_bounded(&mut spawned.child, RUN_LIMIT, "airlock run --backend vm");
        let output = spawned.child.wait_with_output().expect("collect output");
        assert_eq!(output.status.code(), Some(code));
        eprintln!("airlock run --backend vm took {:?}", started.elapsed());
        self.assert_nothing_left();
        output
    }

    /// Runs `airlock ARGS...` as the scene's caller in its workspace, with its TMPDIR and
    /// cache, as for the commands that `airlock create` sandboxes take.
    fn airlock(&self, args: &[&str]) -> Output {
        let environment = self.environment();
        let wrapper: Vec<&str> = environment.iter().map(String::as_str).collect();
        let project = self.workspace.path();
        let mut spawned = spawn_airlock(self.caller, &wrapper, args, project, Stdio::piped());
        let code = wait_bounded(&mut spawned.child, RUN_LIMIT, &format!("airlock {args:?}"));
        let output = spawned.child.wait_with_output().expect("collect output");
        assert_eq!(output.status.code(), Some(code));
        output
    }

    /// Creates a vm sandbox of the debootstrap tree with `extra` options; returns its id.
    fn create(&self, extra: &[&str]) -> String {
        let rootfs = rootfs();
        let mut args = vec!["create", "--backend", "vm", "--rootfs"];
        args.push(rootfs.to_str().expect("UTF-8 path"));
        args.extend_from_slice(extra);
        let created = self.airlock(&args);
        assert_eq!(created.status.code(), Some(0), "{}", describe(&created));
        stdout(&created).trim().to_owned()
    }

    /// Stops and removes sandbox `id`, and checks that nothing of its guest is left.
    fn remove(&self, id: &str) {
        let stopped = self.airlock(&["stop", id]);
        assert_eq!(stopped.status.code(), Some(0), "{}", describe(&stopped));
        let removed = self.airlock(&["rm", id]);
        assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
        self.assert_nothing_left();
    }

    /// Checks that no process runs from this test's TMPDIR and that it is empty. A run
    /// removes its guest's directory in a child process after it exits, so both get a
    /// few seconds.
    fn assert_nothing_left(&self) {
        let marker = self.tmp.path().to_str().expect("UTF-8 path").to_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_mentioning(&marker);
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU or virtiofsd left running: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let entries: Vec<_> = fs::read_dir(self.tmp.path())
                .expect("list TMPDIR")
                .flatten()
                .map(|entry| entry.path())
                .collect();
            if entries.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "guest files left behind: {entries:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Returns the id of the sandbox that kept a run's workspace changes, from its message.
fn kept_sandbox_id(output: &Output) -> String {
    let message = stderr(output);
    message
        .split("kept in sandbox ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no kept sandbox in {message:?}"))
        .to_owned()
}

/// Returns the pid and command line of every process whose command line contains `text`.
fn processes_mentioning(text: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("list /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(text) && !cmdline.contains("cargo") {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
fn vm_streams_output_and_exit_status() {
    let scene = Scene::new();
    let output = scene.run(
        &[],
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"],
    );
    assert_eq!(output.status.code(), Some(7), "{}", describe(&output));
    assert_eq!(stdout(&output), "to-stdout\n");
    assert!(
        stderr(&output).contains("to-stderr\n"),
        "{}",
        describe(&output)
    );
}

#[test]
fn vm_guest_runs_own_kernel_without_network() {
    let scene = Scene::new();
    let script = "uname -r; ls /sys/class/net; tr '\\0' ' ' < /proc/1/cmdline; echo; \
                  cat /proc/sys/kernel/random/boot_id; echo input | cat; \
                  cat /sys/class/net/lo/flags";
    let output = scene.run(&["--json"], &["sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    let host_release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert!(lines[0].ends_with("-cloud-amd64"), "guest kernel: {text}");
    assert_ne!(
        lines[0],
        host_release.trim(),
        "the guest runs the host's kernel"
    );
    assert_eq!(lines[1], "lo", "network devices in the guest: {text}");
    assert!(
        lines[2].contains("__vm-agent"),
        "PID 1 of the guest: {text}"
    );
    let host_boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot_id");
    assert_ne!(
        lines[3],
        host_boot.trim(),
        "the guest shares the host's boot id"
    );
    assert_eq!(lines[4], "input");
    assert_eq!(
        lines[5], "0x9",
        "the loopback is not up (IFF_UP | IFF_LOOPBACK)"
    );
    let record = json_record(&output);
    assert_eq!(record["backend"], "vm");
    assert_eq!(record["exit_code"], 0);
}

/// The guest's directory contains a copy of the project, and the cached disk images contain
/// every file of their trees, /etc/shadow included. No other user may read either.
#[test]
fn vm_guest_files_and_cache_private_to_owner() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new();
    let listing = format!(
        "stat -c %a {}/airlock-vm-* 2>/dev/null || true",
        scene.tmp.path().display()
    );
    // The guest's directory is looked at from the host while the command runs in it.
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + RUN_LIMIT;
        while Instant::now() < deadline {
            let output = std::process::Command::new("sh")
                .args(["-c", &listing])
                .output()
                .expect("run sh");
            let modes = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if !modes.is_empty() {
                return modes;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        String::new()
    });
    let output = scene.run(&[], &["sleep", "2"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(
        watcher.join().unwrap(),
        "700",
        "mode of the guest's directory"
    );

    // Only the owner may enter the cache directory, whatever the modes of older files in it.
    let cache = PathBuf::from("/var/cache/airlock/vm");
    let mode = fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{cache:?} has mode {mode:o}");
}

/// A SIGTERM to Airlock reaches the command in the guest, whose own exit ends the run.
#[test]
fn vm_sigterm_reaches_guest_command() {
    use std::io::BufRead;
    let scene = Scene::new();
    let rootfs = rootfs();
    let tmp = format!("TMPDIR={}", scene.tmp.path().display());
    let script = "trap 'echo got-term; exit 5' TERM; echo started; sleep 100 & wait";
    let args = [
        "run",
        "--backend",
        "vm",
        "--rootfs",
        rootfs.to_str().expect("UTF-8 path"),
        "--",
        "sh",
        "-c",
        script,
    ];
    let mut spawned = spawn_airlock(
        ROOT,
        &["env", &tmp],
        &args,
        scene.workspace.path(),
        Stdio::piped(),
    );

    let mut lines = std::io::BufReader::new(spawned.child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").expect("read stdout");
    assert_eq!(first, "started");

    // SAFETY: kill takes integers only, and the pid is the test's own child, Airlock.
    unsafe { libc::kill(spawned.child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map(|line| line.expect("read stdout")).collect();
    let code = wait_bounded(&mut spawned.child, RUN_LIMIT, "airlock run --backend vm");

    assert_eq!(rest, ["got-term"]);
    assert_eq!(code, 5);
    scene.assert_nothing_left();
}

/// SIGINT or SIGTERM while the guest boots ends the run with 128+N: QEMU is killed and
/// reaped and the guest's directory removed, with no `airlock gc` needed.
#[test]
fn vm_signal_during_boot_leaves_nothing() {
    let scene = Scene::new();
    let rootfs = rootfs();
    let tmp = format!("TMPDIR={}", scene.tmp.path().display());
    let marker = scene.tmp.path().to_str().expect("UTF-8 path").to_owned();
    let args = [
        "run",
        "--backend",
        "vm",
        "--workspace-mode",
        "none",
        "--rootfs",
        rootfs.to_str().expect("UTF-8 path"),
        "--",
        "sh",
        "-c",
        "echo started; sleep 100",
    ];
    for (signal, expected) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let mut spawned = spawn_airlock(
            ROOT,
            &["env", &tmp],
            &args,
            scene.workspace.path(),
            Stdio::piped(),
        );
        // The wrapper's own command line names the TMPDIR too, so the wait looks for QEMU's.
        let qemu_started = || {
            processes_mentioning(&marker)
                .iter()
                .any(|(_, cmdline)| cmdline.contains("qemu-system"))
        };
        let deadline = Instant::now() + RUN_LIMIT;
        while !qemu_started() {
            assert!(Instant::now() < deadline, "QEMU did not start");
            std::thread::sleep(Duration::from_millis(10));
        }

        // SAFETY: kill takes integers only, and the pid is the test's own child, Airlock.
        unsafe { libc::kill(spawned.child.id() as i32, signal) };
        let code = wait_bounded(&mut spawned.child, RUN_LIMIT, "airlock run --backend vm");
        let output = spawned.child.wait_with_output().expect("collect output");

        assert_eq!(code, expected, "signal {signal}: {}", describe(&output));
        assert_eq!(
            stdout(&output),
            "",
            "the command ran: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains("before the command started"),
            "{}",
            describe(&output)
        );
        scene.assert_nothing_left();
    }
}

/// The guest's wall clock matches the host's when the command starts and still does after
/// a 10 s sleep, also under software emulation, where the guest keeps time with the host's
/// TSC at the frequency the host measured.
#[test]
fn vm_guest_clock_matches_host() {
    use std::io::BufRead;
    let scene = Scene::new();
    let rootfs = rootfs();
    let tmp = format!("TMPDIR={}", scene.tmp.path().display());
    let args = [
        "run",
        "--backend",
        "vm",
        "--workspace-mode",
        "none",
        "--rootfs",
        rootfs.to_str().expect("UTF-8 path"),
        "--",
        "sh",
        "-c",
        "date +%s.%N; sleep 10; date +%s.%N",
    ];
    let mut spawned = spawn_airlock(
        ROOT,
        &["env", &tmp],
        &args,
        scene.workspace.path(),
        Stdio::piped(),
    );
    let host_now = || {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970");
        since_epoch.as_secs_f64()
    };
    // Each line's guest time, with the host's time when the line arrived.
    let mut stamps = Vec::new();
    let lines = std::io::BufReader::new(spawned.child.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.expect("read stdout");
        let guest: f64 = line
            .parse()
            .unwrap_or_else(|_| panic!("not a time: {line:?}"));
        stamps.push((guest, host_now()));
    }
    let code = wait_bounded(&mut spawned.child, RUN_LIMIT, "airlock run --backend vm");

    assert_eq!(code, 0);
    assert_eq!(stamps.len(), 2, "{stamps:?}");
    for (guest, host) in &stamps {
        // The line leaves the guest after its time was taken, so the host's is later.
        let behind = host - guest;
        assert!(
            (0.0..1.0).contains(&behind),
            "guest clock {guest:.3}, host clock {host:.3} when the line arrived"
        );
    }
    let guest_elapsed = stamps[1].0 - stamps[0].0;
    let host_elapsed = stamps[1].1 - stamps[0].1;
    assert!(
        (guest_elapsed - host_elapsed).abs() < 1.0,
        "over the sleep, {guest_elapsed:.3} s passed in the guest and {host_elapsed:.3} s on the host"
    );
    scene.assert_nothing_left();
}

#[test]
fn vm_passes_stdin_through() {
    let scene = Scene::new();
    let rootfs = rootfs();
    // The harness gives Airlock no stdin, so a host shell pipes data into a nested Airlock.
    let payload: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let payload_file = scene.tmp.path().join("payload");
    fs::write(&payload_file, &payload).expect("write payload");
    let workspace = scene.workspace.path();
    let binary = super::harness::binary();
    let output = std::process::Command::new(binary)
        .env("TMPDIR", scene.tmp.path())
        .env("AIRLOCK_STATE_DIR", super::harness::state_dir(ROOT))
        .args([
            "run",
            "--backend",
            "vm",
            "--workspace-mode",
            "none",
            "--rootfs",
        ])
        .arg(&rootfs)
        .args(["--", "sh", "-c", "wc -l; echo done"])
        .current_dir(workspace)
        .stdin(fs::File::open(&payload_file).expect("open payload"))
        .output()
        .expect("run airlock");
    fs::remove_file(&payload_file).expect("remove payload");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(stdout(&output), "20000\ndone\n");
    scene.assert_nothing_left();
}

#[test]
fn vm_tty_option_gives_guest_terminal() {
    let scene = Scene::new();
    let script = "tty; test -t 0 && echo stdin-terminal; test -t 1 && echo stdout-terminal";
    let output = scene.run(&["-t", "--workspace-mode", "none"], &["sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = stdout(&output).replace('\r', "");
    assert!(
        text.lines().any(|line| line.starts_with("/dev/pts/")),
        "{text:?}"
    );
    assert!(
        text.lines().any(|line| line == "stdin-terminal"),
        "{text:?}"
    );
    assert!(
        text.lines().any(|line| line == "stdout-terminal"),
        "{text:?}"
    );
}

#[test]
fn vm_missing_command_exits_127() {
    let scene = Scene::new();
    let output = scene.run(&[], &["no-such-command-in-guest"]);
    assert_eq!(output.status.code(), Some(127), "{}", describe(&output));
    assert!(
        stderr(&output).contains("command not found"),
        "{}",
        describe(&output)
    );
}

#[test]
fn vm_memory_hog_killed_at_limit() {
    let scene = Scene::new();
    // Memory grown a MiB at a time in a guest of 256 MiB, so that each allocation succeeds
    // and the guest kernel's OOM killer, not malloc, ends perl.
    let hog = "my @hog; push @hog, 'a' x (1024 * 1024) while 1";
    let output = scene.run(&["--memory", "256M", "--json"], &["perl", "-e", hog]);
    assert_eq!(output.status.code(), Some(123), "{}", describe(&output));
    let record = json_record(&output);
    assert_eq!(record["reason"], "out_of_memory");
    assert!(stdout(&output).is_empty(), "{}", describe(&output));
}

/// Memory or CPUs beyond the host's are rejected before any image is built or QEMU started,
/// with the value and the fix. The smallest memory limit still boots a guest, because the
/// guest's kernel and agent get their memory on top of the limit. Memory beyond what the
/// host has available now only warns.
#[test]
fn vm_memory_and_cpus_checked_against_host() {
    let scene = Scene::new();
    let output = scene.run(&["--memory", "100T"], &["true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(
        message.contains("memory limit 100T is more than this host can give a guest"),
        "{message}"
    );
    assert!(message.contains("pass --memory"), "{message}");
    assert!(!message.contains("QEMU"), "QEMU was started: {message}");

    // SAFETY: sysconf takes an integer and touches no memory.
    let host_cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let too_many = (host_cpus + 1).to_string();
    let output = scene.run(&["--cpus", &too_many], &["true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    let expected = format!("--cpus {too_many} is more than this host's {host_cpus} CPUs");
    assert!(message.contains(&expected), "{message}");
    assert!(
        message.contains(&format!("pass --cpus {host_cpus} or less")),
        "{message}"
    );

    let output = scene.run(
        &["--memory", "16M", "--workspace-mode", "none"],
        &["sh", "-c", "echo booted"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(stdout(&output), "booted\n");
    assert!(
        !stderr(&output).contains("MemAvailable"),
        "{}",
        describe(&output)
    );

    // The largest --memory the host's total allows exceeds what is available now, which
    // only warns. The kernel that is not one ends the run before any guest boots.
    let meminfo = fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    let memory = format!("{}M", (total_kib * 1024 - (128 << 20)) >> 20);
    let image = scene.workspace.path().join("bzImage");
    fs::write(&image, b"not a kernel").expect("write image");
    let kernel = image.to_str().expect("UTF-8 path");
    let output = scene.run(&["--memory", &memory, "--kernel", kernel], &["true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    let warnings: Vec<&str> = message
        .lines()
        .filter(|line| line.contains("exceeds the host's MemAvailable of"))
        .collect();
    assert_eq!(warnings.len(), 1, "{message}");
    assert!(warnings[0].starts_with("airlock: warning: "), "{message}");
    assert!(warnings[0].contains("pass a smaller --memory"), "{message}");
    assert!(
        message.contains("is not named vmlinuz-RELEASE"),
        "{message}"
    );
}

#[test]
fn vm_agent_survives_workload_killing_everything() {
    let scene = Scene::new();
    // kill -9 -1 from the guest's root reaches every process but the caller and PID 1, the
    // agent, which still relays the output and the status and powers the guest off.
    let script = "sleep 300 & kill -9 -1; wait $!; echo \"sleep ended: $?\"; kill -9 -1; exit 3";
    let output = scene.run(&[], &["sh", "-c", script]);
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(
        stdout(&output),
        "sleep ended: 137\n",
        "{}",
        describe(&output)
    );
}

#[test]
fn vm_kernel_panic_ends_run_clearly() {
    let scene = Scene::new();
    let output = scene.run(&[], &["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(
        message.contains("the guest stopped while the command ran"),
        "{}",
        describe(&output)
    );
    assert!(
        message.contains("Kernel panic"),
        "console line missing: {message}"
    );
    assert!(
        message.contains("sysrq"),
        "cause of the panic missing: {message}"
    );
}

#[test]
fn vm_timeout_ends_guest() {
    let scene = Scene::new();
    let output = scene.run(&["--timeout", "3s", "--json"], &["sleep", "120"]);
    assert_eq!(output.status.code(), Some(124), "{}", describe(&output));
    assert_eq!(json_record(&output)["reason"], "timed_out");
}

#[test]
fn vm_qemu_dies_with_killed_airlock() {
    let scene = Scene::new();
    let rootfs = rootfs();
    let root = rootfs.to_str().expect("UTF-8 path");
    let running = kill_airlock_mid_run(&scene, &["--workspace-mode", "none", "--rootfs", root]);
    assert!(
        running.iter().any(|(_, line)| line.contains("qemu-system")),
        "no QEMU found while the command ran: {running:?}"
    );
}

#[test]
fn vm_share_daemons_die_with_killed_airlock() {
    let scene = Scene::new();
    let running = kill_airlock_mid_run(&scene, &["--workspace-mode", "bind"]);
    let daemons = running
        .iter()
        .filter(|(_, line)| line.contains("virtiofsd"))
        .count();
    // One for the host view and one for the project.
    assert!(
        daemons >= 2,
        "no virtiofsd for each share while the command ran: {running:?}"
    );
}

/// Starts `airlock run --backend vm EXTRA...` with a command that runs for minutes, kills
/// Airlock with SIGKILL once the command started, and checks that everything it started
/// dies and that `airlock gc` removes its files. Returns the processes that ran from the
/// scene's TMPDIR while the command ran.
fn kill_airlock_mid_run(scene: &Scene, extra: &[&str]) -> Vec<(u32, String)> {
    let mut args = vec!["run", "--backend", "vm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", "echo started; sleep 600"]);
    let environment = scene.environment();
    let wrapper: Vec<&str> = environment.iter().map(String::as_str).collect();
    let mut spawned = spawn_airlock(
        ROOT,
        &wrapper,
        &args,
        scene.workspace.path(),
        Stdio::piped(),
    );
    let mut stdout = spawned.child.stdout.take().expect("stdout pipe");
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("the command started");
    assert_eq!(&first, b"started\n");
    let marker = scene.tmp.path().to_str().expect("UTF-8 path").to_owned();
    let running = processes_mentioning(&marker);
    spawned.child.kill().expect("kill airlock");
    let _ = spawned.child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU or virtiofsd outlived Airlock: {:?}",
            processes_mentioning(&marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Airlock killed with SIGKILL cannot remove its guest's directory; gc does.
    let mut gc = spawn_airlock(
        ROOT,
        &wrapper,
        &["gc"],
        scene.workspace.path(),
        Stdio::piped(),
    );
    let code = wait_bounded(&mut gc.child, RUN_LIMIT, "airlock gc");
    assert_eq!(code, 0, "airlock gc failed");
    scene.assert_nothing_left();
    running
}

#[test]
fn vm_workspace_changes_reviewed_then_applied() {
    let scene = Scene::new();
    let project = scene.workspace.path();
    fs::write(project.join("a.txt"), "original\n").expect("write a.txt");
    fs::write(project.join("b.txt"), "remove me\n").expect("write b.txt");
    fs::create_dir(project.join("sub")).expect("mkdir sub");
    let script = "ls -A; cat a.txt; echo changed > a.txt; rm b.txt; echo new > sub/d.txt";
    let output = scene.run(&[], &["sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(stdout(&output), "a.txt\nb.txt\nsub\noriginal\n");
    assert_eq!(
        fs::read_to_string(project.join("a.txt")).unwrap(),
        "original\n"
    );
    let id = kept_sandbox_id(&output);

    let diff = run(ROOT, &["diff", &id], project);
    assert_eq!(diff.status.code(), Some(0), "{}", describe(&diff));
    assert_eq!(stdout(&diff), "M a.txt\nD b.txt\nA sub/d.txt\n");
    let apply = run(ROOT, &["apply", &id], project);
    assert_eq!(apply.status.code(), Some(0), "{}", describe(&apply));
    assert_eq!(
        fs::read_to_string(project.join("a.txt")).unwrap(),
        "changed\n"
    );
    assert!(!project.join("b.txt").exists(), "b.txt was not deleted");
    assert_eq!(
        fs::read_to_string(project.join("sub/d.txt")).unwrap(),
        "new\n"
    );
    let removed = run(ROOT, &["rm", &id], project);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
}

#[test]
fn vm_readonly_workspace_rejects_writes() {
    let scene = Scene::new();
    fs::write(scene.workspace.path().join("a.txt"), "data\n").expect("write a.txt");
    let script = "cat a.txt; echo x > a.txt || echo refused";
    let output = scene.run(&["--workspace-mode", "readonly"], &["sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(stdout(&output), "data\nrefused\n");
    assert!(
        stderr(&output).contains("Read-only file system"),
        "{}",
        describe(&output)
    );
}

#[test]
fn vm_host_view_runs_host_programs() {
    for caller in CALLERS {
        let scene = Scene::for_caller(caller);
        // The host's secrets are masked with its /dev/null, which the guest cannot open.
        let script = "python3 -c 'print(1)'; test -c /etc/shadow && echo masked; ls /";
        let output = scene.run_host_view(&["--workspace-mode", "none"], &["sh", "-c", script]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{caller:?}: {}",
            describe(&output)
        );
        let printed = stdout(&output);
        let mut lines = printed.lines();
        assert_eq!(lines.next(), Some("1"), "{caller:?}: {printed}");
        assert_eq!(lines.next(), Some("masked"), "/etc/shadow shown: {printed}");
        let root: Vec<&str> = lines.collect();
        assert!(root.contains(&"usr"), "{caller:?}: {printed}");
        assert!(!root.contains(&"root"), "/root shown: {printed}");
        assert!(!root.contains(&"home"), "/home shown: {printed}");
    }
}

/// A guest's root may remount its view of the host read-write: the daemon's read-only
/// mounts must still stop every write, even to a file that anyone may write.
#[test]
fn vm_host_view_read_only_on_host() {
    let marker = Path::new("/opt").join(format!("airlock-vm-test-{}", std::process::id()));
    fs::write(&marker, "original\n").expect("write the marker");
    fs::set_permissions(&marker, fs::Permissions::from_mode(0o666)).expect("chmod marker");
    let name = marker
        .file_name()
        .and_then(|name| name.to_str())
        .expect("UTF-8 name");
    let script = format!(
        "mkdir /tmp/m && mount -t virtiofs airlock-root /tmp/m \
         && mount -o remount,rw /tmp/m && grep -q ' /tmp/m virtiofs rw' /proc/mounts \
         && echo remounted; \
         echo changed > /tmp/m/opt/{name} || echo refused; \
         touch /tmp/m/opt/{name}.new || echo refused; \
         rm /tmp/m/opt/{name} || echo refused"
    );
    for caller in CALLERS {
        let scene = Scene::for_caller(caller);
        let output = scene.run_host_view(&["--workspace-mode", "none"], &["sh", "-c", &script]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{caller:?}: {}",
            describe(&output)
        );
        assert_eq!(
            stdout(&output),
            "remounted\nrefused\nrefused\nrefused\n",
            "{caller:?}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).contains("Read-only file system"),
            "{caller:?}: {}",
            describe(&output)
        );
        assert_eq!(fs::read_to_string(&marker).unwrap(), "original\n");
        assert!(!marker.with_extension("new").exists());
    }
    fs::remove_file(&marker).expect("remove the marker");
}

#[test]
fn vm_bind_workspace_writes_reach_project() {
    for caller in CALLERS {
        let scene = Scene::for_caller(caller);
        let project = scene.workspace.path();
        fs::write(project.join("a.txt"), "original\n").expect("write a.txt");
        if caller != ROOT {
            let (uid, gid) = test_user();
            std::os::unix::fs::chown(project.join("a.txt"), Some(uid), Some(gid))
                .expect("chown a.txt");
        }
        let script = "cat a.txt; echo changed > a.txt; mkdir sub; echo new > sub/b.txt";
        let output = scene.run_host_view(&["--workspace-mode", "bind"], &["sh", "-c", script]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{caller:?}: {}",
            describe(&output)
        );
        assert_eq!(stdout(&output), "original\n");
        assert!(
            !stderr(&output).contains("kept in sandbox"),
            "{caller:?}: {}",
            describe(&output)
        );
        assert_eq!(
            fs::read_to_string(project.join("a.txt")).unwrap(),
            "changed\n"
        );
        let created = project.join("sub/b.txt");
        assert_eq!(fs::read_to_string(&created).unwrap(), "new\n");
        let expected_owner = match caller {
            ROOT => 0,
            _ => test_user().0,
        };
        let owner = fs::metadata(&created).expect("stat sub/b.txt").uid();
        assert_eq!(owner, expected_owner, "{caller:?}: owner of a new file");
    }
}

#[test]
fn vm_share_daemons_gone_after_failed_boot() {
    let scene = Scene::new();
    let release = fs::read_dir("/boot")
        .expect("list /boot")
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .find(|name| name.starts_with("vmlinuz-") && name.ends_with("-cloud-amd64"))
        .expect("a cloud kernel in /boot");
    // Named like the installed kernel, so its modules are found, but not bootable.
    let image = scene.cache.path().join(&release);
    fs::write(&image, b"not a kernel").expect("write image");
    let kernel = image.to_str().expect("UTF-8 path");
    let extra = ["--kernel", kernel, "--workspace-mode", "bind"];
    let output = scene.run_host_view(&extra, &["true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    assert!(
        stderr(&output).contains("linux kernel too old"),
        "{}",
        describe(&output)
    );
}

#[test]
fn vm_kernel_option_checked() {
    let scene = Scene::new();
    let image = scene.workspace.path().join("bzImage");
    fs::write(&image, b"not a kernel").expect("write image");
    let kernel = image.to_str().expect("UTF-8 path");
    let output = scene.run(&["--kernel", kernel], &["true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    assert!(
        stderr(&output).contains("is not named vmlinuz-RELEASE"),
        "{}",
        describe(&output)
    );
    let release = fs::read_dir("/boot")
        .expect("list /boot")
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .find(|name| name.starts_with("vmlinuz-") && name.ends_with("-cloud-amd64"))
        .expect("a cloud kernel in /boot");
    let explicit = format!("/boot/{release}");
    let output = scene.run(
        &["--kernel", &explicit, "--workspace-mode", "none"],
        &["uname", "-r"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(
        stdout(&output).trim(),
        release.trim_start_matches("vmlinuz-")
    );
}

#[test]
fn vm_user_create_uses_cache_and_tmpdir() {
    // The supervisor that `create` starts must see the caller's cache and TMPDIR, as `run`
    // does: without them an unprivileged caller has no cache directory.
    let scene = Scene::for_caller(Caller::User);
    let created = scene.airlock(&["create", "--backend", "vm"]);
    assert_eq!(created.status.code(), Some(0), "{}", describe(&created));
    let id = stdout(&created).trim().to_owned();
    let guest_dirs = fs::read_dir(scene.tmp.path())
        .expect("read the scene's TMPDIR")
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("airlock-vm-")
        })
        .count();
    assert_eq!(
        guest_dirs, 1,
        "the guest's files are not in the caller's TMPDIR"
    );
    let cached = fs::read_dir(scene.cache.path().join("vm"))
        .expect("read the caller's cache")
        .count();
    assert!(cached > 0, "nothing in the caller's cache");

    let exec = scene.airlock(&["exec", &id, "--", "sh", "-c", "echo from-the-guest"]);
    assert_eq!(exec.status.code(), Some(0), "{}", describe(&exec));
    assert_eq!(stdout(&exec), "from-the-guest\n");
    scene.remove(&id);
}

#[test]
fn vm_created_sandbox_serves_exec_cp_and_stop() {
    let scene = Scene::new();
    let project = scene.workspace.path();
    fs::write(project.join("f.txt"), "hello\n").expect("write f.txt");
    let rootfs = rootfs();
    let tmp = format!("TMPDIR={}", scene.tmp.path().display());
    let airlock = |args: &[&str]| scene.airlock(args);
    let root = rootfs.to_str().expect("UTF-8 path");
    let created = airlock(&["create", "--backend", "vm", "--rootfs", root]);
    assert_eq!(created.status.code(), Some(0), "{}", describe(&created));
    let id = stdout(&created).trim().to_owned();

    let first = airlock(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "cat f.txt; echo state > /tmp/kept; echo changed > f.txt",
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    assert_eq!(stdout(&first), "hello\n");
    let second = airlock(&["exec", &id, "--", "sh", "-c", "cat /tmp/kept f.txt; exit 5"]);
    assert_eq!(second.status.code(), Some(5), "{}", describe(&second));
    assert_eq!(stdout(&second), "state\nchanged\n");
    let hostname = airlock(&["exec", &id, "--", "cat", "/proc/sys/kernel/hostname"]);
    assert_eq!(hostname.status.code(), Some(0), "{}", describe(&hostname));
    assert_eq!(stdout(&hostname), format!("airlock-{}\n", &id[..12]));

    let incoming = scene.tmp.path().join("incoming.txt");
    fs::write(&incoming, "copied in\n").expect("write incoming");
    let target = format!("{id}:/tmp/incoming.txt");
    let copied = airlock(&["cp", incoming.to_str().expect("UTF-8 path"), &target]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    fs::remove_file(&incoming).expect("remove incoming");
    let outgoing = project.join("out.txt");
    let source = format!("{id}:/tmp/incoming.txt");
    let copied = airlock(&["cp", &source, outgoing.to_str().expect("UTF-8 path")]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    assert_eq!(fs::read_to_string(&outgoing).unwrap(), "copied in\n");
    fs::remove_file(&outgoing).expect("remove out.txt");
    copy_out_growing_and_proc_files(&scene, &id);

    // The agent alone, then the agent and a running command's two processes.
    let processes = || {
        let stats = airlock(&["stats", "--json", &id]);
        assert_eq!(stats.status.code(), Some(0), "{}", describe(&stats));
        let record: serde_json::Value = serde_json::from_str(stdout(&stats).trim())
            .unwrap_or_else(|error| panic!("stats JSON: {error}: {}", describe(&stats)));
        record["processes"].as_u64().expect("processes")
    };
    assert_eq!(processes(), 1);
    let args = [
        "exec",
        "--timeout",
        "12s",
        &id,
        "--",
        "sh",
        "-c",
        "sleep 60; true",
    ];
    let mut running = spawn_airlock(ROOT, &["env", &tmp], &args, project, Stdio::piped());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = processes();
    while seen != 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        seen = processes();
    }
    assert_eq!(seen, 3, "the agent, sh and sleep");
    let code = wait_bounded(&mut running.child, RUN_LIMIT, "airlock exec sleep");
    assert_eq!(code, 124);

    let timed_out = airlock(&["exec", "--timeout", "2s", &id, "--", "sleep", "60"]);
    assert_eq!(
        timed_out.status.code(),
        Some(124),
        "{}",
        describe(&timed_out)
    );
    let stopped = airlock(&["stop", &id]);
    assert_eq!(stopped.status.code(), Some(0), "{}", describe(&stopped));
    let diff = airlock(&["diff", &id]);
    assert_eq!(stdout(&diff), "M f.txt\n", "{}", describe(&diff));
    let removed = airlock(&["rm", &id]);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
    scene.assert_nothing_left();
}

/// Copies a log out of the guest while a guest process appends to it, and a /proc file
/// whose size reads as 0. Each arrives whole: no byte of the log is read as a tar header.
fn copy_out_growing_and_proc_files(scene: &Scene, id: &str) {
    let line = "a line of a log that grows while cp packs it";
    let writer = format!(
        "mkdir -p /tmp/g; (while :; do echo '{line}'; done >> /tmp/g/log) \
         >/dev/null 2>&1 </dev/null & echo $! > /tmp/writer.pid"
    );
    let started = scene.airlock(&["exec", id, "--", "sh", "-c", &writer]);
    assert_eq!(started.status.code(), Some(0), "{}", describe(&started));
    let out = scene.tmp.path().join("out");
    fs::create_dir(&out).expect("create out");
    for copy in ["g1", "g2"] {
        let target = out.join(copy);
        let copied = scene.airlock(&["cp", &format!("{id}:/tmp/g"), target.to_str().unwrap()]);
        assert_eq!(
            copied.status.code(),
            Some(0),
            "{copy}: {}",
            describe(&copied)
        );
        let log = fs::read_to_string(target.join("log")).expect("read log");
        // A write can be seen half done, so the last line may be cut short.
        let (whole, last) = log.rsplit_once('\n').unwrap_or(("", &log));
        let other = whole.lines().find(|found| *found != line);
        assert_eq!(other, None, "{copy}: a line that the writer never wrote");
        assert!(line.starts_with(last), "{copy}: the last line is {last:?}");
    }
    let stopped = scene.airlock(&["exec", id, "--", "sh", "-c", "kill $(cat /tmp/writer.pid)"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", describe(&stopped));

    let source = format!("{id}:/proc/self/status");
    let copied = scene.airlock(&["cp", &source, out.to_str().unwrap()]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    let status = fs::read_to_string(out.join("status")).expect("read status");
    assert!(status.starts_with("Name:"), "{status}");
    assert!(status.contains("\nPid:"), "{status}");
    fs::remove_dir_all(&out).expect("remove out");
}

/// `diff` on a running sandbox copies the guest's changes out first, shows them and warns
/// that the sandbox can still change them, as for the other backends. A copy of changes
/// larger than the guest can hold fails.
#[test]
fn vm_diff_while_running_shows_changes() {
    let scene = Scene::new();
    fs::write(scene.workspace.path().join("f.txt"), "hello\n").expect("write f.txt");
    let id = scene.create(&[]);

    let diff = scene.airlock(&["diff", &id]);
    assert_eq!(diff.status.code(), Some(0), "{}", describe(&diff));
    assert_eq!(stdout(&diff), "", "{}", describe(&diff));
    let script = "echo changed > f.txt; echo new > g.txt";
    let changed = scene.airlock(&["exec", &id, "--", "sh", "-c", script]);
    assert_eq!(changed.status.code(), Some(0), "{}", describe(&changed));
    let diff = scene.airlock(&["diff", &id]);
    assert_eq!(diff.status.code(), Some(0), "{}", describe(&diff));
    assert_eq!(stdout(&diff), "M f.txt\nA g.txt\n", "{}", describe(&diff));
    assert!(
        stderr(&diff).contains("the sandbox is running"),
        "{}",
        describe(&diff)
    );
    // A later diff replaces the copy: a file removed since is no longer listed.
    let removed = scene.airlock(&["exec", &id, "--", "rm", "g.txt"]);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
    let diff = scene.airlock(&["diff", &id]);
    assert_eq!(stdout(&diff), "M f.txt\n", "{}", describe(&diff));

    // A sparse file of a terabyte fails the copy at its listed size, before any of its
    // data is read. Once the file is gone, the next copy works.
    let sparse = scene.airlock(&["exec", &id, "--", "truncate", "-s", "1T", "big.img"]);
    assert_eq!(sparse.status.code(), Some(0), "{}", describe(&sparse));
    let started = Instant::now();
    let diff = scene.airlock(&["diff", &id]);
    assert_ne!(diff.status.code(), Some(0), "{}", describe(&diff));
    let message = stderr(&diff);
    assert!(
        message.contains("the workspace changes exceed"),
        "{message}"
    );
    assert!(message.contains("\"/workspace/big.img\""), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the sparse file was read: {:?}",
        started.elapsed()
    );
    let removed = scene.airlock(&["exec", &id, "--", "rm", "big.img"]);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
    let diff = scene.airlock(&["diff", &id]);
    assert_eq!(stdout(&diff), "M f.txt\n", "{}", describe(&diff));

    scene.remove(&id);
}

/// A process that an `exec` leaves in the background keeps running in the sandbox after
/// the exec returns, until the sandbox stops, as in the namespace backend.
#[test]
fn vm_exec_background_process_outlives_exec() {
    let scene = Scene::new();
    let id = scene.create(&["--workspace-mode", "none"]);

    let started = Instant::now();
    let script = "sleep 100 & echo started";
    let exec = scene.airlock(&["exec", &id, "--", "sh", "-c", script]);
    assert_eq!(exec.status.code(), Some(0), "{}", describe(&exec));
    assert_eq!(stdout(&exec), "started\n");
    // The background sleep keeps the command's output open for 100 s.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "exec waited for its background process: {:?}",
        started.elapsed()
    );
    let list = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done";
    let listed = scene.airlock(&["exec", &id, "--", "sh", "-c", list]);
    assert_eq!(listed.status.code(), Some(0), "{}", describe(&listed));
    assert!(
        stdout(&listed)
            .lines()
            .any(|line| line.trim() == "sleep 100"),
        "the background process is gone: {}",
        describe(&listed)
    );

    scene.remove(&id);
}

/// `cp` copies directories both ways, recursively, with their permission bits and with
/// symlinks as symlinks. A symlink the guest planted arrives on the host as a link, and a
/// later copy never writes through it.
#[test]
fn vm_cp_trees_never_follow_guest_links() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new();
    let host = tempfile::tempdir().expect("tempdir");
    let canary = tempfile::tempdir().expect("tempdir");
    let tree = host.path().join("tree");
    fs::create_dir_all(tree.join("sub")).expect("mkdir tree/sub");
    fs::write(tree.join("a.txt"), "a\n").expect("write a.txt");
    fs::write(tree.join("sub/run.sh"), "echo run\n").expect("write run.sh");
    fs::set_permissions(tree.join("sub/run.sh"), fs::Permissions::from_mode(0o750))
        .expect("chmod run.sh");
    fs::set_permissions(tree.join("sub"), fs::Permissions::from_mode(0o700)).expect("chmod sub");
    std::os::unix::fs::symlink("a.txt", tree.join("link")).expect("symlink");
    let id = scene.create(&["--workspace-mode", "none"]);

    let copied = scene.airlock(&["cp", tree.to_str().unwrap(), &format!("{id}:/tmp/")]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    let list = "cd /tmp/tree && stat -c '%n %a %F' a.txt sub sub/run.sh link && readlink link";
    let listed = scene.airlock(&["exec", &id, "--", "sh", "-c", list]);
    assert_eq!(listed.status.code(), Some(0), "{}", describe(&listed));
    assert_eq!(
        stdout(&listed),
        "a.txt 644 regular file\nsub 700 directory\nsub/run.sh 750 regular file\n\
         link 777 symbolic link\na.txt\n"
    );

    // The guest plants a link to a host directory, and copies the tree back out.
    let plant = format!("ln -s {} /tmp/tree/planted", canary.path().display());
    let planted = scene.airlock(&["exec", &id, "--", "sh", "-c", &plant]);
    assert_eq!(planted.status.code(), Some(0), "{}", describe(&planted));
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().to_str().unwrap();
    let copied = scene.airlock(&["cp", &format!("{id}:/tmp/tree"), target]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    let back = out.path().join("tree");
    assert_eq!(fs::read_to_string(back.join("a.txt")).unwrap(), "a\n");
    let mode = |path: PathBuf| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(back.join("sub")), 0o700);
    assert_eq!(mode(back.join("sub/run.sh")), 0o750);
    assert_eq!(
        fs::read_link(back.join("link")).unwrap(),
        Path::new("a.txt")
    );
    let planted = back.join("planted");
    assert!(fs::symlink_metadata(&planted).unwrap().is_symlink());
    assert_eq!(fs::read_link(&planted).unwrap(), canary.path());

    // The planted link becomes a directory in the guest. A second copy over the first
    // would write into the canary if it followed the host's copy of the link.
    let swap =
        "rm /tmp/tree/planted && mkdir /tmp/tree/planted && echo x > /tmp/tree/planted/pwned";
    let swapped = scene.airlock(&["exec", &id, "--", "sh", "-c", swap]);
    assert_eq!(swapped.status.code(), Some(0), "{}", describe(&swapped));
    let again = scene.airlock(&["cp", &format!("{id}:/tmp/tree"), target]);
    assert_ne!(again.status.code(), Some(0), "{}", describe(&again));
    let written: Vec<_> = fs::read_dir(canary.path()).unwrap().collect();
    assert!(written.is_empty(), "written through the link: {written:?}");

    // A tree whose packing fails midway, at a file that cannot be read, leaves nothing at
    // the target, not even the entries sent before the failure.
    let unreadable = "mkdir -p /tmp/broken/sub && echo a > /tmp/broken/a && \
         touch /tmp/broken/sub/mem && mount --bind /proc/1/mem /tmp/broken/sub/mem";
    let prepared = scene.airlock(&["exec", &id, "--", "sh", "-c", unreadable]);
    assert_eq!(prepared.status.code(), Some(0), "{}", describe(&prepared));
    let empty = tempfile::tempdir().expect("tempdir");
    let target = empty.path().to_str().unwrap();
    let failed = scene.airlock(&["cp", &format!("{id}:/tmp/broken"), target]);
    assert_ne!(failed.status.code(), Some(0), "{}", describe(&failed));
    let left: Vec<_> = fs::read_dir(empty.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed copy left {left:?}");

    scene.remove(&id);
}

/// `cp` leaves device nodes, FIFOs and sockets out of a tree in both directions, with a
/// warning naming each. None becomes an empty file in the guest or a device or FIFO on the
/// host, and neither a FIFO without a writer nor a `/dev/zero` node blocks the copy. A copy
/// out carries at most what the guest can hold, so a sparse file of a terabyte fails at
/// once and leaves nothing at the target.
#[test]
fn vm_cp_special_files_and_size_limit() {
    let scene = Scene::new();
    let host = tempfile::tempdir().expect("tempdir");
    let tree = host.path().join("tree");
    fs::create_dir(&tree).expect("mkdir tree");
    fs::write(tree.join("a.txt"), "a\n").expect("write a.txt");
    make_node(&tree.join("fifo"), libc::S_IFIFO | 0o600, 0);
    make_node(
        &tree.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    let _listener = std::os::unix::net::UnixListener::bind(tree.join("socket")).expect("bind");
    let id = scene.create(&["--memory", "64M", "--workspace-mode", "none"]);

    let copied = scene.airlock(&["cp", tree.to_str().unwrap(), &format!("{id}:/tmp/")]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    for (name, kind) in [
        ("fifo", "a FIFO"),
        ("null", "a device node"),
        ("socket", "a socket"),
    ] {
        let warning = format!("skipped {:?}: {kind}", tree.join(name));
        assert!(
            stderr(&copied).contains(&warning),
            "no warning {warning:?}: {}",
            describe(&copied)
        );
    }
    let listed = scene.airlock(&["exec", &id, "--", "find", "/tmp/tree", "-printf", "%P %y\n"]);
    assert_eq!(listed.status.code(), Some(0), "{}", describe(&listed));
    assert_eq!(stdout(&listed), " d\na.txt f\n", "{}", describe(&listed));

    let special = "mkdir /tmp/out && echo a > /tmp/out/a.txt && mkfifo /tmp/out/fifo && \
         mknod /tmp/out/zero c 1 5 && \
         perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Local => \"/tmp/out/socket\", Listen => 1) or die'";
    let prepared = scene.airlock(&["exec", &id, "--", "sh", "-c", special]);
    assert_eq!(prepared.status.code(), Some(0), "{}", describe(&prepared));
    let out = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let copied = scene.airlock(&[
        "cp",
        &format!("{id}:/tmp/out"),
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    for warning in [
        "skipped \"/tmp/out/fifo\": a FIFO",
        "skipped \"/tmp/out/zero\": a device node",
        "skipped \"/tmp/out/socket\": a socket",
    ] {
        assert!(
            stderr(&copied).contains(warning),
            "no warning {warning:?}: {}",
            describe(&copied)
        );
    }
    let mut names: Vec<String> = fs::read_dir(out.path().join("out"))
        .expect("list the copy")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt"]);
    let fifo = scene.airlock(&[
        "cp",
        &format!("{id}:/tmp/out/fifo"),
        out.path().to_str().unwrap(),
    ]);
    assert_ne!(fifo.status.code(), Some(0), "{}", describe(&fifo));
    assert!(
        stderr(&fifo).contains("is a device node, FIFO or socket"),
        "{}",
        describe(&fifo)
    );
    assert!(
        !out.path().join("fifo").exists(),
        "a failed copy left a file"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "copies out took {:?}",
        started.elapsed()
    );

    let sparse = scene.airlock(&["exec", &id, "--", "truncate", "-s", "1T", "/tmp/sparse"]);
    assert_eq!(sparse.status.code(), Some(0), "{}", describe(&sparse));
    let target = out.path().join("sparse");
    let started = Instant::now();
    let copied = scene.airlock(&["cp", &format!("{id}:/tmp/sparse"), target.to_str().unwrap()]);
    assert_ne!(copied.status.code(), Some(0), "{}", describe(&copied));
    let message = stderr(&copied);
    assert!(message.contains("the copy exceeds"), "{message}");
    assert!(message.contains("its memory (192.0M)"), "{message}");
    assert!(message.contains("Copy a smaller part"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the sparse file was streamed: {:?}",
        started.elapsed()
    );
    let left: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(left, ["out"], "a failed copy left files");
    // The agent stopped sending the terabyte once the host gave up on it: QEMU, which
    // would keep a virtual CPU busy packing zeros, stays about idle.
    let cpu_seconds = || {
        let stats = scene.airlock(&["stats", "--json", &id]);
        assert_eq!(stats.status.code(), Some(0), "{}", describe(&stats));
        let record: serde_json::Value = serde_json::from_str(stdout(&stats).trim())
            .unwrap_or_else(|error| panic!("stats JSON: {error}: {}", describe(&stats)));
        record["cpu_seconds"].as_f64().expect("cpu_seconds")
    };
    let before = cpu_seconds();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds() - before;
    assert!(
        used < 1.5,
        "QEMU used {used} s of CPU in 3 s after the copy"
    );
    let after = scene.airlock(&["exec", &id, "--", "echo", "served"]);
    assert_eq!(stdout(&after), "served\n", "{}", describe(&after));

    scene.remove(&id);
}

#[test]
fn vm_created_sandbox_keeps_share_daemons() {
    let scene = Scene::new();
    let project = scene.workspace.path();
    fs::write(project.join("f.txt"), "hello\n").expect("write f.txt");
    let environment = scene.environment();
    let wrapper: Vec<&str> = environment.iter().map(String::as_str).collect();
    let airlock = |args: &[&str]| {
        let mut spawned = spawn_airlock(ROOT, &wrapper, args, project, Stdio::piped());
        let code = wait_bounded(&mut spawned.child, RUN_LIMIT, &format!("airlock {args:?}"));
        let output = spawned.child.wait_with_output().expect("collect output");
        assert_eq!(output.status.code(), Some(code));
        output
    };
    let created = airlock(&["create", "--backend", "vm", "--workspace-mode", "bind"]);
    assert_eq!(created.status.code(), Some(0), "{}", describe(&created));
    let id = stdout(&created).trim().to_owned();
    // The guest's directory, and so every process of this sandbox, is named after its id.
    let guest = format!("airlock-vm-{}", &id[..12]);

    let script = "cat f.txt; echo changed > f.txt; python3 -c 'print(3)'";
    let first = airlock(&["exec", &id, "--", "sh", "-c", script]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    assert_eq!(stdout(&first), "hello\n3\n");
    assert_eq!(
        fs::read_to_string(project.join("f.txt")).unwrap(),
        "changed\n"
    );
    let daemons = processes_mentioning(&guest)
        .into_iter()
        .filter(|(_, line)| line.contains("virtiofsd"))
        .count();
    assert!(daemons >= 2, "no virtiofsd for each share between execs");
    let second = airlock(&["exec", &id, "--", "cat", "f.txt"]);
    assert_eq!(stdout(&second), "changed\n", "{}", describe(&second));

    let stopped = airlock(&["stop", &id]);
    assert_eq!(stopped.status.code(), Some(0), "{}", describe(&stopped));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&guest).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left after stop: {:?}",
            processes_mentioning(&guest)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let removed = airlock(&["rm", &id]);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
    scene.assert_nothing_left();
}

#[test]
fn vm_fork_bomb_stopped_at_pids_limit() {
    let scene = Scene::new();
    let bomb = "i=0; while [ $i -lt 500 ]; do sleep 100 & i=$((i+1)); done; echo all started";
    let output = scene.run(
        &["--pids", "40", "--workspace-mode", "none", "--json"],
        &["sh", "-c", bomb],
    );
    assert_eq!(output.status.code(), Some(122), "{}", describe(&output));
    assert_eq!(json_record(&output)["reason"], "pids_limit");
    assert!(
        !stdout(&output).contains("all started"),
        "{}",
        describe(&output)
    );
}

#[test]
fn vm_inner_namespace_confines_command() {
    let scene = Scene::new();
    fs::write(scene.workspace.path().join("a.txt"), "data\n").expect("write a.txt");
    let script = "cat a.txt; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
                  hostname; echo x > b.txt || echo refused";
    let output = scene.run(
        &["--inner", "namespace", "--workspace-mode", "readonly"],
        &["sh", "-c", script],
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "data", "{text}");
    assert_eq!(lines[1], "CapEff:\t0000000000000000", "{text}");
    assert_eq!(lines[2], "NoNewPrivs:\t1", "{text}");
    assert_eq!(lines[3], "Seccomp:\t2", "{text}");
    assert!(lines[4].starts_with("airlock-"), "inner hostname: {text}");
    assert_eq!(lines[5], "refused", "{text}");
}

/// The script of the inner-layer tests: it prints PID 1's command line, which is the
/// agent's in the guest itself, and whether unshare(2) works, which the inner layer's
/// seccomp filter denies.
const INNER_PROBE: &str = "tr '\\0' ' ' < /proc/1/cmdline; echo; \
                           unshare -U true 2>/dev/null && echo unshared || echo unshare-denied";

/// Checks the two lines that [`INNER_PROBE`] printed.
fn assert_inner_confined(probe: &[&str], output: &Output) {
    assert!(
        !probe[0].contains("__vm-agent"),
        "PID 1 is the guest's agent: {}",
        describe(output)
    );
    assert_eq!(probe[1], "unshare-denied", "{}", describe(output));
}

#[test]
fn vm_inner_workspace_is_copy_on_write() {
    let scene = Scene::new();
    let project = scene.workspace.path();
    fs::write(project.join("a.txt"), "original\n").expect("write a.txt");
    fs::write(project.join("b.txt"), "remove me\n").expect("write b.txt");
    fs::create_dir(project.join("sub")).expect("mkdir sub");
    fs::write(project.join("sub/c.txt"), "private\n").expect("write sub/c.txt");
    fs::set_permissions(project.join("sub/c.txt"), fs::Permissions::from_mode(0o600))
        .expect("chmod sub/c.txt");
    let script = format!(
        "cat a.txt; echo changed > a.txt; rm b.txt; echo more >> sub/c.txt; \
         echo new > sub/d.txt; mv sub/d.txt sub/e.txt; {INNER_PROBE}"
    );
    let output = scene.run(&["--inner", "namespace"], &["sh", "-c", &script]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{}", describe(&output));
    assert_eq!(lines[0], "original", "{}", describe(&output));
    assert_inner_confined(&lines[1..], &output);
    assert_eq!(
        fs::read_to_string(project.join("a.txt")).unwrap(),
        "original\n"
    );
    assert!(project.join("b.txt").exists(), "b.txt removed before apply");
    assert!(
        !project.join("sub/e.txt").exists(),
        "sub/e.txt written before apply"
    );

    let id = kept_sandbox_id(&output);
    let diff = run(ROOT, &["diff", &id], project);
    assert_eq!(diff.status.code(), Some(0), "{}", describe(&diff));
    assert_eq!(
        stdout(&diff),
        "M a.txt\nD b.txt\nM sub/c.txt\nA sub/e.txt\n",
        "{}",
        describe(&diff)
    );
    let apply = run(ROOT, &["apply", &id], project);
    assert_eq!(apply.status.code(), Some(0), "{}", describe(&apply));
    assert_eq!(
        fs::read_to_string(project.join("a.txt")).unwrap(),
        "changed\n"
    );
    assert!(!project.join("b.txt").exists(), "b.txt was not deleted");
    let private = project.join("sub/c.txt");
    assert_eq!(fs::read_to_string(&private).unwrap(), "private\nmore\n");
    let metadata = fs::metadata(&private).expect("stat sub/c.txt");
    assert_eq!(metadata.mode() & 0o777, 0o600, "mode of sub/c.txt");
    assert_eq!(metadata.uid(), 0, "owner of sub/c.txt");
    let created = fs::metadata(project.join("sub/e.txt")).expect("stat sub/e.txt");
    assert_eq!(created.uid(), 0, "owner of sub/e.txt");
    let removed = run(ROOT, &["rm", &id], project);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
}

/// The unprivileged caller's files reach the guest as its own, so the inner layer's root,
/// mapped to that owner, can change even a file that only its owner may write.
#[test]
fn vm_inner_workspace_of_unprivileged_caller() {
    let scene = Scene::for_caller(Caller::User);
    let project = scene.workspace.path();
    fs::write(project.join("a.txt"), "original\n").expect("write a.txt");
    fs::set_permissions(project.join("a.txt"), fs::Permissions::from_mode(0o600))
        .expect("chmod a.txt");
    let (uid, gid) = test_user();
    std::os::unix::fs::chown(project.join("a.txt"), Some(uid), Some(gid)).expect("chown a.txt");
    let script = "echo changed > a.txt && echo new > n.txt && cat a.txt";
    let output = scene.run_host_view(&["--inner", "namespace"], &["sh", "-c", script]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(stdout(&output), "changed\n", "{}", describe(&output));
    assert_eq!(
        fs::read_to_string(project.join("a.txt")).unwrap(),
        "original\n"
    );
}

#[test]
fn vm_inner_exec_changes_persist() {
    let scene = Scene::new();
    let project = scene.workspace.path();
    fs::write(project.join("f.txt"), "hello\n").expect("write f.txt");
    let id = scene.create(&["--inner", "namespace"]);

    let first = scene.airlock(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo one > new.txt; echo changed > f.txt",
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let incoming = scene.tmp.path().join("incoming.txt");
    fs::write(&incoming, "copied\n").expect("write incoming.txt");
    let target = format!("{id}:copied.txt");
    let copied = scene.airlock(&["cp", incoming.to_str().expect("UTF-8 path"), &target]);
    assert_eq!(copied.status.code(), Some(0), "{}", describe(&copied));
    fs::remove_file(&incoming).expect("remove incoming.txt");
    let script =
        format!("cat new.txt f.txt; echo two >> new.txt; echo more >> copied.txt; {INNER_PROBE}");
    let second = scene.airlock(&["exec", &id, "--", "sh", "-c", &script]);
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    let text = stdout(&second);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{}", describe(&second));
    assert_eq!(lines[..2], ["one", "changed"], "{}", describe(&second));
    assert_inner_confined(&lines[2..], &second);
    let diff = scene.airlock(&["diff", &id]);
    assert_eq!(
        stdout(&diff),
        "A copied.txt\nM f.txt\nA new.txt\n",
        "{}",
        describe(&diff)
    );
    assert_eq!(
        fs::read_to_string(project.join("f.txt")).unwrap(),
        "hello\n"
    );

    let stopped = scene.airlock(&["stop", &id]);
    assert_eq!(stopped.status.code(), Some(0), "{}", describe(&stopped));
    let apply = scene.airlock(&["apply", &id]);
    assert_eq!(apply.status.code(), Some(0), "{}", describe(&apply));
    assert_eq!(
        fs::read_to_string(project.join("new.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(
        fs::read_to_string(project.join("f.txt")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read_to_string(project.join("copied.txt")).unwrap(),
        "copied\nmore\n"
    );
    let removed = scene.airlock(&["rm", &id]);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
    scene.assert_nothing_left();
}

/// A shared project works with an inner layer when a user other than root owns it, since
/// the inner layer has no idmapped mount of a virtiofs share on the guest's 6.1 kernel.
#[test]
fn vm_inner_bind_needs_project_of_non_root() {
    let scene = Scene::new();
    let project = scene.workspace.path();
    let extra = ["--inner", "namespace", "--workspace-mode", "bind"];
    let output = scene.run(&extra, &["true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    assert!(
        stderr(&output).contains("the project belongs to root"),
        "{}",
        describe(&output)
    );
    assert!(
        stderr(&output).contains("Use the default --workspace-mode overlay"),
        "{}",
        describe(&output)
    );

    let (uid, gid) = test_user();
    std::os::unix::fs::chown(project, Some(uid), Some(gid)).expect("chown project");
    let output = scene.run(&extra, &["sh", "-c", "echo bound > bound.txt"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let bound = fs::metadata(project.join("bound.txt")).expect("bound.txt on the host");
    assert_eq!(bound.uid(), uid, "owner of bound.txt");
    assert_eq!(bound.gid(), gid, "group of bound.txt");
}

#[test]
fn vm_inner_without_machine_rejected() {
    let scene = Scene::new();
    let output = run(
        ROOT,
        &["run", "--inner", "namespace", "--", "true"],
        scene.workspace.path(),
    );
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    assert!(
        stderr(&output).contains("--inner runs a backend inside a machine"),
        "{}",
        describe(&output)
    );
}

#[test]
fn vm_policy_check_reports_each_layer() {
    let scene = Scene::new();
    let rootfs = rootfs();
    let root = rootfs.to_str().expect("UTF-8 path");
    let check = |extra: &[&str]| {
        let mut args = vec!["policy", "check", "--backend", "vm", "--rootfs", root];
        args.extend_from_slice(extra);
        let output = run(ROOT, &args, scene.workspace.path());
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        stdout(&output)
    };
    let rule_line = |report: &str, rule: &str| {
        report
            .lines()
            .find(|line| line.contains(rule))
            .unwrap_or_else(|| panic!("no {rule} row in {report}"))
            .to_owned()
    };
    let alone = check(&["--workspace-mode", "readonly"]);
    assert!(
        rule_line(&alone, "seccomp filter").ends_with("no"),
        "{alone}"
    );
    assert!(!alone.contains("inner layer"), "{alone}");
    // The default copy-on-write workspace.
    let layered = check(&["--inner", "namespace"]);
    assert!(
        rule_line(&layered, "workspace mode").ends_with("enforced"),
        "{layered}"
    );
    assert!(
        rule_line(&layered, "seccomp filter").ends_with("enforced"),
        "{layered}"
    );
    assert!(rule_line(&layered, "all capabilities dropped").ends_with("enforced"));
    assert!(
        rule_line(&layered, "inner layer: namespace sandbox").ends_with("enforced"),
        "{layered}"
    );
}

#[test]
fn vm_policy_check_reports_host_view_and_bind() {
    let scene = Scene::new();
    let args = [
        "policy",
        "check",
        "--backend",
        "vm",
        "--workspace-mode",
        "bind",
    ];
    let output = run(ROOT, &args, scene.workspace.path());
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = stdout(&output);
    for rule in [
        "host paths outside the root unreachable",
        "read-only root filesystem",
        "host secrets under /etc hidden",
        "workspace mode",
    ] {
        let line = report
            .lines()
            .find(|line| line.contains(rule))
            .unwrap_or_else(|| panic!("no {rule} row in {report}"));
        assert!(line.ends_with("enforced"), "{rule}: {report}");
    }
}

/// A private cache directory and the first engine that scripts/test started, for the
/// tests of `--image`: each build of the image's disk is then this test's own.
struct ImageScene {
    scene: Scene,
    cache: tempfile::TempDir,
    engine: super::docker::Engine,
}

impl ImageScene {
    fn new() -> ImageScene {
        Self::with_engine(super::docker::engines().remove(0))
    }

    /// Returns a scene with the last engine that scripts/test started, so that its image
    /// exports do not show up in the other tests' checks of the first engine.
    fn on_last_engine() -> ImageScene {
        let engine = super::docker::engines().pop().expect("an engine");
        Self::with_engine(engine)
    }

    fn with_engine(engine: super::docker::Engine) -> ImageScene {
        ImageScene {
            scene: Scene::new(),
            cache: tempfile::Builder::new()
                .prefix("airlock-vm-cache-")
                .tempdir()
                .expect("tempdir"),
            engine,
        }
    }

    /// Returns the variables that point Airlock at this scene's engine and cache.
    fn env(&self) -> [String; 2] {
        [
            format!("DOCKER_HOST={}", self.engine.host),
            format!("AIRLOCK_CACHE_DIR={}", self.cache.path().display()),
        ]
    }

    /// Runs `airlock run --backend vm --image IMAGE -- ARGV`.
    fn run(&self, image: &str, argv: &[&str]) -> Output {
        let env = self.env();
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        self.scene.run_with_env(&env, &["--image", image], argv)
    }

    /// Runs `airlock ARGS` with this scene's engine, cache and TMPDIR.
    fn airlock(&self, args: &[&str]) -> Output {
        self.airlock_with_env(&self.env(), args)
    }

    /// Runs `airlock ARGS` with this scene's TMPDIR and the variables `env`.
    fn airlock_with_env(&self, env: &[String], args: &[&str]) -> Output {
        let tmp = format!("TMPDIR={}", self.scene.tmp.path().display());
        let mut prefix = vec!["env", tmp.as_str()];
        prefix.extend(env.iter().map(String::as_str));
        let project = self.scene.workspace.path();
        let mut spawned = spawn_airlock(ROOT, &prefix, args, project, Stdio::piped());
        let code = wait_bounded(&mut spawned.child, RUN_LIMIT, &format!("airlock {args:?}"));
        let output = spawned.child.wait_with_output().expect("collect output");
        assert_eq!(output.status.code(), Some(code));
        output
    }

    /// Lists the cache's entries whose names start with `prefix`, each with its inode
    /// number, which changes when a build replaces the file.
    fn cached(&self, prefix: &str) -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = fs::read_dir(self.cache.path().join("vm")) else {
            return Vec::new();
        };
        let mut found: Vec<(String, u64)> = entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
            .map(|entry| {
                let inode = entry.metadata().expect("stat cache entry").ino();
                (entry.file_name().to_string_lossy().into_owned(), inode)
            })
            .collect();
        found.sort();
        found
    }

    /// Checks that no disk build left its temporary files, no export its container, and no
    /// guest its QEMU or files.
    fn assert_build_left_nothing(&self) {
        assert_eq!(
            self.cached(".rootfs-"),
            [],
            "a build left its temporary files"
        );
        assert_eq!(
            self.export_containers(),
            Vec::<String>::new(),
            "an export left its container"
        );
        self.scene.assert_nothing_left();
    }

    /// Returns the ids of the engine's containers that an image export created and left: its
    /// Airlock process is gone.
    fn export_containers(&self) -> Vec<String> {
        let socket = self.engine.host.trim_start_matches("unix://");
        let output = std::process::Command::new("curl")
            .args(["--silent", "--fail", "--unix-socket", socket])
            .arg("http://engine/containers/json?all=true&filters=%7B%22label%22%3A%5B%22airlock.export-pid%22%5D%7D")
            .output()
            .expect("run curl");
        assert!(
            output.status.success(),
            "the engine did not list its containers"
        );
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        // Another test may be exporting on the same engine now: its container is labelled
        // with the pid of an Airlock that still runs, and is not left over.
        let exporter_alive = |container: &serde_json::Value| {
            container["Labels"]["airlock.export-pid"]
                .as_str()
                .is_some_and(|pid| Path::new("/proc").join(pid).exists())
        };
        listed
            .as_array()
            .expect("a list")
            .iter()
            .filter(|container| !exporter_alive(container))
            .map(|container| container["Id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// The image's own files are the guest's root: a command of the image runs. A sandbox
/// created from the same image then finds the disk in the cache, so it neither exports
/// nor builds, and neither leaves the export's container or temporary directory.
#[test]
fn vm_image_root_cached_for_run_and_create() {
    use std::os::unix::fs::PermissionsExt;
    let scene = ImageScene::new();
    let image = super::docker::image();
    let expected = fs::read_to_string(rootfs().join("etc/debian_version")).expect("read");

    let first = scene.run(&image, &["cat", "/etc/debian_version"]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    assert_eq!(stdout(&first), expected);
    assert!(
        stderr(&first).contains("building the root disk image"),
        "{}",
        describe(&first)
    );
    let disks = scene.cached("rootfs-image-");
    assert_eq!(disks.len(), 1, "{disks:?}");
    let disk = scene.cache.path().join("vm").join(&disks[0].0);
    let mode = fs::metadata(&disk).expect("stat disk").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{disk:?}");

    let created = scene.airlock(&["create", "--backend", "vm", "--image", &image]);
    assert_eq!(created.status.code(), Some(0), "{}", describe(&created));
    let id = stdout(&created).trim().to_owned();
    let exec = scene.airlock(&["exec", &id, "--", "cat", "/etc/debian_version"]);
    let removed = scene.airlock(&["rm", "--force", &id]);
    assert_eq!(exec.status.code(), Some(0), "{}", describe(&exec));
    assert_eq!(stdout(&exec), expected);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
    assert!(
        !stderr(&created).contains("building the root disk image"),
        "the created sandbox built the disk again: {}",
        describe(&created)
    );
    assert_eq!(
        scene.cached("rootfs-image-"),
        disks,
        "the cached disk changed"
    );
    scene.assert_build_left_nothing();
}

/// A stopped sandbox starts again from the image it was created from, although DOCKER_HOST
/// names no engine by then: from the cached disk, and once the cache lost the disk, from
/// the engine it was created with.
#[test]
fn vm_image_sandbox_restarts_without_engine() {
    let scene = ImageScene::on_last_engine();
    let image = super::docker::image();
    let expected = fs::read_to_string(rootfs().join("etc/debian_version")).expect("read");
    let created = scene.airlock(&["create", "--backend", "vm", "--image", &image]);
    assert_eq!(created.status.code(), Some(0), "{}", describe(&created));
    let id = stdout(&created).trim().to_owned();
    let no_engine = [
        "DOCKER_HOST=unix:///nonexistent/docker.sock".to_owned(),
        format!("AIRLOCK_CACHE_DIR={}", scene.cache.path().display()),
    ];

    for pass in ["cached disk", "rebuilt disk"] {
        let stopped = scene.airlock(&["stop", &id]);
        assert_eq!(
            stopped.status.code(),
            Some(0),
            "{pass}: {}",
            describe(&stopped)
        );
        if pass == "rebuilt disk" {
            let disks = scene.cached("rootfs-image-");
            assert_eq!(disks.len(), 1, "{disks:?}");
            fs::remove_file(scene.cache.path().join("vm").join(&disks[0].0)).expect("remove disk");
        }
        let started = scene.airlock_with_env(&no_engine, &["start", &id]);
        assert_eq!(
            started.status.code(),
            Some(0),
            "{pass}: {}",
            describe(&started)
        );
        let exec = scene.airlock(&["exec", &id, "--", "cat", "/etc/debian_version"]);
        assert_eq!(exec.status.code(), Some(0), "{pass}: {}", describe(&exec));
        assert_eq!(stdout(&exec), expected, "{pass}");
    }
    assert_eq!(
        scene.cached("rootfs-image-").len(),
        1,
        "the disk was not rebuilt"
    );

    let removed = scene.airlock(&["rm", "--force", &id]);
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
    scene.assert_build_left_nothing();
}

/// An image without a shell or a C library boots: the agent comes from the initramfs, and
/// only the command needs to be in the image.
#[test]
fn vm_image_without_shell_runs_static_binary() {
    let scene = ImageScene::new();
    let tree = tempfile::tempdir().expect("tempdir");
    fs::copy(super::harness::binary(), tree.path().join("airlock")).expect("copy binary");
    let image = format!(
        "airlock-test/vm-static-{}:1",
        super::harness::unique_token()
    );
    let import = std::process::Command::new(super::harness::binary())
        .args(["image", "import"])
        .arg(tree.path())
        .arg(&image)
        .env("DOCKER_HOST", &scene.engine.host)
        .output()
        .expect("run airlock image import");
    assert_eq!(import.status.code(), Some(0), "{}", describe(&import));

    let output = scene.run(&image, &["/airlock", "--version"]);
    let removed = std::process::Command::new(super::harness::binary())
        .args(["image", "rm", &image])
        .env("DOCKER_HOST", &scene.engine.host)
        .output()
        .expect("run airlock image rm");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        stdout(&output).starts_with("airlock "),
        "{}",
        describe(&output)
    );
    assert_eq!(removed.status.code(), Some(0), "{}", describe(&removed));
}

/// A missing image, an image together with a tree, and an unreachable engine each fail
/// before any guest boots, with the value and the fix.
#[test]
fn vm_image_errors_name_value_and_fix() {
    let scene = ImageScene::new();
    let rootfs = rootfs();
    let missing = "airlock-test/no-such-image:1";
    let output = scene.run(missing, &["true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let message = stderr(&output);
    assert!(message.contains(missing), "{message}");
    assert!(message.contains("airlock image pull"), "{message}");
    assert!(message.contains("airlock image import"), "{message}");
    assert_eq!(
        scene.cached("rootfs-"),
        [],
        "a disk was built for a missing image"
    );

    let env = scene.env();
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let image = super::docker::image();
    let root = rootfs.to_str().expect("UTF-8 path");
    let both = scene
        .scene
        .run_with_env(&env, &["--image", &image, "--rootfs", root], &["true"]);
    assert_eq!(both.status.code(), Some(125), "{}", describe(&both));
    let message = stderr(&both);
    assert!(message.contains("--image"), "{message}");
    assert!(message.contains("--rootfs"), "{message}");
    assert!(message.contains("pass only one"), "{message}");

    // A socket file whose listener is gone, so every connection is refused.
    let dead = scene.cache.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).expect("bind"));
    let host = format!("DOCKER_HOST=unix://{}", dead.display());
    let unreachable = scene
        .scene
        .run_with_env(&[&host], &["--image", &image], &["true"]);
    fs::remove_file(&dead).expect("remove the dead socket");
    assert_eq!(
        unreachable.status.code(),
        Some(125),
        "{}",
        describe(&unreachable)
    );
    assert!(
        stderr(&unreachable).contains("does not answer"),
        "{}",
        describe(&unreachable)
    );
}

/// SIGINT while the image's disk builds ends the run, and removes the temporary directory
/// of the unpacked files, the partial disk and the export's container.
#[test]
fn vm_image_build_interrupted_leaves_nothing() {
    use std::io::BufRead;
    let scene = ImageScene::new();
    let env = scene.env();
    let tmp = format!("TMPDIR={}", scene.scene.tmp.path().display());
    let image = super::docker::image();
    let mut prefix = vec!["env", tmp.as_str()];
    prefix.extend(env.iter().map(String::as_str));
    let args = ["run", "--backend", "vm", "--image", &image, "--", "true"];
    let mut spawned = spawn_airlock(
        ROOT,
        &prefix,
        &args,
        scene.scene.workspace.path(),
        Stdio::null(),
    );
    let mut lines = std::io::BufReader::new(spawned.child.stderr.take().unwrap()).lines();
    let building = lines
        .by_ref()
        .map(|line| line.expect("read stderr"))
        .find(|line| line.contains("building the root disk image"));
    assert!(building.is_some(), "the build never started");

    // SAFETY: kill takes integers only, and the pid is the test's own child, Airlock.
    unsafe { libc::kill(spawned.child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map(|line| line.expect("read stderr")).collect();
    let code = wait_bounded(&mut spawned.child, RUN_LIMIT, "airlock run --backend vm");

    assert_eq!(code, 128 + libc::SIGINT, "{rest:?}");
    assert!(
        rest.iter().any(|line| line.contains("interrupted")),
        "{rest:?}"
    );
    assert_eq!(scene.cached("rootfs-"), [], "a disk was stored");
    scene.assert_build_left_nothing();
}

/// `policy check` counts an image as the guest's root, and rejects it next to a tree.
#[test]
fn vm_policy_check_accepts_image() {
    let scene = Scene::new();
    let image = super::docker::image();
    let check = |extra: &[&str]| {
        let mut args = vec!["policy", "check", "--backend", "vm", "--image", &image];
        args.extend_from_slice(extra);
        run(ROOT, &args, scene.workspace.path())
    };
    let alone = check(&[]);
    assert_eq!(alone.status.code(), Some(0), "{}", describe(&alone));
    let rootfs = rootfs();
    let both = check(&["--rootfs", rootfs.to_str().expect("UTF-8 path")]);
    assert_eq!(both.status.code(), Some(1), "{}", describe(&both));
    assert!(
        stdout(&both).contains("pass only one"),
        "{}",
        describe(&both)
    );
}
