//! `airlock cp` for a persistent vm sandbox: a file, directory or symlink goes to or comes
//! from the agent as a tar stream, through the supervisor's control socket. Device nodes,
//! FIFOs and sockets below a copied directory are left out on both sides, with a warning
//! naming each: the packer that writes the stream, on the host or in the guest, skips them.
//!
//! Out of the guest, the stream is unpacked into a new private directory beside the target
//! by the namespace backend's host unpacker. It rejects paths that leave the directory, also
//! through a symlink the stream made, skips device nodes and FIFOs, and drops setuid, setgid
//! and sticky bits. Only the entry named after the source is then moved into place. A
//! guest's root can take over the agent and send other entries, and those go with the
//! directory. Symlinks stay symlinks, so a link the guest planted, such as
//! `link -> /etc`, arrives as a link and nothing is written through it.
//!
//! A copy out carries at most what the guest can hold, its memory and its disk images
//! ([`CopyOutLimit`]), so a guest cannot fill the host's disk with a file that keeps
//! growing or a sparse file of a terabyte. The tar stream carries a sparse file at its full
//! size, so one larger than the limit fails before any of its data is written.

use std::ffi::OsStr;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use airlock_namespace::error_chain;
use airlock_namespace::join::{self, SpecialFile, StreamTooLarge};
use airlock_namespace::pack::Skipped;
use airlock_protocol::{DataStream, FrameKind, Message, SkippedEntry, SpecialKind, MAX_PAYLOAD};

use crate::client::{self, Connection, Event, Wait};
use crate::error::Error;
use crate::held::Runtime;
use crate::machine::Machine;

/// Copies `source` on the host into the guest at `target`, or out of the guest when
/// `into_sandbox` is false: into `target` when it is a directory, else as `target`.
pub fn copy(
    runtime: &Runtime,
    source: &Path,
    target: &Path,
    into_sandbox: bool,
) -> Result<(), Error> {
    let mut connection = crate::remote::connect(runtime)?;
    if into_sandbox {
        copy_in(&mut connection, source, target)
    } else {
        let limit = CopyOutLimit::of(&runtime.machine);
        copy_out(&mut connection, source, target, limit)
    }
}

/// The maximum size of one copy out of a guest, in bytes of tar stream: all the data the
/// guest can hold. Its writable files are on tmpfs in its memory, and its other files on
/// the root disk and workspace images. The host view's root and a bind workspace are host
/// directories, so a copy of their files can exceed this and fail, but those files are on
/// the host already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOutLimit {
    /// The guest's memory in bytes.
    pub memory: u64,
    /// The sizes of the root disk and workspace images in bytes.
    pub disks: u64,
}

impl CopyOutLimit {
    pub fn of(machine: &Machine) -> CopyOutLimit {
        let image_size = |path: &Path| std::fs::metadata(path).map_or(0, |metadata| metadata.len());
        let root = machine.root_disk.as_deref().map_or(0, image_size);
        let workspace = machine
            .workspace_disk()
            .map_or(0, |(image, _)| image_size(image));
        CopyOutLimit {
            memory: machine.memory_mib << 20,
            disks: root.saturating_add(workspace),
        }
    }

    pub fn max_bytes(self) -> u64 {
        self.memory.saturating_add(self.disks)
    }
}

