//! The command's own process. It starts inside the tree, with /workspace as its working
//! directory, takes its streams, rlimits and user, and executes the command.
//!
//! Order matters. rlimits and no_new_privs are set while the process is still root, because
//! a lowered hard limit cannot be raised afterwards. The user changes last but one, and the
//! parent-death signal is set after it, because a change of ids clears it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use airlock_core::{Spec, User};
use airlock_namespace::report::Report;
use airlock_namespace::sys;
use airlock_namespace::workload::{self, Stdio};

use crate::error::Error;

/// Everything the command's process needs, prepared before the sandbox exists.
pub struct Plan {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// Directories searched for a command name without a slash.
    pub path: Vec<CString>,
    pub user: User,
    /// RLIMIT_AS, in bytes.
    pub memory: u64,
    /// RLIMIT_NPROC: processes and threads of the user.
    pub pids: u64,
}

fn to_cstrings<'a>(values: impl Iterator<Item = &'a OsStr>) -> Result<Vec<CString>, Error> {
    values
        .map(|value| {
            CString::new(value.as_bytes())
                .map_err(|_| Error::NulByte(value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Plans the command of `spec` for `user`, with the sandbox's environment: the defaults, LANG
/// and TERM from the host, then the spec's variables.
pub fn plan(spec: &Spec, user: User) -> Result<Plan, Error> {
    let env = spec.environment(|name| std::env::var_os(name));
    let path = env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| workload::search_path(value.as_bytes()))
        .unwrap_or_default();
    let pairs: Vec<Vec<u8>> = env
        .iter()
        .map(|(key, value)| [key.as_bytes(), b"=", value.as_bytes()].concat())
        .collect();
    Ok(Plan {
        argv: to_cstrings(spec.command.iter().map(|arg| arg.as_os_str()))?,
        env: to_cstrings(pairs.iter().map(|pair| OsStr::from_bytes(pair)))?,
        path,
        user,
        memory: spec.limits.memory.value,
        pids: spec.limits.pids.value,
    })
}

/// A failed step, reported before the command runs.
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

/// Runs in the command's process, already in the tree; never returns. Reports a failed step
/// or a failed execve on `report`.
pub fn run(plan: &Plan, stdio: &Stdio, report: RawFd) -> ! {
    if let Err(error) = prepare(plan, stdio) {
        Report::SetupFailed {
            step: error.step.to_owned(),
            error: error.source.to_string(),
        }
        .send(report);
        sys::exit_now(airlock_core::exit::AIRLOCK_FAILED.into());
    }
    let errno = workload::execute(&plan.argv, &plan.env, &plan.path);
    Report::ExecFailed { errno }.send(report);
    sys::exit_now(workload::exec_failure_status(errno).into())
}

fn prepare(plan: &Plan, stdio: &Stdio) -> Result<(), StepError> {
    workload::reset_signals().step("reset signal mask")?;
    sys::setsid().step("start a new session")?;
    workload::install_stdio(stdio).step("install standard streams")?;
    sys::cloexec_from(3).step("close inherited descriptors")?;
    set_rlimits(plan).step("set resource limits")?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).step("set no_new_privs")?;
    crate::sys::become_user(plan.user).step("change to the sandbox's user")?;
    // The workspace's files belong to their host owner, so a setuid bit set here would make
    // a program that runs as that owner on the host.
    airlock_namespace::seccomp::build_setid_guard()
        .install()
        .step("install the seccomp filter against setuid files")?;
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)
        .step("ask to be killed with the parent")
}

fn set_rlimits(plan: &Plan) -> io::Result<()> {
    sys::setrlimit(libc::RLIMIT_CORE, 0)?;
    sys::setrlimit(libc::RLIMIT_AS, plan.memory)?;
    sys::setrlimit(libc::RLIMIT_NPROC, plan.pids)
}
