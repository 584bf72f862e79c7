//! Escape attempts from inside a sandbox, each run as every caller in [`CALLERS`]. Where a
//! probe can safely run on the host, the test first runs it there as the same user and checks
//! that it succeeds, so that a failure inside the sandbox is the sandbox's doing.

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::harness::{
    binary, describe, run, sandbox_sh, state_dir, stdout, test_user, unique_token, Caller,
    Workspace, CALLERS,
};

/// The interpreter the probes use, by absolute path because the host's PATH may lead to a
/// per-user shim that the test user cannot read.
const PYTHON: &str = "/usr/bin/python3";

/// Returns a name no other test or test process uses, starting with `tag`.
fn unique_name(tag: &str) -> String {
    format!("airlock-{tag}-{}", unique_token())
}

/// Makes `command` run as `caller` on the host, without a sandbox.
fn as_caller(command: &mut Command, caller: Caller) -> &mut Command {
    command.env("AIRLOCK_STATE_DIR", state_dir(caller));
    if caller != Caller::Root {
        let (uid, gid) = test_user();
        command.uid(uid).gid(gid);
    }
    command.current_dir("/")
}

/// Runs `sh -c SCRIPT ARGS` on the host as `caller`, to show that a probe works without a
/// sandbox.
fn host_sh(caller: Caller, script: &str, args: &[&str]) -> Output {
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).arg("sh").args(args);
    as_caller(&mut command, caller)
        .output()
        .expect("run sh on the host")
}

/// Runs `python3 -c CODE` on the host as `caller`.
fn host_python(caller: Caller, code: &str) -> Output {
    let mut command = Command::new(PYTHON);
    command.arg("-c").arg(code);
    as_caller(&mut command, caller)
        .output()
        .expect("run python3 on the host")
}

/// Runs `sh -c SCRIPT ARGS` in a sandbox as `caller`, with a fresh workspace.
fn sandbox_sh_args(caller: Caller, script: &str, args: &[&str]) -> Output {
    let workspace = Workspace::new(caller);
    let mut argv = vec!["run", "--", "sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    run(caller, &argv, workspace.path())
}

/// Runs `python3 -c CODE` in a sandbox as `caller`, with a fresh workspace.
fn sandbox_python(caller: Caller, code: &str) -> Output {
    let workspace = Workspace::new(caller);
    run(
        caller,
        &["run", "--", "python3", "-c", code],
        workspace.path(),
    )
}

/// Returns the value printed after `key` on a `key value` line of `output`.
fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then_some(value)
    })
}

/// A host process, `sleep 300` owned by the caller, whose argv[0] is a unique marker. It is
/// killed by its pid when dropped.
struct Canary {
    child: Child,
    marker: String,
}

