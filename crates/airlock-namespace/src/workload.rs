//! The sandboxed command's own process: it sheds every privilege, then executes the command.
//!
//! Order matters: the bounding set and securebits need CAP_SETPCAP, so they go first; Landlock
//! and seccomp need no_new_privs; capabilities are cleared last but one, and seccomp comes last
//! so that the filter never sees the setup's own system calls.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::report::Report;
use crate::{landlock, seccomp, stdio, sys};

/// Everything the workload needs, prepared by the launcher before the sandbox exists.
pub struct Plan {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Directories searched for a command name without a slash.
    pub path: Vec<CString>,
    pub seccomp: seccomp::Program,
    /// Apply Landlock; the launcher sets this where the kernel supports it.
    pub landlock: bool,
    /// The process limit, set as RLIMIT_NPROC where no pids cgroup enforces it.
    pub pids: u64,
}

/// The source of the workload's standard streams.
pub enum Stdio {
    /// Descriptors to install as 0, 1 and 2.
    Fds([RawFd; 3]),
    /// The slave side of the sandbox's pseudo-terminal.
    Terminal(RawFd),
}

/// A failed step, reported to the launcher before the command runs.
#[derive(Debug)]
struct StepError {
    step: &'static str,
    source: io::Error,
}

trait Step<T> {
    fn step(self, step: &'static str) -> Result<T, StepError>;
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, step: &'static str) -> Result<T, StepError> {
        self.map_err(|source| StepError { step, source })
    }
}

fn other(error: impl std::error::Error) -> io::Error {
    io::Error::other(crate::error_chain(&error))
}

/// Runs in the forked workload process; never returns. `nproc_fallback` sets the process
/// limit as RLIMIT_NPROC, for a sandbox without a pids cgroup.
pub fn run(plan: &Plan, stdio: &Stdio, report_fd: RawFd, nproc_fallback: bool) -> ! {
    if let Err(error) = shed_privileges(plan, stdio, report_fd, nproc_fallback) {
        let step = error.step.to_owned();
        Report::SetupFailed {
            step,
            error: error.source.to_string(),
        }
        .send(report_fd);
        sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into());
    }
    let errno = execute(&plan.argv, &plan.env, &plan.path);
    Report::ExecFailed { errno }.send(report_fd);
    sys::exit_now(exec_failure_status(errno).into())
}

/// Returns the exit status of a command whose execve failed with `errno`: not found, or not
/// executable.
pub fn exec_failure_status(errno: i32) -> u8 {
    match errno {
        libc::ENOENT | libc::ENOTDIR => airlock_core::exit::COMMAND_NOT_FOUND,
        _ => airlock_core::exit::COMMAND_NOT_EXECUTABLE,
    }
}

fn shed_privileges(
    plan: &Plan,
    stdio: &Stdio,
    report_fd: RawFd,
    nproc_fallback: bool,
) -> Result<(), StepError> {
    reset_signals().step("reset signal mask")?;
    sys::setsid().step("start a new session")?;
    install_stdio(stdio).step("install standard streams")?;
    sys::cloexec_from(3).step("close inherited descriptors")?;
    set_rlimits(plan, nproc_fallback).step("set resource limits")?;
    raise_oom_score();
    drop_bounding_set().step("drop the capability bounding set")?;
    lock_securebits().step("lock securebits")?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).step("set no_new_privs")?;
    if plan.landlock {
        let fully_enforced = landlock::restrict_self()
            .map_err(other)
            .step("apply Landlock")?;
        let abi = landlock::effective_abi();
        Report::Landlock {
            abi,
            fully_enforced,
        }
        .send(report_fd);
    }
    sys::clear_capabilities().step("clear capabilities")?;
    seccomp::install(&plan.seccomp)
        .map_err(other)
        .step("install the seccomp filter")
}

/// The OOM killer score adjustment of the command: out of 1000, so that when the sandbox
/// runs out of memory the kernel kills a command's process rather than the sandbox's init,
/// whose death would end the sandbox. Raising one's own score needs no privilege.
const COMMAND_OOM_SCORE_ADJ: &[u8] = b"300";

/// Raises this process's OOM killer score, as far as /proc allows; without it the command is
/// as exposed as the init. It allocates nothing, since it may run in a vfork child.
///
/// A process that changed its ids is not dumpable, and /proc then gives its files to host
/// root, so the process could not write its own score. The command becomes dumpable at
/// execve anyway, so it is made so now. A vfork child shares the init's memory, which the
/// init makes undumpable again once the command runs.
fn raise_oom_score() {
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 1);
    // SAFETY: a NUL-terminated literal path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    let _ = sys::write_all(fd, COMMAND_OOM_SCORE_ADJ);
    // SAFETY: `fd` was opened above and nothing else uses it.
    unsafe { libc::close(fd) };
}

