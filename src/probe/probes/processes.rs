//! Probes that reach for the host's processes: listing them, signalling them, reading
//! their memory or their environment, and outliving the sandbox.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use airlock_namespace::sys;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{argument, invalid_arguments, report, Armed, Finding, Probe};
use crate::probe::executor::{Execution, Invocation};
use crate::probe::host::{self, Canary, CanaryProcess, Host, PROCESS_NAME_PREFIX};
use crate::probe::system::{self, error_name};

fn start_canary() -> Result<CanaryProcess, String> {
    CanaryProcess::start().map_err(|error| format!("cannot start the canary process: {error}"))
}

/// Lists /proc and looks for a process the host started.
pub struct SeeHostProcesses;

#[derive(Serialize, Deserialize)]
struct ProcessList {
    names: Vec<String>,
    error: Option<String>,
}

struct SeeArmed {
    canary: CanaryProcess,
}

impl Probe for SeeHostProcesses {
    fn name(&self) -> &'static str {
        "see-host-processes"
    }

    fn attempt(&self) -> &'static str {
        "list /proc and look for a process the host started"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(SeeArmed {
            canary: start_canary()?,
        }))
    }

    fn inside(&self, _args: &[String]) -> Value {
        report(match system::processes() {
            Ok(processes) => ProcessList {
                names: processes.into_iter().map(|process| process.name).collect(),
                error: None,
            },
            Err(error) => ProcessList {
                names: Vec::new(),
                error: Some(error_name(&error)),
            },
        })
    }
}

impl Armed for SeeArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(Vec::new())
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![self.canary.describe()]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(list) = execution.result::<ProcessList>() else {
            return Finding::no_result(execution);
        };
        let (pid, name) = (self.canary.pid(), self.canary.name());
        if list.names.iter().any(|seen| seen == name) {
            return Finding::escaped(format!("/proc shows the host's process {pid} ({name})"));
        }
        match list.error {
            Some(error) => Finding::contained(format!("cannot list /proc: {error}")),
            None => Finding::contained(format!(
                "/proc shows {} processes, none of them the host's process {pid}",
                list.names.len()
            )),
        }
    }
}

/// Sends SIGUSR1 to a host process by its pid.
pub struct SignalHostProcess;

#[derive(Serialize, Deserialize)]
struct SignalReport {
    error: Option<String>,
}

struct SignalArmed {
    canary: CanaryProcess,
}

impl Probe for SignalHostProcess {
    fn name(&self) -> &'static str {
        "signal-host-process"
    }

    fn attempt(&self) -> &'static str {
        "send SIGUSR1 to a host process by its pid"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(SignalArmed {
            canary: start_canary()?,
        }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let pid: i32 = match argument(args, 0) {
            // 0, -1 and negative pids name groups of processes, never one host process.
            Ok(pid) if pid > 1 => pid,
            Ok(pid) => return invalid_arguments(format!("refusing to signal pid {pid}")),
            Err(message) => return invalid_arguments(message),
        };
        let error = sys::kill(pid, libc::SIGUSR1).err();
        report(SignalReport {
            error: error.map(|error| error_name(&error)),
        })
    }
}

impl Armed for SignalArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![self.canary.pid().to_string()])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![self.canary.describe()]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let pid = self.canary.pid();
        if self.canary.received(libc::SIGUSR1) {
            return Finding::escaped(format!("the host's process {pid} received SIGUSR1"));
        }
        match execution.result::<SignalReport>() {
            Some(SignalReport { error: Some(error) }) => {
                Finding::contained(format!("kill({pid}, SIGUSR1) failed: {error}"))
            }
            Some(SignalReport { error: None }) => Finding::contained(format!(
                "kill({pid}) reached a process of the sandbox with that pid, not the host's"
            )),
            None => Finding::no_result(execution),
        }
    }
}

/// Reads a host process's memory with process_vm_readv and with ptrace.
pub struct PtraceHostProcess;

#[derive(Serialize, Deserialize)]
struct MemoryRead {
    /// The bytes read, as hex.
    read: Option<String>,
    error: Option<String>,
}

