//! The connection to the engine: which socket, which API version, and a single-threaded
//! runtime to drive the client on.
//!
//! The runtime is current-thread on purpose: the process that holds a sandbox stays
//! single-threaded, so it may fork safely.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use bollard::{ClientVersion, Docker};
use tracing::debug;

/// How long one request to the engine may take before the client gives up, in seconds.
const REQUEST_TIMEOUT_SECS: u64 = 120;

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

    /// Connects to the engine on the unix socket at `socket`.
    pub fn connect_to(socket: &Path) -> Result<Engine, EngineError> {
        check_access(socket)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(EngineError::Runtime)?;

        let unreachable = |source| EngineError::Unreachable {
            socket: socket.to_owned(),
            source,
        };
        let address = socket.to_string_lossy();
        let agreed = agreed_version(socket);
        let docker = {
            let _entered = runtime.enter();
            let version = agreed.as_ref().unwrap_or(bollard::API_DEFAULT_VERSION);
            Docker::connect_with_unix(&address, REQUEST_TIMEOUT_SECS, version)
                .map_err(unreachable)?
        };
        // Agreeing on a version is the first request, so it also checks that the engine
        // replies.
        let docker = match agreed {
            Some(_) => docker,
            None => runtime
                .block_on(docker.negotiate_version())
                .map_err(|source| classify(socket, source))?,
        };

        let version = docker.client_version();
        remember_version(socket, &version);
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
            socket: socket.to_owned(),
        })
    }

    /// The client, for requests passed to [`Engine::block_on`].
    pub fn docker(&self) -> &Docker {
        &self.docker
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

/// The API versions this process agreed with each engine socket. Later connections to the
/// same socket skip the version request, which takes Podman 4.3 about 0.4 s, because it runs
/// its runtime's binaries to report their versions.
static AGREED: Mutex<Vec<(PathBuf, ClientVersion)>> = Mutex::new(Vec::new());

fn agreed_version(socket: &Path) -> Option<ClientVersion> {
    let agreed = AGREED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    agreed
        .iter()
        .find(|(known, _)| known == socket)
        .map(|(_, version)| *version)
}

fn remember_version(socket: &Path, version: &ClientVersion) {
    let mut agreed = AGREED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !agreed.iter().any(|(known, _)| known == socket) {
        agreed.push((socket.to_owned(), *version));
    }
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
