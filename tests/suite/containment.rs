//! Escape attempts from inside a sandbox, each run against every target: the namespace
//! backend as every caller in [`CALLERS`](super::harness::CALLERS), and the docker backend on
//! each engine. Where a probe can safely run on the host, the test first runs it there as the
//! user whose uid the sandbox's commands have, and checks that it succeeds, so that a failure
//! inside the sandbox is the sandbox's doing. The probes are written in sh and Perl, which
//! both the host and the docker test image (Debian's minbase) have.

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::harness::{describe, state_dir, stdout, test_user, unique_token, Caller};
use super::targets::{targets, Target};

/// The interpreter of the probes on the host, by absolute path because the host's PATH may
/// lead to a per-user shim that the test user cannot read.
const PERL: &str = "/usr/bin/perl";

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

/// The start of every Perl probe: strict mode, unbuffered output, and `errno_name`, which
/// returns the name of an errno value, such as EPERM.
const PERL_PRELUDE: &str = r#"
use strict;
use warnings;
use POSIX ();
$| = 1;
sub errno_name {
    local $! = shift;
    for my $name (sort keys %!) { return $name if $!{$name} }
    return $! + 0;
}
"#;

/// Runs `perl -e PRELUDE+CODE ARGS` on the host as `caller`.
fn host_perl(caller: Caller, code: &str, args: &[&str]) -> Output {
    let mut command = Command::new(PERL);
    command
        .arg("-e")
        .arg(format!("{PERL_PRELUDE}{code}"))
        .args(args);
    as_caller(&mut command, caller)
        .output()
        .expect("run perl on the host")
}

