//! One command in a guest, with the caller's standard streams: stdin is sent to the agent,
//! stdout and stderr are written as the agent relays them, and the exit status comes back.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use airlock_core::EndReason;
use airlock_protocol::{FrameKind, Message};

use crate::client::{self, Connection, Event, SharedWriter, Wait};
use crate::interrupt::Interrupts;

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
    /// The channel the command ran on, whose process group the agent still signals.
    pub channel: u32,
}

/// Runs `request` on `connection` with this process's standard streams, and forwards the
/// signals that `interrupts` catches to the command.
pub fn run(connection: &mut Connection, request: Request, interrupts: &mut Interrupts) -> Finish {
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
        host_time: crate::clock::host_time(),
    };
    if let Err(error) = connection.send(channel, &message) {
        return finish(End::Broken(error.to_string()), true, channel);
    }
    interrupts.forward(connection.writer(), channel);
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
                return finish(End::TimedOut, stderr_ends_line, channel)
            }
            Wait::TimedOut if Instant::now() >= silence_deadline => {
                return finish(End::GuestSilent, stderr_ends_line, channel)
            }
            Wait::TimedOut => continue,
            Wait::Event(event) => event,
        };
        heard = Instant::now();
        let frame = match event {
            Event::Frame(frame) => frame,
            Event::Closed => return finish(End::GuestStopped, stderr_ends_line, channel),
            Event::Broken(error) => {
                return finish(End::Broken(error.to_string()), stderr_ends_line, channel)
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
                    return finish(End::Failed { error, not_found }, stderr_ends_line, channel);
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
                    return finish(end, stderr_ends_line, channel);
                }
                Ok(Message::Error { message }) => {
                    return finish(End::Broken(message), stderr_ends_line, channel);
                }
                Ok(_) => {}
                Err(error) => {
                    return finish(End::Broken(error.to_string()), stderr_ends_line, channel)
                }
            },
            FrameKind::Stdin | FrameKind::FileData | FrameKind::Unknown(_) => {}
        }
    }
}

fn finish(end: End, stderr_ends_line: bool, channel: u32) -> Finish {
    Finish {
        end,
        stderr_ends_line,
        channel,
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

/// Returns the caller's terminal size as (rows, columns).
fn terminal_size() -> Option<(u16, u16)> {
    let size = airlock_namespace::sys::get_window_size(0).ok()?;
    Some((size.ws_row, size.ws_col))
}