fn failed(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Copy {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn copy_in(connection: &mut Connection, source: &Path, target: &Path) -> Result<(), Error> {
    let name = join::file_name(source).map_err(|error| failed(source, error))?;
    std::fs::symlink_metadata(source).map_err(|error| failed(source, error))?;
    let channel = connection.open_channel();
    let request = Message::UnpackTree {
        path: target.to_string_lossy().into_owned(),
    };
    connection
        .send(channel, &request)
        .map_err(|error| failed(target, error))?;

    let writer = connection.writer();
    let stream = DataStream::new(&writer, FrameKind::FileData, channel);
    let packed = join::pack_tree(BufWriter::with_capacity(MAX_PAYLOAD, stream), source, &name)
        .and_then(|mut packed| {
            packed.skipped.warn();
            packed.sink.flush()
        });
    // The end of the stream goes out even after a failure, so the agent replies.
    let ended = client::lock(&writer).end_stream(FrameKind::FileData, channel);
    packed.map_err(|error| failed(source, error_chain(&error)))?;
    ended.map_err(|error| failed(target, error))?;
    match ChannelReader::new(connection, channel).reply()? {
        Message::Done => Ok(()),
        Message::Error { message } => Err(failed(target, message)),
        other => Err(failed(target, format!("unexpected reply {other:?}"))),
    }
}

fn copy_out(
    connection: &mut Connection,
    source: &Path,
    target: &Path,
    limit: CopyOutLimit,
) -> Result<(), Error> {
    let (host_dir, name) = join::copy_destination(target, source, Path::is_dir)
        .map_err(|error| failed(target, error))?;
    let basename = join::file_name(source).map_err(|error| failed(source, error))?;
    let channel = connection.open_channel();
    let request = Message::PackTree {
        path: source.to_string_lossy().into_owned(),
    };
    connection
        .send(channel, &request)
        .map_err(|error| failed(source, error))?;
    let mut stream = ChannelReader::new(connection, channel);
    let staged = stage(&mut stream, &host_dir, limit.max_bytes());
    // A failed copy leaves nothing at the target: the staging directory goes with `staged`
    // unless the agent reports the whole tree sent.
    if staged.as_ref().is_err_and(is_too_large) {
        // The rest of the stream is not read. Once this client's connection closes, the
        // supervisor cancels the channel, and the agent stops sending.
        return Err(Error::CopyOutTooLarge {
            path: source.to_owned(),
            limit,
        });
    }
    match stream.reply()? {
        Message::Done => {}
        Message::Skipped { entries, unnamed } => warn_skipped(entries, unnamed),
        Message::Error { message } => return Err(failed(source, message)),
        other => return Err(failed(source, format!("unexpected reply {other:?}"))),
    }
    staged
        .and_then(|staging| place(&staging, &basename, &host_dir.join(&name)))
        .map_err(|error| failed(&host_dir.join(&name), error_chain(&error)))
}

fn is_too_large(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<StreamTooLarge>())
}

/// Prints the agent's list of the special files it left out, as the host's packer does.
fn warn_skipped(entries: Vec<SkippedEntry>, unnamed: u64) {
    let named = entries
        .into_iter()
        .map(|entry| {
            let kind = match entry.kind {
                SpecialKind::DeviceNode => SpecialFile::DeviceNode,
                SpecialKind::Fifo => SpecialFile::Fifo,
                SpecialKind::Socket => SpecialFile::Socket,
            };
            (entry.path.into(), kind)
        })
        .collect();
    Skipped { named, unnamed }.warn();
}

/// Unpacks a tar stream from the guest into a new private directory in `host_dir`, and
/// moves its entry `basename` to `host_dir/name`. Nothing else of the stream is kept, and
/// an existing directory at `host_dir/name` is not written into.
#[cfg(test)]
fn receive(stream: impl Read, host_dir: &Path, basename: &OsStr, name: &OsStr) -> io::Result<()> {
    let staging = stage(stream, host_dir, u64::MAX)?;
    place(&staging, basename, &host_dir.join(name))
}

/// Unpacks a tar stream of at most `max_bytes` from the guest into a new private directory
/// in `host_dir`, which is removed with whatever the copy left in it when the returned
/// value is dropped.
fn stage(stream: impl Read, host_dir: &Path, max_bytes: u64) -> io::Result<tempfile::TempDir> {
    let staging = tempfile::Builder::new()
        .prefix(".airlock-cp-")
        .tempdir_in(host_dir)?;
    join::unpack_on_host(stream, staging.path(), Some(max_bytes))?;
    Ok(staging)
}

/// Moves the staged entry `basename` to `target`.
fn place(staging: &tempfile::TempDir, basename: &OsStr, target: &Path) -> io::Result<()> {
    let copied = staging.path().join(basename);
    if std::fs::symlink_metadata(&copied).is_err() {
        let missing = format!("the guest's agent sent no entry named {basename:?}");
        return Err(io::Error::other(missing));
    }
    std::fs::rename(&copied, target)
}

/// Reads the file data frames of one channel as a byte stream, which ends at the first
/// message on that channel: the reply to the request.
struct ChannelReader<'a> {
    connection: &'a Connection,
    channel: u32,
    chunk: Vec<u8>,
    offset: usize,
    reply: Option<Result<Message, Error>>,
}