impl Canary {
    fn start(caller: Caller) -> Canary {
        let marker = unique_name("canary-process");
        let mut command = Command::new("sleep");
        command
            .arg0(&marker)
            .arg("300")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = as_caller(&mut command, caller)
            .spawn()
            .expect("start the canary process");
        Canary { child, marker }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_alive(&mut self) -> bool {
        self.child.try_wait().expect("poll the canary").is_none()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lists the processes whose command line contains `$1$2`. The marker is passed in two parts
/// so that no command line of the scan itself contains it.
const PROCESS_SCAN: &str = r#"
marker="$1$2"
count=0
for file in /proc/[0-9]*/cmdline; do
    count=$((count + 1))
    case "$(tr '\0' ' ' < "$file" 2>/dev/null)" in
        *"$marker"*) echo "found $file" ;;
    esac
done
echo "scanned $count"
"#;

#[test]
fn host_processes_invisible() {
    for caller in CALLERS {
        let canary = Canary::start(caller);
        let (head, tail) = canary.marker.split_at(8);

        let host = host_sh(caller, PROCESS_SCAN, &[head, tail]);
        let expected = format!("found /proc/{}/cmdline", canary.pid());
        assert!(
            stdout(&host).contains(&expected),
            "{caller:?}: the scan misses the canary on the host: {}",
            describe(&host)
        );

        let output = sandbox_sh_args(caller, PROCESS_SCAN, &[head, tail]);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        assert!(
            !text.contains("found"),
            "{caller:?}: host process visible: {text}"
        );
        let scanned: u32 = field(&text, "scanned")
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        assert!(scanned >= 1, "{caller:?}: the scan saw no process: {text}");
    }
}

#[test]
fn host_process_kill_fails() {
    for caller in CALLERS {
        let mut canary = Canary::start(caller);
        let pid = canary.pid().to_string();

        let host = host_sh(caller, "kill -0 \"$1\"", &[&pid]);
        assert!(
            host.status.success(),
            "{caller:?}: the caller cannot signal its canary on the host: {}",
            describe(&host)
        );

        let output = sandbox_sh_args(caller, "kill -KILL \"$1\"; echo \"status $?\"", &[&pid]);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let status = field(&stdout(&output), "status").map(str::to_owned);
        assert_ne!(
            status.as_deref(),
            Some("0"),
            "{caller:?}: kill of host pid {pid} succeeded: {}",
            describe(&output)
        );
        assert!(
            canary.is_alive(),
            "{caller:?}: the canary died: {}",
            describe(&output)
        );
    }
}

/// A file in a host directory outside the sandbox's view, removed when dropped.
struct CanaryFile {
    path: PathBuf,
    content: String,
}

impl CanaryFile {
    /// Creates a canary file that `caller` can read on the host: in /root for root, and
    /// world-readable in /home for the test user, whose own home may not exist.
    fn create(caller: Caller) -> CanaryFile {
        let dir = match caller {
            Caller::Root => "/root",
            Caller::User | Caller::UserWithoutCgroup => "/home",
        };
        let path = Path::new(dir).join(unique_name("canary-file"));
        let content = unique_name("secret");
        fs::write(&path, &content).expect("write the canary file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .expect("chmod the canary file");
        CanaryFile { path, content }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }
}

impl Drop for CanaryFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[test]
fn host_home_file_unreadable() {
    for caller in CALLERS {
        let canary = CanaryFile::create(caller);

        let host = host_sh(caller, "cat \"$1\"", &[canary.path()]);
        assert_eq!(
            stdout(&host),
            canary.content,
            "{caller:?}: the caller cannot read the canary on the host: {}",
            describe(&host)
        );

        let output = sandbox_sh_args(caller, "cat \"$1\"; echo \"status $?\"", &[canary.path()]);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        assert!(
            !text.contains(&canary.content),
            "{caller:?}: the canary in {} was read: {text}",
            canary.path()
        );
        assert_ne!(field(&text, "status"), Some("0"), "{caller:?}: {text}");
    }
}

#[test]
fn shadow_passwords_hidden() {
    let host_shadow = fs::read_to_string("/etc/shadow").expect("read the host's /etc/shadow");
    assert!(
        host_shadow.contains("root:"),
        "the host's /etc/shadow has no root entry, so the test cannot tell it is hidden"
    );
    for caller in CALLERS {
        let output = sandbox_sh(caller, "cat /etc/shadow /etc/gshadow");
        let text = stdout(&output);
        assert!(
            text.is_empty(),
            "{caller:?}: password hashes readable: {}",
            describe(&output)
        );
    }
}

/// Tries to create a file and a directory below each argument, printing one line per
/// directory: `DIR created` or `DIR denied`.
const WRITE_PROBE: &str = r#"
name="$1"
shift
for dir in "$@"; do
    if touch "$dir/$name" 2>/dev/null || mkdir "$dir/$name.d" 2>/dev/null; then
        echo "$dir created"
    else
        echo "$dir denied"
    fi
done
"#;

#[test]
fn writes_outside_workspace_fail() {
    let protected = ["/", "/usr", "/etc", "/opt", "/var", "/usr/bin", "/etc/ssh"];
    for caller in CALLERS {
        let name = unique_name("write-probe");
        let mut args = vec![name.as_str()];
        args.extend_from_slice(&protected);
        let output = sandbox_sh_args(caller, WRITE_PROBE, &args);

        // Remove anything an escape left on the host before asserting.
        let mut leaked = Vec::new();
        for dir in protected {
            let file = Path::new(dir).join(&name);
            let subdir = Path::new(dir).join(format!("{name}.d"));
            if fs::remove_file(&file).is_ok() {
                leaked.push(file);
            }
            if fs::remove_dir(&subdir).is_ok() {
                leaked.push(subdir);
            }
        }

        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        for dir in protected {
            let line = format!("{dir} denied\n");
            assert!(
                text.contains(&line),
                "{caller:?}: write below {dir} not denied: {text}"
            );
        }
        assert!(
            leaked.is_empty(),
            "{caller:?}: files appeared on the host: {leaked:?}"
        );
    }
}

#[test]
fn workspace_and_tmp_writable() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let content = unique_name("workspace-content");
        let script = r#"
set -e
echo "$1" > /workspace/written
mkdir /workspace/subdir
echo "$1" > /tmp/written
cat /tmp/written
echo "$1" > /dev/shm/written
"#;
        let output = run(
            caller,
            &[
                "run",
                "--workspace-mode",
                "bind",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                &content,
            ],
            workspace.path(),
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert_eq!(stdout(&output), format!("{content}\n"), "{caller:?}");
        let written = fs::read_to_string(workspace.path().join("written"))
            .expect("read the file written to /workspace");
        assert_eq!(written, format!("{content}\n"), "{caller:?}");
        assert!(
            workspace.path().join("subdir").is_dir(),
            "{caller:?}: the directory made in /workspace is missing on the host"
        );
    }
}

#[test]
fn host_environment_not_inherited() {
    // harness::run gives no way to set the caller's environment, so this test starts Airlock
    // itself. The test user therefore runs without delegated cgroups, which environment
    // filtering does not depend on.
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let name = unique_name("canary-variable")
            .replace('-', "_")
            .to_uppercase();
        let value = unique_name("canary-value");
        let explicit = "AIRLOCK_TEST_EXPLICIT=set-by-env-option";

        let mut host = Command::new("env");
        host.env(&name, &value);
        let host = as_caller(&mut host, caller)
            .output()
            .expect("run env on the host");
        assert!(
            stdout(&host).contains(&value),
            "{caller:?}: the canary variable is not set: {}",
            describe(&host)
        );

        let mut command = Command::new(binary());
        command
            .args(["run", "--env", explicit, "--", "env"])
            .env(&name, &value);
        let output = as_caller(&mut command, caller)
            .current_dir(workspace.path())
            .output()
            .expect("run airlock");
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        assert!(
            !text.contains(&name),
            "{caller:?}: host variable {name} inherited: {text}"
        );
        assert!(
            !text.contains(&value),
            "{caller:?}: host variable value inherited: {text}"
        );
        assert!(
            text.lines().any(|line| line == explicit),
            "{caller:?}: --env {explicit} missing: {text}"
        );
    }
}

/// Returns the interface names listed in the contents of /proc/net/dev.
fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

#[test]
fn only_loopback_interface_exists() {
    let host = fs::read_to_string("/proc/net/dev").expect("read the host's /proc/net/dev");
    let host_interfaces = interfaces(&host);
    for caller in CALLERS {
        let output = sandbox_sh(caller, "cat /proc/net/dev");
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert_eq!(
            interfaces(&stdout(&output)),
            ["lo"],
            "{caller:?}: host interfaces {host_interfaces:?}"
        );
    }
}

/// Connects to 127.0.0.1 on the port in argv[1] and prints `connect ok` or `connect ERRNO`.
const CONNECT_PROBE: &str = r#"
import errno, socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("connect ok")
except OSError as error:
    print("connect", errno.errorcode.get(error.errno, error))
"#;

#[test]
fn host_loopback_listener_unreachable() {
    for caller in CALLERS {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on the host's loopback");
        let port = listener.local_addr().expect("listener address").port();
        let port = port.to_string();

        let mut host = Command::new(PYTHON);
        host.args(["-c", CONNECT_PROBE, &port]);
        let host = as_caller(&mut host, caller)
            .output()
            .expect("run python3 on the host");
        assert_eq!(
            field(&stdout(&host), "connect"),
            Some("ok"),
            "{caller:?}: the probe cannot reach the listener on the host: {}",
            describe(&host)
        );
        let (accepted, _) = listener.accept().expect("accept the host's probe");
        drop(accepted);

        let workspace = Workspace::new(caller);
        let output = run(
            caller,
            &["run", "--", "python3", "-c", CONNECT_PROBE, &port],
            workspace.path(),
        );
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let result = field(&stdout(&output), "connect").map(str::to_owned);
        assert_ne!(
            result.as_deref(),
            Some("ok"),
            "{caller:?}: the sandbox reached the host's 127.0.0.1:{port}"
        );
        assert!(
            result.is_some(),
            "{caller:?}: the probe did not run: {}",
            describe(&output)
        );
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let pending = listener.accept().map(|_| ()).map_err(|error| error.kind());
        assert_eq!(
            pending,
            Err(ErrorKind::WouldBlock),
            "{caller:?}: a connection reached the host's listener"
        );
    }
}

/// Runs each probe named in argv in a child process of its own and prints `NAME ok` or
/// `NAME ERRNO`. The probes that also run on the host change only the child's own new
/// namespaces, or let the probe trace its child with PTRACE_TRACEME.
const SYSCALL_PROBE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 2
PTRACE_TRACEME = 0

def mount_tmpfs():
    return libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)

