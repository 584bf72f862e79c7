//! `airlock cp` inside the guest: a file, directory or symlink packed into a tar stream for
//! the host, or a stream from the host unpacked. The host checks what it unpacks, since a
//! guest's root can take over the agent and send anything.

use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_namespace::join::{self, SpecialFile};
use airlock_namespace::pack::Skipped;
use airlock_protocol::{DataStream, FrameKind, Message, SkippedEntry, SpecialKind, MAX_PAYLOAD};

use super::serve::{send, Port};

/// Sends `path` as a tar stream on `channel`, then [`Message::Done`], or
/// [`Message::Skipped`] when the stream leaves out special files. Setting `cancelled` ends
/// the stream at its next write, when the host stopped reading it.
pub fn pack(channel: u32, path: &str, port: &Port, cancelled: &AtomicBool) {
    let result = Path::new(path)
        .file_name()
        .ok_or_else(|| io::Error::other("the path names no file"))
        .and_then(|name| {
            let stream = Cancellable {
                inner: DataStream::new(port, FrameKind::FileData, channel),
                cancelled,
            };
            let sink = BufWriter::with_capacity(MAX_PAYLOAD, stream);
            let mut packed = join::pack_tree(sink, Path::new(path), name)?;
            packed.sink.flush()?;
            Ok(packed.skipped)
        });
    let reply = match result {
        Ok(skipped) if skipped.is_empty() => Message::Done,
        Ok(skipped) => skipped_message(&skipped),
        Err(error) => Message::Error {
            message: format!(
                "cannot pack {path:?}: {}",
                airlock_namespace::error_chain(&error)
            ),
        },
    };
    send(port, channel, &reply);
}

fn skipped_message(skipped: &Skipped) -> Message {
    let entries = skipped
        .named
        .iter()
        .map(|(path, kind)| SkippedEntry {
            path: path.to_string_lossy().into_owned(),
            kind: match kind {
                SpecialFile::DeviceNode => SpecialKind::DeviceNode,
                SpecialFile::Fifo => SpecialKind::Fifo,
                SpecialFile::Socket => SpecialKind::Socket,
            },
        })
        .collect();
    Message::Skipped {
        entries,
        unnamed: skipped.unnamed,
    }
}

/// A writer that fails once `cancelled` is set.
struct Cancellable<'a, W> {
    inner: W,
    cancelled: &'a AtomicBool,
}

impl<W: Write> Write for Cancellable<'_, W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(io::Error::other("the host cancelled the copy"));
        }
        self.inner.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Unpacks the tar stream that arrives in `chunks` at `path`, then replies. A `path` in
/// /workspace is unpacked as `workspace_owner` (uid, gid) when given. Runs on a thread of
/// its own, whose file system ids it may change.
pub fn unpack(
    channel: u32,
    path: &str,
    workspace_owner: Option<(u32, u32)>,
    chunks: Receiver<Vec<u8>>,
    port: &Port,
) {
    let mut stream = ChunkReader {
        chunks,
        chunk: Vec::new(),
        offset: 0,
    };
    let owner = workspace_owner.filter(|_| Path::new(path).starts_with(SANDBOX_WORKSPACE));
    if let Some((uid, gid)) = owner {
        // setfsuid(2) and setfsgid(2) change this thread alone, and the guest's root has the
        // capabilities they need. A file system uid other than 0 also drops the capabilities
        // that bypass file permissions, so the unpack writes only where that owner may.
        // SAFETY: both calls take integers only.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
    }
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

/// Returns the owner (uid, gid) of /workspace when it is not root, as the agent makes it
/// for an inner layer. Files copied there as that owner belong to the user that the inner
/// layer maps its root to.
pub fn workspace_owner() -> Option<(u32, u32)> {
    let metadata = std::fs::metadata(SANDBOX_WORKSPACE).ok()?;
    Some((metadata.uid(), metadata.gid())).filter(|&(uid, _)| uid != 0)
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