impl<'a> ChannelReader<'a> {
    fn new(connection: &'a Connection, channel: u32) -> ChannelReader<'a> {
        ChannelReader {
            connection,
            channel,
            chunk: Vec::new(),
            offset: 0,
            reply: None,
        }
    }

    /// Skips the rest of the stream and returns the reply.
    fn reply(mut self) -> Result<Message, Error> {
        let _ = io::copy(&mut self, &mut io::sink());
        self.reply.unwrap_or_else(|| Err(ended()))
    }
}

fn ended() -> Error {
    Error::AgentFailed {
        message: "the connection to the supervisor ended during the copy".into(),
    }
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.chunk.len() {
            if self.reply.is_some() {
                return Ok(0);
            }
            // Heartbeats come on the control channel, so a guest that sends nothing for the
            // silence limit has stopped.
            let limit = crate::launch::silence_limit(crate::machine::Accel::Tcg);
            let frame = match self.connection.next_event(Some(Instant::now() + limit)) {
                Wait::Event(Event::Frame(frame)) => frame,
                Wait::Event(_) => {
                    self.reply = Some(Err(ended()));
                    return Err(io::Error::other("the connection ended during the copy"));
                }
                Wait::TimedOut => {
                    let message = format!(
                        "the guest sent nothing, not even its heartbeat, for {} s during the copy; stop the sandbox with `airlock stop`",
                        limit.as_secs()
                    );
                    self.reply = Some(Err(Error::AgentFailed {
                        message: message.clone(),
                    }));
                    return Err(io::Error::other(message));
                }
            };
            if frame.channel != self.channel {
                continue;
            }
            match frame.kind {
                FrameKind::FileData => {
                    self.chunk = frame.payload;
                    self.offset = 0;
                }
                FrameKind::Message => {
                    self.reply = Some(frame.to_message().map_err(Error::Protocol));
                }
                _ => {}
            }
        }
        let count = buffer.len().min(self.chunk.len() - self.offset);
        buffer[..count].copy_from_slice(&self.chunk[self.offset..self.offset + count]);
        self.offset += count;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar stream of `entries`: (path, symlink target or file content, is link).
    fn archive(entries: &[(&str, &str, bool)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data, is_link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o755);
            if *is_link {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, path, data)
                    .expect("append link");
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, data.as_bytes())
                    .expect("append file");
            }
        }
        builder.into_inner().expect("finish archive")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn receive_never_writes_through_planted_symlink() {
        let host = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        let canary_path = canary.path().to_str().unwrap();
        let stream = archive(&[
            ("tree/link", canary_path, true),
            ("tree/link/pwned", "written through the link\n", false),
        ]);
        let result = receive(&stream[..], host.path(), "tree".as_ref(), "tree".as_ref());
        assert!(result.is_err(), "the stream wrote through its own symlink");
        assert!(
            names(canary.path()).is_empty(),
            "{:?}",
            names(canary.path())
        );
        assert!(names(host.path()).is_empty(), "{:?}", names(host.path()));
    }

    #[test]
    fn receive_keeps_only_entry_named_after_source() {
        let host = tempfile::tempdir().unwrap();
        let stream = archive(&[
            ("tree/a", "a\n", false),
            ("tree/link", "/etc", true),
            (".bashrc", "planted\n", false),
        ]);
        receive(&stream[..], host.path(), "tree".as_ref(), "copy".as_ref()).unwrap();
        assert_eq!(names(host.path()), ["copy"]);
        let link = host.path().join("copy/link");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/etc"));
        assert_eq!(
            std::fs::read_to_string(host.path().join("copy/a")).unwrap(),
            "a\n"
        );
    }

    #[test]
    fn receive_does_not_merge_into_existing_directory() {
        let host = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        // An earlier copy brought a link the guest planted; the next one must not follow it.
        std::fs::create_dir(host.path().join("tree")).unwrap();
        std::os::unix::fs::symlink(canary.path(), host.path().join("tree/link")).unwrap();
        let stream = archive(&[("tree/link/pwned", "written through the link\n", false)]);
        let result = receive(&stream[..], host.path(), "tree".as_ref(), "tree".as_ref());
        assert!(result.is_err(), "the copy merged into the existing tree");
        assert!(
            names(canary.path()).is_empty(),
            "{:?}",
            names(canary.path())
        );
        assert_eq!(names(host.path()), ["tree"]);
    }

    #[test]
    fn stage_rejects_sparse_terabyte_before_writing() {
        let host = tempfile::tempdir().unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_path("sparse").unwrap();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(1 << 40);
        header.set_cksum();
        // The header alone: the host must fail on it without waiting for a terabyte.
        let mut stream = header.as_bytes().to_vec();
        stream.extend_from_slice(&[0; 4096]);

        let error = stage(&stream[..], host.path(), 1 << 30).unwrap_err();

        assert!(is_too_large(&error), "{error}");
        assert!(names(host.path()).is_empty(), "{:?}", names(host.path()));
    }

    #[test]
    fn stage_rejects_stream_past_limit() {
        let host = tempfile::tempdir().unwrap();
        let content = "x".repeat(1000);
        let entries: Vec<(String, &str, bool)> = (0..10)
            .map(|index| (format!("tree/{index}"), content.as_str(), false))
            .collect();
        let entries: Vec<(&str, &str, bool)> = entries
            .iter()
            .map(|(path, data, link)| (path.as_str(), *data, *link))
            .collect();
        let stream = archive(&entries);

        let error = stage(&stream[..], host.path(), 8192).unwrap_err();

        assert!(is_too_large(&error), "{error}");
        assert!(names(host.path()).is_empty(), "{:?}", names(host.path()));
        let staged = stage(&stream[..], host.path(), stream.len() as u64).expect("within limit");
        drop(staged);
    }
}