def mount_in_user_namespace():
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        return -1
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return -1
    return mount_tmpfs()

PROBES = {
    "mount": mount_tmpfs,
    "umount2": lambda: libc.umount2(b"/tmp", MNT_DETACH),
    "unshare-mount": lambda: libc.unshare(CLONE_NEWNS),
    "unshare-net": lambda: libc.unshare(CLONE_NEWNET),
    "unshare-user-mount": lambda: libc.unshare(CLONE_NEWUSER | CLONE_NEWNS),
    "unshare-user-net": lambda: libc.unshare(CLONE_NEWUSER | CLONE_NEWNET),
    "user-namespace-mount": mount_in_user_namespace,
    "ptrace": lambda: libc.ptrace(PTRACE_TRACEME, 0, None, None),
}

for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        os._exit(0 if PROBES[name]() == 0 else ctypes.get_errno())
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(name, "ok" if code == 0 else errno.errorcode.get(code, code), flush=True)
"#;

/// Probes of [`SYSCALL_PROBE`] that succeed on the host for root and for the test user.
const HOST_SYSCALL_PROBES: [&str; 3] = ["unshare-user-mount", "unshare-user-net", "ptrace"];

/// Tries the mount and unshare commands and prints `NAME STATUS` for each.
const MOUNT_TOOLS_PROBE: &str = r#"
mkdir -p /tmp/target
mount -t tmpfs none /tmp/target 2>/dev/null; echo "mount $?"
unshare -r true 2>/dev/null; echo "unshare-r $?"
unshare -rn true 2>/dev/null; echo "unshare-rn $?"
"#;

