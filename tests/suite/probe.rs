//! `airlock probe`: the containment matrix of the namespace, chroot, docker and vm backends,
//! docker on each engine that scripts/test starts. Also the unconfined control column, which
//! shows that each probe can detect its escape, and the cleanup after every run, an
//! interrupted one included.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::docker::{engines, image, labeled, Engine};
use super::harness::{
    describe, run, spawn_airlock, stderr, stdout, test_user, wait_bounded, Caller, Workspace,
    CALLERS,
};

/// Every probe, in the matrix's order.
const PROBES: [&str; 19] = [
    "see-host-processes",
    "signal-host-process",
    "ptrace-host-process",
    "read-host-environment",
    "read-host-file",
    "write-outside-workspace",
    "chroot-escape",
    "mount-filesystem",
    "device-node",
    "reach-host-loopback",
    "see-network-interfaces",
    "create-user-namespace",
    "write-proc-sys",
    "setuid-binary",
    "tiocsti-injection",
    "fork-bomb",
    "fill-tmp",
    "memory-bomb",
    "survive-sandbox",
];

/// Prefix of the names of the canary processes and of the processes probes leave behind.
const PROCESS_NAME_PREFIX: &str = "airlock-";

/// Probe runs check for leftovers by name and in /tmp, so they must not overlap.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A private temporary directory for one run, given to Airlock as TMPDIR, so that the
/// test can check that the run left nothing in it.
struct PrivateTmp {
    dir: tempfile::TempDir,
}

impl PrivateTmp {
    fn new(caller: Caller) -> PrivateTmp {
        let dir = tempfile::Builder::new()
            .prefix("airlock-probe-tmp-")
            .tempdir()
            .expect("create a private TMPDIR");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        if caller != Caller::Root {
            let (uid, gid) = test_user();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown TMPDIR");
        }
        PrivateTmp { dir }
    }

    fn variable(&self) -> String {
        format!("TMPDIR={}", self.dir.path().display())
    }

    fn entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.path())
            .expect("read TMPDIR")
            .map(|entry| entry.expect("entry").path())
            .collect()
    }
}

/// Runs `airlock ARGS` as `caller` with `tmp` as TMPDIR, and collects its output.
fn run_probe(caller: Caller, tmp: &PrivateTmp, args: &[&str]) -> Output {
    run_probe_with(caller, tmp, &[], args)
}

/// Runs `airlock ARGS` as `caller` with `tmp` as TMPDIR and the `NAME=VALUE` assignments of
/// `environment`, and collects its output.
fn run_probe_with(caller: Caller, tmp: &PrivateTmp, environment: &[&str], args: &[&str]) -> Output {
    let workspace = Workspace::new(caller);
    let variable = tmp.variable();
    let mut wrapper = vec!["env", variable.as_str()];
    wrapper.extend_from_slice(environment);
    let spawned = spawn_airlock(caller, &wrapper, args, workspace.path(), Stdio::piped());
    spawned
        .child
        .wait_with_output()
        .expect("wait for airlock probe")
}

fn matrix(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("no JSON matrix ({error}): {}", describe(output)))
}

/// Returns the verdict and reason of every probe in `backend`'s column, in order.
fn column(matrix: &Value, backend: &str) -> Vec<(String, String, String)> {
    matrix["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .map(|probe| {
            let result = &probe["results"][backend];
            (
                probe["name"].as_str().expect("name").to_owned(),
                result["verdict"].as_str().expect("verdict").to_owned(),
                result["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect()
}

/// Returns the variable that points Airlock at `engine`, for `env`.
fn docker_host(engine: &Engine) -> String {
    format!("DOCKER_HOST={}", engine.host)
}

/// Returns whether a probe may be n/a here for a reason outside any backend: the host
/// lacks what the probe needs, or the caller is not root.
fn allowed_not_applicable(caller: Caller, probe: &str, reason: &str) -> bool {
    match probe {
        "device-node" => {
            reason.contains("is denied its disk") || reason.contains("not on a block device")
        }
        "see-network-interfaces" => reason.contains("no network interface other than lo"),
        "setuid-binary" => caller != Caller::Root && reason.contains("needs root on the host"),
        _ => false,
    }
}

/// Returns whether a process `pid` named `name` still runs (a zombie does not).
fn process_alive(pid: i64, name: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].trim_start().chars().next();
    &stat[open + 1..close] == name && !matches!(state, Some('Z' | 'X'))
}

/// Lists the live processes whose name starts with `prefix`.
fn live_processes_named(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(name) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let name = name.trim_end();
        if name.starts_with(prefix) && process_alive(pid, name) {
            found.push(format!("{pid} ({name})"));
        }
    }
    found
}

/// Returns whether a socket listens on `address` (such as 127.0.0.1:41234) on the host.
fn listening(address: &str) -> bool {
    let port = address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse::<u16>().ok());
    let Some(port) = port else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
    })
}

