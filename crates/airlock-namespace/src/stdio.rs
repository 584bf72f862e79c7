//! How the caller's standard streams reach the sandbox. Anonymous pipes and sockets are
//! handed over as they are, which is the fastest path and keeps every byte. Anything else
//! (a file, a FIFO, a device, a terminal) is relayed through a pipe by the launcher, because
//! a descriptor of a host file lets its holder change the file itself, for example with
//! fchmod when the sandbox's host user owns it. With `--tty` the sandbox gets its own
//! pseudo-terminal.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::relay::Pump;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("standard {stream} is a directory: redirect it from or to a file, or close it")]
    Directory { stream: &'static str },
    #[error("cannot inspect standard {stream}")]
    Inspect {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the relay of standard {stream}")]
    Relay {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
}

const STREAMS: [&str; 3] = ["input", "output", "error"];

/// The child descriptor that stands for "open the sandbox's own /dev/null".
pub const SANDBOX_NULL: RawFd = -1;

/// The kind of a standard stream of the caller, which decides how it reaches the sandbox.
enum Kind {
    /// Closed, or the null device: the sandbox opens its own /dev/null, a read-only bind
    /// whose host inode it cannot change.
    Null,
    /// An anonymous pipe or a socket: handed over as it is.
    PassThrough,
    Directory,
    /// A file, FIFO, device or terminal: relayed.
    Relay,
}

fn kind(fd: RawFd) -> io::Result<Kind> {
    const PIPEFS_MAGIC: i64 = 0x5049_5045;
    let Some((mode, device)) = sys::fstat_mode(fd)? else {
        return Ok(Kind::Null);
    };
    let null_device = libc::makedev(1, 3);
    Ok(match mode & libc::S_IFMT {
        libc::S_IFCHR if device == null_device => Kind::Null,
        libc::S_IFSOCK => Kind::PassThrough,
        libc::S_IFIFO if sys::fstatfs_type(fd)? == PIPEFS_MAGIC => Kind::PassThrough,
        libc::S_IFDIR => Kind::Directory,
        _ => Kind::Relay,
    })
}

/// The workload's side of the streams, and the relays the launcher runs.
pub struct Plan {
    /// Descriptors that become the workload's 0, 1 and 2 (ignored with a terminal).
    pub child_fds: [RawFd; 3],
    /// Ends the workload inherits; the launcher closes its copies after starting the sandbox.
    pub child_ends: Vec<OwnedFd>,
    pub pumps: Vec<Pump>,
    /// Index in `pumps` of the relay of the sandbox's stderr, if it is relayed.
    pub stderr_pump: Option<usize>,
}

impl Plan {
    /// Plans the streams. `relay_stderr` forces a relay of stderr even when it could be
    /// handed over, so the launcher can tell where the command's last line ended.
    pub fn new(tty: bool, relay_stderr: bool) -> Result<Plan, Error> {
        let mut plan = Plan {
            child_fds: [0, 1, 2],
            child_ends: Vec::new(),
            pumps: Vec::new(),
            stderr_pump: None,
        };
        if tty {
            return Ok(plan);
        }
        for fd in 0..3 {
            let stream = STREAMS[fd as usize];
            let kind = kind(fd).map_err(|source| Error::Inspect { stream, source })?;
            let forced = fd == 2 && relay_stderr;
            match kind {
                Kind::Directory => return Err(Error::Directory { stream }),
                Kind::PassThrough | Kind::Null if !forced => {
                    if matches!(kind, Kind::Null) {
                        plan.child_fds[fd as usize] = SANDBOX_NULL;
                    }
                }
                Kind::PassThrough | Kind::Null | Kind::Relay => plan
                    .relay(fd)
                    .map_err(|source| Error::Relay { stream, source })?,
            }
        }
        Ok(plan)
    }

    /// Gives the sandbox a pipe for stream `fd` and adds the pump that serves it. A closed
    /// stream is served by /dev/null in the launcher.
    fn relay(&mut self, fd: RawFd) -> io::Result<()> {
        let null = (!sys::fd_is_open(fd))
            .then(|| sys::open(Path::new("/dev/null"), libc::O_RDWR))
            .transpose()?;
        let caller_end = null.as_ref().map_or(fd, AsRawFd::as_raw_fd);
        let (read, write) = sys::pipe()?;
        let mut pump = if fd == 0 {
            sys::set_nonblocking(write.as_raw_fd())?;
            self.child_fds[0] = read.as_raw_fd();
            self.child_ends.push(read);
            Pump::new(caller_end, write.as_raw_fd(), true).owning(write)
        } else {
            sys::set_nonblocking(read.as_raw_fd())?;
            self.child_fds[fd as usize] = write.as_raw_fd();
            self.child_ends.push(write);
            if fd == 2 {
                self.stderr_pump = Some(self.pumps.len());
            }
            Pump::new(read.as_raw_fd(), caller_end, false).owning(read)
        };
        if let Some(null) = null {
            pump = pump.owning(null);
        }
        self.pumps.push(pump);
        Ok(())
    }

    /// Plans no streams: the sandbox's init gets its own /dev/null, for a sandbox held
    /// without a command.
    pub fn detached() -> Plan {
        Plan {
            child_fds: [SANDBOX_NULL; 3],
            child_ends: Vec::new(),
            pumps: Vec::new(),
            stderr_pump: None,
        }
    }

    /// Adds the relays of a `--tty` pseudo-terminal once its master has arrived.
    pub fn attach_terminal(&mut self, master: &OwnedFd) -> io::Result<()> {
        sys::set_nonblocking(master.as_raw_fd())?;
        if sys::fd_is_open(0) {
            self.pumps.push(Pump::new(0, master.as_raw_fd(), true));
        }
        self.pumps.push(Pump::new(master.as_raw_fd(), 1, false));
        Ok(())
    }
}
