//! The engine's own images: look-up by name, list and removal.

use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use serde::Serialize;

use super::{engine_message, status_code, ImageError};
use crate::engine::Engine;

/// One image of the engine, as `airlock image ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// `sha256:...`
    pub id: String,
    /// The names that point to the image, `REPOSITORY:TAG` each; empty for an untagged image.
    pub tags: Vec<String>,
    /// Creation time, in seconds since the Unix epoch.
    pub created: i64,
    /// Size of all the image's layers, in bytes.
    pub size: i64,
}

/// The names untagged and the images deleted by one removal.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removed {
    pub untagged: Vec<String>,
    pub deleted: Vec<String>,
}

/// Returns the id of the image `name`, or `None` when the engine has no such image.
pub(crate) fn image_id(engine: &Engine, name: &str) -> Result<Option<String>, ImageError> {
    match engine.block_on(engine.docker().inspect_image(name)) {
        Ok(inspected) => Ok(inspected.id),
        Err(error) if status_code(&error) == Some(404) => Ok(None),
        Err(source) => Err(ImageError::Request {
            socket: engine.socket().to_owned(),
            action: format!("look up the image {name}"),
            source,
        }),
    }
}

/// Lists the engine's images, newest first.
pub fn list(engine: &Engine) -> Result<Vec<ImageSummary>, ImageError> {
    let options = ListImagesOptionsBuilder::default().all(false).build();
    let images = engine
        .block_on(engine.docker().list_images(Some(options)))
        .map_err(|source| ImageError::Request {
            socket: engine.socket().to_owned(),
            action: "list the images".to_owned(),
            source,
        })?;
    let mut images: Vec<ImageSummary> = images
        .into_iter()
        .map(|image| ImageSummary {
            id: image.id,
            // Docker lists an untagged image as `<none>:<none>`.
            tags: image
                .repo_tags
                .into_iter()
                .filter(|tag| tag != "<none>:<none>")
                .collect(),
            created: image.created,
            size: image.size,
        })
        .collect();
    images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.tags.cmp(&b.tags)));
    Ok(images)
}

/// Removes the image `name` (a name, or an id). Without `force`, an image that a container
/// uses is kept and reported.
pub fn remove(engine: &Engine, name: &str, force: bool) -> Result<Removed, ImageError> {
    let options = RemoveImageOptionsBuilder::default().force(force).build();
    let items = engine
        .block_on(engine.docker().remove_image(name, Some(options), None))
        .map_err(|error| match status_code(&error) {
            Some(404) => ImageError::NotFound {
                socket: engine.socket().to_owned(),
                name: name.to_owned(),
            },
            Some(409) => ImageError::InUse {
                name: name.to_owned(),
                cause: engine_message(&error),
            },
            _ => ImageError::Request {
                socket: engine.socket().to_owned(),
                action: format!("remove the image {name}"),
                source: error,
            },
        })?;
    let mut removed = Removed::default();
    for item in items {
        removed.untagged.extend(item.untagged);
        removed.deleted.extend(item.deleted);
    }
    Ok(removed)
}