/// Waits up to two seconds for `condition` to hold.
fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Checks that every canary the matrix lists is gone from the host.
fn assert_canaries_gone(matrix: &Value) {
    let mounts = || fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    for probe in matrix["probes"].as_array().expect("probes") {
        for (backend, result) in probe["results"].as_object().expect("results") {
            for canary in result["canaries"].as_array().expect("canaries") {
                let context = format!("{} in {backend}: {canary}", probe["name"]);
                let text = |field: &str| canary[field].as_str().unwrap_or_default().to_owned();
                match canary["kind"].as_str().expect("kind") {
                    "process" => {
                        let pid = canary["pid"].as_i64().expect("pid");
                        let name = text("name");
                        assert!(eventually(|| !process_alive(pid, &name)), "left: {context}");
                    }
                    "process_name" => {
                        let name = text("name");
                        let gone = eventually(|| live_processes_named(&name).is_empty());
                        assert!(gone, "left: {context}");
                    }
                    "file" => assert!(!Path::new(&text("path")).exists(), "left: {context}"),
                    "listener" => assert!(!listening(&text("address")), "left: {context}"),
                    "mount" => assert!(!mounts().contains(&text("source")), "left: {context}"),
                    "variable" | "terminal" => {}
                    kind => panic!("unknown canary kind {kind}: {context}"),
                }
            }
        }
    }
}

/// Checks that the sandboxes the matrix names are gone, with their staging directories.
fn assert_sandboxes_gone(caller: Caller, matrix: &Value) {
    let workspace = Workspace::new(caller);
    let listed = run(caller, &["ls", "--json"], workspace.path());
    let listed = stdout(&listed);
    for backend in matrix["backends"].as_array().expect("backends") {
        if let Some(id) = backend["sandbox"].as_str() {
            assert!(!listed.contains(id), "sandbox {id} still listed: {listed}");
        }
        if let Some(staging) = backend["staging"].as_str() {
            assert!(!Path::new(staging).exists(), "{staging} left");
        }
    }
}

#[test]
fn namespace_column_shows_every_probe_contained() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for caller in CALLERS {
        let tmp = PrivateTmp::new(caller);
        let output = run_probe(caller, &tmp, &["probe", "--backend", "namespace", "--json"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{caller:?}: {}",
            describe(&output)
        );
        let matrix = matrix(&output);
        let column = column(&matrix, "namespace");
        let names: Vec<&str> = column.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(names, PROBES, "{caller:?}");
        for (probe, verdict, reason) in &column {
            let context = format!("{caller:?}: {probe}: {verdict}: {reason}");
            assert_ne!(verdict, "escaped", "{context}");
            let expected = verdict == "contained"
                || (verdict == "not_applicable" && allowed_not_applicable(caller, probe, reason));
            assert!(expected, "{context}");
            assert!(!reason.is_empty(), "{context}");
        }
        assert_canaries_gone(&matrix);
        assert_sandboxes_gone(caller, &matrix);
        assert_eq!(
            tmp.entries(),
            Vec::<PathBuf>::new(),
            "{caller:?}: TMPDIR not empty"
        );
    }
}

