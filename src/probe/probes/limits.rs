//! Probes that exhaust a resource: processes, /tmp and memory. Each stops at a cap a few
//! times the sandbox's limit, so that a backend without the limit shows ESCAPED without
//! harming the host, and the host judges by comparing what the probe got with the limit.

use std::io::{self, Write};
use std::path::Path;

use airlock_namespace::sys;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{argument, invalid_arguments, mebibytes, report, Armed, Finding, Probe};
use crate::probe::executor::{Ended, Execution, Invocation};
use crate::probe::host::{self, Canary, Host, HostPath};
use crate::probe::inside::progress;
use crate::probe::system::error_name;
use airlock_core::EndReason;

/// How many times the limit a bomb may reach before it stops by itself.
const CAP_FACTOR: u64 = 4;
/// Maximum number of processes the fork bomb starts, whatever cap its arguments give.
const MAX_FORKS: u64 = 4096;

/// Forks until fork fails.
pub struct ForkBomb;

#[derive(Serialize, Deserialize)]
struct ForkReport {
    started: u64,
    /// Why it stopped: the error of the fork that failed, or the cap.
    stopped: String,
}

struct ForkArmed {
    limit: u64,
}

impl Probe for ForkBomb {
    fn name(&self) -> &'static str {
        "fork-bomb"
    }

    fn attempt(&self) -> &'static str {
        "fork until fork fails, up to four times the process limit"
    }

    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(ForkArmed {
            limit: host.limits.pids,
        }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let cap = match argument::<u64>(args, 0) {
            Ok(cap) => cap.min(MAX_FORKS),
            Err(message) => return invalid_arguments(message),
        };
        let parent = sys::getpid();
        let mut children = Vec::new();
        let stopped = loop {
            if children.len() as u64 >= cap {
                break format!("the cap of {cap}");
            }
            match sys::fork() {
                Ok(0) => wait_to_be_killed(parent),
                Ok(pid) => children.push(pid),
                Err(error) => break error_name(&error),
            }
        };
        for &pid in &children {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        for &pid in &children {
            let _ = sys::waitpid(pid, 0);
        }
        report(ForkReport {
            started: children.len() as u64,
            stopped,
        })
    }
}

/// Runs as a child of the fork bomb: sleeps until its parent kills it, or dies with it.
fn wait_to_be_killed(parent: libc::pid_t) -> ! {
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    if sys::getppid() != parent {
        sys::exit_now(0);
    }
    loop {
        // SAFETY: pause takes no arguments.
        unsafe { libc::pause() };
    }
}

impl Armed for ForkArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![(self.limit * CAP_FACTOR).to_string()])
    }

    fn canaries(&self) -> Vec<Canary> {
        Vec::new()
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let limit = self.limit;
        match execution.result::<ForkReport>() {
            Some(report) if report.started > limit => Finding::escaped(format!(
                "started {} processes, past the limit of {limit}, and stopped at {}",
                report.started, report.stopped
            )),
            Some(report) => Finding::contained(format!(
                "fork failed with {} after {} processes (limit {limit})",
                report.stopped, report.started
            )),
            None if execution.ended == Ended::Limit(EndReason::PidsLimit) => {
                Finding::contained("the backend ended the probe at the process limit")
            }
            None => Finding::no_result(execution),
        }
    }
}

/// Writes to /tmp until the write fails.
pub struct FillTmp;

#[derive(Serialize, Deserialize)]
struct FillReport {
    written: u64,
    stopped: String,
}

struct FillArmed {
    limit: u64,
    /// The file's path on the host, in case the sandbox's /tmp is the host's.
    file: HostPath,
}

/// The size of each write.
const FILL_CHUNK: usize = 1 << 20;