impl MemoryRead {
    fn of(result: io::Result<Vec<u8>>) -> MemoryRead {
        match result {
            Ok(bytes) => MemoryRead {
                read: Some(host::hex(&bytes)),
                error: None,
            },
            Err(error) => MemoryRead {
                read: None,
                error: Some(error_name(&error)),
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
struct PtraceReport {
    process_vm_readv: MemoryRead,
    ptrace: MemoryRead,
}

struct PtraceArmed {
    canary: CanaryProcess,
}

impl Probe for PtraceHostProcess {
    fn name(&self) -> &'static str {
        "ptrace-host-process"
    }

    fn attempt(&self) -> &'static str {
        "read a host process's memory with process_vm_readv and ptrace"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(PtraceArmed {
            canary: start_canary()?,
        }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let parsed = argument::<i32>(args, 0).and_then(|pid| {
            let address = argument::<String>(args, 1)?;
            let address = usize::from_str_radix(&address, 16)
                .map_err(|_| format!("invalid address {address:?}"))?;
            Ok((pid, address, argument::<usize>(args, 2)?))
        });
        let (pid, address, length) = match parsed {
            Ok((pid, address, length)) if pid > 1 && length <= 64 => (pid, address, length),
            Ok(_) => return invalid_arguments("pid or length out of range".to_owned()),
            Err(message) => return invalid_arguments(message),
        };
        report(PtraceReport {
            process_vm_readv: MemoryRead::of(read_with_process_vm_readv(pid, address, length)),
            ptrace: MemoryRead::of(read_with_ptrace(pid, address, length)),
        })
    }
}

fn read_with_process_vm_readv(pid: i32, address: usize, length: usize) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; length];
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: length,
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: length,
    };
    // SAFETY: `local` describes `buffer`, which lives across the call; the kernel checks the
    // remote range against the other process's memory.
    let read = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if read == -1 {
        return Err(io::Error::last_os_error());
    }
    buffer.truncate(read as usize);
    Ok(buffer)
}

/// Calls ptrace with a request that takes no data, or reads one word with PTRACE_PEEKDATA.
fn ptrace(request: libc::c_int, pid: i32, address: usize) -> io::Result<libc::c_long> {
    // SAFETY: errno is this thread's. Clearing it distinguishes a word of -1 read by
    // PEEKDATA from an error.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: the requests used here read no memory of this process, and their address and
    // data arguments are integers for the kernel to check.
    let result = unsafe {
        libc::ptrace(
            request as _,
            pid,
            address as *mut libc::c_void,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    let error = io::Error::last_os_error();
    if result == -1 && error.raw_os_error() != Some(0) {
        return Err(error);
    }
    Ok(result)
}

fn read_with_ptrace(pid: i32, address: usize, length: usize) -> io::Result<Vec<u8>> {
    ptrace(libc::PTRACE_SEIZE as libc::c_int, pid, 0)?;
    let read = (|| {
        ptrace(libc::PTRACE_INTERRUPT as libc::c_int, pid, 0)?;
        sys::waitpid(pid, libc::__WALL)?;
        let mut bytes = Vec::with_capacity(length);
        for offset in (0..length).step_by(8) {
            let word = ptrace(libc::PTRACE_PEEKDATA as libc::c_int, pid, address + offset)?;
            bytes.extend_from_slice(&word.to_ne_bytes());
        }
        bytes.truncate(length);
        Ok(bytes)
    })();
    let _ = ptrace(libc::PTRACE_DETACH as libc::c_int, pid, 0);
    read
}

impl Armed for PtraceArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![
            self.canary.pid().to_string(),
            format!("{:x}", self.canary.secret_address()),
            self.canary.secret().len().to_string(),
        ])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![self.canary.describe()]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(report) = execution.result::<PtraceReport>() else {
            return Finding::no_result(execution);
        };
        let secret = host::hex(self.canary.secret());
        let pid = self.canary.pid();
        let reads = [
            ("process_vm_readv", &report.process_vm_readv),
            ("ptrace", &report.ptrace),
        ];
        if let Some((method, _)) = reads
            .iter()
            .find(|(_, read)| read.read.as_deref() == Some(secret.as_str()))
        {
            return Finding::escaped(format!(
                "read the secret in the host's process {pid} with {method}"
            ));
        }
        let outcomes: Vec<String> = reads
            .iter()
            .map(|(method, read)| match &read.error {
                Some(error) => format!("{method}: {error}"),
                None => format!("{method}: read other bytes"),
            })
            .collect();
        Finding::contained(outcomes.join("; "))
    }
}

/// Looks for a variable of Airlock's environment in the sandbox.
pub struct ReadHostEnvironment;

#[derive(Serialize, Deserialize)]
struct FoundVariable {
    /// The place it was found in: the probe's own environment or /proc/PID/environ.
    source: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
struct EnvironmentReport {
    found: Vec<FoundVariable>,
    /// How many /proc/PID/environ files the probe could read.
    environ_files: usize,
}

/// A variable set in Airlock's own environment, removed when dropped.
struct EnvironmentArmed {
    name: String,
    value: String,
}

impl Drop for EnvironmentArmed {
    fn drop(&mut self) {
        std::env::remove_var(&self.name);
    }
}

impl Probe for ReadHostEnvironment {
    fn name(&self) -> &'static str {
        "read-host-environment"
    }

