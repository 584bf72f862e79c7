//! The connection to the engine: its socket, its API version, and a single-threaded
//! runtime that drives the client.
//!
//! The runtime is current-thread on purpose, because the supervisor of a sandbox stays
//! single-threaded so that it may fork safely.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{ClientVersion, Docker};
use tracing::debug;

use crate::transport::Transport;

/// How long one request to the engine may take before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The oldest engine API this backend speaks: Docker Engine 20.10 and Podman 4.
pub const MINIMUM_API: (u32, u32) = (1, 41);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("DOCKER_HOST={host} is not a unix socket; the docker backend talks to local engines only: unset DOCKER_HOST or set it to unix:///path/to/docker.sock")]
    Remote { host: String },
    #[error("no engine socket found (tried {}); start Docker Engine (`dockerd`) or Podman's API service (`podman system service --time=0`), or point DOCKER_HOST at its socket, such as unix:///run/docker.sock", list(.tried))]
    NoSocket { tried: Vec<PathBuf> },
    #[error("permission denied on the engine socket {socket:?}; run as root, or add your user to the socket's group (usually `docker`)")]
    PermissionDenied { socket: PathBuf },
    #[error("the engine at {socket:?} does not answer; start it (`dockerd`, or `podman system service --time=0`) or remove the stale socket")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the engine at {socket:?} does not answer GET /_ping ({answer}); start it (`dockerd`, or `podman system service --time=0`) or remove the stale socket")]
    NoPing { socket: PathBuf, answer: String },
    #[error("the engine at {socket:?} speaks API {found}, older than {}.{}, the oldest this backend supports; upgrade it to Docker Engine 20.10 or Podman 4 or later", MINIMUM_API.0, MINIMUM_API.1)]
    TooOld { socket: PathBuf, found: String },
    #[error("cannot start the engine client's runtime")]
    Runtime(#[source] io::Error),
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|path| format!("{path:?}")).collect();
    names.join(", ")
}

/// A connected engine: the client, the socket it uses and the runtime that drives it.
pub struct Engine {
    runtime: tokio::runtime::Runtime,
    docker: Docker,
    /// The client under `docker`, for the requests that bollard's types cannot parse.
    transport: Transport,
    socket: PathBuf,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Finds the engine's socket as Docker clients do (`DOCKER_HOST`, then the default
    /// sockets of Docker and Podman), connects, and agrees on an API version.
    pub fn connect() -> Result<Engine, EngineError> {
        Self::connect_to(&Self::find_socket()?)
    }

    /// Finds the engine's socket as [`Engine::connect`] does and checks that the engine
    /// replies to `GET /_ping`, without agreeing on an API version. Returns the socket.
    pub fn probe() -> Result<PathBuf, EngineError> {
        let socket = Self::find_socket()?;
        check_access(&socket)?;
        airlock_host::docker::ping(&socket).map_err(|answer| EngineError::NoPing {
            socket: socket.clone(),
            answer,
        })?;
        Ok(socket)
    }

    fn find_socket() -> Result<PathBuf, EngineError> {
        let env = |name: &str| std::env::var_os(name);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        find_socket_with(&env, is_root)
    }

    /// Connects to the engine on the unix socket at `socket` and agrees on an API version.
    pub fn connect_to(socket: &Path) -> Result<Engine, EngineError> {
        check_access(socket)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(EngineError::Runtime)?;

        let transport = {
            // The client's connection pool needs the runtime when it is built.
            let _entered = runtime.enter();
            Transport::new(socket, REQUEST_TIMEOUT)
        };
        let docker = runtime.block_on(agree_version(socket, &transport))?;

        let version = docker.client_version();
        debug!(socket = %socket.display(), api = %version, "connected to the engine");
        let found = (version.major_version as u32, version.minor_version as u32);
        if found < MINIMUM_API {
            return Err(EngineError::TooOld {
                socket: socket.to_owned(),
                found: version.to_string(),
            });
        }
        Ok(Engine {
            runtime,
            docker,
            transport,
            socket: socket.to_owned(),
        })
    }