impl Probe for FillTmp {
    fn name(&self) -> &'static str {
        "fill-tmp"
    }

    fn attempt(&self) -> &'static str {
        "write to /tmp until it is full, up to four times its size"
    }

    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String> {
        let name = format!(".airlock-probe-fill-{}", host::token(6));
        Ok(Box::new(FillArmed {
            limit: host.limits.tmp_size,
            file: HostPath::new(Path::new("/tmp").join(name)),
        }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let parsed =
            argument::<u64>(args, 0).and_then(|cap| Ok((cap, argument::<String>(args, 1)?)));
        let (cap, name) = match parsed {
            Ok((cap, name)) if !name.contains('/') => (cap, name),
            Ok(_) => return invalid_arguments("the file name contains a slash".to_owned()),
            Err(message) => return invalid_arguments(message),
        };
        let path = Path::new("/tmp").join(name);
        let (written, stopped) = fill(&path, cap);
        let _ = std::fs::remove_file(&path);
        report(FillReport { written, stopped })
    }
}

/// Writes zeros to a new file at `path` until a write fails or `cap` bytes are written;
/// returns the bytes written and why it stopped.
fn fill(path: &Path, cap: u64) -> (u64, String) {
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file,
        Err(error) => return (0, format!("open: {}", error_name(&error))),
    };
    let chunk = vec![0u8; FILL_CHUNK];
    let mut written = 0u64;
    while written < cap {
        match file.write(&chunk) {
            Ok(0) => return (written, "a write of no bytes".to_owned()),
            Ok(count) => written += count as u64,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return (written, error_name(&error)),
        }
        progress(json!({ "written": written }));
    }
    (written, format!("the cap of {}", mebibytes(cap)))
}

#[derive(Serialize, Deserialize)]
struct FillProgress {
    written: u64,
}

impl Armed for FillArmed {
    fn invocation(&self) -> Invocation<'_> {
        let name = self.file.path().file_name().unwrap_or_default();
        Invocation::new(vec![
            (self.limit * CAP_FACTOR).to_string(),
            name.to_string_lossy().into_owned(),
        ])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![self.file.describe()]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let limit = mebibytes(self.limit);
        let written = execution
            .result::<FillReport>()
            .map(|report| report.written)
            .or_else(|| execution.progress::<FillProgress>().map(|p| p.written));
        match (written, execution.result::<FillReport>()) {
            (Some(written), _) if written > self.limit => Finding::escaped(format!(
                "wrote {} to /tmp, past its size of {limit}",
                mebibytes(written)
            )),
            (Some(written), Some(report)) => Finding::contained(format!(
                "/tmp was full at {}: {} (size {limit})",
                mebibytes(written),
                report.stopped
            )),
            (Some(written), None) if matches!(execution.ended, Ended::Limit(_)) => {
                Finding::contained(format!(
                    "{} after {}",
                    execution.ended.describe(),
                    mebibytes(written)
                ))
            }
            _ => Finding::no_result(execution),
        }
    }
}

/// Allocates memory and touches every page, until allocation fails or the kernel kills it.
pub struct MemoryBomb;

#[derive(Serialize, Deserialize)]
struct MemoryReport {
    allocated: u64,
    stopped: String,
}

#[derive(Serialize, Deserialize)]
struct MemoryProgress {
    allocated: u64,
}

struct MemoryArmed {
    limit: u64,
}

/// The size of each allocation.
const MEMORY_CHUNK: usize = 8 << 20;

