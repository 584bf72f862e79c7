//! Runs the `airlock` binary as root or as an unprivileged user, with a workspace of its own.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The unprivileged account the tests run Airlock as.
pub const TEST_USER: &str = "airlock-test";

/// Who runs Airlock in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Root,
    /// The unprivileged test user, inside cgroups delegated to it (as systemd delegates a
    /// user's slice), so limits are enforced by cgroups.
    User,
    /// The unprivileged test user without any delegated cgroup.
    UserWithoutCgroup,
}

/// Both callers every containment test runs as.
pub const CALLERS: [Caller; 2] = [Caller::Root, Caller::User];

/// Returns the test user's uid and gid, creating the account on first use.
pub fn test_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        let exists = Command::new("id")
            .arg(TEST_USER)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let status = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_USER,
                ])
                .status()
                .expect("run useradd");
            assert!(status.success(), "useradd {TEST_USER} failed");
        }
        let id = |flag: &str| -> u32 {
            let output = Command::new("id")
                .args([flag, TEST_USER])
                .output()
                .expect("run id");
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        (id("-u"), id("-g"))
    })
}

extern "C" fn remove_binary_copy() {
    if let Some(dir) = BINARY_DIR.get() {
        remove_left_sandboxes(dir);
        let _ = fs::remove_dir_all(dir);
    }
    remove_left_delegations();
}

/// Removes this test process's delegated cgroups that a supervisor still used when their
/// guard was dropped; they are empty by now.
fn remove_left_delegations() {
    let prefix = format!("airlock-test-{}", std::process::id());
    for controller in ["memory", "pids", "cpu"] {
        let Ok(entries) = fs::read_dir(Path::new("/sys/fs/cgroup").join(controller)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

/// Removes the sandboxes that failed tests left in the state directories below `dir`, so
/// that their supervisors do not outlive the test process.
fn remove_left_sandboxes(dir: &Path) {
    let binary = dir.join("airlock");
    for state in ["state-root", "state-user"] {
        let state = dir.join(state);
        let Ok(listed) = Command::new(&binary)
            .arg("--state-dir")
            .arg(&state)
            .args(["ls", "--json"])
            .output()
        else {
            continue;
        };
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        for sandbox in listed.as_array().into_iter().flatten() {
            let Some(id) = sandbox["id"].as_str() else {
                continue;
            };
            let _ = Command::new(&binary)
                .arg("--state-dir")
                .arg(&state)
                .args(["rm", "--force", id])
                .output();
        }
    }
}

static BINARY_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Copies the binary to a directory every user can traverse, because the checkout may sit
/// below a directory the test user cannot enter. It is removed when the test process exits.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("airlock-tests-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create binary directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod directory");
        let copy = dir.join("airlock");
        fs::copy(env!("CARGO_BIN_EXE_airlock"), &copy).expect("copy airlock binary");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod binary");
        BINARY_DIR.set(dir).expect("set once");
        // SAFETY: the handler only removes a directory and touches no state that exit tears
        // down first.
        unsafe { libc::atexit(remove_binary_copy) };
        copy
    })
}

/// Returns the state directory of `caller` for this test process, next to the binary copy, so tests
/// never touch the host's own sandboxes and everything goes when the test process exits.
pub fn state_dir(caller: Caller) -> PathBuf {
    let base = binary().parent().expect("binary directory").to_owned();
    let dir = match caller {
        Caller::Root => base.join("state-root"),
        Caller::User | Caller::UserWithoutCgroup => base.join("state-user"),
    };
    if !dir.exists() {
        fs::create_dir_all(&dir).expect("create state directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod state");
        if caller != Caller::Root {
            let (uid, gid) = test_user();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown state directory");
        }
    }
    dir
}

/// A temporary directory owned by `caller`, removed when dropped.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new(caller: Caller) -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix("airlock-ws-")
            .tempdir()
            .expect("tempdir");
        if caller != Caller::Root {
            let (uid, gid) = test_user();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown workspace");
        }
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// v1 cgroups delegated to the test user for one run, removed when dropped.
pub struct Delegation {
    dirs: Vec<PathBuf>,
}

impl Delegation {
    /// Creates a cgroup per v1 controller, owned by the test user. On a pure cgroup v2 host
    /// this returns no directories, and the user runs without cgroups.
    fn create() -> Delegation {
        let (uid, gid) = test_user();
        let name = format!("airlock-test-{}", unique_token());
        let mut dirs = Vec::new();
        for controller in ["memory", "pids", "cpu"] {
            let root = Path::new("/sys/fs/cgroup").join(controller);
            if !root.join("cgroup.procs").exists() {
                continue;
            }
            let dir = root.join(&name);
            fs::create_dir(&dir).expect("create delegated cgroup");
            for entry in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
                std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).expect("chown cgroup");
            }
            dirs.push(dir);
        }
        Delegation { dirs }
    }

    /// Shell commands that move the shell into the delegated cgroups.
    fn enter_script(&self) -> String {
        self.dirs
            .iter()
            .map(|dir| format!("echo $$ > {}/cgroup.procs && ", dir.display()))
            .collect()
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Sandboxes remove their own cgroups; give the last exits a moment to settle, and
            // remove what an ending supervisor has not removed yet.
            for _ in 0..200 {
                if let Ok(children) = fs::read_dir(dir) {
                    for child in children.flatten().filter(|c| c.path().is_dir()) {
                        let _ = fs::remove_dir(child.path());
                    }
                }
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Returns a string of digits that no other call in any test process returns: the process
/// id, then a per-process counter of fixed width.
pub fn unique_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}{count:06}", std::process::id())
}

