//! Pull of an image from a registry through the engine (`POST /images/create?fromImage=`),
//! with the engine's progress stream shown as a bar or as lines.

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use tracing::info;

use super::credentials::{self, Credentials};
use super::progress::{Progress, PullProgress};
use super::ImageRef;
use super::{engine_message, EngineMessage, ImageError, LONG_REQUEST};
use crate::engine::Engine;

/// The registry a reference without a host name pulls from.
const DEFAULT_REGISTRY: &str = "docker.io";

/// A pulled image.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference as pulled, with `:latest` added when it had neither tag nor digest.
    pub reference: String,
    /// The image id the engine reports, `sha256:...`.
    pub id: String,
}

/// Pulls `reference` (`[HOST[:PORT]/]NAME[:TAG][@DIGEST]`) into the engine.
pub fn pull(engine: &Engine, reference: &str, progress: Progress) -> Result<Pulled, ImageError> {
    let image = ImageRef::parse(reference).map_err(|rule| ImageError::InvalidReference {
        reference: reference.to_owned(),
        rule,
    })?;
    let full = match (&image.tag, &image.digest) {
        (None, None) => format!("{}:latest", image.repository()),
        _ => image.to_string(),
    };
    let registry = image
        .domain
        .clone()
        .unwrap_or_else(|| DEFAULT_REGISTRY.to_owned());
    let login = credentials::find(&registry, &format!("{registry}/{}", image.path))?;

    // With a digest the whole reference goes in fromImage: Podman's compatible API joins
    // fromImage and tag with a colon, which would turn a digest into a tag.
    let builder = CreateImageOptionsBuilder::default();
    let options = match image.tag_or_latest() {
        Some(tag) => builder.from_image(&image.repository()).tag(tag).build(),
        None => builder.from_image(&full).build(),
    };
    let docker = engine.docker().clone().with_timeout(LONG_REQUEST);
    let mut pull_progress = PullProgress::new(progress, &full);
    let result = engine.block_on(async {
        let sent = login.as_ref().map(|login| login.for_engine(&registry));
        let mut stream = docker.create_image(Some(options), None, sent);
        while let Some(message) = stream.next().await {
            pull_progress.update(&message?);
        }
        Ok::<(), bollard::errors::Error>(())
    });
    pull_progress.finish();
    if let Err(error) = result {
        let failure = Failure {
            reference: &full,
            registry: &registry,
            login: login.as_ref(),
        };
        return Err(failure.classify(engine, engine_message(&error)));
    }

    let id = super::local::image_id(engine, &full)?.ok_or_else(|| ImageError::PullFailed {
        socket: engine.socket().to_owned(),
        reference: full.clone(),
        cause: EngineMessage("the pull ended, but the engine has no image by that name".into()),
    })?;
    info!(reference = %full, %id, "pulled an image");
    Ok(Pulled {
        reference: full,
        id,
    })
}

/// The kinds of pull failure, recognized in the engine's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullFailure {
    Unreachable,
    Insecure,
    NotFound,
    AuthRequired,
    Other,
}

/// Classifies an engine's message about a failed pull. Docker and Podman pass on the
/// registry client's error text, so the kinds are recognized by the phrases those clients use.
fn kind_of(message: &str) -> PullFailure {
    let message = message.to_ascii_lowercase();
    let has = |phrases: &[&str]| phrases.iter().any(|phrase| message.contains(phrase));
    if has(&["server gave http response to https client"]) {
        PullFailure::Insecure
    } else if has(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "pull access denied",
        "denied: ",
    ]) {
        PullFailure::AuthRequired
    } else if has(&["manifest unknown", "name unknown", "not found"]) {
        PullFailure::NotFound
    } else if has(&[
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "no route to host",
        "connection reset",
        "tls handshake timeout",
        "context deadline exceeded",
        "dial tcp",
    ]) {
        PullFailure::Unreachable
    } else {
        PullFailure::Other
    }
}

/// A failed pull, with the credentials sent for it.
struct Failure<'a> {
    reference: &'a str,
    registry: &'a str,
    login: Option<&'a Credentials>,
}

impl Failure<'_> {
    fn classify(&self, engine: &Engine, cause: EngineMessage) -> ImageError {
        let reference = self.reference.to_owned();
        let registry = self.registry.to_owned();
        match (kind_of(&cause.0), self.login) {
            (PullFailure::AuthRequired, Some(login)) => ImageError::AuthRejected {
                reference,
                registry,
                username: login.username.clone(),
                file: login.file.clone(),
                cause,
            },
            (kind, _) => classify_kind(engine, kind, reference, registry, cause),
        }
    }
}

fn classify_kind(
    engine: &Engine,
    kind: PullFailure,
    reference: String,
    registry: String,
    cause: EngineMessage,
) -> ImageError {
    match kind {
        PullFailure::Unreachable => ImageError::RegistryUnreachable {
            reference,
            registry,
            cause,
        },
        PullFailure::Insecure => ImageError::RegistryInsecure { registry, cause },
        PullFailure::NotFound => ImageError::NotInRegistry {
            reference,
            registry,
            cause,
        },
        PullFailure::AuthRequired => ImageError::AuthRequired {
            reference,
            registry,
            cause,
        },
        PullFailure::Other => ImageError::PullFailed {
            socket: engine.socket().to_owned(),
            reference,
            cause,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as Docker Engine 20.10 and Podman 4.3 sent them for a pull from a local
    /// registry.
    #[test]
    fn engine_messages_sort_into_failures() {
        let cases = [
            (
                r#"Get "http://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused"#,
                PullFailure::Unreachable,
            ),
            (
                r#"initializing source docker://127.0.0.1:9/t/x:1: pinging container registry 127.0.0.1:9: Get "https://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused"#,
                PullFailure::Unreachable,
            ),
            (
                "manifest for 127.0.0.1:5000/t/nothere:1 not found: manifest unknown: manifest unknown",
                PullFailure::NotFound,
            ),
            (
                "initializing source docker://127.0.0.1:5000/t/nothere:1: reading manifest 1 in 127.0.0.1:5000/t/nothere: manifest unknown: manifest unknown",
                PullFailure::NotFound,
            ),
            (
                r#"pinging container registry 127.0.0.1:5000: Get "https://127.0.0.1:5000/v2/": http: server gave HTTP response to HTTPS client"#,
                PullFailure::Insecure,
            ),
            (
                "Head \"http://127.0.0.1:5000/v2/t/x/manifests/1\": no basic auth credentials",
                PullFailure::AuthRequired,
            ),
            (
                "reading manifest 1 in 127.0.0.1:5000/t/x: unauthorized: authentication required",
                PullFailure::AuthRequired,
            ),
            ("something else went wrong", PullFailure::Other),
        ];
        for (message, expected) in cases {
            assert_eq!(kind_of(message), expected, "{message}");
        }
    }
}
