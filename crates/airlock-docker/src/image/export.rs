//! The file system of a local image as one tar stream, for the vm backend, which builds its
//! guest's root disk from it.
//!
//! The engine exports the file system of a container that is created from the image and
//! never started (`GET /containers/{id}/export`). The engine flattens the image's layers
//! and applies their whiteouts itself, in the same way for Docker Engine and Podman, so
//! the stream is one plain tree. The image save API would hand over the layers instead,
//! in a format that differs between engines and versions, and leave the whiteouts to
//! Airlock.

use std::collections::HashMap;
use std::io::Read;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptions;

use super::ImageError;
use crate::engine::Engine;
use crate::resources;
use crate::stream::StreamReader;

/// The label of an export's container, whose value is the pid of the Airlock process that
/// created it, so that a later export removes the containers of a killed one.
pub const LABEL_EXPORT: &str = "airlock.export-pid";

/// The entrypoint of an export's container. The container never starts, but Docker Engine
/// requires a command for an image that has none.
const NEVER_STARTED: &str = "/airlock-export-never-started";

/// A local image, as an export needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    /// `sha256:...`, the digest of the image's configuration, which names its layers: two
    /// images with the same id have the same files.
    pub id: String,
    /// Bytes of the image's file system, for a progress bar; 0 where the engine reports none.
    pub size: u64,
}

/// Returns the image `name` of the engine, or `None` when the engine has no such image.
pub fn inspect(engine: &Engine, name: &str) -> Result<Option<LocalImage>, ImageError> {
    let inspected = match engine.block_on(engine.docker().inspect_image(name)) {
        Ok(inspected) => inspected,
        Err(error) if super::status_code(&error) == Some(404) => return Ok(None),
        Err(source) => {
            return Err(ImageError::Request {
                socket: engine.socket().to_owned(),
                action: format!("look up the image {name}"),
                source,
            })
        }
    };
    let Some(id) = inspected.id else {
        return Ok(None);
    };
    let size = inspected
        .size
        .map_or(0, |size| u64::try_from(size).unwrap_or(0));
    Ok(Some(LocalImage { id, size }))
}

/// A container created from an image to export its file system, never started. Dropping
/// it removes the container.
pub struct ExportContainer<'a> {
    engine: &'a Engine,
    id: String,
}

impl<'a> ExportContainer<'a> {
    /// Creates the container of `image`, after removing those that killed exports left.
    pub fn create(engine: &'a Engine, image: &str) -> Result<ExportContainer<'a>, ImageError> {
        remove_abandoned(engine);
        let labels = HashMap::from([(LABEL_EXPORT.to_owned(), std::process::id().to_string())]);
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec![NEVER_STARTED.to_owned()]),
            cmd: Some(Vec::new()),
            network_disabled: Some(true),
            labels: Some(labels),
            ..ContainerCreateBody::default()
        };
        let created = engine
            .block_on(
                engine
                    .docker()
                    .create_container(None::<CreateContainerOptions>, body),
            )
            .map_err(|source| ImageError::Request {
                socket: engine.socket().to_owned(),
                action: format!("create a container of {image} to export its files"),
                source,
            })?;
        tracing::debug!(container = %created.id, image, "export container created");
        Ok(ExportContainer {
            engine,
            id: created.id,
        })
    }

    /// Returns the container's file system as a tar stream, read on the engine's runtime
    /// one chunk at a time.
    pub fn reader(&self) -> impl Read + '_ {
        StreamReader::new(self.engine, self.engine.docker().export_container(&self.id))
    }
}

impl Drop for ExportContainer<'_> {
    fn drop(&mut self) {
        resources::remove_container(self.engine, &self.id);
    }
}

/// Removes the export containers whose Airlock process is gone, killed before its own
/// clean-up ran.
fn remove_abandoned(engine: &Engine) {
    let filters = HashMap::from([("label".to_owned(), vec![LABEL_EXPORT.to_owned()])]);
    let listed = match resources::list_containers(engine, &filters) {
        Ok(listed) => listed,
        Err(error) => {
            tracing::warn!(%error, "cannot list the containers of earlier image exports");
            return;
        }
    };
    for container in listed {
        let pid = container
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_EXPORT))
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            resources::remove_container(engine, &container.id);
        }
    }
}
