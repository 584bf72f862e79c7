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

/// Sends `fd` over the unix socket `socket`.
pub fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; the fields set below point into live buffers.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space;
    // SAFETY: `control` is CMSG_SPACE bytes for one descriptor, so the first header and its
    // data fit inside it.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
    }
    // SAFETY: `message` and the buffers it points to are alive for the call.
    let sent = unsafe { libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) };
    if sent == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one descriptor from the unix socket `socket`; `None` if the peer closed it.
pub fn recv_fd(socket: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; the fields set below point into live buffers.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space;
    // SAFETY: `message` and the buffers it points to are alive for the call.
    let received = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
    if received == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `message`; CMSG_FIRSTHDR returns null when no control
    // message arrived, and a SCM_RIGHTS message carries one descriptor as sent.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        if received == 0 || header.is_null() || (*header).cmsg_type != libc::SCM_RIGHTS {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<RawFd>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// Creates a connected pair of unix stream sockets, closed on exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
