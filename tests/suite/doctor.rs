//! `airlock doctor`: every backend and host fact listed, KVM and TCG tested for real, and
//! nothing left behind.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use airlock_core::BackendKind;

use super::harness::{
    binary, describe, run, stdout, test_user, unique_token, Caller, Workspace, TEST_USER,
};

/// Every fact id doctor reports, in its order.
const FACT_IDS: [&str; 20] = [
    "sysctl_max_user_namespaces",
    "sysctl_unprivileged_userns_clone",
    "sysctl_apparmor_restrict_unprivileged_userns",
    "user_namespaces",
    "overlayfs_in_userns",
    "cgroup_version",
    "cgroup_memory",
    "cgroup_pids",
    "cgroup_cpu",
    "landlock",
    "seccomp",
    "overlayfs",
    "systemd_nspawn",
    "nspawn_runtime_tmpfs",
    "docker_socket",
    "qemu",
    "kvm",
    "tcg",
    "virtiofsd",
    "aws_credentials",
];

fn doctor_json(caller: Caller) -> serde_json::Value {
    let workspace = Workspace::new(caller);
    let output = run(caller, &["doctor", "--json"], workspace.path());
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("doctor --json is not JSON: {error}\n{}", describe(&output)))
}

fn fact<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["facts"]
        .as_array()
        .expect("facts array")
        .iter()
        .find(|fact| fact["id"] == id)
        .unwrap_or_else(|| panic!("no fact {id:?} in {report}"))
}

fn qemu_installed() -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join("qemu-system-x86_64").is_file())
}

#[test]
fn doctor_lists_every_backend_and_fact() {
    let report = doctor_json(Caller::Root);
    let backends = report["backends"].as_array().expect("backends array");
    let names: Vec<&str> = backends.iter().filter_map(|b| b["name"].as_str()).collect();
    let expected: Vec<&str> = BackendKind::ALL.iter().map(|kind| kind.name()).collect();
    assert_eq!(names, expected, "{report}");
    for backend in backends {
        assert!(backend["class"].is_string(), "{backend}");
        let status = backend["status"].as_str().expect("status");
        assert!(status == "ok" || status == "missing", "{backend}");
        assert_eq!(backend["reason"].is_string(), status != "ok", "{backend}");
        assert_eq!(backend["fix"].is_string(), status != "ok", "{backend}");
    }

    let ids: Vec<&str> = report["facts"]
        .as_array()
        .expect("facts array")
        .iter()
        .filter_map(|fact| fact["id"].as_str())
        .collect();
    assert_eq!(ids, FACT_IDS, "{report}");
    for fact in report["facts"].as_array().unwrap() {
        let status = fact["status"].as_str().expect("status");
        assert!(["ok", "missing", "broken"].contains(&status), "{fact}");
        assert!(
            !fact["detail"].as_str().unwrap_or_default().is_empty(),
            "{fact}"
        );
        assert_eq!(fact["fix"].is_string(), status != "ok", "{fact}");
    }
}

