//! How the caller's standard streams reach the sandbox. Pipes, files and sockets are handed
//! over as they are, which is the fastest path and keeps every byte. A terminal is never
//! handed over: the sandbox gets a pipe (or, with `--tty`, its own pseudo-terminal) and the
//! launcher relays between the two.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::relay::Pump;
use crate::sys;

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
    /// Plans the streams. `relay_stderr` forces a relay of stderr even when it is not a
    /// terminal, so the launcher can tell where the command's last line ended.
    pub fn new(tty: bool, relay_stderr: bool) -> io::Result<Plan> {
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
            if !sys::fd_is_open(fd) {
                let null = sys::open(Path::new("/dev/null"), libc::O_RDWR)?;
                plan.child_fds[fd as usize] = null.as_raw_fd();
                plan.child_ends.push(null);
            } else if sys::is_terminal(fd) || (fd == 2 && relay_stderr) {
                plan.relay(fd)?;
            }
        }
        Ok(plan)
    }

    fn relay(&mut self, fd: RawFd) -> io::Result<()> {
        let (read, write) = sys::pipe()?;
        if fd == 0 {
            sys::set_nonblocking(write.as_raw_fd())?;
            self.child_fds[0] = read.as_raw_fd();
            self.child_ends.push(read);
            self.pumps.push(Pump::into_owned(0, write));
        } else {
            sys::set_nonblocking(read.as_raw_fd())?;
            self.child_fds[fd as usize] = write.as_raw_fd();
            self.child_ends.push(write);
            if fd == 2 {
                self.stderr_pump = Some(self.pumps.len());
            }
            self.pumps.push(Pump::from_owned(read, fd));
        }
        Ok(())
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
