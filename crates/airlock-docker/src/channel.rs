//! The host's side of the channel to a container's init or exec wrapper.
//!
//! The host cannot pass descriptors to a process that the engine starts, so the run
//! directory, a host directory bound read-only at [`config::RUN_DIR`], contains a listening
//! unix socket for each process the host waits for. The process connects, and the host
//! checks that the peer is the process the engine reports (its pid, through SO_PEERCRED),
//! so no other process of the sandbox can take its place. Then, in order:
//! 1. the host sends the standard streams, the write end of the report pipe and the read
//!    end of a liveness pipe, in one message. The process installs them at 0 to 2, 4 and 5,
//!    keeps the connection at 3, and acknowledges;
//! 2. the host writes the plan, one line of JSON, as the nspawn backend does;
//! 3. for `-t`, the process opens a pseudo-terminal and sends its master back;
//! 4. the process reports ready on the report pipe, and waits for the go-ahead.
//!
//! The streams travel as descriptors, so the command's output reaches the caller byte for
//! byte without passing through the engine, and the same relays as the other backends
//! serve what cannot be handed over. When the host closes the liveness pipe, by exiting or
//! giving up, the process ends its command.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_namespace::report::{Report, ReportReader};
use airlock_namespace::{control, stdio, sys};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The payload tag of the message that carries the descriptors.
pub const TAG_CHANNELS: u8 = b'c';
/// The byte with which the process acknowledges the descriptors.
pub const ACK: u8 = b'a';
/// The payload of the go-ahead.
pub const GO_AHEAD: &[u8] = b"g";
/// The payload tag of the pseudo-terminal's master.
pub const TAG_TERMINAL: &[u8] = b"t";
/// The payload tag of a signal for an exec's command, followed by the signal's number.
pub const TAG_SIGNAL: u8 = b's';
/// The payload of the message that carries a copy helper's data and report pipes.
pub const TAG_COPY: &[u8] = b"p";

/// How long the host waits for the process to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The plan of the container's init or exec wrapper: the nspawn backend's plan, and whether
/// the command gets a pseudo-terminal of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    #[serde(flatten)]
    pub command: airlock_nspawn::init::Plan,
    pub tty: bool,
}

/// The host directory bound at [`crate::config::RUN_DIR`] in the container.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    dir: OwnedFd,
}

impl RunDir {
    /// Creates the directory, traversable by the container's user, and opens it.
    pub fn create(path: &Path) -> Result<RunDir, Error> {
        let failed = |source| Error::RunDir {
            path: path.to_owned(),
            source,
        };
        match std::fs::DirBuilder::new().mode(0o711).create(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(failed(error)),
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).map_err(failed)?;
        RunDir::open(path)
    }

    /// Opens the existing directory.
    pub fn open(path: &Path) -> Result<RunDir, Error> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let dir = sys::open(path, flags).map_err(|source| Error::RunDir {
            path: path.to_owned(),
            source,
        })?;
        Ok(RunDir {
            path: path.to_owned(),
            dir,
        })
    }

    /// Listens on a new socket `name` in the directory, which every user may connect to: the
    /// host's side of the directory is private to its owner, and the container's side is
    /// checked by [`Listener::accept`].
    pub fn listen(&self, name: &str) -> Result<Listener, Error> {
        // Through the directory's descriptor, because a socket's path may be no longer than
        // 107 bytes and a state directory's may be.
        let short = PathBuf::from(format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd()));
        let failed = |source| Error::RunDir {
            path: self.path.join(name),
            source,
        };
        let _ = std::fs::remove_file(&short);
        let listener = UnixListener::bind(&short).map_err(failed)?;
        let created = Created(self.path.join(name));
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        Ok(Listener {
            socket: OwnedFd::from(listener),
            _file: created,
        })
    }
}

/// A socket file, removed when dropped.
#[derive(Debug)]
struct Created(PathBuf);

