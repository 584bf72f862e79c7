//! The signals that interrupt a command in a guest: SIGINT, SIGTERM and the others that the
//! other backends forward. They are caught from the start of a run, so that one arriving
//! while the guest boots ends the run cleanly. Without that, it would kill Airlock and leave
//! the guest's directory behind. Once the command runs, they are forwarded to it.
//!
//! Any thread may take a process-directed signal, so the handler only writes the signal's
//! number to a pipe. The boot polls the pipe, and once the command runs, a thread of its
//! own reads it and sends each signal to the agent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use airlock_namespace::sys;
use airlock_protocol::Message;

use crate::client::{self, SharedWriter};

/// The signals that reach the command in the guest: those the namespace backend forwards.
const FORWARDED: [libc::c_int; 6] = airlock_namespace::init::FORWARDED_SIGNALS;

/// Write end of the pipe that the signal handler writes each caught signal's number to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn note_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write is async-signal-safe, and `byte` lives for the call. The pipe does
        // not block, so a full pipe drops the signal.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// The forwarded signals, caught while this value lives. Dropping it puts the previous
/// dispositions back and closes the pipe, which ends the forwarding thread.
pub struct Interrupts {
    /// The pipe's read end, until [`Interrupts::forward`] hands it to its thread.
    read_end: Option<OwnedFd>,
    /// Open while the handler may write to it; closing it ends the forwarding thread.
    _write_end: OwnedFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Interrupts {
    /// Catches the forwarded signals from now on.
    pub fn catch() -> io::Result<Interrupts> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh, so these are their only owners.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        SIGNAL_PIPE.store(write_end.as_raw_fd(), Ordering::Relaxed);
        let mut previous = Vec::new();
        for signal in FORWARDED {
            // SAFETY: sigaction is plain data; the handler only calls write, which is
            // async-signal-safe.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction =
                    note_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        Ok(Interrupts {
            read_end: Some(read_end),
            _write_end: write_end,
            previous,
        })
    }

    /// Returns a signal caught since [`Interrupts::catch`], without waiting; `None` when
    /// none arrived, or once [`Interrupts::forward`] took the pipe.
    pub fn pending(&self) -> Option<libc::c_int> {
        let read_end = self.read_end.as_ref()?;
        let mut byte = [0u8];
        match sys::read(read_end.as_raw_fd(), &mut byte) {
            Ok(1) => Some(libc::c_int::from(byte[0])),
            _ => None,
        }
    }

    /// Sends each signal caught from now on, and any caught before and still pending, to
    /// the command on `channel`, from a thread of its own.
    pub fn forward(&mut self, writer: SharedWriter, channel: u32) {
        let Some(read_end) = self.read_end.take() else {
            return;
        };
        std::thread::spawn(move || {
            while let Some(signal) = next_signal(&read_end) {
                let message = Message::Signal { signal };
                if client::lock(&writer).send(channel, &message).is_err() {
                    return;
                }
            }
        });
    }
}

/// Waits for the next signal on the pipe; `None` once its write end is closed.
fn next_signal(read_end: &OwnedFd) -> Option<libc::c_int> {
    let mut byte = [0u8];
    loop {
        match sys::read(read_end.as_raw_fd(), &mut byte) {
            Ok(1) => return Some(libc::c_int::from(byte[0])),
            Ok(_) => return None,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [libc::pollfd {
                    fd: read_end.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                sys::poll(&mut fds, -1).ok()?;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for (signal, action) in &self.previous {
            // SAFETY: `action` is a disposition that sigaction returned for `signal`.
            unsafe { libc::sigaction(*signal, action, std::ptr::null_mut()) };
        }
        SIGNAL_PIPE.store(-1, Ordering::Relaxed);
    }
}