/// Runs `sh -c SCRIPT ARGS` in a sandbox of `target`, with a fresh workspace.
fn sandbox_sh_args(target: &Target, script: &str, args: &[&str]) -> Output {
    let workspace = target.workspace();
    let mut argv = vec!["--", "sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    target.run(&argv, workspace.path())
}

/// Runs `perl -e PRELUDE+CODE ARGS` in a sandbox of `target`, with a fresh workspace.
fn sandbox_perl(target: &Target, code: &str, args: &[&str]) -> Output {
    let workspace = target.workspace();
    let code = format!("{PERL_PRELUDE}{code}");
    let mut argv = vec!["--", "perl", "-e", &code];
    argv.extend_from_slice(args);
    target.run(&argv, workspace.path())
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
    for target in targets() {
        let caller = target.host_caller();
        let canary = Canary::start(caller);
        let (head, tail) = canary.marker.split_at(8);

        let host = host_sh(caller, PROCESS_SCAN, &[head, tail]);
        let expected = format!("found /proc/{}/cmdline", canary.pid());
        assert!(
            stdout(&host).contains(&expected),
            "{target:?}: the scan misses the canary on the host: {}",
            describe(&host)
        );

        let output = sandbox_sh_args(&target, PROCESS_SCAN, &[head, tail]);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        assert!(
            !text.contains("found"),
            "{target:?}: host process visible: {text}"
        );
        let scanned: u32 = field(&text, "scanned")
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        assert!(scanned >= 1, "{target:?}: the scan saw no process: {text}");
    }
}

#[test]
fn host_process_kill_fails() {
    for target in targets() {
        let caller = target.host_caller();
        let mut canary = Canary::start(caller);
        let pid = canary.pid().to_string();

        let host = host_sh(caller, "kill -0 \"$1\"", &[&pid]);
        assert!(
            host.status.success(),
            "{target:?}: the caller cannot signal its canary on the host: {}",
            describe(&host)
        );

        let script = "kill -KILL \"$1\"; echo \"status $?\"";
        let output = sandbox_sh_args(&target, script, &[&pid]);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let status = field(&stdout(&output), "status").map(str::to_owned);
        assert_ne!(
            status.as_deref(),
            Some("0"),
            "{target:?}: kill of host pid {pid} succeeded: {}",
            describe(&output)
        );
        assert!(
            canary.is_alive(),
            "{target:?}: the canary died: {}",
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
    for target in targets() {
        let caller = target.host_caller();
        let canary = CanaryFile::create(caller);

        let host = host_sh(caller, "cat \"$1\"", &[canary.path()]);
        assert_eq!(
            stdout(&host),
            canary.content,
            "{target:?}: the caller cannot read the canary on the host: {}",
            describe(&host)
        );

        let script = "cat \"$1\"; echo \"status $?\"";
        let output = sandbox_sh_args(&target, script, &[canary.path()]);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        assert!(
            !text.contains(&canary.content),
            "{target:?}: the canary in {} was read: {text}",
            canary.path()
        );
        assert_ne!(field(&text, "status"), Some("0"), "{target:?}: {text}");
    }
}

#[test]
fn shadow_passwords_hidden() {
    let host_shadow = fs::read_to_string("/etc/shadow").expect("read the host's /etc/shadow");
    assert!(
        host_shadow.contains("root:"),
        "the host's /etc/shadow has no root entry, so the test cannot tell it is hidden"
    );
    for target in targets() {
        let output = target.sh("cat /etc/shadow /etc/gshadow");
        let text = stdout(&output);
        assert!(
            text.is_empty(),
            "{target:?}: password hashes readable: {}",
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
    for target in targets() {
        let name = unique_name("write-probe");
        let mut args = vec![name.as_str()];
        args.extend_from_slice(&protected);
        let output = sandbox_sh_args(&target, WRITE_PROBE, &args);

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

        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        for dir in protected {
            let line = format!("{dir} denied\n");
            assert!(
                text.contains(&line),
                "{target:?}: write below {dir} not denied: {text}"
            );
        }
        assert!(
            leaked.is_empty(),
            "{target:?}: files appeared on the host: {leaked:?}"
        );
    }
}

#[test]
fn workspace_and_tmp_writable() {
    for target in targets() {
        let workspace = target.workspace();
        let content = unique_name("workspace-content");
        let script = r#"
set -e
echo "$1" > /workspace/written
mkdir /workspace/subdir
echo "$1" > /tmp/written
cat /tmp/written
echo "$1" > /dev/shm/written
"#;
        let output = target.run(
            &[
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
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        assert_eq!(stdout(&output), format!("{content}\n"), "{target:?}");
        let written = fs::read_to_string(workspace.path().join("written"))
            .expect("read the file written to /workspace");
        assert_eq!(written, format!("{content}\n"), "{target:?}");
        assert!(
            workspace.path().join("subdir").is_dir(),
            "{target:?}: the directory made in /workspace is missing on the host"
        );
    }
}

#[test]
fn host_environment_not_inherited() {
    // Target::run gives no way to set the caller's environment, so this test starts Airlock
    // itself. The test user therefore runs without delegated cgroups, which environment
    // filtering does not depend on.
    for target in targets() {
        let workspace = target.workspace();
        let name = unique_name("canary-variable")
            .replace('-', "_")
            .to_uppercase();
        let value = unique_name("canary-value");
        let explicit = "AIRLOCK_TEST_EXPLICIT=set-by-env-option";

        let mut host = Command::new("env");
        host.env(&name, &value);
        let host = as_caller(&mut host, target.host_caller())
            .output()
            .expect("run env on the host");
        assert!(
            stdout(&host).contains(&value),
            "{target:?}: the canary variable is not set: {}",
            describe(&host)
        );

        let output = target
            .command(&["--env", explicit, "--", "env"], workspace.path())
            .env(&name, &value)
            .output()
            .expect("run airlock");
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        assert!(
            !text.contains(&name),
            "{target:?}: host variable {name} inherited: {text}"
        );
        assert!(
            !text.contains(&value),
            "{target:?}: host variable value inherited: {text}"
        );
        assert!(
            text.lines().any(|line| line == explicit),
            "{target:?}: --env {explicit} missing: {text}"
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
    for target in targets() {
        let output = target.sh("cat /proc/net/dev");
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        assert_eq!(
            interfaces(&stdout(&output)),
            ["lo"],
            "{target:?}: host interfaces {host_interfaces:?}"
        );
    }
}

/// Connects to 127.0.0.1 on the port in $ARGV[0], waiting up to 5 s, and prints `connect ok`
/// or `connect ERRNO`.
const CONNECT_PROBE: &str = r#"
use Socket qw(PF_INET SOCK_STREAM pack_sockaddr_in inet_aton);
socket(my $socket, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
$SIG{ALRM} = sub { print "connect ETIMEDOUT\n"; exit 0 };
alarm 5;
if (connect($socket, pack_sockaddr_in($ARGV[0], inet_aton("127.0.0.1")))) {
    print "connect ok\n";
} else {
    print "connect ", errno_name($! + 0), "\n";
}
"#;

#[test]
fn host_loopback_listener_unreachable() {
    for target in targets() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on the host's loopback");
        let port = listener.local_addr().expect("listener address").port();
        let port = port.to_string();

        let host = host_perl(target.host_caller(), CONNECT_PROBE, &[&port]);
        assert_eq!(
            field(&stdout(&host), "connect"),
            Some("ok"),
            "{target:?}: the probe cannot reach the listener on the host: {}",
            describe(&host)
        );
        let (accepted, _) = listener.accept().expect("accept the host's probe");
        drop(accepted);

        let output = sandbox_perl(&target, CONNECT_PROBE, &[&port]);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let result = field(&stdout(&output), "connect").map(str::to_owned);
        assert_ne!(
            result.as_deref(),
            Some("ok"),
            "{target:?}: the sandbox reached the host's 127.0.0.1:{port}"
        );
        assert!(
            result.is_some(),
            "{target:?}: the probe did not run: {}",
            describe(&output)
        );
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let pending = listener.accept().map(|_| ()).map_err(|error| error.kind());
        assert_eq!(
            pending,
            Err(ErrorKind::WouldBlock),
            "{target:?}: a connection reached the host's listener"
        );
    }
}

/// Runs each probe named in @ARGV in a child process of its own and prints `NAME ok` or
/// `NAME ERRNO`. The probes that also run on the host change only the child's own new
/// namespaces, or let the probe trace its child with PTRACE_TRACEME. The system call numbers
/// are x86_64's.
const SYSCALL_PROBE: &str = r#"
my ($SYS_PTRACE, $SYS_MOUNT, $SYS_UMOUNT2, $SYS_UNSHARE) = (101, 165, 166, 272);
my ($CLONE_NEWNS, $CLONE_NEWUSER, $CLONE_NEWNET) = (0x00020000, 0x10000000, 0x40000000);
my ($MS_REC, $MS_PRIVATE, $MNT_DETACH, $PTRACE_TRACEME) = (0x4000, 0x40000, 2, 0);
# syscall passes a string as a pointer, but only from a variable.
my ($none, $root, $tmp, $tmpfs) = ("none", "/", "/tmp", "tmpfs");

sub mount_tmpfs { syscall($SYS_MOUNT, $none, $tmp, $tmpfs, 0, 0) }

sub mount_in_user_namespace {
    return -1 if syscall($SYS_UNSHARE, $CLONE_NEWUSER | $CLONE_NEWNS) != 0;
    return -1 if syscall($SYS_MOUNT, 0, $root, 0, $MS_REC | $MS_PRIVATE, 0) != 0;
    return mount_tmpfs();
}

my %probes = (
    "mount" => \&mount_tmpfs,
    "umount2" => sub { syscall($SYS_UMOUNT2, $tmp, $MNT_DETACH) },
    "unshare-mount" => sub { syscall($SYS_UNSHARE, $CLONE_NEWNS) },
    "unshare-net" => sub { syscall($SYS_UNSHARE, $CLONE_NEWNET) },
    "unshare-user-mount" => sub { syscall($SYS_UNSHARE, $CLONE_NEWUSER | $CLONE_NEWNS) },
    "unshare-user-net" => sub { syscall($SYS_UNSHARE, $CLONE_NEWUSER | $CLONE_NEWNET) },
    "user-namespace-mount" => \&mount_in_user_namespace,
    "ptrace" => sub { syscall($SYS_PTRACE, $PTRACE_TRACEME, 0, 0, 0) },
);

for my $name (@ARGV) {
    my $pid = fork // die "fork: $!";
    POSIX::_exit($probes{$name}->() == 0 ? 0 : $! + 0) if $pid == 0;
    waitpid($pid, 0);
    my $code = $? >> 8;
    print $name, " ", ($code == 0 ? "ok" : errno_name($code)), "\n";
}
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
    for target in targets() {
        let caller = target.host_caller();
        let host = host_perl(caller, SYSCALL_PROBE, &HOST_SYSCALL_PROBES);
        for probe in HOST_SYSCALL_PROBES {
            assert_eq!(
                field(&stdout(&host), probe),
                Some("ok"),
                "{target:?}: {probe} fails on the host: {}",
                describe(&host)
            );
        }
        let host = host_sh(caller, "unshare -r true && unshare -rn true", &[]);
        assert!(
            host.status.success(),
            "{target:?}: unshare fails on the host: {}",
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
        let output = sandbox_perl(&target, SYSCALL_PROBE, &probes);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        for probe in probes {
            assert_eq!(
                field(&text, probe),
                Some("EPERM"),
                "{target:?}: {probe}: {text}"
            );
        }

        let output = target.sh(MOUNT_TOOLS_PROBE);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        for tool in ["mount", "unshare-r", "unshare-rn"] {
            let status = field(&text, tool);
            assert!(status.is_some(), "{target:?}: {tool} did not run: {text}");
            assert_ne!(status, Some("0"), "{target:?}: {tool} succeeded: {text}");
        }
    }
}

/// Pushes a byte into the input of a pseudo-terminal the probe opens itself, with the
/// TIOCSTI request as is and with bits set above the 32 the kernel reads, and prints
/// `plain RESULT` and `high-bits RESULT`. The probe first makes the terminal its controlling
/// terminal in a new session, because without CAP_SYS_ADMIN the kernel itself rejects
/// TIOCSTI on any other terminal. The requests go through syscall, because Perl's ioctl
/// truncates the request to an unsigned int (pp_ioctl in Perl's pp_sys.c). The numbers are
/// x86_64's.
const TIOCSTI_PROBE: &str = r#"
use Fcntl qw(O_RDWR O_NOCTTY);
my $SYS_IOCTL = 16;
my ($TIOCSTI, $TIOCSCTTY, $TIOCGPTN, $TIOCSPTLCK) = (0x5412, 0x540E, 0x80045430, 0x40045431);
sysopen(my $main, "/dev/ptmx", O_RDWR | O_NOCTTY) or die "open /dev/ptmx: $!";
my $unlock = pack("i", 0);
syscall($SYS_IOCTL, fileno($main), $TIOCSPTLCK, $unlock) == 0 or die "TIOCSPTLCK: $!";
my $number = pack("i", 0);
syscall($SYS_IOCTL, fileno($main), $TIOCGPTN, $number) == 0 or die "TIOCGPTN: $!";
my $path = "/dev/pts/" . unpack("i", $number);
sysopen(my $terminal, $path, O_RDWR | O_NOCTTY) or die "open $path: $!";
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    POSIX::setsid();
    syscall($SYS_IOCTL, fileno($terminal), $TIOCSCTTY, 0) == 0 or die "TIOCSCTTY: $!";
    for my $case (["plain", $TIOCSTI], ["high-bits", $TIOCSTI | (1 << 32)]) {
        my $byte = "x";
        my $result = syscall($SYS_IOCTL, fileno($terminal), $case->[1], $byte);
        print $case->[0], " ", ($result == 0 ? "ok" : errno_name($! + 0)), "\n";
    }
    POSIX::_exit(0);
}
waitpid($pid, 0);
"#;

#[test]
fn terminal_input_injection_denied() {
    for target in targets() {
        let host = host_perl(target.host_caller(), TIOCSTI_PROBE, &[]);
        let text = stdout(&host);
        assert_eq!(
            field(&text, "plain"),
            Some("ok"),
            "{target:?}: TIOCSTI fails on the host: {}",
            describe(&host)
        );
        assert_eq!(
            field(&text, "high-bits"),
            Some("ok"),
            "{target:?}: the kernel ignores TIOCSTI with high bits set: {}",
            describe(&host)
        );

        let output = sandbox_perl(&target, TIOCSTI_PROBE, &[]);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        assert_eq!(field(&text, "plain"), Some("EPERM"), "{target:?}: {text}");
        assert_eq!(
            field(&text, "high-bits"),
            Some("EPERM"),
            "{target:?}: {text}"
        );
    }
}

/// Opens each kernel control file for writing, writing nothing, and prints `PATH opened`,
/// `PATH absent` or `PATH ERRNO`.
const CONTROL_FILE_PROBE: &str = r#"
use Fcntl qw(O_WRONLY);
for my $path ("/proc/sys/kernel/core_pattern", "/proc/sysrq-trigger") {
    if (sysopen(my $file, $path, O_WRONLY)) {
        print "$path opened\n";
    } elsif ($!{ENOENT}) {
        print "$path absent\n";
    } else {
        print "$path ", errno_name($! + 0), "\n";
    }
}
"#;

#[test]
fn kernel_control_files_read_only() {
    let core_pattern = Path::new("/proc/sys/kernel/core_pattern");
    let before = fs::read_to_string(core_pattern).expect("read the host's core_pattern");
    for target in targets() {
        let output = sandbox_perl(&target, CONTROL_FILE_PROBE, &[]);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        let core = field(&text, "/proc/sys/kernel/core_pattern");
        assert!(core.is_some(), "{target:?}: {}", describe(&output));
        assert_ne!(core, Some("opened"), "{target:?}: {text}");
        assert_ne!(core, Some("absent"), "{target:?}: {text}");
        let sysrq = field(&text, "/proc/sysrq-trigger");
        assert!(sysrq.is_some(), "{target:?}: {}", describe(&output));
        assert_ne!(sysrq, Some("opened"), "{target:?}: {text}");

        let script = "cat /proc/sys/kernel/core_pattern; \
                      echo airlock-escape-core > /proc/sys/kernel/core_pattern";
        let output = target.sh(script);
        let after = fs::read_to_string(core_pattern).expect("read the host's core_pattern");
        if after != before {
            fs::write(core_pattern, &before).expect("restore the host's core_pattern");
        }
        assert_eq!(
            after, before,
            "{target:?}: the sandbox changed the host's core_pattern"
        );
        assert!(
            !output.status.success(),
            "{target:?}: {}",
            describe(&output)
        );
        assert_eq!(
            stdout(&output),
            before,
            "{target:?}: core_pattern is not the host's file"
        );
    }
}

/// Creates a user namespace with clone(2), then with unshare(2), printing `clone RESULT` and
/// `unshare RESULT`. The clone child exits at once. The clone comes first because after the
/// unshare the probe's ids have no mapping, which makes any nested namespace fail. The
/// system call numbers are x86_64's.
const USER_NAMESPACE_PROBE: &str = r#"
my ($SYS_CLONE, $SYS_UNSHARE) = (56, 272);
my ($CLONE_NEWUSER, $SIGCHLD) = (0x10000000, 17);
my $pid = syscall($SYS_CLONE, $CLONE_NEWUSER | $SIGCHLD, 0, 0, 0, 0);
POSIX::_exit(0) if $pid == 0;
if ($pid > 0) {
    waitpid($pid, 0);
    print "clone ok\n";
} else {
    print "clone ", errno_name($! + 0), "\n";
}
my $result = syscall($SYS_UNSHARE, $CLONE_NEWUSER);
print "unshare ", ($result == 0 ? "ok" : errno_name($! + 0)), "\n";
"#;

#[test]
fn user_namespace_creation_fails() {
    for target in targets() {
        let host = host_perl(target.host_caller(), USER_NAMESPACE_PROBE, &[]);
        let text = stdout(&host);
        assert_eq!(
            field(&text, "unshare"),
            Some("ok"),
            "{target:?}: user namespaces fail on the host: {}",
            describe(&host)
        );
        assert_eq!(
            field(&text, "clone"),
            Some("ok"),
            "{target:?}: {}",
            describe(&host)
        );

        let output = sandbox_perl(&target, USER_NAMESPACE_PROBE, &[]);
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        assert_eq!(field(&text, "unshare"), Some("EPERM"), "{target:?}: {text}");
        assert_eq!(field(&text, "clone"), Some("EPERM"), "{target:?}: {text}");

        let output = target.sh("unshare -U true 2>/dev/null; echo \"status $?\"");
        let status = field(&stdout(&output), "status").map(str::to_owned);
        assert!(status.is_some(), "{target:?}: {}", describe(&output));
        assert_ne!(
            status.as_deref(),
            Some("0"),
            "{target:?}: unshare -U succeeded"
        );
    }
}

#[test]
fn device_node_creation_fails() {
    for target in targets() {
        let workspace = target.workspace();
        let script = r#"
for node in /tmp/null-copy /workspace/null-copy /dev/shm/null-copy; do
    mknod "$node" c 1 3 2>/dev/null; echo "$node $?"
done
mknod /workspace/loop-copy b 7 0 2>/dev/null; echo "/workspace/loop-copy $?"
ls /tmp /workspace /dev/shm
"#;
        let output = target.run(&["--", "sh", "-c", script], workspace.path());
        assert!(output.status.success(), "{target:?}: {}", describe(&output));
        let text = stdout(&output);
        for node in [
            "/tmp/null-copy",
            "/workspace/null-copy",
            "/dev/shm/null-copy",
            "/workspace/loop-copy",
        ] {
            let status = field(&text, node);
            assert!(status.is_some(), "{target:?}: {node} not tried: {text}");
            assert_ne!(status, Some("0"), "{target:?}: {node} created: {text}");
        }
        assert!(
            !text.contains("null-copy\n") && !text.contains("loop-copy\n"),
            "{target:?}: a node is listed: {text}"
        );
        let entries = fs::read_dir(workspace.path())
            .expect("list the workspace")
            .count();
        assert_eq!(entries, 0, "{target:?}: the workspace is not empty");
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
    for target in targets() {
        let mut names = Vec::new();
        for _ in 0..2 {
            let output = target.sh("cat /proc/sys/kernel/hostname; uname -n");
            assert!(output.status.success(), "{target:?}: {}", describe(&output));
            let text = stdout(&output);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{target:?}: {text}");
            assert_eq!(lines[0], lines[1], "{target:?}: {text}");
            assert!(
                is_sandbox_hostname(lines[0]),
                "{target:?}: hostname {:?}",
                lines[0]
            );
            assert_ne!(lines[0], host.trim(), "{target:?}");
            names.push(lines[0].to_owned());
        }
        assert_ne!(
            names[0], names[1],
            "{target:?}: two sandboxes share a hostname"
        );
    }
}