impl Probe for MemoryBomb {
    fn name(&self) -> &'static str {
        "memory-bomb"
    }

    fn attempt(&self) -> &'static str {
        "allocate and touch memory, up to four times the memory limit"
    }

    fn arm(&self, host: &Host) -> Result<Box<dyn Armed>, String> {
        Ok(Box::new(MemoryArmed {
            limit: host.limits.memory,
        }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let cap: u64 = match argument(args, 0) {
            Ok(cap) => cap,
            Err(message) => return invalid_arguments(message),
        };
        let mut allocated = 0u64;
        while allocated < cap {
            if let Err(error) = allocate_touched(MEMORY_CHUNK) {
                return report(MemoryReport {
                    allocated,
                    stopped: error_name(&error),
                });
            }
            allocated += MEMORY_CHUNK as u64;
            progress(json!({ "allocated": allocated }));
        }
        report(MemoryReport {
            allocated,
            stopped: format!("the cap of {}", mebibytes(cap)),
        })
    }
}

/// Maps `size` bytes of anonymous memory and writes to each page, so that the pages are
/// really allocated. The mapping stays until the process exits.
fn allocate_touched(size: usize) -> io::Result<()> {
    // SAFETY: an anonymous private mapping at an address the kernel picks touches no
    // existing memory.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if memory == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let bytes = memory.cast::<u8>();
    for offset in (0..size).step_by(4096) {
        // SAFETY: `offset` is below `size`, so the write stays inside the new mapping.
        unsafe { bytes.add(offset).write_volatile(1) };
    }
    Ok(())
}

impl Armed for MemoryArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![(self.limit * CAP_FACTOR).to_string()])
    }

    fn canaries(&self) -> Vec<Canary> {
        Vec::new()
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let limit = mebibytes(self.limit);
        let result = execution.result::<MemoryReport>();
        let allocated = result
            .as_ref()
            .map(|report| report.allocated)
            .or_else(|| execution.progress::<MemoryProgress>().map(|p| p.allocated))
            .unwrap_or(0);
        if allocated > self.limit {
            return Finding::escaped(format!(
                "allocated {}, past the memory limit of {limit}",
                mebibytes(allocated)
            ));
        }
        let killed = matches!(
            execution.ended,
            Ended::Limit(EndReason::OutOfMemory) | Ended::Signaled(libc::SIGKILL)
        );
        // NOTE: under a cgroup v1 memory limit, a bomb whose own binary's pages are charged
        // to the sandbox (a copy in its workspace) was seen to stall at the limit past the
        // probe's timeout instead of being killed. The kernel keeps reclaiming and refaulting
        // those pages. The bomb never got past the limit, so that counts as contained.
        let stalled = execution.ended == Ended::Limit(EndReason::TimedOut) && allocated > 0;
        match result {
            Some(report) => Finding::contained(format!(
                "allocation failed at {}: {} (limit {limit})",
                mebibytes(allocated),
                report.stopped
            )),
            None if killed => Finding::contained(format!(
                "killed for memory at {} (limit {limit})",
                mebibytes(allocated)
            )),
            None if stalled => Finding::contained(format!(
                "stalled at {} until its timeout (limit {limit})",
                mebibytes(allocated)
            )),
            None => Finding::no_result(execution),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::probe::executor::Execution;
    use crate::probe::probes::testing::{executed, host};
    use crate::probe::probes::Verdict;

    fn judge(probe: &dyn Probe, execution: &Execution) -> Verdict {
        let dir = tempfile::tempdir().unwrap();
        probe.arm(&host(&dir)).unwrap().judge(execution).verdict
    }

    #[test]
    fn fork_bomb_past_limit_judged_escaped() {
        let past = executed(json!({ "result": { "started": 65, "stopped": "the cap" } }));
        assert_eq!(judge(&ForkBomb, &past), Verdict::Escaped);
        let stopped = executed(json!({ "result": { "started": 62, "stopped": "EAGAIN" } }));
        assert_eq!(judge(&ForkBomb, &stopped), Verdict::Contained);
    }

    #[test]
    fn memory_bomb_killed_past_limit_judged_escaped() {
        let progress = |allocated: u64| {
            let line = json!({ "progress": { "allocated": allocated } }).to_string();
            Execution::parse(line.as_bytes(), b"", Ended::Limit(EndReason::OutOfMemory))
        };
        assert_eq!(judge(&MemoryBomb, &progress(136 << 20)), Verdict::Escaped);
        assert_eq!(judge(&MemoryBomb, &progress(120 << 20)), Verdict::Contained);
    }

    #[test]
    fn memory_bomb_stalled_below_limit_judged_contained() {
        let timed_out = |lines: &str| {
            Execution::parse(lines.as_bytes(), b"", Ended::Limit(EndReason::TimedOut))
        };
        let line = |allocated: u64| json!({ "progress": { "allocated": allocated } }).to_string();
        let stalled = timed_out(&line(112 << 20));
        assert_eq!(judge(&MemoryBomb, &stalled), Verdict::Contained);
        let past = timed_out(&line(136 << 20));
        assert_eq!(judge(&MemoryBomb, &past), Verdict::Escaped);
        let silent = timed_out("");
        assert_eq!(judge(&MemoryBomb, &silent), Verdict::NotApplicable);
    }

    #[test]
    fn fill_past_tmp_size_judged_escaped() {
        let past = executed(json!({ "result": { "written": 17 << 20, "stopped": "ENOSPC" } }));
        assert_eq!(judge(&FillTmp, &past), Verdict::Escaped);
        let full = executed(json!({ "result": { "written": 16 << 20, "stopped": "ENOSPC" } }));
        assert_eq!(judge(&FillTmp, &full), Verdict::Contained);
    }
}