    fn attempt(&self) -> &'static str {
        "find a variable of Airlock's environment in its own or /proc/*/environ"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        let name = format!("AIRLOCK_PROBE_CANARY_{}", token_upper(4));
        let value = host::token(16);
        // Airlock is single-threaded while it probes, so no other thread reads the
        // environment meanwhile.
        std::env::set_var(&name, &value);
        Ok(Box::new(EnvironmentArmed { name, value }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let name: String = match argument(args, 0) {
            Ok(name) => name,
            Err(message) => return invalid_arguments(message),
        };
        let mut found = Vec::new();
        if let Some(value) = std::env::var_os(&name) {
            found.push(FoundVariable {
                source: "its own environment".to_owned(),
                value: value.to_string_lossy().into_owned(),
            });
        }
        let prefix = format!("{name}=");
        let mut environ_files = 0;
        for process in system::processes().unwrap_or_default() {
            let path = format!("/proc/{}/environ", process.pid);
            let Ok(environ) = std::fs::read(&path) else {
                continue;
            };
            environ_files += 1;
            for variable in environ.split(|byte| *byte == 0) {
                if let Some(value) = variable.strip_prefix(prefix.as_bytes()) {
                    found.push(FoundVariable {
                        source: path.clone(),
                        value: String::from_utf8_lossy(value).into_owned(),
                    });
                }
            }
        }
        report(EnvironmentReport {
            found,
            environ_files,
        })
    }
}

fn token_upper(bytes: usize) -> String {
    host::token(bytes).to_uppercase()
}

impl Armed for EnvironmentArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![self.name.clone()])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![Canary::Variable {
            name: self.name.clone(),
        }]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(report) = execution.result::<EnvironmentReport>() else {
            return Finding::no_result(execution);
        };
        let leaked = report
            .found
            .iter()
            .find(|variable| variable.value == self.value);
        match leaked {
            Some(variable) => Finding::escaped(format!(
                "{} contains Airlock's variable {}",
                variable.source, self.name
            )),
            None => Finding::contained(format!(
                "{} is neither in its environment nor in the {} environ files it can read",
                self.name, report.environ_files
            )),
        }
    }
}

/// Leaves a process behind and checks, after the sandbox is removed, that it ended.
pub struct SurviveSandbox;

/// How long a process left behind by the probe lives at most, so that one that escapes
/// ends by itself even if the host cannot kill it.
const LINGER: Duration = Duration::from_secs(120);

/// How long after the removal the host waits for processes that are still ending.
const REMOVAL_GRACE: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct SurviveReport {
    /// The pid of the process left behind, as the sandbox numbers it.
    pid: Option<i32>,
    error: Option<String>,
}

struct SurviveArmed {
    name: String,
}

impl Drop for SurviveArmed {
    fn drop(&mut self) {
        host::kill_processes_named(&self.name, Duration::ZERO);
    }
}

impl Probe for SurviveSandbox {
    fn name(&self) -> &'static str {
        "survive-sandbox"
    }

    fn attempt(&self) -> &'static str {
        "leave a double-forked process behind, then outlive the sandbox's removal"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        let name = format!("{PROCESS_NAME_PREFIX}{}", &host::token(4)[..7]);
        Ok(Box::new(SurviveArmed { name }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let name = match argument::<String>(args, 0).map(CString::new) {
            Ok(Ok(name)) => name,
            Ok(Err(_)) => return invalid_arguments("the name contains a NUL byte".to_owned()),
            Err(message) => return invalid_arguments(message),
        };
        report(match leave_process(&name) {
            Ok(pid) => SurviveReport {
                pid: Some(pid),
                error: None,
            },
            Err(error) => SurviveReport {
                pid: None,
                error: Some(error_name(&error)),
            },
        })
    }

    fn judged_after_removal(&self) -> bool {
        true
    }
}