impl Drop for Created {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A listening socket in the run directory, removed when dropped.
#[derive(Debug)]
pub struct Listener {
    socket: OwnedFd,
    _file: Created,
}

impl Listener {
    /// Accepts the connection of process `expected` (a host pid), or fails when `process`,
    /// a pidfd of it, shows that it exited, or it does not connect in time. A connection of
    /// another process is closed and logged.
    pub fn accept(&self, expected: libc::pid_t, process: RawFd) -> Result<OwnedFd, Error> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::InitSilent {
                    seconds: CONNECT_TIMEOUT.as_secs(),
                    logs: String::new(),
                });
            }
            let watch = |fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let mut fds = [watch(self.socket.as_raw_fd()), watch(process)];
            let millis = left.as_millis().clamp(1, 1000) as libc::c_int;
            sys::poll(&mut fds, millis).map_err(Error::Channel)?;
            if fds[0].revents != 0 {
                if let Some(connection) = self.take_connection(expected)? {
                    return Ok(connection);
                }
                continue;
            }
            if fds[1].revents != 0 {
                return Err(Error::InitExited {
                    logs: String::new(),
                });
            }
        }
    }

    /// Accepts one waiting connection; returns it if its peer is `expected`.
    fn take_connection(&self, expected: libc::pid_t) -> Result<Option<OwnedFd>, Error> {
        // SAFETY: accept4 with null address arguments only returns a new descriptor.
        let fd = unsafe {
            libc::accept4(
                self.socket.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd == -1 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(Error::Channel(error)),
            };
        }
        // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
        let connection = unsafe { OwnedFd::from_raw_fd(fd) };
        let peer = peer_pid(&connection).map_err(Error::Channel)?;
        if peer == expected {
            return Ok(Some(connection));
        }
        tracing::warn!(
            peer,
            expected,
            "refused a connection to the sandbox's channel from another process"
        );
        Ok(None)
    }
}

/// Returns the pid of the process at the other end of the unix socket `socket`, in this
/// process's PID namespace.
fn peer_pid(socket: &OwnedFd) -> io::Result<libc::pid_t> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `credentials` is a live ucred and `length` its size, as SO_PEERCRED expects.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(credentials.pid)
}

/// The host's ends of the channel once the process has its descriptors.
#[derive(Debug)]
pub struct Channel {
    /// The connection: the go-ahead, the terminal's master and, for an exec, signals.
    pub control: OwnedFd,
    /// The read end of the report pipe.
    pub reports: OwnedFd,
    /// The write end of the liveness pipe: closing it makes the process end its command.
    pub liveness: OwnedFd,
}

/// Sends the process its descriptors and its plan over `connection`. `stdio` are the
/// descriptors of its standard streams, [`stdio::SANDBOX_NULL`] for the container's own
/// /dev/null.
pub fn hand_over(connection: OwnedFd, stdio: [RawFd; 3], plan: &Plan) -> Result<Channel, Error> {
    let (reports, report_end) = sys::pipe().map_err(Error::Channel)?;
    let (liveness_end, liveness) = sys::pipe().map_err(Error::Channel)?;
    let mut mask = 0u8;
    let mut fds = Vec::new();
    for (index, &fd) in stdio.iter().enumerate() {
        if fd != stdio::SANDBOX_NULL {
            mask |= 1 << index;
            fds.push(fd);
        }
    }
    fds.extend([report_end.as_raw_fd(), liveness_end.as_raw_fd()]);
    control::send(connection.as_raw_fd(), &[TAG_CHANNELS, mask], &fds).map_err(Error::Channel)?;
    drop((report_end, liveness_end));

    write_line_after_ack(&connection, plan)?;
    Ok(Channel {
        control: connection,
        reports,
        liveness,
    })
}

impl Channel {
    /// Receives the master of the process's pseudo-terminal.
    pub fn receive_terminal(&self) -> Result<OwnedFd, Error> {
        let message = control::recv(self.control.as_raw_fd()).map_err(Error::Channel)?;
        match message {
            Some((payload, mut fds)) if payload == TAG_TERMINAL && fds.len() == 1 => {
                Ok(fds.remove(0))
            }
            _ => Err(Error::Setup {
                step: "pass the pseudo-terminal out".into(),
                cause: "no terminal arrived".into(),
            }),
        }
    }