#[test]
fn mount_unshare_ptrace_denied() {
    for caller in CALLERS {
        let mut host = Command::new(PYTHON);
        host.args(["-c", SYSCALL_PROBE]).args(HOST_SYSCALL_PROBES);
        let host = as_caller(&mut host, caller)
            .output()
            .expect("run python3 on the host");
        for probe in HOST_SYSCALL_PROBES {
            assert_eq!(
                field(&stdout(&host), probe),
                Some("ok"),
                "{caller:?}: {probe} fails on the host: {}",
                describe(&host)
            );
        }
        let host = host_sh(caller, "unshare -r true && unshare -rn true", &[]);
        assert!(
            host.status.success(),
            "{caller:?}: unshare fails on the host: {}",
            describe(&host)
        );

        let probes = [
            "mount",
            "umount2",
            "unshare-mount",
            "unshare-net",
            "unshare-user-mount",
            "unshare-user-net",
            "user-namespace-mount",
            "ptrace",
        ];
        let workspace = Workspace::new(caller);
        let mut args = vec!["run", "--", "python3", "-c", SYSCALL_PROBE];
        args.extend_from_slice(&probes);
        let output = run(caller, &args, workspace.path());
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        for probe in probes {
            assert_eq!(
                field(&text, probe),
                Some("EPERM"),
                "{caller:?}: {probe}: {text}"
            );
        }

        let output = sandbox_sh(caller, MOUNT_TOOLS_PROBE);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        for tool in ["mount", "unshare-r", "unshare-rn"] {
            let status = field(&text, tool);
            assert!(status.is_some(), "{caller:?}: {tool} did not run: {text}");
            assert_ne!(status, Some("0"), "{caller:?}: {tool} succeeded: {text}");
        }
    }
}

