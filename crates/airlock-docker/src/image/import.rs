//! Import of a root filesystem into the engine as an image, through
//! `POST /images/create?fromSrc=-` with the tar stream as the request body.
//!
//! A thread writes the archive, from a directory walk or a decompressed tarball, into a
//! bounded channel while this thread's runtime sends it. Nothing is staged on disk.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bollard::query_parameters::{CreateImageOptionsBuilder, TagImageOptionsBuilder};
use futures_util::StreamExt;
use tracing::{info, warn};

use super::archive::{self, Compression};
use super::body::{self, BodyWriter};
use super::progress::Progress;
use super::tree::{self, TreeSummary};
use super::ImageRef;
use super::{engine_message, ImageError, LONG_REQUEST};
use crate::engine::Engine;

/// An imported image.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The image's name with its tag, as given or with `latest`.
    pub name: String,
    /// The image id the engine reports, `sha256:...`.
    pub id: String,
    /// Bytes of tar sent to the engine.
    pub bytes: u64,
    /// The kind of source, with what was read from it.
    pub source: ImportedFrom,
}

#[derive(Debug, Clone, Copy)]
pub enum ImportedFrom {
    Directory(TreeSummary),
    Tarball(Compression),
}

/// A root filesystem to import.
enum Source {
    Directory(PathBuf),
    Tarball(PathBuf, File),
}

/// Imports the directory or tarball at `source` into the engine as the image `name`
/// (`NAME[:TAG]`, tag `latest` by default).
pub fn import(
    engine: &Engine,
    source: &Path,
    name: &str,
    progress: Progress,
) -> Result<Imported, ImageError> {
    let image = ImageRef::parse_for_import(name).map_err(|rule| ImageError::InvalidName {
        name: name.to_owned(),
        rule,
    })?;
    let tag = image.tag_or_latest().unwrap_or("latest").to_owned();
    let full_name = format!("{}:{tag}", image.repository());
    let opened = open_source(source)?;
    let previous = super::local::image_id(engine, &full_name)?;

    let counter = progress.byte_counter(format!("importing {} as {full_name}", source.display()));
    let (writer, body, state) = body::channel();
    // The tag goes in `repo`, which Docker accepts, because Podman 4.3's compatible API
    // ignores the `tag` parameter of an import and tags the image `latest`.
    let options = CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(&full_name)
        .build();
    let docker = engine.docker().clone().with_timeout(LONG_REQUEST);

    let (produced, sent) = std::thread::scope(|scope| {
        let producer = std::thread::Builder::new()
            .name("airlock-import".into())
            .spawn_scoped(scope, || produce(opened, writer, &counter))
            .map_err(ImageError::Thread)?;
        let sent = engine.block_on(async {
            let mut stream =
                docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
            while let Some(message) = stream.next().await {
                message?;
            }
            Ok::<(), bollard::errors::Error>(())
        });
        let produced = producer.join().expect("the import thread does not panic");
        Ok::<_, ImageError>((produced, sent))
    })?;
    counter.finish_and_clear();

    // The engine's error explains a source that stopped because the engine stopped reading.
    let failure = match (produced, sent) {
        (Ok(kind), Ok(())) => Ok(kind),
        (Err(_), Err(error)) if state.receiver_gone.load(Ordering::SeqCst) => {
            Err(import_failed(engine, source, &full_name, &error))
        }
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(import_failed(engine, source, &full_name, &error)),
    };
    let source_kind = match failure {
        Ok(kind) => kind,
        Err(error) => {
            undo_failed_import(engine, &full_name, previous.as_deref());
            return Err(error);
        }
    };

    let id =
        super::local::image_id(engine, &full_name)?.ok_or_else(|| ImageError::ImportMissing {
            name: full_name.clone(),
        })?;
    let bytes = state.sent.load(Ordering::Relaxed);
    info!(source = %source.display(), image = %full_name, %id, bytes, "imported an image");
    Ok(Imported {
        name: full_name,
        id,
        bytes,
        source: source_kind,
    })
}

fn import_failed(
    engine: &Engine,
    source: &Path,
    name: &str,
    error: &bollard::errors::Error,
) -> ImageError {
    ImageError::ImportFailed {
        socket: engine.socket().to_owned(),
        source_path: source.to_owned(),
        name: name.to_owned(),
        cause: engine_message(error),
    }
}

/// Removes the image that a failed import left under `name`, and gives the name back to the
/// image it pointed to before. Podman 4.3's compatible API imports what it received of an
/// aborted upload when several imports run at once, so a failed import can leave a partial
/// image. Only `name` is looked at, so images that others create meanwhile stay.
// NOTE: Podman may store that image after the failed request has returned, and this check
// then misses it. The checks before the upload (`check_tree`, `check_tarball`) leave this
// path to failures in the middle of the data: an I/O error, a file changed while it was read,
// or a truncated tarball.
fn undo_failed_import(engine: &Engine, name: &str, previous: Option<&str>) {
    let current = match super::local::image_id(engine, name) {
        Ok(Some(current)) if Some(current.as_str()) != previous => current,
        Ok(_) => return,
        Err(error) => {
            warn!(image = name, %error, "cannot check for a partial image after a failed import");
            return;
        }
    };
    if let Err(error) = super::local::remove(engine, name, false) {
        warn!(image = name, id = %current, %error, "cannot remove the partial image of a failed import");
        return;
    }
    warn!(image = name, id = %current, "removed the partial image of a failed import");
    let Some(previous) = previous else {
        return;
    };
    let (repository, tag) = name.rsplit_once(':').expect("the name has a tag");
    let options = TagImageOptionsBuilder::default()
        .repo(repository)
        .tag(tag)
        .build();
    if let Err(error) = engine.block_on(engine.docker().tag_image(previous, Some(options))) {
        warn!(image = name, id = previous, %error, "cannot give the name back to its previous image after a failed import");
    }
}

/// Checks that `path` is a directory or a regular file, and opens a file.
fn open_source(path: &Path) -> Result<Source, ImageError> {
    let metadata = std::fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ImageError::SourceMissing {
            path: path.to_owned(),
        },
        _ => ImageError::SourceOpen {
            path: path.to_owned(),
            source,
        },
    })?;
    if metadata.is_dir() {
        tree::check_tree(path)?;
        return Ok(Source::Directory(path.to_owned()));
    }
    if !metadata.is_file() {
        return Err(ImageError::SourceKind {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(|source| ImageError::SourceOpen {
        path: path.to_owned(),
        source,
    })?;
    archive::check_tarball(path, &file)?;
    Ok(Source::Tarball(path.to_owned(), file))
}

/// Writes the source's tar stream into the body. On failure the body ends with an error, so
/// the request fails (but see [`undo_failed_import`] for what Podman may keep).
fn produce(
    source: Source,
    mut writer: BodyWriter,
    counter: &indicatif::ProgressBar,
) -> Result<ImportedFrom, ImageError> {
    let mut counted = counter.wrap_write(&mut writer);
    let result = match source {
        Source::Directory(path) => tree::write_tree(&path, &mut counted)
            .map(ImportedFrom::Directory)
            .map_err(ImageError::from),
        Source::Tarball(path, file) => archive::copy_tarball(&path, file, &mut counted)
            .map(ImportedFrom::Tarball)
            .map_err(ImageError::from),
    };
    let result = result.and_then(|kind| {
        counted.flush().map_err(ImageError::BodyClosed)?;
        Ok(kind)
    });
    drop(counted);
    if result.is_err() {
        writer.abort();
    }
    result
}
