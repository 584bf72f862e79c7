//! A blocking reader over a response body that the engine streams.

use std::io::{self, Read};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::engine::Engine;

/// Reads a stream of the engine's response body as bytes, driving the engine's runtime.
pub(crate) struct StreamReader<'a, S> {
    engine: &'a Engine,
    stream: Pin<Box<S>>,
    /// The rest of the last chunk the engine sent.
    chunk: Bytes,
}

impl<'a, S> StreamReader<'a, S> {
    pub(crate) fn new(engine: &'a Engine, stream: S) -> StreamReader<'a, S> {
        StreamReader {
            engine,
            stream: Box::pin(stream),
            chunk: Bytes::new(),
        }
    }
}

impl<S> Read for StreamReader<'_, S>
where
    S: Stream<Item = Result<Bytes, bollard::errors::Error>>,
{
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.engine.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(error)) => return Err(io::Error::other(error)),
            }
        }
        let count = buffer.len().min(self.chunk.len());
        buffer[..count].copy_from_slice(&self.chunk.split_to(count));
        Ok(count)
    }
}
