//! A request body fed from a blocking writer: a thread writes the tar stream into
//! [`BodyWriter`], and the engine client sends each chunk as it arrives, so no more than a
//! few chunks are ever held in memory.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

/// Bytes per chunk sent to the engine.
const CHUNK: usize = 256 * 1024;

/// Chunks buffered between the writing thread and the client: at most 1 MiB in flight.
const CHUNKS_IN_FLIGHT: usize = 4;

/// State shared by the writer and the caller: bytes sent so far, and whether the receiving
/// side went away, which turns the writer's next write into an error.
#[derive(Debug, Default)]
pub struct BodyState {
    pub sent: AtomicU64,
    pub receiver_gone: AtomicBool,
}

/// The writing end of a request body.
pub struct BodyWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
    state: Arc<BodyState>,
}

/// Creates a body stream for [`bollard::body_try_stream`] and the writer that feeds it.
pub fn channel() -> (
    BodyWriter,
    impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    Arc<BodyState>,
) {
    let (sender, mut receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
    let state = Arc::new(BodyState::default());
    let writer = BodyWriter {
        sender,
        buffer: Vec::with_capacity(CHUNK),
        state: Arc::clone(&state),
    };
    (writer, stream, state)
}

impl BodyWriter {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        let length = chunk.len() as u64;
        if self.sender.blocking_send(Ok(chunk)).is_err() {
            self.state.receiver_gone.store(true, Ordering::SeqCst);
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the image",
            ));
        }
        self.state.sent.fetch_add(length, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the body with an error, so that the engine gets an aborted upload rather than a
    /// complete, truncated archive.
    pub fn abort(self) {
        let _ = self
            .sender
            .blocking_send(Err(io::Error::other("the image source failed")));
    }
}

impl Write for BodyWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let taken = bytes.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == CHUNK {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}
