//! The control socket between the launcher and the init. The launcher grants the init its
//! cgroup, as descriptors of the `tasks` files to join and to leave by, and an idmapped
//! workspace mount where it made one; the init passes the master of a `--tty`
//! pseudo-terminal back.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The maximum number of descriptors in one message: a join and a leave file per controller, and a
/// workspace mount.
const MAX_FDS: usize = 8;

/// Creates a connected pair of unix stream sockets, closed on exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    let kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by this process alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn control_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends `payload` (at least one byte) with `fds` over `socket`.
pub fn send(socket: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(!payload.is_empty(), "a message carries at least one byte");
    assert!(fds.len() <= MAX_FDS, "too many descriptors for one message");
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut control = vec![0u8; control_space(fds.len().max(1))];
    // SAFETY: msghdr is plain data; the fields set below point into live buffers.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    if !fds.is_empty() {
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = control_space(fds.len()) as _;
        // SAFETY: `control` has CMSG_SPACE bytes for `fds.len()` descriptors, so the first
        // header and its data fit inside it.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            let data_len = std::mem::size_of_val(fds) as u32;
            (*header).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(header).cast::<RawFd>();
            for (index, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(index), *fd);
            }
        }
    }
    // SAFETY: `message` and the buffers it points to are alive for the call; iov_base is
    // only read by sendmsg.
    let sent = unsafe { libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) };
    if sent == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message of up to 64 bytes and its descriptors; `None` if the peer closed
/// the socket.
pub fn recv(socket: RawFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut payload = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut control = vec![0u8; control_space(MAX_FDS)];
    // SAFETY: msghdr is plain data; the fields set below point into live buffers.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = control.len() as _;
    let received = loop {
        // SAFETY: `message` and the buffers it points to are alive for the call.
        let received = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
        if received != -1 {
            break received as usize;
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    };
    if received == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `message`. CMSG_FIRSTHDR returns null when no control
    // message arrived, and a SCM_RIGHTS message carries as many descriptors as its length
    // says, each now owned by this process.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        if !header.is_null() && (*header).cmsg_type == libc::SCM_RIGHTS {
            let data_len = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            let data = libc::CMSG_DATA(header).cast::<RawFd>();
            for index in 0..data_len / std::mem::size_of::<RawFd>() {
                fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                    data.add(index),
                )));
            }
        }
    }
    Ok(Some((payload[..received].to_vec(), fds)))
}

/// The launcher's grant to the init once its outside setup is done.
#[derive(Debug, Default)]
pub struct Grant {
    /// `tasks` files of the sandbox's v1 cgroups, which the init writes "0" to.
    pub join: Vec<OwnedFd>,
    /// `tasks` files of their parents, which the init moves back to before it exits, so the
    /// launcher can remove the cgroups while the init's namespaces are torn down.
    pub leave: Vec<OwnedFd>,
    /// Whether a pids cgroup limits the sandbox; without one the workload sets
    /// RLIMIT_NPROC.
    pub limits_pids: bool,
    /// The workspace as a detached mount: idmapped so that root inside owns the files that
    /// root owns on the host, without being root on the host, or the copy-on-write overlay
    /// that the launcher mounted over the project.
    pub workspace: Option<OwnedFd>,
}

impl Grant {
    pub fn send(&self, socket: RawFd) -> io::Result<()> {
        let payload = [
            u8::from(self.limits_pids),
            self.join.len() as u8,
            u8::from(self.workspace.is_some()),
        ];
        let fds: Vec<RawFd> = self
            .join
            .iter()
            .chain(&self.leave)
            .chain(&self.workspace)
            .map(AsRawFd::as_raw_fd)
            .collect();
        send(socket, &payload, &fds)
    }

    /// Receives the grant; `None` if the launcher closed the socket first.
    pub fn recv(socket: RawFd) -> io::Result<Option<Grant>> {
        let Some((payload, mut fds)) = recv(socket)? else {
            return Ok(None);
        };
        let [limits_pids, joins, has_workspace] = payload[..] else {
            return Err(io::Error::from_raw_os_error(libc::EPROTO));
        };
        let workspace = if has_workspace == 1 { fds.pop() } else { None };
        let leave = fds.split_off(usize::from(joins).min(fds.len()));
        Ok(Some(Grant {
            join: fds,
            leave,
            limits_pids: limits_pids == 1,
            workspace,
        }))
    }

    /// Moves the calling single-threaded process into the granted cgroups.
    pub fn join(&self) -> io::Result<()> {
        write_zero(&self.join)
    }

    /// Moves the calling single-threaded process back to the parents of its cgroups.
    pub fn leave(&self) -> io::Result<()> {
        write_zero(&self.leave)
    }
}

/// Writes "0" (the calling thread) to each `tasks` file. Moving one thread this way skips
/// the global lock that moving a whole process takes, and the callers are single-threaded.
fn write_zero(files: &[OwnedFd]) -> io::Result<()> {
    files
        .iter()
        .try_for_each(|file| crate::sys::write_all(file.as_raw_fd(), b"0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_round_trips_with_descriptors() {
        let (left, right) = socketpair().unwrap();
        let grant = Grant {
            join: vec![
                crate::sys::open(std::path::Path::new("/dev/null"), libc::O_RDONLY).unwrap(),
            ],
            leave: vec![
                crate::sys::open(std::path::Path::new("/dev/zero"), libc::O_RDONLY).unwrap(),
            ],
            limits_pids: true,
            workspace: Some(
                crate::sys::open(std::path::Path::new("/dev/full"), libc::O_RDONLY).unwrap(),
            ),
        };
        grant.send(left.as_raw_fd()).unwrap();
        let received = Grant::recv(right.as_raw_fd()).unwrap().unwrap();
        assert!(received.limits_pids);
        assert_eq!(received.join.len(), 1);
        assert_eq!(received.leave.len(), 1);
        assert!(received.workspace.is_some());
        let mut byte = [1u8; 1];
        crate::sys::read(received.leave[0].as_raw_fd(), &mut byte).unwrap();
        assert_eq!(byte, [0], "the leave descriptor is /dev/zero");
    }

    #[test]
    fn empty_grant_round_trips() {
        let (left, right) = socketpair().unwrap();
        Grant::default().send(left.as_raw_fd()).unwrap();
        let received = Grant::recv(right.as_raw_fd()).unwrap().unwrap();
        assert!(!received.limits_pids);
        assert!(received.join.is_empty());
        assert!(received.leave.is_empty());
        assert!(received.workspace.is_none());
    }

    #[test]
    fn closed_socket_gives_none() {
        let (left, right) = socketpair().unwrap();
        drop(left);
        assert!(Grant::recv(right.as_raw_fd()).unwrap().is_none());
    }
}
