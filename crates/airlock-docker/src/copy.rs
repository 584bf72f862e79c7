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
//! runs as that user. The helper stages a copy into the container
//! ([`airlock_namespace::unpack`]), and when it is killed during the copy, a second helper
//! removes the staging directory.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use airlock_namespace::pack::Skipped;
use airlock_namespace::report::{Report, ReportReader};
use airlock_namespace::{join, sys, unpack};

use crate::channel::{self, CopyRequest};
use crate::engine::Engine;
use crate::error::Error;
use crate::exec::{start_connected, Connected};
use crate::held::Runtime;

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
            token: unpack::new_token(),
            remove_staging: false,
        };
        let (data, helper) = start(&engine, runtime, &request)?;
        let packed =
            join::pack_tree(File::from(data), source, &name).map(|packed| packed.skipped.warn());
        let finished = finish(helper, packed, true, source);
        if matches!(finished, Err(Finished::HelperEnded(_))) {
            remove_staging(&engine, runtime, request);
        }
        finished.map_err(Finished::into_error)
    } else {
        // The host decides the name, as cp(1) does: inside `target` when it is a directory.
        let (host_dir, name) = join::copy_destination(target, source, |path| path.is_dir())?;
        let request = CopyRequest {
            into_sandbox: false,
            path: source.as_os_str().as_bytes().to_vec(),
            name: name.as_bytes().to_vec(),
            token: String::new(),
            remove_staging: false,
        };
        let (data, helper) = start(&engine, runtime, &request)?;
        let unpacked = join::unpack_on_host(File::from(data), &host_dir, None);
        finish(helper, unpacked, false, source).map_err(Finished::into_error)
    }
}

/// Removes the staging directory that a helper killed during a copy into the sandbox left
/// behind, through a second helper. A failure here is logged only: the copy's own error is
/// the one to report.
fn remove_staging(engine: &Engine, runtime: &Runtime, request: CopyRequest) {
    let request = CopyRequest {
        remove_staging: true,
        ..request
    };
    let removed = start(engine, runtime, &request).and_then(|(data, helper)| {
        drop(data);
        let reports = read_reports(&helper).map_err(Error::Wait)?;
        Ok(reports.contains(&Report::Exited { code: 0 }))
    });
    if !matches!(removed, Ok(true)) {
        tracing::warn!(
            container = %runtime.container,
            token = %request.token,
            "cannot remove the partial copy in the container"
        );
    }
}

/// The failure of a copy: an error of either side, or a helper that ended without
/// reporting, which left its partial copy behind.
enum Finished {
    Failed(Error),
    HelperEnded(Error),
}

impl Finished {
    fn into_error(self) -> Error {
        match self {
            Finished::Failed(error) | Finished::HelperEnded(error) => error,
        }
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
    let connected = start_connected(engine, runtime, crate::inside::COPY_MODE, runtime.user);
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
) -> Result<(), Finished> {
    let failed = |step: &str, cause: String| Error::Copy {
        path: source.to_owned(),
        cause: format!("{step}: {cause}"),
    };
    let reports = read_reports(&helper).map_err(|error| Finished::Failed(Error::Wait(error)))?;
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
    let host_broke_pipe = host_result
        .as_ref()
        .is_err_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe);
    let host_error = host_result
        .err()
        .map(|error| failed(host_step, airlock_namespace::error_chain(&error)));
    let helper_finished = reports.contains(&Report::Exited { code: 0 });
    if helper_error.is_none() && !helper_finished {
        let cause = "the copying process in the container ended without reporting that it \
                     finished (killed by a limit of the sandbox, or by its processes)";
        return Err(Finished::HelperEnded(failed("copy", cause.into())));
    }
    // The side that writes the stream fails first. Its failure cuts the stream short for
    // the other side, which then fails too, except that a broken pipe on the host means
    // that the helper failed first.
    let first = if into_sandbox && !host_broke_pipe {
        host_error.or(helper_error)
    } else {
        helper_error.or(host_error)
    };
    first.map_or(Ok(()), |error| Err(Finished::Failed(error)))
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
