//! Probes that reach for more privilege or for the host's kernel settings: a new user
//! namespace, /proc/sys and /proc/sysrq-trigger, a setuid binary, and a terminal's input.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use airlock_namespace::sys;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{argument, invalid_arguments, report, Armed, Finding, Probe};
use crate::probe::executor::{Execution, Invocation};
use crate::probe::host::{self, Canary, Host, HostTerminal};
use crate::probe::system::error_name;

/// The name of the helper that the setuid probe executes through the setuid copy.
pub const PRIVILEGES_HELPER: &str = "privileges";

/// Creates a user namespace with unshare.
pub struct CreateUserNamespace;

#[derive(Serialize, Deserialize)]
struct UnshareReport {
    created: bool,
    error: Option<String>,
    /// The boot id of the kernel the probe ran on, to tell a guest's kernel from the host's.
    #[serde(default)]
    boot_id: Option<String>,
}

/// The file that holds a random id the kernel draws at each boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Returns the boot id of the kernel this process runs on, or `None` where /proc is
/// missing or hides it. A file at that path outside a procfs, as a root tree can hold,
/// does not count.
fn kernel_boot_id() -> Option<String> {
    let file = File::open(BOOT_ID).ok()?;
    // SAFETY: statfs is plain data, which fstatfs fills.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call, and `stats` is a live statfs.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) } == -1
        || stats.f_type as i64 != libc::PROC_SUPER_MAGIC
    {
        return None;
    }
    let id = io::read_to_string(file).ok()?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
}

/// Returns the probe's boot id when it differs from the host's: the probe then ran on a
/// kernel of its own, a virtual machine's, where what it changed leaves the host's kernel
/// untouched. Without a boot id on either side, the probe counts as on the host's kernel.
fn other_kernel(probe_boot_id: Option<&str>) -> Option<&str> {
    let host = kernel_boot_id()?;
    probe_boot_id.filter(|probe| *probe != host)
}

struct NoCanary;

impl Probe for CreateUserNamespace {
    fn name(&self) -> &'static str {
        "create-user-namespace"
    }

    fn attempt(&self) -> &'static str {
        "unshare(CLONE_NEWUSER), which opens the kernel's namespace code to the sandbox"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(NoCanary))
    }

    fn inside(&self, _args: &[String]) -> Value {
        let unshared = sys::unshare(libc::CLONE_NEWUSER);
        report(UnshareReport {
            created: unshared.is_ok(),
            error: unshared.err().map(|error| error_name(&error)),
            boot_id: kernel_boot_id(),
        })
    }
}

impl Armed for NoCanary {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(Vec::new())
    }

    fn canaries(&self) -> Vec<Canary> {
        Vec::new()
    }

    /// Decides from the probe's report, because a new namespace leaves nothing the host
    /// can see.
    fn judge(&mut self, execution: &Execution) -> Finding {
        match execution.result::<UnshareReport>() {
            Some(UnshareReport {
                created: true,
                boot_id,
                ..
            }) => match other_kernel(boot_id.as_deref()) {
                Some(guest) => Finding::contained(format!(
                    "unshare(CLONE_NEWUSER) succeeded in a kernel of its own (boot id {guest}), \
                     not the host's"
                )),
                None => Finding::escaped("unshare(CLONE_NEWUSER) succeeded, as the probe reports"),
            },
            Some(UnshareReport { error, .. }) => Finding::contained(format!(
                "unshare(CLONE_NEWUSER): {}",
                error.unwrap_or_else(|| "failed".to_owned())
            )),
            None => Finding::no_result(execution),
        }
    }
}

/// Opens kernel settings of the whole host for writing.
pub struct WriteProcSys;

/// The files the probe opens for writing, each with whether it writes back the value it
/// contains. sysrq-trigger is only opened, because any byte written to it runs a command.
const PROC_TARGETS: [(&str, bool); 2] = [
    ("/proc/sys/kernel/core_pattern", true),
    ("/proc/sysrq-trigger", false),
];

#[derive(Serialize, Deserialize)]
struct ProcWrite {
    path: String,
    opened: bool,
    rewritten: bool,
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ProcReport {
    attempts: Vec<ProcWrite>,
    /// The boot id of the kernel the probe ran on.
    #[serde(default)]
    boot_id: Option<String>,
}

struct ProcArmed;

impl Probe for WriteProcSys {
    fn name(&self) -> &'static str {
        "write-proc-sys"
    }

