//! `airlock cp` for a docker sandbox, through a helper in the container: the Airlock binary
//! that the container already binds, in its hidden `__docker-cp` mode
//! ([`crate::inside::copy`]). The engine starts the helper as an exec, so it runs as the
//! sandbox's user, with the container's capabilities, seccomp profile and mounts. Its view of
//! the file system is that of the sandbox's commands, the tmpfs mounts /tmp and /dev/shm
//! included, which the engine's archive API does not reach on Docker Engine.
//!
//! The bytes travel as a tar stream on a pipe between this process, which reads or writes
//! the host side, and the helper, which reads or writes the container's side. Both sides use
//! the namespace backend's packer and unpackers. The packer stores exactly the number of
//! bytes each header states, never follows a symlink, and leaves out device nodes, FIFOs and
//! sockets. The helper reports those it left out, and the host prints a warning for each.
//! On the host, the unpacker rejects paths that leave the target (also through a symlink
//! planted in the sandbox), skips device nodes and FIFOs, and drops setuid, setgid and
//! sticky bits. In the container, entries belong to the sandbox's user, because the helper
//! runs as that user.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use airlock_namespace::pack::Skipped;
use airlock_namespace::report::{Report, ReportReader};
use airlock_namespace::{join, sys};

use crate::channel::{self, CopyRequest};
use crate::engine::Engine;
use crate::error::Error;
use crate::exec::{start_connected, Connected};
use crate::held::Runtime;

/// The hidden mode of the Airlock binary that serves a copy in the container.
const HELPER_MODE: &str = "__docker-cp";

/// Copies `source` on the host into the sandbox at `target`, or out of the sandbox when
/// `into_sandbox` is false. Paths in the sandbox are absolute.
pub fn copy(
    runtime: &Runtime,
    source: &Path,
    target: &Path,
    into_sandbox: bool,
) -> Result<(), Error> {
    if !runtime.init.is_alive() {
        return Err(Error::NotRunning {
            container: runtime.container.clone(),
        });
    }
    let engine = Engine::connect_to(&runtime.socket)?;
    if into_sandbox {
        // The helper decides the name, because only it can find out whether the target is
        // a directory in the container.
        let name = join::file_name(source)?;
        let request = CopyRequest {
            into_sandbox: true,
            path: target.as_os_str().as_bytes().to_vec(),
            name: name.as_bytes().to_vec(),
        };
        let (data, helper) = start(&engine, runtime, &request)?;
        let packed =
            join::pack_tree(File::from(data), source, &name).map(|packed| packed.skipped.warn());
        finish(helper, packed, true, source)
    } else {
        // The host decides the name, as cp(1) does: inside `target` when it is a directory.
        let (host_dir, name) = join::copy_destination(target, source, |path| path.is_dir())?;
        let request = CopyRequest {
            into_sandbox: false,
            path: source.as_os_str().as_bytes().to_vec(),
            name: name.as_bytes().to_vec(),
        };
        let (data, helper) = start(&engine, runtime, &request)?;
        let unpacked = join::unpack_on_host(File::from(data), &host_dir, None);
        finish(helper, unpacked, false, source)
    }
}

/// The host's ends of a running helper: a pidfd of it and the read end of its report pipe.
struct Helper {
    pidfd: OwnedFd,
    reports: OwnedFd,
}

/// Starts the helper, hands it its end of the data pipe and the report pipe, and sends it
/// `request`. Returns the host's end of the data pipe with the helper.
fn start(
    engine: &Engine,
    runtime: &Runtime,
    request: &CopyRequest,
) -> Result<(OwnedFd, Helper), Error> {
    let connected = start_connected(engine, runtime, HELPER_MODE, runtime.user);
    let Connected {
        pidfd, connection, ..
    } = connected.map_err(helper_failed)?;

    let (data_read, data_write) = sys::pipe().map_err(Error::Channel)?;
    let (host_data, helper_data) = if request.into_sandbox {
        (data_write, data_read)
    } else {
        (data_read, data_write)
    };
    let (reports, report_end) = sys::pipe().map_err(Error::Channel)?;
    channel::send_copy_request(connection, [helper_data, report_end], request)
        .map_err(helper_failed)?;
    Ok((host_data, Helper { pidfd, reports }))
}

/// Waits for the helper's last report and returns the failure that explains the copy's: the
/// host's or the helper's, or a helper that ended without reporting that it finished.
/// `host_result` is how the host's side ended. `source` names the copy in the error.
fn finish(
    helper: Helper,
    host_result: std::io::Result<()>,
    into_sandbox: bool,
    source: &Path,
) -> Result<(), Error> {
    let failed = |step: &str, cause: String| Error::Copy {
        path: source.to_owned(),
        cause: format!("{step}: {cause}"),
    };
    let reports = read_reports(&helper).map_err(Error::Wait)?;
    for report in &reports {
        if let Report::Skipped { named, unnamed } = report {
            let named = named.iter().map(|(path, kind)| (path.into(), *kind));
            let skipped = Skipped {
                named: named.collect(),
                unnamed: *unnamed,
            };
            skipped.warn();
        }
    }
    let helper_error = reports.iter().find_map(|report| match report {
        Report::SetupFailed { step, error } => Some(failed(step, error.clone())),
        _ => None,
    });
    let host_step = if into_sandbox {
        "read from the host"
    } else {
        "write to the host"
    };
    let host_error = host_result
        .err()
        .map(|error| failed(host_step, airlock_namespace::error_chain(&error)));
    // The side that writes the stream fails first, and its failure cuts the stream short
    // for the other side, which then fails too.
    let first = if into_sandbox {
        host_error.or(helper_error)
    } else {
        helper_error.or(host_error)
    };
    if let Some(error) = first {
        return Err(error);
    }
    if !reports.contains(&Report::Exited { code: 0 }) {
        let cause = "the copying process in the container ended without reporting that it \
                     finished (killed by a limit of the sandbox, or by its processes)";
        return Err(failed("copy", cause.into()));
    }
    Ok(())
}

/// Reads the helper's reports until it closes its end of the pipe, which it does by
/// exiting.
fn read_reports(helper: &Helper) -> std::io::Result<Vec<Report>> {
    let mut reader = ReportReader::new(helper.reports.as_raw_fd());
    let mut reports = Vec::new();
    loop {
        reader.read_available()?;
        reports.extend(reader.take());
        if reader.fd() == -1 {
            return Ok(reports);
        }
        let mut fds = [libc::pollfd {
            fd: reader.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let millis = Duration::from_secs(1).as_millis() as libc::c_int;
        sys::poll(&mut fds, millis)?;
        // A helper that is gone while another process still has the pipe open would
        // otherwise be waited for without end.
        if fds[0].revents == 0 && is_gone(&helper.pidfd) {
            reader.read_available()?;
            reports.extend(reader.take());
            return Ok(reports);
        }
    }
}

/// Returns whether the process of `pidfd` has exited.
fn is_gone(pidfd: &OwnedFd) -> bool {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    sys::poll(&mut fds, 0).is_ok_and(|ready| ready > 0)
}

/// Names the copy helper in an error that the channel reports about the container's
/// process.
fn helper_failed(error: Error) -> Error {
    let reason = match error {
        Error::InitExited { .. } => "exited before it connected".into(),
        Error::InitSilent { seconds, .. } => format!("did not connect within {seconds} s"),
        Error::WrapperFailed { reason } => reason,
        Error::Channel(source) => format!(
            "did not take the copy request: {}",
            airlock_namespace::error_chain(&source)
        ),
        other => return other,
    };
    Error::CopyHelperFailed { reason }
}