#[test]
fn docker_column_shows_every_probe_contained() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The docker backend's tests run as root, who has access to the engines' sockets.
    let caller = Caller::Root;
    let image = image();
    for engine in engines() {
        let tmp = PrivateTmp::new(caller);
        let args = ["probe", "--backend", "docker", "--image", &image, "--json"];
        let output = run_probe_with(caller, &tmp, &[&docker_host(&engine)], &args);
        let context = &engine.name;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{context}: {}",
            describe(&output)
        );
        let matrix = matrix(&output);
        let column = column(&matrix, "docker");
        let names: Vec<&str> = column.iter().map(|(name, _, _)| name.as_str()).collect();
        assert_eq!(names, PROBES, "{context}");
        for (probe, verdict, reason) in &column {
            let context = format!("{context}: {probe}: {verdict}: {reason}");
            assert_ne!(verdict, "escaped", "{context}");
            let expected = verdict == "contained"
                || (verdict == "not_applicable" && allowed_not_applicable(caller, probe, reason));
            assert!(expected, "{context}");
            assert!(!reason.is_empty(), "{context}");
        }
        assert_canaries_gone(&matrix);
        assert_sandboxes_gone(caller, &matrix);
        let id = matrix["backends"][0]["sandbox"]
            .as_str()
            .expect("the docker column's sandbox id");
        assert_eq!(
            labeled(&engine, id),
            (0, 0),
            "{context}: container or volume left"
        );
        assert_eq!(
            tmp.entries(),
            Vec::<PathBuf>::new(),
            "{context}: TMPDIR not empty"
        );
    }
}

#[test]
fn docker_column_needs_an_image() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let without = run(caller, &["probe", "--backend", "docker"], workspace.path());
    assert_eq!(without.status.code(), Some(125), "{}", describe(&without));
    assert!(
        stderr(&without).contains("--image"),
        "{}",
        describe(&without)
    );

    let image = image();
    let args = ["probe", "--backend", "namespace", "--image", &image];
    let elsewhere = run(caller, &args, workspace.path());
    assert_eq!(
        elsewhere.status.code(),
        Some(125),
        "{}",
        describe(&elsewhere)
    );
    assert!(
        stderr(&elsewhere).contains("needs the docker or vm backend"),
        "{}",
        describe(&elsewhere)
    );
}