    fn attempt(&self) -> &'static str {
        "open core_pattern (rewriting its own value) and sysrq-trigger for writing"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(ProcArmed))
    }

    fn inside(&self, _args: &[String]) -> Value {
        let attempts = PROC_TARGETS
            .iter()
            .map(|&(path, rewrite)| open_for_writing(Path::new(path), rewrite))
            .collect();
        report(ProcReport {
            attempts,
            boot_id: kernel_boot_id(),
        })
    }
}

/// Opens `path` for writing and, with `rewrite`, writes back the value it held.
fn open_for_writing(path: &Path, rewrite: bool) -> ProcWrite {
    let mut attempt = ProcWrite {
        path: path.display().to_string(),
        opened: false,
        rewritten: false,
        error: None,
    };
    let current = if rewrite {
        match std::fs::read(path) {
            Ok(current) => Some(current),
            Err(error) => {
                attempt.error = Some(format!("read: {}", error_name(&error)));
                return attempt;
            }
        }
    } else {
        None
    };
    let mut file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(error) => {
            attempt.error = Some(error_name(&error));
            return attempt;
        }
    };
    attempt.opened = true;
    if let Some(current) = current {
        match file.write_all(&current) {
            Ok(()) => attempt.rewritten = true,
            Err(error) => attempt.error = Some(format!("write: {}", error_name(&error))),
        }
    }
    attempt
}

impl Armed for ProcArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(Vec::new())
    }

    fn canaries(&self) -> Vec<Canary> {
        Vec::new()
    }

    /// Decides from the probe's report, because a value written back unchanged leaves
    /// nothing the host can see.
    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(report) = execution.result::<ProcReport>() else {
            return Finding::no_result(execution);
        };
        let opened: Vec<&str> = report
            .attempts
            .iter()
            .filter(|attempt| attempt.opened)
            .map(|attempt| attempt.path.as_str())
            .collect();
        if let (false, Some(guest)) = (opened.is_empty(), other_kernel(report.boot_id.as_deref())) {
            return Finding::contained(format!(
                "opened {} for writing in a kernel of its own (boot id {guest}), not the host's",
                opened.join(" and ")
            ));
        }
        if !opened.is_empty() {
            return Finding::escaped(format!(
                "opened {} for writing, as the probe reports",
                opened.join(" and ")
            ));
        }
        let errors: Vec<String> = report
            .attempts
            .iter()
            .map(|attempt| {
                let error = attempt.error.as_deref().unwrap_or("not opened");
                format!("{}: {error}", attempt.path)
            })
            .collect();
        Finding::contained(errors.join("; "))
    }
}

/// Executes a root-owned setuid copy of Airlock and compares the privileges before and
/// after.
pub struct SetuidBinary;

/// A process's effective user id and effective capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileges {
    pub euid: u32,
    pub capabilities: u64,
}

/// Reads this process's effective user id and capabilities.
pub fn current_privileges() -> Privileges {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: version 3 fills two data structs, which `data` provides.
    let result = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    let capabilities = if result == 0 {
        u64::from(data[0].effective) | (u64::from(data[1].effective) << 32)
    } else {
        0
    };
    Privileges {
        euid: sys::geteuid(),
        capabilities,
    }
}

#[derive(Serialize, Deserialize)]
struct SetuidReport {
    before: Option<Privileges>,
    after: Option<Privileges>,
    error: Option<String>,
}

struct SetuidArmed {
    name: String,
}

