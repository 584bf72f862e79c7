//! `airlock cp` inside the guest: a file, directory or symlink packed into a tar stream for
//! the host, or a stream from the host unpacked. The host checks what it unpacks, since a
//! guest's root can take over the agent and send anything.

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::mpsc::Receiver;

use airlock_namespace::join;
use airlock_protocol::{DataStream, FrameKind, Message, MAX_PAYLOAD};

use super::serve::{send, Port};

/// Sends `path` as a tar stream on `channel`, then [`Message::Done`].
pub fn pack(channel: u32, path: &str, port: &Port) {
    let result = Path::new(path)
        .file_name()
        .ok_or_else(|| io::Error::other("the path names no file"))
        .and_then(|name| {
            let stream = DataStream::new(port, FrameKind::FileData, channel);
            let sink = BufWriter::with_capacity(MAX_PAYLOAD, stream);
            join::pack_tree(sink, Path::new(path), name)?.flush()
        });
    let reply = match result {
        Ok(()) => Message::Done,
        Err(error) => Message::Error {
            message: format!(
                "cannot pack {path:?}: {}",
                airlock_namespace::error_chain(&error)
            ),
        },
    };
    send(port, channel, &reply);
}

/// Unpacks the tar stream that arrives in `chunks` at `path`, then replies.
pub fn unpack(channel: u32, path: &str, chunks: Receiver<Vec<u8>>, port: &Port) {
    let mut stream = ChunkReader {
        chunks,
        chunk: Vec::new(),
        offset: 0,
    };
    let reply = match join::unpack_tree(&mut stream, Path::new(path)) {
        Ok(()) => Message::Done,
        Err(error) => Message::Error {
            message: format!(
                "cannot unpack into {path:?}: {}",
                airlock_namespace::error_chain(&error)
            ),
        },
    };
    send(port, channel, &reply);
}

/// The chunks of a file data stream as bytes; the stream ends when the sender is dropped.
struct ChunkReader {
    chunks: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    offset: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.chunk.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.offset = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let count = buffer.len().min(self.chunk.len() - self.offset);
        buffer[..count].copy_from_slice(&self.chunk[self.offset..self.offset + count]);
        self.offset += count;
        Ok(count)
    }
}
