//! The HTTP client under bollard. It keeps its connection to the engine's unix socket open
//! between requests, where bollard's own unix client opens one per request, and opens
//! another only while requests run concurrently. Each request is logged at debug level
//! with its status and duration.

use std::path::Path;
use std::time::{Duration, Instant};

use bollard::{BollardRequest, ClientVersion, Docker};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyperlocal::UnixConnector;
use serde::de::DeserializeOwned;
use tracing::debug;

/// How long an open connection may stay unused before a request opens a new one. The
/// requests of one step follow each other within milliseconds, but a supervisor's next
/// request can come hours later, when the engine may have closed the connection without
/// this single-threaded client noticing. Podman 4.3's service closes idle connections after
/// twice its `--time`, which is 5 s by default, and exits after `--time` without requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Names the body type of a request, which bollard uses but does not export.
pub trait RequestBody {
    type Body;
}

impl<B> RequestBody for http::Request<B> {
    type Body = B;
}

/// The client of one engine socket; clones share its connections.
#[derive(Clone)]
pub struct Transport {
    client: Client<UnixConnector, <BollardRequest as RequestBody>::Body>,
    /// `unix://` and the socket's path in hexadecimal, which hyperlocal's connector decodes.
    address: String,
    /// How long one request may take.
    timeout: Duration,
}

impl Transport {
    /// Creates the client of the engine at `socket`, which connects at its first request and
    /// gives up on a request after `timeout`. Must run inside the runtime that drives it.
    pub fn new(socket: &Path, timeout: Duration) -> Transport {
        let hex: String = socket
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Transport {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .build(UnixConnector),
            address: format!("unix://{hex}"),
            timeout,
        }
    }

    /// Builds a bollard client that speaks API `version` through this transport.
    pub fn docker(&self, version: &ClientVersion) -> Result<Docker, bollard::errors::Error> {
        let transport = self.clone();
        Docker::connect_with_custom_transport(
            move |request| {
                let transport = transport.clone();
                async move { transport.send(request).await }
            },
            Some(self.address.clone()),
            self.timeout.as_secs(),
            version,
        )
    }

    /// Sends `request` and logs its status and duration.
    pub async fn send(
        &self,
        request: BollardRequest,
    ) -> Result<http::Response<Incoming>, bollard::errors::Error> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let response = self.client.request(request).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &response {
            Ok(response) => {
                let status = response.status().as_u16();
                debug!(%method, path, status, micros, "engine request");
            }
            Err(error) => debug!(%method, path, %error, micros, "engine request failed"),
        }
        Ok(response?)
    }

    /// Sends `GET /_ping`.
    pub async fn ping(&self) -> Result<Ping, bollard::errors::Error> {
        let (status, headers, body) = self.get("/_ping").await?;
        let api_version = headers
            .get("api-version")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Ping {
            status,
            api_version,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Sends `GET PATH_AND_QUERY` and parses the JSON response into `T`, which may name only
    /// the fields it reads. A response of another status than 2xx becomes bollard's error
    /// for it.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, bollard::errors::Error> {
        let (status, _, body) = self.get(path_and_query).await?;
        if !status.is_success() {
            #[derive(serde::Deserialize)]
            struct Message {
                message: String,
            }
            let message = serde_json::from_slice::<Message>(&body).map_or_else(
                |_| String::from_utf8_lossy(&body).into_owned(),
                |parsed| parsed.message,
            );
            return Err(bollard::errors::Error::DockerResponseServerError {
                status_code: status.as_u16(),
                message,
            });
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Sends `GET PATH_AND_QUERY` and reads the response to its end, so that the connection
    /// stays open for the next request.
    async fn get(
        &self,
        path_and_query: &str,
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), bollard::errors::Error> {
        let mut request = BollardRequest::new(bollard::body_full(Bytes::new()));
        *request.uri_mut() = format!("{}{path_and_query}", self.address).parse()?;
        let exchange = async {
            let response = self.send(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(bollard::errors::Error::RequestTimeoutError),
        }
    }
}

/// Encodes `text` for a URL's query, leaving only letters, digits and `-_.~` as they are.
pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The engine's response to `GET /_ping`.
#[derive(Debug)]
pub struct Ping {
    pub status: http::StatusCode,
    /// The `Api-Version` header: the newest API version the engine speaks.
    pub api_version: Option<String>,
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"label":["airlock.sandbox=ab"]}"#),
            "%7B%22label%22%3A%5B%22airlock.sandbox%3Dab%22%5D%7D"
        );
        assert_eq!(percent_encode("/var/lib/a b"), "%2Fvar%2Flib%2Fa%20b");
    }
}