    /// Waits until the process reports ready, while `process`, a pidfd of it, shows it
    /// alive, for at most as long as the host waits for its connection. Returns the reports
    /// that came before.
    pub fn wait_until_ready(&self, process: RawFd) -> Result<Vec<Report>, Error> {
        let mut reader = ReportReader::new(self.reports.as_raw_fd());
        let mut early = Vec::new();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            reader.read_available().map_err(Error::Wait)?;
            for report in reader.take() {
                match report {
                    Report::Ready => return Ok(early),
                    Report::SetupFailed { step, error } => {
                        return Err(Error::Setup { step, cause: error })
                    }
                    other => early.push(other),
                }
            }
            let watch = |fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::InitSilent {
                    seconds: CONNECT_TIMEOUT.as_secs(),
                    logs: String::new(),
                });
            }
            let mut fds = [watch(reader.fd()), watch(process)];
            let millis = left.as_millis().clamp(1, 1000) as libc::c_int;
            sys::poll(&mut fds, millis).map_err(Error::Wait)?;
            if fds[1].revents != 0 && fds[0].revents == 0 {
                return Err(Error::InitExited {
                    logs: String::new(),
                });
            }
        }
    }

    /// Lets the process start its command.
    pub fn go_ahead(&self) -> Result<(), Error> {
        control::send(self.control.as_raw_fd(), GO_AHEAD, &[]).map_err(Error::Channel)
    }

    /// Asks an exec's wrapper to send `signal` to its command's process group.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        let number =
            u8::try_from(signal).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        control::send(self.control.as_raw_fd(), &[TAG_SIGNAL, number], &[])
    }
}

/// The request to a copy helper in the container: unpack the tar stream at `path`, or pack
/// `path` into it under the top-level `name`. Paths are bytes, because they need not be
/// UTF-8.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyRequest {
    pub into_sandbox: bool,
    pub path: Vec<u8>,
    pub name: Vec<u8>,
    /// Token of the staging directory of a copy into the sandbox
    /// ([`airlock_namespace::unpack`]).
    #[serde(default)]
    pub token: String,
    /// Asks the helper only to remove the staging directory of `path` and `token`, which a
    /// helper killed during the copy left behind.
    #[serde(default)]
    pub remove_staging: bool,
}

/// Sends a copy helper its ends of the data and report pipes over `connection`, waits for its
/// acknowledgement, then writes `request` as one line of JSON. The connection closes when
/// this returns, because the helper needs nothing else from it.
pub fn send_copy_request(
    connection: OwnedFd,
    pipes: [OwnedFd; 2],
    request: &CopyRequest,
) -> Result<(), Error> {
    let fds = pipes.each_ref().map(AsRawFd::as_raw_fd);
    control::send(connection.as_raw_fd(), TAG_COPY, &fds).map_err(Error::Channel)?;
    drop(pipes);
    write_line_after_ack(&connection, request)
}

/// Waits for the process's acknowledgement of the descriptors, then writes `value` as one
/// line of JSON. The line waits so that no read of the descriptors' message takes bytes of
/// the line with it.
fn write_line_after_ack(connection: &OwnedFd, value: &impl Serialize) -> Result<(), Error> {
    let mut ack = [0u8; 1];
    match sys::read(connection.as_raw_fd(), &mut ack) {
        Ok(1) if ack[0] == ACK => {}
        Ok(_) => return Err(Error::Channel(io::ErrorKind::UnexpectedEof.into())),
        Err(error) => return Err(Error::Channel(error)),
    }
    let mut line = serde_json::to_vec(value).expect("plans and copy requests always serialize");
    line.push(b'\n');
    sys::write_all(connection.as_raw_fd(), &line).map_err(Error::Channel)
}

/// Returns a name for a socket of the run directory that no other process picks: `PREFIX-`
/// and 16 random hex digits.
pub fn unique_name(prefix: &str) -> Result<String, Error> {
    let token = airlock_core::SandboxId::generate()
        .map_err(Error::Id)?
        .to_string();
    Ok(format!("{prefix}-{}.sock", &token[..16]))
}
