//! Images in the engine: import of a root filesystem (a directory or a tarball), pull from
//! a registry, list and remove, and export of an image's files for the vm backend. Every request goes through the engine's HTTP API.

mod archive;
mod body;
mod credentials;
mod export;
mod import;
mod local;
mod progress;
mod pull;
mod tree;

use std::path::PathBuf;
use std::time::Duration;

pub use airlock_core::image_ref::{ImageRef, NameRule};
pub use archive::{ArchiveError, Compression};
pub use credentials::CredentialsError;
pub use export::{inspect, ExportContainer, LocalImage, LABEL_EXPORT};
pub use import::{import, Imported, ImportedFrom};
pub use local::{list, remove, ImageSummary, Removed};
pub use progress::Progress;
pub use pull::{pull, Pulled};
pub use tree::{TreeError, TreeSummary};

use crate::engine::EngineError;

/// Maximum wait for the engine's response headers to an import or a pull. Docker sends
/// them for an import only once it has read the whole archive, which takes minutes for a
/// large tree.
const LONG_REQUEST: Duration = Duration::from_secs(3600);

/// A message the engine sent about a failed request, kept as the cause of an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EngineMessage(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Connect(#[from] EngineError),
    #[error("invalid image name {name:?}: {rule}; for example airlock/bookworm:latest")]
    InvalidName { name: String, rule: NameRule },
    #[error("invalid image reference {reference:?}: {rule}; for example debian:bookworm or 127.0.0.1:5000/tools:1")]
    InvalidReference { reference: String, rule: NameRule },
    #[error(
        "the image source {path:?} does not exist; give a root filesystem directory or tarball"
    )]
    SourceMissing { path: PathBuf },
    #[error("the image source {path:?} is neither a directory nor a tarball; give a root filesystem directory or tarball")]
    SourceKind { path: PathBuf },
    #[error("cannot open the image source {path:?}; make it readable")]
    SourceOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("cannot start the thread that reads the image source")]
    Thread(#[source] std::io::Error),
    #[error("the engine stopped reading the image before its end")]
    BodyClosed(#[source] std::io::Error),
    #[error("the engine at {socket:?} failed to import {source_path:?} as {name}")]
    ImportFailed {
        socket: PathBuf,
        source_path: PathBuf,
        name: String,
        #[source]
        cause: EngineMessage,
    },
    #[error("the engine reported no image {name} after importing it; list the images with `airlock image ls`")]
    ImportMissing { name: String },
    #[error("cannot reach the registry {registry} to pull {reference}; check its host and port, that it runs, and the engine's proxy settings")]
    RegistryUnreachable {
        reference: String,
        registry: String,
        #[source]
        cause: EngineMessage,
    },
    #[error("the registry {registry} serves plain HTTP, but the engine expects HTTPS for it; for Docker add {registry:?} to \"insecure-registries\" in /etc/docker/daemon.json, for Podman add `[[registry]] location = \"{registry}\"` with `insecure = true` to registries.conf, then restart the engine")]
    RegistryInsecure {
        registry: String,
        #[source]
        cause: EngineMessage,
    },
    #[error("image {reference} not found in the registry {registry}; check the name and the tag")]
    NotInRegistry {
        reference: String,
        registry: String,
        #[source]
        cause: EngineMessage,
    },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("the registry {registry} requires credentials to pull {reference}, and no login file has an entry for it; log in with `docker login {registry}` or `podman login {registry}`, or set REGISTRY_AUTH_FILE to a file with one")]
    AuthRequired {
        reference: String,
        registry: String,
        #[source]
        cause: EngineMessage,
    },
    #[error("the registry {registry} rejected the credentials of {username:?} from {file:?} to pull {reference}; log in again with `docker login {registry}` or `podman login {registry}`")]
    AuthRejected {
        reference: String,
        registry: String,
        username: String,
        file: PathBuf,
        #[source]
        cause: EngineMessage,
    },
    #[error("the engine at {socket:?} failed to pull {reference}")]
    PullFailed {
        socket: PathBuf,
        reference: String,
        #[source]
        cause: EngineMessage,
    },
    #[error(
        "image {name} not found in the engine at {socket:?}; `airlock image ls` lists the images"
    )]
    NotFound { socket: PathBuf, name: String },
    #[error("image {name} is in use by a container; remove the container first, or pass --force to untag the image anyway")]
    InUse {
        name: String,
        #[source]
        cause: EngineMessage,
    },
    #[error("the engine at {socket:?} failed to {action}")]
    Request {
        socket: PathBuf,
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// Returns the engine's own message from a failed request, or the client error's text.
fn engine_message(error: &bollard::errors::Error) -> EngineMessage {
    use bollard::errors::Error;
    match error {
        Error::DockerResponseServerError { message, .. } => EngineMessage(message.clone()),
        Error::DockerStreamError { error } => EngineMessage(error.clone()),
        other => EngineMessage(other.to_string()),
    }
}

/// Returns the HTTP status of a failed request, when the engine sent one.
fn status_code(error: &bollard::errors::Error) -> Option<u16> {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