#[test]
fn doctor_text_names_backends_and_facts() {
    let workspace = Workspace::new(Caller::Root);
    let output = run(Caller::Root, &["doctor"], workspace.path());
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let text = stdout(&output);
    for kind in BackendKind::ALL {
        assert!(
            text.contains(kind.name()),
            "{} missing:\n{text}",
            kind.name()
        );
    }
    for name in [
        "user namespaces",
        "cgroup version",
        "Landlock",
        "KVM",
        "AWS credentials",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[test]
fn doctor_reports_kvm_and_tcg_truthfully() {
    let report = doctor_json(Caller::Root);
    let kvm = fact(&report, "kvm");
    let tcg = fact(&report, "tcg");
    if !qemu_installed() {
        assert_eq!(fact(&report, "qemu")["status"], "missing", "{report}");
        assert_eq!(tcg["status"], "missing", "{report}");
        return;
    }
    assert_eq!(fact(&report, "qemu")["status"], "ok", "{report}");
    assert_eq!(tcg["status"], "ok", "TCG must boot the test guest: {tcg}");
    if !Path::new("/dev/kvm").exists() {
        assert_eq!(kvm["status"], "missing", "{kvm}");
        return;
    }
    let detail = kvm["detail"].as_str().unwrap_or_default();
    match kvm["status"].as_str() {
        Some("ok") => assert!(detail.contains("-accel kvm"), "{kvm}"),
        Some("broken") => assert!(
            detail.contains("software emulation (TCG), which works here"),
            "a broken KVM must name the fallback: {kvm}"
        ),
        _ => panic!("root can open /dev/kvm, so KVM is ok or broken: {kvm}"),
    }
}

/// Lists the processes whose environment contains `entry`.
fn processes_with_environment(entry: &str) -> Vec<String> {
    let mut found = Vec::new();
    for process in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(environment) = fs::read(process.path().join("environ")) else {
            continue;
        };
        if environment
            .split(|&byte| byte == 0)
            .any(|variable| variable == entry.as_bytes())
        {
            found.push(process.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Runs `airlock doctor --json` as `caller` (root, or the test user without a delegated
/// cgroup) with the variables `env` set, and parses its report.
fn doctor_with_env(caller: Caller, env: &[(&str, &str)]) -> serde_json::Value {
    let mut command = if caller == Caller::Root {
        Command::new(binary())
    } else {
        let mut setpriv = Command::new("setpriv");
        setpriv
            .arg(format!("--reuid={TEST_USER}"))
            .arg(format!("--regid={TEST_USER}"))
            .args(["--init-groups", "--"])
            .arg(binary());
        setpriv
    };
    let output = command
        .args(["doctor", "--json"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run airlock doctor");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON: {error}\n{}", describe(&output)))
}

#[test]
fn doctor_leaves_no_qemu_or_temp_file() {
    for caller in [Caller::Root, Caller::UserWithoutCgroup] {
        let temp = tempfile::tempdir().expect("tempdir");
        if caller != Caller::Root {
            let (uid, gid) = test_user();
            std::os::unix::fs::chown(temp.path(), Some(uid), Some(gid)).expect("chown");
        }
        let value = unique_token();
        let temp_path = temp.path().to_str().expect("UTF-8 path");
        let env = [
            ("TMPDIR", temp_path),
            ("AIRLOCK_DOCTOR_TEST", value.as_str()),
        ];
        let report = doctor_with_env(caller, &env);
        if qemu_installed() {
            assert_eq!(
                fact(&report, "tcg")["status"],
                "ok",
                "{caller:?}: QEMU ran: {report}"
            );
        }
        assert_eq!(
            fact(&report, "overlayfs_in_userns")["status"],
            "ok",
            "{caller:?}: the overlay check used the temporary directory: {report}"
        );

        let left: Vec<_> = fs::read_dir(temp.path())
            .expect("read temporary directory")
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert!(
            left.is_empty(),
            "{caller:?}: doctor left {left:?} in $TMPDIR"
        );
        let survivors = processes_with_environment(&format!("AIRLOCK_DOCTOR_TEST={value}"));
        assert!(
            survivors.is_empty(),
            "{caller:?}: processes outlived doctor: {survivors:?}"
        );
    }
}

#[test]
fn doctor_reports_cgroups_per_caller() {
    let has_v1_memory = Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    let root = doctor_json(Caller::Root);
    assert_eq!(fact(&root, "cgroup_memory")["status"], "ok", "{root}");
    assert_eq!(fact(&root, "cgroup_version")["status"], "ok", "{root}");

    let without = doctor_json(Caller::UserWithoutCgroup);
    let memory = fact(&without, "cgroup_memory");
    assert_eq!(memory["status"], "missing", "{memory}");
    assert!(
        memory["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not delegated"),
        "{memory}"
    );

    if has_v1_memory {
        // The harness delegates v1 groups only.
        let delegated = doctor_json(Caller::User);
        let memory = fact(&delegated, "cgroup_memory");
        assert_eq!(memory["status"], "ok", "{memory}");
        assert!(
            memory["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("delegated"),
            "{memory}"
        );
    }
}

fn doctor_with_docker_host(docker_host: &str) -> serde_json::Value {
    doctor_with_env(Caller::Root, &[("DOCKER_HOST", docker_host)])
}

#[test]
fn docker_socket_checked_with_ping() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).expect("bind socket");
    // The host fact and the docker backend's availability each ping the socket. The test
    // ends the server with a connection that sends STOP.
    let server = std::thread::spawn(move || {
        let mut requests = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 512];
            let read = stream.read(&mut request).expect("read request");
            let request = String::from_utf8_lossy(&request[..read]).into_owned();
            if request == "STOP" {
                return requests;
            }
            let answer = b"HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK";
            stream.write_all(answer).expect("write answer");
            requests.push(request);
        }
    });
    let report = doctor_with_docker_host(&format!("unix://{}", path.display()));
    let mut stop = std::os::unix::net::UnixStream::connect(&path).expect("connect to stop");
    stop.write_all(b"STOP").expect("send STOP");
    let requests = server.join().expect("server thread");
    assert!(!requests.is_empty(), "the socket was not contacted");
    for request in &requests {
        assert!(request.starts_with("GET /_ping HTTP/1."), "{request:?}");
    }
    let docker = fact(&report, "docker_socket");
    assert_eq!(docker["status"], "ok", "{docker}");
    let detail = docker["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(path.to_str().unwrap()), "{docker}");

    // The listener is gone, so the socket file is stale.
    let report = doctor_with_docker_host(&format!("unix://{}", path.display()));
    let docker = fact(&report, "docker_socket");
    assert_ne!(docker["status"], "ok", "{docker}");
    if !Path::new("/var/run/docker.sock").exists() {
        assert_eq!(docker["status"], "broken", "{docker}");
    }
}

#[test]
fn docker_host_tcp_address_not_contacted() {
    // 192.0.2.0/24 is reserved for documentation (RFC 5737); doctor must not connect to it.
    let report = doctor_with_docker_host("tcp://192.0.2.1:2375");
    let docker = fact(&report, "docker_socket");
    let detail = docker["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("DOCKER_HOST=tcp://192.0.2.1:2375 is not a unix socket"),
        "{docker}"
    );
}
