//! A Docker-compatible API socket: Docker Engine's or Podman's, checked with `GET /_ping`.
//!
//! Only local unix sockets are contacted. A `DOCKER_HOST` that names a TCP or SSH address is
//! reported and left alone.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Fact;

/// How long one socket may take to accept the request and reply.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest reply read from a socket, in bytes. A `/_ping` reply is a few hundred.
const MAX_ANSWER: u64 = 4096;

/// A socket to try, and where its path came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub source: &'static str,
}

/// Lists the sockets to try, in the order Docker clients look for them. The second value is
/// a `DOCKER_HOST` that names a remote address, which is never contacted.
pub fn candidates(
    env: &dyn Fn(&str) -> Option<OsString>,
    is_root: bool,
) -> (Vec<Candidate>, Option<String>) {
    let mut found = Vec::new();
    let mut remote = None;
    if let Some(host) = env("DOCKER_HOST").filter(|host| !host.is_empty()) {
        let host = host.to_string_lossy().into_owned();
        match host.strip_prefix("unix://") {
            Some(path) => found.push(Candidate {
                path: path.into(),
                source: "$DOCKER_HOST",
            }),
            None => remote = Some(host),
        }
    }
    found.push(Candidate {
        path: "/var/run/docker.sock".into(),
        source: "Docker's default",
    });
    if is_root {
        found.push(Candidate {
            path: "/run/podman/podman.sock".into(),
            source: "Podman's default for root",
        });
    } else if let Some(runtime) = env("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        let runtime = PathBuf::from(runtime);
        found.push(Candidate {
            path: runtime.join("podman/podman.sock"),
            source: "Podman's default",
        });
        found.push(Candidate {
            path: runtime.join("docker.sock"),
            source: "rootless Docker's default",
        });
    }
    (found, remote)
}

/// Returns whether an HTTP reply is a successful `/_ping`: status 200 and the body `OK`.
pub fn is_ping_answer(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let status_ok = text
        .lines()
        .next()
        .is_some_and(|line| line.starts_with("HTTP/1.") && line.split(' ').nth(1) == Some("200"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    status_ok && body.trim() == "OK"
}

/// Sends `GET /_ping` on the unix socket at `path` and checks the answer; the error says
/// what failed.
pub fn ping(path: &Path) -> Result<(), String> {
    let mut stream = UnixStream::connect(path).map_err(|error| format!("connect: {error}"))?;
    let _ = stream.set_read_timeout(Some(PING_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PING_TIMEOUT));
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|error| format!("send: {error}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|error| format!("no answer within {PING_TIMEOUT:?}: {error}"))?;
    if is_ping_answer(&answer) {
        return Ok(());
    }
    let first_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("an empty answer")
        .to_owned();
    Err(format!("unexpected answer: {first_line}"))
}

/// Tries each candidate socket that exists and reports the first that answers.
pub fn fact(env: &dyn Fn(&str) -> Option<OsString>, is_root: bool) -> Fact {
    let (id, name) = ("docker_socket", "Docker-compatible API socket");
    let (candidates, remote) = candidates(env, is_root);
    let remote_note = remote.map_or_else(String::new, |host| {
        format!("; DOCKER_HOST={host} is not a unix socket, so it was not contacted")
    });
    let mut failures = Vec::new();
    for candidate in candidates.iter().filter(|c| c.path.exists()) {
        match ping(&candidate.path) {
            Ok(()) => {
                let detail = format!(
                    "{} ({}) answers GET /_ping{remote_note}",
                    candidate.path.display(),
                    candidate.source
                );
                return Fact::ok(id, name, detail);
            }
            Err(error) => failures.push(format!("{}: {error}", candidate.path.display())),
        }
    }
    if failures.is_empty() {
        let tried: Vec<String> = candidates
            .iter()
            .map(|c| c.path.display().to_string())
            .collect();
        return Fact::missing(
            id,
            name,
            format!("no socket at {}{remote_note}", tried.join(", ")),
            "install Docker Engine or Podman and start its API service, for example \
             `podman system service --time=0`, or point DOCKER_HOST at its unix socket",
        );
    }
    Fact::broken(
        id,
        name,
        format!("{}{remote_note}", failures.join("; ")),
        "start the daemon behind the socket (`systemctl start docker` or \
         `podman system service --time=0`), or remove the stale socket file",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        }
    }

    #[test]
    fn docker_host_unix_socket_comes_first() {
        let env = env_of(&[("DOCKER_HOST", "unix:///srv/docker.sock")]);
        let (found, remote) = candidates(&env, true);
        assert_eq!(found[0].path, Path::new("/srv/docker.sock"));
        assert_eq!(found[1].path, Path::new("/var/run/docker.sock"));
        assert_eq!(found[2].path, Path::new("/run/podman/podman.sock"));
        assert_eq!(remote, None);
    }

    #[test]
    fn tcp_docker_host_is_never_a_candidate() {
        let env = env_of(&[("DOCKER_HOST", "tcp://192.0.2.1:2375")]);
        let (found, remote) = candidates(&env, true);
        assert!(found
            .iter()
            .all(|c| !c.path.to_string_lossy().contains("192.0.2.1")));
        assert_eq!(remote.as_deref(), Some("tcp://192.0.2.1:2375"));
    }

    #[test]
    fn unprivileged_user_gets_runtime_dir_sockets() {
        let env = env_of(&[("XDG_RUNTIME_DIR", "/run/user/1000")]);
        let (found, _) = candidates(&env, false);
        let paths: Vec<&Path> = found.iter().map(|c| c.path.as_path()).collect();
        assert_eq!(
            paths,
            [
                Path::new("/var/run/docker.sock"),
                Path::new("/run/user/1000/podman/podman.sock"),
                Path::new("/run/user/1000/docker.sock"),
            ]
        );
    }

    #[test]
    fn ping_answers_are_recognized() {
        assert!(is_ping_answer(
            b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK"
        ));
        assert!(!is_ping_answer(b"HTTP/1.1 404 Not Found\r\n\r\nOK"));
        assert!(!is_ping_answer(b"HTTP/1.1 200 OK\r\n\r\n{}"));
        assert!(!is_ping_answer(b""));
    }

    #[test]
    fn ping_of_a_local_server_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let read = stream.read(&mut request).unwrap();
            assert!(request[..read].starts_with(b"GET /_ping HTTP/1.0\r\n"));
            stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                .unwrap();
        });
        assert_eq!(ping(&path), Ok(()));
        server.join().unwrap();
    }
}