impl Probe for SetuidBinary {
    fn name(&self) -> &'static str {
        "setuid-binary"
    }

    fn attempt(&self) -> &'static str {
        "as an unprivileged user where it can, execute a root-owned setuid copy of Airlock"
    }

    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String> {
        let name = host.setuid_copy.clone()?;
        Ok(Box::new(SetuidArmed { name }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let path: PathBuf = match argument(args, 0) {
            Ok(path) => path,
            Err(message) => return invalid_arguments(message),
        };
        report(match execute_setuid_copy(&path) {
            Ok((before, after)) => SetuidReport {
                before: Some(before),
                after,
                error: None,
            },
            Err(error) => SetuidReport {
                before: None,
                after: None,
                error: Some(error),
            },
        })
    }
}

/// Executes the setuid copy at `path` in a child, as the nobody user where this process
/// can become it, and returns the child's privileges before the exec and, if the exec
/// worked, after it.
fn execute_setuid_copy(path: &Path) -> Result<(Privileges, Option<Privileges>), String> {
    // Opened first: once the child is nobody, it may not be able to reach the file.
    let binary = File::open(path).map_err(|error| format!("open: {}", error_name(&error)))?;
    let (read, write) = sys::pipe().map_err(|error| format!("pipe: {error}"))?;
    let child = sys::fork().map_err(|error| format!("fork: {error}"))?;
    if child == 0 {
        run_setuid_child(&binary, write.as_raw_fd());
    }
    drop(write);
    let output = File::from(read);
    let mut text = String::new();
    let _ = output.take(1 << 16).read_to_string(&mut text);
    let _ = sys::waitpid(child, 0);
    let mut lines = text.lines();
    let before: Privileges = lines
        .next()
        .and_then(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| "the child reported nothing".to_owned())?;
    let after = lines
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|line| serde_json::from_value(line.get("result")?.clone()).ok());
    if after.is_none() {
        let failure = text.lines().nth(1).unwrap_or("no output").to_owned();
        return Err(format!("the setuid copy did not run: {failure}"));
    }
    Ok((before, after))
}

/// The child of the setuid probe: it drops to nobody where it can, reports its privileges,
/// and executes the setuid copy with its output on the same pipe.
fn run_setuid_child(binary: &File, pipe: i32) -> ! {
    if sys::geteuid() == 0 {
        let _ = sys::setgroups_empty();
        let _ = sys::become_id(NOBODY);
    }
    let before = serde_json::to_string(&current_privileges()).unwrap_or_default();
    let _ = sys::write_all(pipe, format!("{before}\n").as_bytes());
    let _ = sys::dup2(pipe, 1);
    let argv: Vec<CString> = ["airlock", "__probe", PRIVILEGES_HELPER]
        .iter()
        .filter_map(|arg| CString::new(*arg).ok())
        .collect();
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let environment: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: `argv` and `environment` are null-terminated arrays of NUL-terminated strings
    // that outlive the call, and `binary` is an open descriptor of the file to execute.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            binary.as_raw_fd(),
            c"".as_ptr(),
            pointers.as_ptr(),
            environment.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    let error = error_name(&io::Error::last_os_error());
    let _ = sys::write_all(1, format!("execveat: {error}\n").as_bytes());
    sys::exit_now(1)
}

/// The user and group id of the user nobody.
const NOBODY: u32 = 65534;

impl Armed for SetuidArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![self.name.clone()])
    }

    fn canaries(&self) -> Vec<Canary> {
        Vec::new()
    }

    /// Decides from the privileges the probe reports before and after the exec, because the
    /// host has no view of them.
    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(report) = execution.result::<SetuidReport>() else {
            return Finding::no_result(execution);
        };
        let (before, after) = match (report.before, report.after) {
            (Some(before), Some(after)) => (before, after),
            _ => {
                let error = report
                    .error
                    .unwrap_or_else(|| "no privileges reported".to_owned());
                return Finding::contained(format!("the setuid copy did not run: {error}"));
            }
        };
        let gained = after.capabilities & !before.capabilities;
        if after.euid != before.euid {
            return Finding::escaped(format!(
                "the setuid copy ran with euid {} instead of {}",
                after.euid, before.euid
            ));
        }
        if gained != 0 {
            return Finding::escaped(format!(
                "the setuid copy gained the capabilities {gained:#x}"
            ));
        }
        Finding::contained(format!(
            "the setuid copy ran with the caller's euid {} and no new capabilities",
            after.euid
        ))
    }
}

/// Pushes characters into the input of its terminal, and of the host's, with TIOCSTI.
pub struct TiocstiInjection;

#[derive(Serialize, Deserialize)]
struct Injection {
    target: String,
    injected: bool,
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct TiocstiReport {
    attempts: Vec<Injection>,
}

struct TiocstiArmed {
    terminal: HostTerminal,
    marker: String,
}

impl Probe for TiocstiInjection {
    fn name(&self) -> &'static str {
        "tiocsti-injection"
    }