    /// The client, for requests passed to [`Engine::block_on`].
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The client under [`Engine::docker`], for requests passed to [`Engine::block_on`].
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Returns the socket of this engine.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `future`, usually a request to the engine, to completion on this thread.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// Checks with `GET /_ping` that the engine replies, and returns a client of the API version
/// that the ping's `Api-Version` header names, the engine's newest, or bollard's where that
/// is older: the version bollard's negotiation agrees on. The negotiation itself requests `GET
/// /version`, which takes Podman 4.3 about 0.4 s because it runs its runtime's binaries to
/// report their versions, so it serves only an engine whose ping names no version.
///
/// NOTE: bollard 0.21 joins each request's absolute path onto the versioned base address,
/// which drops the `/vX.Y` prefix, so the engine serves every request in its own newest
/// version. The agreed version decides only whether the engine is new enough.
async fn agree_version(socket: &Path, transport: &Transport) -> Result<Docker, EngineError> {
    let unreachable = |source| classify(socket, source);
    let ping = transport.ping().await.map_err(unreachable)?;
    if !ping.status.is_success() {
        return Err(EngineError::NoPing {
            socket: socket.to_owned(),
            answer: format!("status {}: {}", ping.status, ping.body.trim()),
        });
    }
    let newest = bollard::API_DEFAULT_VERSION;
    match ping.api_version.as_deref().and_then(parse_version) {
        Some(engine) => {
            let agreed = if engine < *newest { engine } else { *newest };
            transport.docker(&agreed).map_err(unreachable)
        }
        None => {
            debug!(socket = %socket.display(), "the engine's ping names no API version; negotiating");
            transport
                .docker(newest)
                .map_err(unreachable)?
                .negotiate_version()
                .await
                .map_err(unreachable)
        }
    }
}

/// Reads an API version such as `1.41`.
fn parse_version(text: &str) -> Option<ClientVersion> {
    let (major, minor) = text.trim().split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

/// Finds the first socket that exists among those that `env` and the defaults name.
fn find_socket_with(
    env: &dyn Fn(&str) -> Option<OsString>,
    is_root: bool,
) -> Result<PathBuf, EngineError> {
    let (candidates, remote) = airlock_host::docker::candidates(env, is_root);
    if let Some(host) = remote {
        return Err(EngineError::Remote { host });
    }
    candidates
        .iter()
        .map(|candidate| candidate.path.clone())
        .find(|path| path.exists())
        .ok_or_else(|| EngineError::NoSocket {
            tried: candidates.iter().map(|c| c.path.clone()).collect(),
        })
}

/// Fails with [`EngineError::PermissionDenied`] when this user may not connect to `socket`,
/// which needs write permission on it.
fn check_access(socket: &Path) -> Result<(), EngineError> {
    let Ok(path) = std::ffi::CString::new(socket.as_os_str().as_encoded_bytes()) else {
        return Ok(());
    };
    // SAFETY: `path` is NUL-terminated and lives for the call.
    let denied = unsafe { libc::access(path.as_ptr(), libc::W_OK) } == -1
        && io::Error::last_os_error().raw_os_error() == Some(libc::EACCES);
    if denied {
        return Err(EngineError::PermissionDenied {
            socket: socket.to_owned(),
        });
    }
    Ok(())
}

/// Tells a socket the caller may not open from an engine that does not reply.
fn classify(socket: &Path, source: bollard::errors::Error) -> EngineError {
    let denied = match &source {
        bollard::errors::Error::IOError { err } => err.kind() == io::ErrorKind::PermissionDenied,
        other => other.to_string().contains("Permission denied"),
    };
    if denied {
        EngineError::PermissionDenied {
            socket: socket.to_owned(),
        }
    } else {
        EngineError::Unreachable {
            socket: socket.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn tcp_docker_host_is_refused_without_contacting_it() {
        let env =
            |name: &str| (name == "DOCKER_HOST").then(|| OsString::from("tcp://192.0.2.1:2375"));
        let error = find_socket_with(&env, true).expect_err("a TCP host is refused");
        assert!(matches!(error, EngineError::Remote { .. }), "{error}");
    }

    #[test]
    fn missing_socket_names_every_path_tried() {
        let env = |name: &str| {
            (name == "DOCKER_HOST").then(|| OsString::from("unix:///nonexistent/airlock-test.sock"))
        };
        let error = find_socket_with(&env, true).expect_err("no socket");
        let message = error.to_string();
        assert!(
            message.contains("/nonexistent/airlock-test.sock"),
            "{message}"
        );
    }

    /// The response of a fake engine to one request: the status, the `Api-Version` header if
    /// any, and the body.
    type Answer = (u16, Option<&'static str>, &'static str);

    /// Starts a fake engine on a socket in `dir`: each connection gets one response, the one
    /// `answer` returns for its request line. Returns the socket and the request lines.
    fn fake_engine(dir: &Path, answer: fn(&str) -> Answer) -> (PathBuf, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let socket = dir.join("engine.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap() > 2 {
                    header.clear();
                }
                let request_line = request_line.trim_end().to_owned();
                let (status, api_version, body) = answer(&request_line);
                received.lock().unwrap().push(request_line);
                let api_version =
                    api_version.map_or_else(String::new, |v| format!("Api-Version: {v}\r\n"));
                let response = format!(
                    "HTTP/1.1 {status} X\r\n{api_version}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (socket, requests)
    }

    fn requests_of(requests: &Mutex<Vec<String>>) -> Vec<String> {
        requests.lock().unwrap().clone()
    }

    #[test]
    fn version_comes_from_the_ping_without_version_request() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, requests) = fake_engine(dir.path(), |_| (200, Some("1.41"), "OK"));
        let engine = Engine::connect_to(&socket).expect("connect");
        assert_eq!(engine.docker().client_version().to_string(), "1.41");
        assert_eq!(requests_of(&requests), ["GET /_ping HTTP/1.1"]);
    }

    #[test]
    fn version_newer_than_bollard_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _) = fake_engine(dir.path(), |_| (200, Some("1.99"), "OK"));
        let engine = Engine::connect_to(&socket).expect("connect");
        assert_eq!(
            engine.docker().client_version(),
            *bollard::API_DEFAULT_VERSION
        );
    }

    #[test]
    fn ping_without_version_falls_back_to_negotiation() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, requests) = fake_engine(dir.path(), |line| {
            if line.starts_with("GET /version ") {
                (200, None, r#"{"ApiVersion":"1.47"}"#)
            } else {
                (200, None, "OK")
            }
        });
        let engine = Engine::connect_to(&socket).expect("connect");
        assert_eq!(engine.docker().client_version().to_string(), "1.47");
        assert_eq!(
            requests_of(&requests),
            ["GET /_ping HTTP/1.1", "GET /version HTTP/1.1"]
        );
    }

    #[test]
    fn engine_older_than_1_41_is_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _) = fake_engine(dir.path(), |_| (200, Some("1.40"), "OK"));
        let error = Engine::connect_to(&socket).expect_err("too old");
        assert!(matches!(error, EngineError::TooOld { .. }), "{error}");
        assert!(error.to_string().contains("1.40"), "{error}");
    }

    #[test]
    fn failed_ping_names_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _) = fake_engine(dir.path(), |_| (500, None, "starting"));
        let error = Engine::connect_to(&socket).expect_err("no ping");
        assert!(matches!(error, EngineError::NoPing { .. }), "{error}");
        assert!(error.to_string().contains("500"), "{error}");
    }

    #[test]
    fn refused_connection_is_reported_as_unreachable() {
        let dir = std::env::temp_dir().join(format!("airlock-engine-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("closed.sock");
        // A socket file with no listener behind it: bind, then drop the listener.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let error = Engine::connect_to(&socket).expect_err("nobody listens");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(error, EngineError::Unreachable { .. }), "{error}");
    }
}
