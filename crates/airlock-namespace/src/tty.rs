//! Pseudo-terminals: one allocated inside the sandbox's private devpts for `--tty`, and the
//! caller's terminal put in raw mode while it is relayed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::sys;

/// Opens a new pseudo-terminal in the sandbox's /dev/pts; returns (master, slave).
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let master = sys::open(Path::new("/dev/pts/ptmx"), libc::O_RDWR | libc::O_NOCTTY)?;
    sys::ioctl_int(master.as_raw_fd(), libc::TIOCSPTLCK, 0)
        .map(drop)
        .or_else(|_| {
            let unlock: libc::c_int = 0;
            // SAFETY: TIOCSPTLCK reads an int from the pointer, which points to `unlock`.
            let result = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
            if result == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    let slave = sys::ioctl_int(master.as_raw_fd(), libc::TIOCGPTPEER, flags)?;
    // SAFETY: TIOCGPTPEER returned a fresh descriptor that nothing else owns.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// The caller's terminal in raw mode, restored when dropped.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode if it is a terminal.
    pub fn enter(fd: RawFd) -> io::Result<Option<RawMode>> {
        if !sys::is_terminal(fd) {
            return Ok(None);
        }
        let saved = sys::tcgetattr(fd)?;
        let mut raw = saved;
        sys::make_raw(&mut raw);
        sys::tcsetattr(fd, &raw)?;
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = sys::tcsetattr(self.fd, &self.saved);
    }
}

/// Copies the window size of the caller's terminal, if it has one, to the pty master.
pub fn copy_window_size(master: RawFd) {
    for fd in [0, 1, 2] {
        if let Ok(size) = sys::get_window_size(fd) {
            let _ = sys::set_window_size(master, &size);
            return;
        }
    }
}