/// Starts a process named `name` in a session of its own, orphaned by a middle process
/// that exits at once. Returns its pid once it has taken its name, so that the host can
/// find it by that name as soon as the probe ends.
fn leave_process(name: &CString) -> io::Result<i32> {
    let (pid_read, pid_write) = sys::pipe()?;
    let middle = sys::fork()?;
    if middle == 0 {
        let _ = sys::setsid();
        match sys::fork() {
            Ok(0) => linger(name, pid_write.as_raw_fd()),
            Ok(_) => sys::exit_now(0),
            Err(_) => sys::exit_now(1),
        }
    }
    drop(pid_write);
    sys::waitpid(middle, 0)?;
    let mut bytes = [0u8; 4];
    match sys::read(pid_read.as_raw_fd(), &mut bytes)? {
        4 => Ok(i32::from_ne_bytes(bytes)),
        _ => Err(io::Error::other(
            "the process to leave behind did not start",
        )),
    }
}

/// Runs as the process left behind: takes its name, reports its pid on `ready`, lets go of
/// the probe's streams, and sleeps for at most [`LINGER`].
fn linger(name: &CString, ready: RawFd) -> ! {
    let _ = sys::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong);
    let _ = sys::write_all(ready, &sys::getpid().to_ne_bytes());
    if let Ok(null) = sys::open(std::path::Path::new("/dev/null"), libc::O_RDWR) {
        for fd in 0..3 {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = sys::close_all_except(&[0, 1, 2]);
    std::thread::sleep(LINGER);
    sys::exit_now(0)
}

impl Armed for SurviveArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![self.name.clone()])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![Canary::ProcessName {
            name: self.name.clone(),
        }]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let survivors = host::kill_processes_named(&self.name, REMOVAL_GRACE);
        if let Some(pid) = survivors.first() {
            return Finding::escaped(format!(
                "its process {pid} ({}) still ran after the sandbox was removed; the host killed it",
                self.name
            ));
        }
        match execution.result::<SurviveReport>() {
            Some(SurviveReport { pid: Some(_), .. }) => {
                Finding::contained("the process it left behind ended with the sandbox")
            }
            Some(SurviveReport {
                error: Some(error), ..
            }) => Finding::contained(format!("cannot leave a process behind: {error}")),
            _ => Finding::no_result(execution),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::probe::probes::testing::{executed, host, run_unconfined};
    use crate::probe::probes::Verdict;

    #[test]
    fn signal_judged_escaped_when_canary_received_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut armed = SignalHostProcess.arm(&host(&dir)).unwrap();
        let quiet = executed(json!({ "result": { "error": "ESRCH" } }));
        assert_eq!(armed.judge(&quiet).verdict, Verdict::Contained);
        let execution = run_unconfined(&SignalHostProcess, armed.as_ref());
        assert_eq!(armed.judge(&execution).verdict, Verdict::Escaped);
    }

    #[test]
    fn ptrace_judged_escaped_when_secret_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut armed = PtraceHostProcess.arm(&host(&dir)).unwrap();
        let execution = run_unconfined(&PtraceHostProcess, armed.as_ref());
        let finding = armed.judge(&execution);
        assert_eq!(finding.verdict, Verdict::Escaped, "{}", finding.reason);
        let other_bytes = json!({ "result": {
            "process_vm_readv": { "read": "00", "error": null },
            "ptrace": { "read": null, "error": "EPERM" },
        }});
        assert_eq!(
            armed.judge(&executed(other_bytes)).verdict,
            Verdict::Contained
        );
    }

    #[test]
    fn see_processes_judged_escaped_when_canary_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut armed = SeeHostProcesses.arm(&host(&dir)).unwrap();
        let execution = run_unconfined(&SeeHostProcesses, armed.as_ref());
        assert_eq!(armed.judge(&execution).verdict, Verdict::Escaped);
        let sandbox_view = json!({ "result": { "names": ["airlock", "sh"], "error": null } });
        assert_eq!(
            armed.judge(&executed(sandbox_view)).verdict,
            Verdict::Contained
        );
    }

    #[test]
    fn environment_judged_escaped_when_variable_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut armed = ReadHostEnvironment.arm(&host(&dir)).unwrap();
        let execution = run_unconfined(&ReadHostEnvironment, armed.as_ref());
        assert_eq!(armed.judge(&execution).verdict, Verdict::Escaped);
        let name = armed.invocation().args[0].clone();
        drop(armed);
        assert!(
            std::env::var_os(&name).is_none(),
            "{name} left in the environment"
        );
    }

    #[test]
    fn survivor_found_and_killed_by_name() {
        let canary = CanaryProcess::start().unwrap();
        let killed = host::kill_processes_named(canary.name(), Duration::ZERO);
        assert_eq!(killed, vec![canary.pid()]);
        let process = system::process(canary.pid());
        assert!(
            !process.is_some_and(|process| process.is_alive()),
            "still alive"
        );
    }
}