/// Returns the protection named `rule` from a `--json` record's enforcement list.
pub fn protection(record: &serde_json::Value, rule: &str) -> serde_json::Value {
    record["enforcement"]
        .as_array()
        .expect("enforcement list")
        .iter()
        .find(|p| p["rule"] == rule)
        .cloned()
        .unwrap_or_else(|| panic!("no {rule:?} in {record}"))
}

/// Quotes `value` for a POSIX shell.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Builds a shell script that runs `WRAPPER... airlock ARGS...` as `caller`, where the
/// wrapper is a program such as `/usr/bin/time` that executes Airlock. The delegation guard
/// must outlive the script.
pub fn airlock_shell_command<S: AsRef<OsStr>>(
    caller: Caller,
    wrapper: &[&str],
    args: &[S],
) -> (String, Option<Delegation>) {
    let binary = binary().to_str().expect("UTF-8 binary path").to_owned();
    let words: Vec<String> = wrapper
        .iter()
        .map(|word| word.to_string())
        .chain([binary])
        .chain(
            args.iter()
                .map(|arg| arg.as_ref().to_string_lossy().into_owned()),
        )
        .map(|word| shell_quote(&word))
        .collect();
    let words = words.join(" ");
    let state = state_dir(caller);
    let state = shell_quote(state.to_str().expect("UTF-8 state path"));
    let export = format!("export AIRLOCK_STATE_DIR={state}; ");
    match caller {
        Caller::Root => (format!("{export}exec {words}"), None),
        Caller::User | Caller::UserWithoutCgroup => {
            let delegation = (caller == Caller::User).then(Delegation::create);
            let enter = delegation
                .as_ref()
                .map(Delegation::enter_script)
                .unwrap_or_default();
            let script = format!(
                "{export}{enter}exec setpriv --reuid={TEST_USER} --regid={TEST_USER} --init-groups -- {words}"
            );
            (script, delegation)
        }
    }
}

/// Builds a command that runs `airlock ARGS` as `caller` in `cwd`. The delegation guard
/// must outlive the child.
fn command<S: AsRef<OsStr>>(
    caller: Caller,
    args: &[S],
    cwd: &Path,
) -> (Command, Option<Delegation>) {
    let (script, delegation) = airlock_shell_command(caller, &[], args);
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).current_dir(cwd);
    (command, delegation)
}

/// A running `airlock` started by [`spawn_airlock`].
pub struct Spawned {
    pub child: Child,
    _delegation: Option<Delegation>,
}

/// Starts `WRAPPER... airlock ARGS...` as `caller` in `cwd` with the given stdout and piped
/// stderr. Without a wrapper the child's pid is Airlock's pid once the shell has executed it.
pub fn spawn_airlock(
    caller: Caller,
    wrapper: &[&str],
    args: &[&str],
    cwd: &Path,
    stdout: Stdio,
) -> Spawned {
    let (script, delegation) = airlock_shell_command(caller, wrapper, args);
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn airlock");
    Spawned {
        child,
        _delegation: delegation,
    }
}

/// Waits up to `limit` for `child` to exit and returns its exit code. Kills the child and
/// panics when it is still running at the end.
pub fn wait_bounded(child: &mut Child, limit: Duration, context: &str) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status
                .code()
                .unwrap_or_else(|| panic!("{context}: killed by a signal: {status:?}"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{context}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `airlock ARGS` as `caller` with `cwd` as working directory and collects its output.
pub fn run<S: AsRef<OsStr>>(caller: Caller, args: &[S], cwd: &Path) -> Output {
    run_with_stdin(caller, args, cwd, &[])
}

/// Like [`run`], feeding `stdin` to the command.
pub fn run_with_stdin<S: AsRef<OsStr>>(
    caller: Caller,
    args: &[S],
    cwd: &Path,
    stdin: &[u8],
) -> Output {
    use std::io::Write;
    let (mut command, _delegation) = command(caller, args, cwd);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn airlock");
    let mut input = child.stdin.take().expect("stdin pipe");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for airlock");
    writer.join().expect("stdin writer");
    output
}

/// Runs `sh -c SCRIPT` in a sandbox as `caller`, with a fresh workspace.
pub fn sandbox_sh(caller: Caller, script: &str) -> Output {
    let workspace = Workspace::new(caller);
    run(caller, &["run", "--", "sh", "-c", script], workspace.path())
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Parses the `--json` record, the last line of stderr.
pub fn json_record(output: &Output) -> serde_json::Value {
    let stderr = stderr(output);
    let line = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|error| panic!("no JSON record in {stderr:?}: {error}"))
}

/// Describes an output for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(output),
        stderr(output)
    )
}

/// Makes a device node or FIFO at `path` with mknod(2).
pub fn make_node(path: &Path, mode: libc::mode_t, device: libc::dev_t) {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let result = unsafe { libc::mknod(path.as_ptr(), mode, device) };
    assert_eq!(result, 0, "mknod: {}", std::io::Error::last_os_error());
}
