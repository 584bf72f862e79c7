//! The host's side of the agent protocol over one connection: frames read by a thread and
//! handed over a channel, so the caller can wait for them with a deadline.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_protocol::{Frame, FrameError, FrameReader, FrameWriter, Message};

/// What the reader thread hands over: a frame, the end of the stream, or a broken stream.
pub enum Event {
    Frame(Frame),
    Closed,
    Broken(FrameError),
}

/// The write side, shared with the thread that sends stdin, so frames never interleave.
pub type SharedWriter = Arc<Mutex<FrameWriter<UnixStream>>>;

pub struct Connection {
    writer: SharedWriter,
    events: Receiver<Event>,
    next_channel: u32,
}

/// The outcome of waiting for the next event.
pub enum Wait {
    Event(Event),
    TimedOut,
}

impl Connection {
    /// Connects to the agent's socket, retrying until `give_up` returns a reason to stop,
    /// such as QEMU's exit or a deadline.
    pub fn connect(
        socket: &Path,
        mut give_up: impl FnMut() -> Option<String>,
    ) -> Result<Connection, String> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(error) => {
                    if let Some(reason) = give_up() {
                        return Err(format!("{reason} (last connection attempt: {error})"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        let reader = stream.try_clone().map_err(|error| error.to_string())?;
        let (sender, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = FrameReader::new(reader);
            loop {
                let event = match reader.read_frame() {
                    Ok(Some(frame)) => Event::Frame(frame),
                    Ok(None) => Event::Closed,
                    Err(error) => Event::Broken(error),
                };
                let last = !matches!(event, Event::Frame(_));
                if sender.send(event).is_err() || last {
                    return;
                }
            }
        });
        Ok(Connection {
            writer: Arc::new(Mutex::new(FrameWriter::new(stream))),
            events,
            next_channel: 1,
        })
    }

    /// Takes the stream of events for a relay that reads them from now on; this
    /// connection receives nothing more.
    pub fn take_events(&mut self) -> Receiver<Event> {
        let (_, empty) = mpsc::channel();
        std::mem::replace(&mut self.events, empty)
    }

    /// Returns a channel number not used before on this connection.
    pub fn open_channel(&mut self) -> u32 {
        let channel = self.next_channel;
        self.next_channel += 1;
        channel
    }

    pub fn writer(&self) -> SharedWriter {
        Arc::clone(&self.writer)
    }

    pub fn send(&self, channel: u32, message: &Message) -> Result<(), FrameError> {
        lock(&self.writer).send(channel, message)
    }

    /// Waits for the next event until `deadline`, or for ever without one.
    pub fn next_event(&self, deadline: Option<Instant>) -> Wait {
        let received = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.events.recv_timeout(left)
            }
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(event) => Wait::Event(event),
            Err(RecvTimeoutError::Timeout) => Wait::TimedOut,
            Err(RecvTimeoutError::Disconnected) => Wait::Event(Event::Closed),
        }
    }
}

/// Locks the writer; a thread that panicked while writing leaves a usable stream.
pub fn lock(writer: &SharedWriter) -> std::sync::MutexGuard<'_, FrameWriter<UnixStream>> {
    writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
