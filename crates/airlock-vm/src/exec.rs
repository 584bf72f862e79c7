//! One command in a guest, with the caller's standard streams: stdin is sent to the agent,
//! stdout and stderr are written as the agent relays them, and the exit status comes back.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use airlock_core::EndReason;
use airlock_protocol::{FrameKind, Message};

use crate::client::{self, Connection, Event, SharedWriter, Wait};

/// A command for the agent to run.
pub struct Request {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub tty: bool,
    pub uid: u32,
    pub gid: u32,
    pub timeout: Option<Duration>,
    /// How long the guest may send nothing, not even its heartbeat, before it counts as
    /// stopped.
    pub silence_limit: Duration,
}

/// The way a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        reason: EndReason,
    },
    /// The agent could not start it.
    Failed { error: String, not_found: bool },
    /// The timeout passed; the caller ends the guest.
    TimedOut,
    /// The connection ended before the command did: the guest stopped.
    GuestStopped,
    /// The guest sent nothing for the silence limit: its kernel or agent hangs.
    GuestSilent,
    /// The stream broke or carried something else than the protocol.
    Broken(String),
}

/// The end of a command, and whether its stderr ended with a newline.
pub struct Finish {
    pub end: End,
    pub stderr_ends_line: bool,
}

/// Runs `request` on `connection` with this process's standard streams.
pub fn run(connection: &mut Connection, request: Request) -> Finish {
    let channel = connection.open_channel();
    let _raw = request
        .tty
        .then(|| airlock_namespace::tty::RawMode::enter(0).ok().flatten())
        .flatten();
    let tty = request.tty.then(|| terminal_size().unwrap_or((24, 80)));
    let message = Message::Exec {
        argv: request.argv,
        env: request.env,
        cwd: request.cwd,
        tty,
        uid: request.uid,
        gid: request.gid,
    };
    if let Err(error) = connection.send(channel, &message) {
        return finish(End::Broken(error.to_string()), true);
    }
    // Restores the signals' dispositions when the command is over, however it ended.
    let _forwarding = forward_signals(connection.writer(), channel);
    let deadline = request.timeout.map(|timeout| Instant::now() + timeout);
    let mut heard = Instant::now();
    let mut stdin_started = false;
    let mut stderr_ends_line = true;
    loop {
        let silence_deadline = heard + request.silence_limit;
        let wait_until =
            deadline.map_or(silence_deadline, |deadline| deadline.min(silence_deadline));
        let event = match connection.next_event(Some(wait_until)) {
            Wait::TimedOut if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                return finish(End::TimedOut, stderr_ends_line)
            }
            Wait::TimedOut if Instant::now() >= silence_deadline => {
                return finish(End::GuestSilent, stderr_ends_line)
            }
            Wait::TimedOut => continue,
            Wait::Event(event) => event,
        };
        heard = Instant::now();
        let frame = match event {
            Event::Frame(frame) => frame,
            Event::Closed => return finish(End::GuestStopped, stderr_ends_line),
            Event::Broken(error) => {
                return finish(End::Broken(error.to_string()), stderr_ends_line)
            }
        };
        if frame.channel != channel {
            continue;
        }
        match frame.kind {
            FrameKind::Stdout => write_out(&mut std::io::stdout().lock(), &frame.payload),
            FrameKind::Stderr => {
                if let Some(last) = frame.payload.last() {
                    stderr_ends_line = *last == b'\n';
                }
                write_out(&mut std::io::stderr().lock(), &frame.payload);
            }
            FrameKind::Message => match frame.to_message() {
                Ok(Message::Started { .. }) if !stdin_started => {
                    stdin_started = true;
                    send_stdin(connection.writer(), channel);
                }
                Ok(Message::ExecFailed { error, not_found }) => {
                    return finish(End::Failed { error, not_found }, stderr_ends_line);
                }
                Ok(Message::Exited {
                    code,
                    signal,
                    out_of_memory,
                    pids_limit,
                }) => {
                    let reason = if pids_limit {
                        EndReason::PidsLimit
                    } else if out_of_memory {
                        EndReason::OutOfMemory
                    } else {
                        EndReason::Exited
                    };
                    let end = End::Exited {
                        code,
                        signal,
                        reason,
                    };
                    return finish(end, stderr_ends_line);
                }
                Ok(Message::Error { message }) => {
                    return finish(End::Broken(message), stderr_ends_line);
                }
                Ok(_) => {}
                Err(error) => return finish(End::Broken(error.to_string()), stderr_ends_line),
            },
            FrameKind::Stdin | FrameKind::FileData | FrameKind::Unknown(_) => {}
        }
    }
}