    fn attempt(&self) -> &'static str {
        "push characters into its terminal's input with TIOCSTI, on a host terminal"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        let terminal = HostTerminal::open()
            .map_err(|error| format!("cannot open a pseudo-terminal on the host: {error}"))?;
        let marker = format!("airlock-probe-{}", host::token(6));
        Ok(Box::new(TiocstiArmed { terminal, marker }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let marker: String = match argument(args, 0) {
            Ok(marker) => marker,
            Err(message) => return invalid_arguments(message),
        };
        let mut attempts = vec![inject("standard input", 0, &marker)];
        match sys::open(Path::new("/dev/tty"), libc::O_RDWR | libc::O_NOCTTY) {
            Ok(tty) => attempts.push(inject("/dev/tty", tty.as_raw_fd(), &marker)),
            Err(error) => attempts.push(Injection {
                target: "/dev/tty".to_owned(),
                injected: false,
                error: Some(format!("open: {}", error_name(&error))),
            }),
        }
        report(TiocstiReport { attempts })
    }
}

/// Pushes `marker` into the input of the terminal `fd`, one character per TIOCSTI.
fn inject(target: &str, fd: i32, marker: &str) -> Injection {
    let mut error = None;
    for byte in marker.bytes() {
        // SAFETY: TIOCSTI reads one byte from the pointer, which points to `byte`.
        if unsafe { libc::ioctl(fd, libc::TIOCSTI, &byte) } == -1 {
            error = Some(error_name(&io::Error::last_os_error()));
            break;
        }
    }
    Injection {
        target: target.to_owned(),
        injected: error.is_none(),
        error,
    }
}

impl Armed for TiocstiArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation {
            terminal: Some(self.terminal.slave()),
            ..Invocation::new(vec![self.marker.clone()])
        }
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![Canary::Terminal]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let input = self.terminal.pending_input();
        let marker = self.marker.as_bytes();
        if input.windows(marker.len()).any(|window| window == marker) {
            return Finding::escaped("pushed input into the host's terminal with TIOCSTI");
        }
        let Some(report) = execution.result::<TiocstiReport>() else {
            return Finding::no_result(execution);
        };
        if report.attempts.iter().any(|attempt| attempt.injected) {
            return Finding::contained("TIOCSTI reached only the sandbox's own terminal");
        }
        let errors: Vec<String> = report
            .attempts
            .iter()
            .map(|attempt| {
                let error = attempt.error.as_deref().unwrap_or("failed");
                format!("{}: {error}", attempt.target)
            })
            .collect();
        Finding::contained(format!("TIOCSTI on {}", errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::probe::probes::testing::executed;
    use crate::probe::probes::Verdict;

    fn judge_setuid(before: (u32, u64), after: (u32, u64)) -> Verdict {
        let privileges =
            |(euid, capabilities)| json!({ "euid": euid, "capabilities": capabilities });
        let report = json!({ "result": {
            "before": privileges(before), "after": privileges(after), "error": null,
        }});
        let mut armed = SetuidArmed {
            name: "copy".to_owned(),
        };
        armed.judge(&executed(report)).verdict
    }

    #[test]
    fn setuid_gain_judged_escaped() {
        assert_eq!(judge_setuid((65534, 0), (0, 0)), Verdict::Escaped);
        assert_eq!(judge_setuid((0, 0), (0, 1 << 21)), Verdict::Escaped);
        assert_eq!(judge_setuid((0, 0), (0, 0)), Verdict::Contained);
    }

    #[test]
    fn terminal_injection_judged_escaped_when_host_reads_it() {
        if sys::geteuid() != 0 {
            eprintln!("skipped: TIOCSTI on a terminal that is not the caller's own needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut armed = TiocstiInjection
            .arm(&crate::probe::probes::testing::host(&dir))
            .unwrap();
        let invocation = armed.invocation();
        let terminal = invocation.terminal.unwrap().as_raw_fd();
        let injection = inject("the host's terminal", terminal, &invocation.args[0]);
        assert!(injection.injected, "{:?}", injection.error);
        let report = json!({ "result": { "attempts": [] } });
        assert_eq!(armed.judge(&executed(report)).verdict, Verdict::Escaped);
    }
}