/// Restores the default action of every signal a caller may have ignored, and unblocks all.
pub fn reset_signals() -> io::Result<()> {
    // Handlers do not survive execve, but ignored signals do: the Rust runtime ignores
    // SIGPIPE, and a caller may have ignored others (nohup ignores SIGHUP).
    sys::reset_signal_dispositions(&[
        libc::SIGPIPE,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGCHLD,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGXFSZ,
        libc::SIGXCPU,
    ]);
    sys::set_signal_mask(libc::SIG_SETMASK, &sys::sigset(&[])).map(drop)
}

/// Installs `stdio` as the process's descriptors 0, 1 and 2. A terminal also becomes the
/// controlling terminal, so the process must lead a new session.
pub fn install_stdio(stdio: &Stdio) -> io::Result<()> {
    match *stdio {
        Stdio::Fds(fds) => {
            for (target, &fd) in fds.iter().enumerate() {
                if fd == stdio::SANDBOX_NULL {
                    let null = sys::open(Path::new("/dev/null"), libc::O_RDWR)?;
                    sys::dup2(null.as_raw_fd(), target as RawFd)?;
                } else if fd != target as RawFd {
                    sys::dup2(fd, target as RawFd)?;
                }
            }
        }
        Stdio::Terminal(slave) => {
            sys::ioctl_int(slave, libc::TIOCSCTTY, 0)?;
            for target in 0..3 {
                sys::dup2(slave, target)?;
            }
        }
    }
    Ok(())
}

fn set_rlimits(plan: &Plan, nproc_fallback: bool) -> io::Result<()> {
    sys::setrlimit(libc::RLIMIT_CORE, 0)?;
    if nproc_fallback {
        // The init runs as the same user, so it counts too.
        sys::setrlimit(libc::RLIMIT_NPROC, plan.pids + 1)?;
    }
    Ok(())
}

/// Drops every capability of the bounding set, up to the first number the kernel does not
/// know. A drop that fails for lack of CAP_SETPCAP is fine when the capability is already
/// out of the set, as in a container whose engine dropped them all. The kernel checks
/// CAP_SETPCAP before the number, so without it the read finds the end.
pub fn drop_bounding_set() -> io::Result<()> {
    let unknown = |error: &io::Error| error.raw_os_error() == Some(libc::EINVAL);
    for capability in 0.. {
        match sys::prctl(libc::PR_CAPBSET_DROP, capability) {
            Ok(()) => {}
            Err(error) if unknown(&error) => return Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
                match sys::capability_in_bounding_set(capability) {
                    Ok(false) => {}
                    Ok(true) => return Err(error),
                    Err(read_error) if unknown(&read_error) => return Ok(()),
                    Err(read_error) => return Err(read_error),
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Makes uid 0 inside the sandbox an ordinary user for capabilities, for good.
fn lock_securebits() -> io::Result<()> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    match sys::prctl(libc::PR_SET_SECUREBITS, bits) {
        // Setting securebits needs CAP_SETPCAP, which a process that a container engine
        // started without capabilities lacks. The bounding set is empty by now, so no
        // execve, as root or of a file with capabilities, can grant one anyway.
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => Ok(()),
        result => result,
    }
}

/// Executes `argv` with `env`, searching the directories of `path` for a name without a
/// slash. Returns the errno of the failure that best describes why nothing ran.
pub fn execute(argv: &[CString], env: &[CString], path: &[CString]) -> i32 {
    let Some(program) = argv.first().filter(|program| !program.is_empty()) else {
        return libc::ENOENT;
    };
    if program.as_bytes().contains(&b'/') {
        return errno_of(sys::execve(program, argv, env));
    }
    let mut result = libc::ENOENT;
    for dir in path {
        let candidate = Path::new(std::ffi::OsStr::from_bytes(dir.as_bytes()))
            .join(std::ffi::OsStr::from_bytes(program.as_bytes()));
        let Ok(candidate) = sys::cstring(&candidate) else {
            continue;
        };
        match errno_of(sys::execve(&candidate, argv, env)) {
            libc::ENOENT | libc::ENOTDIR => {}
            errno => result = errno,
        }
    }
    result
}

fn errno_of(error: io::Error) -> i32 {
    error.raw_os_error().unwrap_or(libc::EINVAL)
}

/// Splits a PATH value into its directories, skipping empty entries.
pub fn search_path(path: &[u8]) -> Vec<CString> {
    path.split(|&byte| byte == b':')
        .filter(|dir| !dir.is_empty())
        .filter_map(|dir| CString::new(dir).ok())
        .collect()
}