fn finish(end: End, stderr_ends_line: bool) -> Finish {
    Finish {
        end,
        stderr_ends_line,
    }
}

/// Writes output as it arrives; a reader that went away drops it, as the other backends do.
fn write_out(out: &mut impl Write, bytes: &[u8]) {
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// Sends this process's stdin to the command from a thread of its own, and ends the stream
/// at end of file. The thread stays blocked in read when the command ends first, and dies
/// with the process.
fn send_stdin(writer: SharedWriter, channel: u32) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let count = match stdin.read(&mut buffer) {
                Ok(count) => count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            let mut writer = client::lock(&writer);
            if count == 0 {
                let _ = writer.end_stream(FrameKind::Stdin, channel);
                return;
            }
            if writer
                .send_data(FrameKind::Stdin, channel, &buffer[..count])
                .is_err()
            {
                return;
            }
        }
    });
}

/// The signals that reach the command in the guest, as the other backends forward them.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Write end of the pipe that the signal handler writes each forwarded signal's number to.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn note_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write is async-signal-safe, and `byte` lives for the call. A full pipe
        // drops the signal.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// Puts the previous dispositions of the forwarded signals back when dropped, and closes
/// the pipe, which ends the thread that reads it.
struct Forwarding {
    previous: Vec<(libc::c_int, libc::sigaction)>,
    write_end: libc::c_int,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for (signal, action) in &self.previous {
            // SAFETY: `action` is a disposition that sigaction returned for `signal`.
            unsafe { libc::sigaction(*signal, action, std::ptr::null_mut()) };
        }
        SIGNAL_PIPE.store(-1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the write end is this value's own, and the handler no longer uses it.
        unsafe { libc::close(self.write_end) };
    }
}

/// Catches the forwarded signals while the returned value lives, and sends each to the
/// command on `channel`. So Ctrl-C or a SIGTERM to Airlock reaches the command in the guest,
/// and the command's exit ends the run as usual. Any thread may take a process-directed
/// signal, so the handler only writes the signal's number to a pipe, which a thread of its
/// own reads. Without a pipe, signals keep their dispositions.
fn forward_signals(writer: SharedWriter, channel: u32) -> Option<Forwarding> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return None;
    }
    let [read_end, write_end] = fds;
    SIGNAL_PIPE.store(write_end, std::sync::atomic::Ordering::Relaxed);
    let mut previous = Vec::new();
    for signal in FORWARDED {
        // SAFETY: sigaction is plain data; the handler only calls write, which is
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, &action, &mut old) == 0 {
                previous.push((signal, old));
            }
        }
    }
    std::thread::spawn(move || {
        let mut byte = 0u8;
        loop {
            // SAFETY: `byte` has room for the one byte read.
            let read = unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) };
            if read != 1 {
                break;
            }
            let message = Message::Signal {
                signal: libc::c_int::from(byte),
            };
            if client::lock(&writer).send(channel, &message).is_err() {
                break;
            }
        }
        // SAFETY: the read end is this thread's own.
        unsafe { libc::close(read_end) };
    });
    Some(Forwarding {
        previous,
        write_end,
    })
}

/// Returns the caller's terminal size as (rows, columns).
fn terminal_size() -> Option<(u16, u16)> {
    let size = airlock_namespace::sys::get_window_size(0).ok()?;
    Some((size.ws_row, size.ws_col))
}