/// Pushes a byte into the input of a pseudo-terminal the probe opens itself, with the
/// TIOCSTI request as is and with bits set above the 32 the kernel reads, and prints
/// `plain RESULT` and `high-bits RESULT`. The probe first makes the terminal its controlling
/// terminal in a new session, because without CAP_SYS_ADMIN the kernel itself rejects
/// TIOCSTI on any other terminal.
const TIOCSTI_PROBE: &str = r#"
import ctypes, errno, fcntl, os, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p]
main, terminal = os.openpty()
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
    for name, request in (("plain", termios.TIOCSTI), ("high-bits", termios.TIOCSTI | (1 << 32))):
        result = libc.ioctl(terminal, request, b"x")
        print(name, "ok" if result == 0 else errno.errorcode[ctypes.get_errno()], flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"#;

#[test]
fn terminal_input_injection_denied() {
    for caller in CALLERS {
        let host = host_python(caller, TIOCSTI_PROBE);
        let text = stdout(&host);
        assert_eq!(
            field(&text, "plain"),
            Some("ok"),
            "{caller:?}: TIOCSTI fails on the host: {}",
            describe(&host)
        );
        assert_eq!(
            field(&text, "high-bits"),
            Some("ok"),
            "{caller:?}: the kernel ignores TIOCSTI with high bits set: {}",
            describe(&host)
        );

        let output = sandbox_python(caller, TIOCSTI_PROBE);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        assert_eq!(field(&text, "plain"), Some("EPERM"), "{caller:?}: {text}");
        assert_eq!(
            field(&text, "high-bits"),
            Some("EPERM"),
            "{caller:?}: {text}"
        );
    }
}

/// Opens each kernel control file for writing, writing nothing, and prints `PATH opened`,
/// `PATH absent` or `PATH ERRNO`.
const CONTROL_FILE_PROBE: &str = r#"
import errno, os
for path in ("/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger"):
    try:
        os.close(os.open(path, os.O_WRONLY))
        print(path, "opened")
    except FileNotFoundError:
        print(path, "absent")
    except OSError as error:
        print(path, errno.errorcode[error.errno])
"#;

#[test]
fn kernel_control_files_read_only() {
    let core_pattern = Path::new("/proc/sys/kernel/core_pattern");
    let before = fs::read_to_string(core_pattern).expect("read the host's core_pattern");
    for caller in CALLERS {
        let output = sandbox_python(caller, CONTROL_FILE_PROBE);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        let core = field(&text, "/proc/sys/kernel/core_pattern");
        assert!(core.is_some(), "{caller:?}: {}", describe(&output));
        assert_ne!(core, Some("opened"), "{caller:?}: {text}");
        assert_ne!(core, Some("absent"), "{caller:?}: {text}");
        let sysrq = field(&text, "/proc/sysrq-trigger");
        assert!(sysrq.is_some(), "{caller:?}: {}", describe(&output));
        assert_ne!(sysrq, Some("opened"), "{caller:?}: {text}");

        let script = "cat /proc/sys/kernel/core_pattern; \
                      echo airlock-escape-core > /proc/sys/kernel/core_pattern";
        let output = sandbox_sh(caller, script);
        let after = fs::read_to_string(core_pattern).expect("read the host's core_pattern");
        if after != before {
            fs::write(core_pattern, &before).expect("restore the host's core_pattern");
        }
        assert_eq!(
            after, before,
            "{caller:?}: the sandbox changed the host's core_pattern"
        );
        assert!(
            !output.status.success(),
            "{caller:?}: {}",
            describe(&output)
        );
        assert_eq!(
            stdout(&output),
            before,
            "{caller:?}: core_pattern is not the host's file"
        );
    }
}

/// Creates a user namespace with clone(2), then with unshare(2), printing `clone RESULT` and
/// `unshare RESULT`. The clone child exits at once. The clone comes first because after the
/// unshare the probe's ids have no mapping, which makes any nested namespace fail.
const USER_NAMESPACE_PROBE: &str = r#"
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
SYS_clone = 56

pid = libc.syscall(SYS_clone, CLONE_NEWUSER | signal.SIGCHLD, None, None, None, None)
if pid == 0:
    os._exit(0)
if pid > 0:
    os.waitpid(pid, 0)
    print("clone ok")
else:
    print("clone", errno.errorcode[ctypes.get_errno()])

result = libc.unshare(CLONE_NEWUSER)
print("unshare", "ok" if result == 0 else errno.errorcode[ctypes.get_errno()])
"#;

#[test]
fn user_namespace_creation_fails() {
    for caller in CALLERS {
        let host = host_python(caller, USER_NAMESPACE_PROBE);
        let text = stdout(&host);
        assert_eq!(
            field(&text, "unshare"),
            Some("ok"),
            "{caller:?}: user namespaces fail on the host: {}",
            describe(&host)
        );
        assert_eq!(
            field(&text, "clone"),
            Some("ok"),
            "{caller:?}: {}",
            describe(&host)
        );

        let output = sandbox_python(caller, USER_NAMESPACE_PROBE);
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        assert_eq!(field(&text, "unshare"), Some("EPERM"), "{caller:?}: {text}");
        assert_eq!(field(&text, "clone"), Some("EPERM"), "{caller:?}: {text}");

        let output = sandbox_sh(caller, "unshare -U true 2>/dev/null; echo \"status $?\"");
        let status = field(&stdout(&output), "status").map(str::to_owned);
        assert!(status.is_some(), "{caller:?}: {}", describe(&output));
        assert_ne!(
            status.as_deref(),
            Some("0"),
            "{caller:?}: unshare -U succeeded"
        );
    }
}

#[test]
fn device_node_creation_fails() {
    for caller in CALLERS {
        let workspace = Workspace::new(caller);
        let script = r#"
for node in /tmp/null-copy /workspace/null-copy /dev/shm/null-copy; do
    mknod "$node" c 1 3 2>/dev/null; echo "$node $?"
done
mknod /workspace/loop-copy b 7 0 2>/dev/null; echo "/workspace/loop-copy $?"
ls /tmp /workspace /dev/shm
"#;
        let output = run(caller, &["run", "--", "sh", "-c", script], workspace.path());
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        let text = stdout(&output);
        for node in [
            "/tmp/null-copy",
            "/workspace/null-copy",
            "/dev/shm/null-copy",
            "/workspace/loop-copy",
        ] {
            let status = field(&text, node);
            assert!(status.is_some(), "{caller:?}: {node} not tried: {text}");
            assert_ne!(status, Some("0"), "{caller:?}: {node} created: {text}");
        }
        assert!(
            !text.contains("null-copy\n") && !text.contains("loop-copy\n"),
            "{caller:?}: a node is listed: {text}"
        );
        let entries = fs::read_dir(workspace.path())
            .expect("list the workspace")
            .count();
        assert_eq!(entries, 0, "{caller:?}: the workspace is not empty");
    }
}

/// Returns whether `name` is `airlock-` followed by 12 lowercase hex digits.
fn is_sandbox_hostname(name: &str) -> bool {
    name.strip_prefix("airlock-").is_some_and(|suffix| {
        suffix.len() == 12
            && suffix
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

#[test]
fn hostname_is_sandbox_id() {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").expect("read the host's hostname");
    for caller in CALLERS {
        let mut names = Vec::new();
        for _ in 0..2 {
            let output = sandbox_sh(caller, "cat /proc/sys/kernel/hostname; uname -n");
            assert!(output.status.success(), "{caller:?}: {}", describe(&output));
            let text = stdout(&output);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{caller:?}: {text}");
            assert_eq!(lines[0], lines[1], "{caller:?}: {text}");
            assert!(
                is_sandbox_hostname(lines[0]),
                "{caller:?}: hostname {:?}",
                lines[0]
            );
            assert_ne!(lines[0], host.trim(), "{caller:?}");
            names.push(lines[0].to_owned());
        }
        assert_ne!(
            names[0], names[1],
            "{caller:?}: two sandboxes share a hostname"
        );
    }
}
