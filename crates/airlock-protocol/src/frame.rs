//! Frames: a 9-byte header (payload length as u32, kind as u8, channel as u32, all little
//! endian) followed by the payload.

use std::io::{self, Read, Write};

use crate::message::Message;

/// Largest payload of one frame. Larger data goes in several frames, so one stream cannot
/// hold up the others for long, and a corrupt length cannot make the reader allocate much.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Size of a frame's header.
pub const HEADER_LEN: usize = 9;

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// One JSON [`Message`].
    Message,
    Stdin,
    Stdout,
    Stderr,
    /// Bytes of a file being read or written.
    FileData,
    /// A kind this side does not know, from a newer peer; receivers skip it.
    Unknown(u8),
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Message => 1,
            FrameKind::Stdin => 2,
            FrameKind::Stdout => 3,
            FrameKind::Stderr => 4,
            FrameKind::FileData => 5,
            FrameKind::Unknown(code) => code,
        }
    }

    fn from_code(code: u8) -> FrameKind {
        match code {
            1 => FrameKind::Message,
            2 => FrameKind::Stdin,
            3 => FrameKind::Stdout,
            4 => FrameKind::Stderr,
            5 => FrameKind::FileData,
            other => FrameKind::Unknown(other),
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub channel: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame announces {length} bytes of payload, more than the maximum of {MAX_PAYLOAD}: the stream is corrupt or not this protocol")]
    TooLarge { length: usize },
    #[error("the stream ended inside a frame, after {buffered} of its bytes")]
    Truncated { buffered: usize },
    #[error("invalid message on channel {channel}")]
    InvalidMessage {
        channel: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read or write the stream")]
    Io(#[from] io::Error),
}

impl Frame {
    pub fn message(channel: u32, message: &Message) -> Frame {
        let payload = serde_json::to_vec(message).expect("messages always serialize");
        Frame {
            kind: FrameKind::Message,
            channel,
            payload,
        }
    }

    pub fn data(kind: FrameKind, channel: u32, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            channel,
            payload,
        }
    }

    /// Parses the payload of a message frame.
    pub fn to_message(&self) -> Result<Message, FrameError> {
        serde_json::from_slice(&self.payload).map_err(|source| FrameError::InvalidMessage {
            channel: self.channel,
            source,
        })
    }

    /// Returns whether this is a data frame that ends its stream.
    pub fn is_end_of_stream(&self) -> bool {
        self.kind != FrameKind::Message && self.payload.is_empty()
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLarge {
                length: self.payload.len(),
            });
        }
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.push(self.kind.code());
        out.extend_from_slice(&self.channel.to_le_bytes());
        out.extend_from_slice(&self.payload);
        Ok(())
    }
}

/// Splits a byte stream into frames, whatever the size of the pieces it arrives in.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let length = u32::from_le_bytes(self.buffer[..4].try_into().expect("4 bytes")) as usize;
        if length > MAX_PAYLOAD {
            return Err(FrameError::TooLarge { length });
        }
        if self.buffer.len() < HEADER_LEN + length {
            return Ok(None);
        }
        let kind = FrameKind::from_code(self.buffer[4]);
        let channel = u32::from_le_bytes(self.buffer[5..9].try_into().expect("4 bytes"));
        let payload = self.buffer[HEADER_LEN..HEADER_LEN + length].to_vec();
        self.buffer.drain(..HEADER_LEN + length);
        Ok(Some(Frame {
            kind,
            channel,
            payload,
        }))
    }

    /// Returns how many bytes wait for the rest of their frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// Reads frames from a blocking byte stream.
pub struct FrameReader<R> {
    inner: R,
    decoder: Decoder,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            decoder: Decoder::new(),
        }
    }

    /// Returns the next frame, or `None` when the stream ended between frames.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let count = match self.inner.read(&mut chunk) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.into()),
            };
            if count == 0 {
                return match self.decoder.buffered() {
                    0 => Ok(None),
                    buffered => Err(FrameError::Truncated { buffered }),
                };
            }
            self.decoder.push(&chunk[..count]);
        }
    }
}

/// Writes frames to a byte stream, each with one write of the whole frame.
pub struct FrameWriter<W> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter {
            inner,
            buffer: Vec::new(),
        }
    }

    pub fn write_frame(&mut self, frame: &Frame) -> Result<(), FrameError> {
        self.buffer.clear();
        frame.encode_into(&mut self.buffer)?;
        self.inner.write_all(&self.buffer)?;
        self.inner.flush()?;
        Ok(())
    }

    pub fn send(&mut self, channel: u32, message: &Message) -> Result<(), FrameError> {
        self.write_frame(&Frame::message(channel, message))
    }

    /// Sends `bytes` as data frames of `kind`, split at [`MAX_PAYLOAD`]. Sends nothing for
    /// empty `bytes`, since an empty frame would end the stream.
    pub fn send_data(
        &mut self,
        kind: FrameKind,
        channel: u32,
        bytes: &[u8],
    ) -> Result<(), FrameError> {
        for chunk in bytes.chunks(MAX_PAYLOAD) {
            self.write_frame(&Frame::data(kind, channel, chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Ends the stream of `kind` on `channel`.
    pub fn end_stream(&mut self, kind: FrameKind, channel: u32) -> Result<(), FrameError> {
        self.write_frame(&Frame::data(kind, channel, Vec::new()))
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

/// A byte stream sent as data frames of one kind on one channel, through a [`FrameWriter`]
/// that other threads share. Each write sends one frame of up to [`MAX_PAYLOAD`] bytes, so
/// a buffered writer in front of it saves frames. Its end is not sent: the caller sends it,
/// or a message that ends the exchange.
pub struct DataStream<'a, W> {
    writer: &'a std::sync::Mutex<FrameWriter<W>>,
    kind: FrameKind,
    channel: u32,
}

impl<'a, W: Write> DataStream<'a, W> {
    pub fn new(
        writer: &'a std::sync::Mutex<FrameWriter<W>>,
        kind: FrameKind,
        channel: u32,
    ) -> DataStream<'a, W> {
        DataStream {
            writer,
            kind,
            channel,
        }
    }
}

impl<W: Write> Write for DataStream<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let chunk = &bytes[..bytes.len().min(MAX_PAYLOAD)];
        if chunk.is_empty() {
            return Ok(0);
        }
        let frame = Frame::data(self.kind, self.channel, chunk.to_vec());
        let mut writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        writer.write_frame(&frame).map_err(io::Error::other)?;
        Ok(chunk.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