#[test]
fn docker_listed_not_probed_without_image() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let caller = Caller::Root;
    let engine = engines().into_iter().next().expect("an engine");
    let tmp = PrivateTmp::new(caller);
    let output = run_probe_with(
        caller,
        &tmp,
        &[&docker_host(&engine)],
        &["probe", "--all", "--json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let matrix = matrix(&output);
    let backends = matrix["backends"].as_array().expect("backends");
    let docker = backends
        .iter()
        .find(|backend| backend["name"] == "docker")
        .unwrap_or_else(|| panic!("no docker column: {matrix}"));
    assert_eq!(docker["status"], "not_probed", "{docker}");
    let reason = docker["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("--image"), "{docker}");
    for (probe, verdict, reason) in column(&matrix, "docker") {
        assert_eq!(verdict, "not_applicable", "{probe}: {reason}");
        assert!(reason.contains("not probed"), "{probe}: {reason}");
    }
    assert_canaries_gone(&matrix);
    assert_sandboxes_gone(caller, &matrix);
    assert_eq!(tmp.entries(), Vec::<PathBuf>::new(), "TMPDIR not empty");
}

/// The escapes a chroot cannot stop: a root process leaves it, and the network is the
/// host's. Its column must show them, and the namespace column none.
const CHROOT_ESCAPES: [&str; 3] = [
    "chroot-escape",
    "reach-host-loopback",
    "see-network-interfaces",
];

#[test]
fn chroot_column_shows_its_real_escapes() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The chroot backend needs root.
    let caller = Caller::Root;
    let tmp = PrivateTmp::new(caller);
    let output = run_probe(caller, &tmp, &["probe", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let matrix = matrix(&output);
    for (probe, verdict, reason) in column(&matrix, "chroot") {
        let context = format!("chroot: {probe}: {verdict}: {reason}");
        if CHROOT_ESCAPES.contains(&probe.as_str()) {
            let allowed =
                verdict == "not_applicable" && allowed_not_applicable(caller, &probe, &reason);
            assert!(verdict == "escaped" || allowed, "{context}");
        } else {
            assert_ne!(verdict, "escaped", "{context}");
        }
    }
    for (probe, verdict, reason) in column(&matrix, "namespace") {
        assert_ne!(verdict, "escaped", "namespace: {probe}: {reason}");
    }
    assert_canaries_gone(&matrix);
    assert_sandboxes_gone(caller, &matrix);
    assert_eq!(tmp.entries(), Vec::<PathBuf>::new(), "TMPDIR not empty");
}

#[test]
fn unconfined_control_detects_every_escape() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Outside a sandbox only root can mount, chroot, mknod and place a setuid binary, so
    // only root's control column shows every escape.
    let caller = Caller::Root;
    let tmp = PrivateTmp::new(caller);
    let args = ["probe", "--backend", "namespace", "--unconfined", "--json"];
    let output = run_probe(caller, &tmp, &args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let matrix = matrix(&output);
    for (probe, verdict, reason) in column(&matrix, "unconfined") {
        let context = format!("{probe}: {verdict}: {reason}");
        let expected = verdict == "escaped"
            || (verdict == "not_applicable" && allowed_not_applicable(caller, &probe, &reason));
        assert!(expected, "the control missed an escape: {context}");
    }
    assert_canaries_gone(&matrix);
    assert_sandboxes_gone(caller, &matrix);
    assert_eq!(tmp.entries(), Vec::<PathBuf>::new(), "TMPDIR not empty");
}

#[test]
fn table_fits_in_100_columns() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = PrivateTmp::new(Caller::Root);
    let output = run_probe(Caller::Root, &tmp, &["probe", "--backend", "namespace"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    let header = lines.iter().find(|line| line.starts_with("PROBE"));
    assert!(
        header.is_some_and(|line| line.contains("namespace")),
        "{table}"
    );
    for probe in PROBES {
        let row = lines.iter().find(|line| line.starts_with(probe));
        assert!(
            row.is_some_and(|row| row.contains("contained") || row.contains("n/a")),
            "{table}"
        );
    }
    let wide: Vec<&&str> = lines
        .iter()
        .filter(|line| line.chars().count() > 100)
        .collect();
    assert!(wide.is_empty(), "lines wider than 100 columns: {wide:?}");
}

#[test]
fn interrupted_run_leaves_nothing() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for caller in CALLERS {
        interrupt_probe_run(caller, &[], &["probe", "--json"], &format!("{caller:?}"));
    }
}

#[test]
fn docker_interrupted_run_leaves_nothing() {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let image = image();
    let args = ["probe", "--backend", "docker", "--image", &image, "--json"];
    for engine in engines() {
        let environment = [docker_host(&engine)];
        let environment: Vec<&str> = environment.iter().map(String::as_str).collect();
        let id = interrupt_probe_run(Caller::Root, &environment, &args, &engine.name);
        let id = id.unwrap_or_else(|| panic!("{}: no probe sandbox was seen", engine.name));
        assert_eq!(
            labeled(&engine, &id),
            (0, 0),
            "{}: container or volume left",
            engine.name
        );
    }
}

/// Starts `airlock ARGS` as `caller` with the assignments of `environment`, interrupts it
/// with SIGINT once its first probe sandbox exists, and checks that the run removed every
/// sandbox, canary process and temporary file. Returns the id of the sandbox it saw.
fn interrupt_probe_run(
    caller: Caller,
    environment: &[&str],
    args: &[&str],
    context: &str,
) -> Option<String> {
    let tmp = PrivateTmp::new(caller);
    let workspace = Workspace::new(caller);
    let variable = tmp.variable();
    let mut wrapper = vec!["env", variable.as_str()];
    wrapper.extend_from_slice(environment);
    let mut spawned = spawn_airlock(caller, &wrapper, args, workspace.path(), Stdio::null());

    // Interrupt once the run's first sandbox exists, well before the run's end.
    let probe_sandbox = || {
        let listed = run(caller, &["ls", "--json"], workspace.path());
        let listed: Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        listed.as_array().into_iter().flatten().find_map(|sandbox| {
            let name = sandbox["name"].as_str()?;
            name.starts_with("probe-")
                .then(|| sandbox["id"].as_str().map(str::to_owned))?
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = probe_sandbox();
    while seen.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        seen = probe_sandbox();
    }
    let pid = spawned.child.id() as libc::pid_t;
    // SAFETY: kill takes integers only; the pid is this test's unreaped child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let code = wait_bounded(&mut spawned.child, Duration::from_secs(60), "airlock probe");
    assert_eq!(code, 130, "{context}: the run ended before the interrupt");

    let left = || live_processes_named(PROCESS_NAME_PREFIX);
    assert!(
        eventually(|| left().is_empty()),
        "{context}: left {:?}",
        left()
    );
    assert_eq!(probe_sandbox(), None, "{context}: a probe sandbox is left");
    assert_eq!(
        tmp.entries(),
        Vec::<PathBuf>::new(),
        "{context}: TMPDIR not empty"
    );
    seen
}

#[test]
fn unknown_backend_rejected() {
    let workspace = Workspace::new(Caller::Root);
    let output = run(
        Caller::Root,
        &["probe", "--backend", "nonesuch"],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    assert!(
        stderr(&output).contains("nonesuch"),
        "{}",
        describe(&output)
    );
    let both = run(
        Caller::Root,
        &["probe", "--backend", "namespace", "--all"],
        workspace.path(),
    );
    assert_eq!(both.status.code(), Some(125), "{}", describe(&both));
}

/// The probes whose attempt reaches the kernel itself: in a virtual machine each must end
/// in the guest's kernel, with the host's untouched.
const KERNEL_PROBES: [&str; 10] = [
    "mount-filesystem",
    "create-user-namespace",
    "ptrace-host-process",
    "write-proc-sys",
    "device-node",
    "setuid-binary",
    "fork-bomb",
    "memory-bomb",
    "fill-tmp",
    "survive-sandbox",
];

/// The Debian tree that scripts/test builds, which the vm backend's probes boot from.
fn vm_rootfs() -> PathBuf {
    std::env::var_os("AIRLOCK_TEST_ROOTFS").map_or_else(
        || PathBuf::from("/var/cache/airlock-tests/rootfs-bookworm"),
        PathBuf::from,
    )
}

#[test]
fn vm_column_shows_every_probe_contained() {
    let rootfs = vm_rootfs();
    let rootfs = rootfs.to_str().expect("rootfs path");
    assert_vm_column_contained(&[], &["--rootfs", rootfs]);
}

/// Without --rootfs or --image, the vm backend's probes boot the host view.
#[test]
fn vm_host_view_column_contained() {
    assert_vm_column_contained(&[], &[]);
}

/// Without --rootfs, the vm backend's probes boot the --image, from the engine the docker
/// backend uses.
#[test]
fn vm_column_probed_in_image() {
    let engine = engines().into_iter().next().expect("an engine");
    let image = image();
    assert_vm_column_contained(&[&docker_host(&engine)], &["--image", &image]);
}

/// Probes the vm backend with the root filesystem that `source` names and the variables
/// `environment`, and checks that every probe is contained.
fn assert_vm_column_contained(environment: &[&str], source: &[&str]) {
    let _one = ONE_RUN_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The vm backend needs root.
    let caller = Caller::Root;
    let tmp = PrivateTmp::new(caller);
    let mut args = vec!["probe", "--backend", "vm", "--json"];
    args.extend_from_slice(source);
    let output = run_probe_with(caller, &tmp, environment, &args);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let matrix = matrix(&output);
    let column = column(&matrix, "vm");
    let names: Vec<&str> = column.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, PROBES);
    for (probe, verdict, reason) in &column {
        let context = format!("vm: {probe}: {verdict}: {reason}");
        let expected = verdict == "contained"
            || (verdict == "not_applicable" && allowed_not_applicable(caller, probe, reason));
        assert!(expected, "{context}");
        if KERNEL_PROBES.contains(&probe.as_str()) {
            assert!(
                verdict == "contained" || probe == "device-node",
                "{context}"
            );
        }
    }
    // Inside the guest these succeed, and only the kernel's boot id tells the guest apart.
    for probe in ["create-user-namespace", "write-proc-sys"] {
        let (_, _, reason) = column
            .iter()
            .find(|(name, _, _)| name == probe)
            .expect(probe);
        assert!(
            reason.contains("a kernel of its own"),
            "vm: {probe}: {reason}"
        );
    }
    assert_canaries_gone(&matrix);
    assert_sandboxes_gone(caller, &matrix);
    assert_eq!(tmp.entries(), Vec::<PathBuf>::new(), "TMPDIR not empty");
}
