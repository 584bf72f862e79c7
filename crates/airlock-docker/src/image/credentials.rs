//! Registry credentials from the files that `podman login` and `docker login` write, so that
//! a pull from a registry that requires a login works after either command. The engine API
//! takes credentials with each request, and Docker Engine reads no login file for its
//! clients.
//!
//! The files are searched in this order: `$REGISTRY_AUTH_FILE`, Podman's
//! `auth.json` (`$XDG_RUNTIME_DIR/containers/auth.json`, or `/run/containers/UID/auth.json`),
//! then Docker's `config.json` (`$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`).
//! The first file with an entry for the registry wins. Only inline entries (`auths.*.auth`)
//! are read: credential helpers (`credsStore`, `credHelpers`) are programs that Airlock does
//! not run.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::auth::DockerCredentials;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the registry credentials file {path:?}; make it readable, or set REGISTRY_AUTH_FILE to another file")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry credentials file {path:?} is not valid JSON; log in again with `docker login` or `podman login`, or fix the file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the entry {key:?} of the registry credentials file {path:?} is not base64 of USER:PASSWORD; log in again with `docker login` or `podman login`")]
    Invalid { path: PathBuf, key: String },
}

/// A user name and password for one registry, and the file they came from.
pub struct Credentials {
    pub username: String,
    password: String,
    pub file: PathBuf,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Converts the credentials into the engine API's form for `registry`.
    pub fn for_engine(&self, registry: &str) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(registry.to_owned()),
            ..DockerCredentials::default()
        }
    }
}

/// Finds the credentials for `repository` (`HOST[:PORT]/PATH`) on `registry` in the login
/// files of the current environment.
pub fn find(registry: &str, repository: &str) -> Result<Option<Credentials>, CredentialsError> {
    let env = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    for path in login_files(&env, uid) {
        if let Some(credentials) = find_in(&path, registry, repository)? {
            return Ok(Some(credentials));
        }
    }
    Ok(None)
}

/// Lists the login files in the order they are searched.
fn login_files(env: &dyn Fn(&str) -> Option<OsString>, uid: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(file) = env("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(file));
    }
    match env("XDG_RUNTIME_DIR") {
        Some(runtime) => files.push(Path::new(&runtime).join("containers/auth.json")),
        None => files.push(PathBuf::from(format!("/run/containers/{uid}/auth.json"))),
    }
    match (env("DOCKER_CONFIG"), env("HOME")) {
        (Some(config), _) => files.push(Path::new(&config).join("config.json")),
        (None, Some(home)) => files.push(Path::new(&home).join(".docker/config.json")),
        (None, None) => {}
    }
    files
}

/// Reads the entry for `repository` from one login file; a missing file has none.
fn find_in(
    path: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let file: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| CredentialsError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let Some(auths) = file.get("auths").and_then(serde_json::Value::as_object) else {
        return Ok(None);
    };
    let Some((key, encoded)) = best_entry(auths, registry, repository) else {
        return Ok(None);
    };
    let invalid = || CredentialsError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (username, password) = decoded.split_once(':').ok_or_else(invalid)?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
        file: path.to_owned(),
    }))
}

/// Picks the entry that matches `repository` most closely: an entry may name a registry
/// (`127.0.0.1:5000`, `https://index.docker.io/v1/`) or, as Podman allows, a namespace
/// below it (`quay.io/team`). Returns its key and its `auth` value.
fn best_entry<'a>(
    auths: &'a serde_json::Map<String, serde_json::Value>,
    registry: &str,
    repository: &str,
) -> Option<(&'a str, &'a str)> {
    let repository = match repository.split_once('/') {
        Some((_, path)) => format!("{}/{path}", normalize_host(registry)),
        None => normalize_host(registry),
    };
    auths
        .iter()
        .filter_map(|(key, entry)| {
            let auth = entry
                .get("auth")?
                .as_str()
                .filter(|auth| !auth.is_empty())?;
            Some((key.as_str(), normalize_key(key), auth))
        })
        .filter(|(_, normalized, _)| {
            repository == *normalized || repository.starts_with(&format!("{normalized}/"))
        })
        .max_by_key(|(_, normalized, _)| normalized.len())
        .map(|(key, _, auth)| (key, auth))
}

/// Strips a key's scheme and Docker Hub's `/v1/` path: `https://index.docker.io/v1/` is
/// `docker.io`.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    match key.split_once('/') {
        Some((host, path)) => format!("{}/{path}", normalize_host(host)),
        None => normalize_host(key),
    }
}

/// Names Docker Hub one way: `index.docker.io` and `registry-1.docker.io` are `docker.io`.
fn normalize_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(user_password: &str) -> serde_json::Value {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
        serde_json::json!({ "auth": encoded })
    }

    fn username_for(file: &serde_json::Value, registry: &str, repository: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, file.to_string()).unwrap();
        find_in(&path, registry, repository)
            .unwrap()
            .map(|credentials| credentials.username)
    }

    #[test]
    fn docker_hub_keys_match_docker_io() {
        let file =
            serde_json::json!({ "auths": { "https://index.docker.io/v1/": auth("hub:pw") } });
        assert_eq!(
            username_for(&file, "docker.io", "docker.io/library/debian").as_deref(),
            Some("hub")
        );
        assert_eq!(username_for(&file, "quay.io", "quay.io/team/tool"), None);
    }

    #[test]
    fn namespace_entry_wins_over_registry_entry() {
        let file = serde_json::json!({ "auths": {
            "quay.io": auth("registry:pw"),
            "quay.io/team": auth("team:pw"),
            "http://127.0.0.1:5000": auth("local:pw"),
        }});
        assert_eq!(
            username_for(&file, "quay.io", "quay.io/team/tool").as_deref(),
            Some("team")
        );
        assert_eq!(
            username_for(&file, "quay.io", "quay.io/other/tool").as_deref(),
            Some("registry")
        );
        assert_eq!(
            username_for(&file, "quay.io", "quay.io/teamwork/tool").as_deref(),
            Some("registry")
        );
        assert_eq!(
            username_for(&file, "127.0.0.1:5000", "127.0.0.1:5000/x").as_deref(),
            Some("local")
        );
    }

    #[test]
    fn broken_entry_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths": {"quay.io": {"auth": "bm8tY29sb24="}}}"#).unwrap();
        let error = find_in(&path, "quay.io", "quay.io/x").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("\"quay.io\""), "{message}");
        assert!(message.contains(&format!("{path:?}")), "{message}");
    }

    #[test]
    fn login_files_in_search_order() {
        let env = |name: &str| match name {
            "REGISTRY_AUTH_FILE" => Some(OsString::from("/etc/airlock/auth.json")),
            "XDG_RUNTIME_DIR" => Some(OsString::from("/run/user/1000")),
            "HOME" => Some(OsString::from("/home/alice")),
            _ => None,
        };
        assert_eq!(
            login_files(&env, 1000),
            [
                PathBuf::from("/etc/airlock/auth.json"),
                PathBuf::from("/run/user/1000/containers/auth.json"),
                PathBuf::from("/home/alice/.docker/config.json"),
            ]
        );
        let none = |_: &str| None;
        assert_eq!(
            login_files(&none, 0),
            [PathBuf::from("/run/containers/0/auth.json")]
        );
    }
}
