//! `airlock cp` for a docker sandbox, through the engine's archive API: a tar stream that the
//! engine unpacks in, or packs from, the container's file system.
//!
//! Out of the sandbox, the stream is unpacked on the host by the namespace backend's
//! unpacker, which refuses paths that leave the target, skips device nodes and FIFOs, and
//! drops setuid, setgid and sticky bits. Into the sandbox, Airlock packs the stream itself:
//! each entry belongs to the sandbox's user, keeps only its permission bits, and a symlink
//! stays a symlink. The engine reaches the image's files and the volumes, but Docker Engine
//! does not reach the tmpfs mounts (/tmp, /dev/shm) of a running container.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use airlock_core::User;
use airlock_namespace::join;
use bollard::query_parameters::{
    ContainerArchiveInfoOptionsBuilder, DownloadFromContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::engine::Engine;
use crate::error::{is_not_found, Error};
use crate::held::Runtime;

/// The directory bit of a Go `os.FileMode`, which the engine's path stat reports.
const GO_MODE_DIR: u32 = 1 << 31;

/// Bytes read from the upload's temporary file per chunk of the request body.
const CHUNK: usize = 64 * 1024;

/// Copies `source` on the host into the sandbox at `target`, or out of the sandbox when
/// `into_sandbox` is false. Paths in the sandbox are absolute.
pub fn copy(
    runtime: &Runtime,
    source: &Path,
    target: &Path,
    into_sandbox: bool,
) -> Result<(), Error> {
    let engine = Engine::connect_to(&runtime.socket)?;
    if into_sandbox {
        copy_in(&engine, runtime, source, target)
    } else {
        copy_out(&engine, &runtime.container, source, target)
    }
}

fn failed(path: &Path, cause: impl std::fmt::Display) -> Error {
    let mut cause = cause.to_string();
    if [Path::new("/tmp"), Path::new("/dev/shm")]
        .iter()
        .any(|tmpfs| path.starts_with(tmpfs))
    {
        cause.push_str(
            "; the engine's archive API may not see the tmpfs mounted there (Docker Engine does not), so copy through /workspace",
        );
    }
    Error::Copy {
        path: path.to_owned(),
        cause,
    }
}

/// Copies the host's `source` into the container: into `target` when it is a directory
/// there, else as `target`.
fn copy_in(engine: &Engine, runtime: &Runtime, source: &Path, target: &Path) -> Result<(), Error> {
    let (dir, name) = match is_dir_inside(engine, &runtime.container, target)? {
        true => (target.to_owned(), join::file_name(source)?),
        false => {
            let parent = target.parent().unwrap_or(Path::new("/")).to_owned();
            (parent, join::file_name(target)?)
        }
    };
    let mut archive = temporary_file().map_err(|error| failed(source, error))?;
    pack(source, &name, runtime.user, &mut archive).map_err(|error| failed(source, error))?;
    archive.rewind().map_err(|error| failed(source, error))?;
    let options = UploadToContainerOptionsBuilder::new()
        .path(&dir.to_string_lossy())
        .build();
    let body = bollard::body_try_stream(chunks(archive));
    engine
        .block_on(
            engine
                .docker()
                .upload_to_container(&runtime.container, Some(options), body),
        )
        .map_err(|error| failed(target, error))
}

/// Returns whether `path` is a directory in the container; false when it does not exist.
fn is_dir_inside(engine: &Engine, container: &str, path: &Path) -> Result<bool, Error> {
    let options = ContainerArchiveInfoOptionsBuilder::new()
        .path(&path.to_string_lossy())
        .build();
    let stat = engine.block_on(
        engine
            .docker()
            .get_container_archive_info(container, Some(options)),
    );
    match stat {
        Ok(stat) => Ok(stat.file_mode & GO_MODE_DIR != 0),
        Err(error) if is_not_found(&error) => Ok(false),
        Err(error) => Err(failed(path, error)),
    }
}

/// Opens an unnamed temporary file for the archive.
fn temporary_file() -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(std::env::temp_dir())
}

/// Streams `file` in chunks, ending after the first error.
fn chunks(file: File) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0; CHUNK];
        match file.read(&mut buffer) {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(Bytes::from(buffer)), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    })
}

/// Writes `source` as a tar stream to `sink`, under the top-level `name`.
fn pack(source: &Path, name: &OsStr, user: User, sink: &mut File) -> io::Result<()> {
    let mut builder = tar::Builder::new(sink);
    append(&mut builder, source, Path::new(name), user)?;
    builder.into_inner()?.flush()
}

/// Appends `path` as `name`, and what is below it, owned by `user` and with the permission
/// bits alone. Symlinks are stored as symlinks, never followed.
fn append(
    builder: &mut tar::Builder<&mut File>,
    path: &Path,
    name: &Path,
    user: User,
) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    header.set_uid(user.uid.into());
    header.set_gid(user.gid.into());
    header.set_mode(metadata.mode() & 0o777);
    let kind = metadata.file_type();
    if kind.is_dir() {
        header.set_size(0);
        builder.append_data(&mut header, name, io::empty())?;
        let mut entries: Vec<OsString> = std::fs::read_dir(path)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<io::Result<_>>()?;
        entries.sort();
        for entry in entries {
            append(builder, &path.join(&entry), &name.join(&entry), user)?;
        }
        Ok(())
    } else if kind.is_file() {
        builder.append_data(&mut header, name, File::open(path)?)
    } else if kind.is_symlink() {
        let target = std::fs::read_link(path)?;
        builder.append_link(&mut header, name, target)
    } else {
        Err(io::Error::other(format!(
            "{} is a device node, FIFO or socket; cp copies files, directories and symlinks only",
            path.display()
        )))
    }
}

/// Copies the container's `source` to the host: into `target` when it is a directory, else
/// as `target`.
fn copy_out(engine: &Engine, container: &str, source: &Path, target: &Path) -> Result<(), Error> {
    let (host_dir, name) = join::copy_destination(target, source, |path| path.is_dir())?;
    let basename = join::file_name(source)?;
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(&source.to_string_lossy())
        .build();
    let stream = engine
        .docker()
        .download_from_container(container, Some(options));
    let reader = StreamReader::new(engine, stream);
    if name == basename {
        return join::unpack_on_host(reader, &host_dir).map_err(|error| failed(source, error));
    }
    // The engine names the archive's top entry after the source, so a copy under another
    // name is unpacked beside the target and renamed.
    let staging = staging_dir(&host_dir).map_err(|error| failed(target, error))?;
    let result = join::unpack_on_host(reader, &staging)
        .and_then(|()| std::fs::rename(staging.join(&basename), host_dir.join(&name)));
    let _ = std::fs::remove_dir_all(&staging);
    result.map_err(|error| failed(source, error))
}

/// Creates a private directory in `dir` for a copy to be renamed from.
fn staging_dir(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let token = airlock_core::SandboxId::generate()?.to_string();
    let staging = dir.join(format!(".airlock-cp-{}", &token[..12]));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    Ok(staging)
}

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
