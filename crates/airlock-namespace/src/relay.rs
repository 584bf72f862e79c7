//! Copies bytes between the caller's streams and the sandbox where they cannot be handed over
//! directly: a terminal is never given to the sandbox, so terminal streams and the `--tty`
//! pseudo-terminal go through here. Each copy uses one fixed 64 KiB buffer, so a flood of
//! output costs no memory.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use crate::sys;

const BUFFER_SIZE: usize = 64 * 1024;

/// One direction of copying, from `source` to `sink`.
pub struct Pump {
    source: RawFd,
    sink: RawFd,
    /// Descriptors closed when the pump finishes, so the reader on the far side sees end of
    /// file.
    owned: Vec<OwnedFd>,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    source_done: bool,
    /// Set when the sink rejected a write; later bytes are read and dropped, so the sandbox
    /// never blocks on a reader that went away.
    sink_broken: bool,
    /// Whether this pump carries the sandbox's input, which stops when the sandbox ends.
    pub is_input: bool,
    last_byte: Option<u8>,
}

impl Pump {
    pub fn new(source: RawFd, sink: RawFd, is_input: bool) -> Pump {
        Pump {
            source,
            sink,
            owned: Vec::new(),
            buffer: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            source_done: false,
            sink_broken: false,
            is_input,
            last_byte: None,
        }
    }

    /// Keeps `fd` open until the pump finishes.
    pub fn owning(mut self, fd: OwnedFd) -> Pump {
        self.owned.push(fd);
        self
    }

    pub fn is_done(&self) -> bool {
        self.source_done && self.start == self.end
    }

    /// Whether the last byte copied was a newline, or nothing was copied.
    pub fn ends_line(&self) -> bool {
        self.last_byte.is_none_or(|byte| byte == b'\n')
    }

    /// The descriptor and events to poll for, or `None` once finished.
    pub fn interest(&self) -> Option<libc::pollfd> {
        if self.is_done() {
            return None;
        }
        let (fd, events) = if self.start < self.end {
            (self.sink, libc::POLLOUT)
        } else {
            (self.source, libc::POLLIN)
        };
        Some(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    /// Moves bytes after poll reported `revents` for this pump's interest.
    pub fn service(&mut self, revents: libc::c_short) {
        if revents == 0 {
            return;
        }
        if self.start < self.end {
            self.flush();
        } else {
            self.fill();
        }
        if self.is_done() {
            self.owned.clear();
        }
    }

    fn fill(&mut self) {
        match sys::read(self.source, &mut self.buffer) {
            Ok(0) => self.source_done = true,
            Ok(read) => {
                self.start = 0;
                self.end = read;
                self.flush();
            }
            Err(error) if retry(&error) => {}
            // A pty master returns EIO once every slave is closed: that is its end of file.
            Err(_) => self.source_done = true,
        }
    }

    fn flush(&mut self) {
        if self.sink_broken {
            self.start = self.end;
            return;
        }
        match sys::write(self.sink, &self.buffer[self.start..self.end]) {
            Ok(written) => {
                self.start += written;
                self.last_byte = Some(self.buffer[self.start - 1]);
            }
            Err(error) if retry(&error) => {}
            Err(error) => {
                // A reader that went away is the usual end of a pipeline, as for `| head`.
                // Any other failure loses output the caller expects, so a warning names it.
                if !self.is_input && error.kind() != io::ErrorKind::BrokenPipe {
                    warn_output_lost(self.sink, &error);
                }
                self.sink_broken = true;
                self.start = self.end;
            }
        }
    }
}

/// Warns on stderr that writing the command's output to `sink` failed with
/// `error`, so the rest of that stream is dropped. The command's exit status stays its own.
fn warn_output_lost(sink: RawFd, error: &io::Error) {
    let stream = match sink {
        1 => "stdout",
        2 => "stderr",
        _ => "output",
    };
    let message = format!(
        "airlock: cannot write the command's {stream}: {error}; the rest of it is dropped\n"
    );
    let _ = sys::write_all(2, message.as_bytes());
}

fn retry(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
