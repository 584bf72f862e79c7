//! The engine's objects and the host directory of one sandbox, removed together: the
//! container, the workspace's overlay volume and the run directory. Every failure path of
//! creation, and the end of every sandbox, goes through [`Resources`]'s drop.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use bollard::query_parameters::{
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions,
};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::config::{LABEL_SANDBOX, LABEL_STATE_DIR};
use crate::engine::Engine;
use crate::error::is_not_found;
use crate::transport::percent_encode;

/// The engine's objects and the host directory of one sandbox.
pub struct Resources {
    pub engine: Engine,
    /// The container's id, once created.
    pub container: Option<String>,
    /// The overlay volume's name, once created.
    pub volume: Option<String>,
    /// The run directory, once created.
    pub run_dir: Option<PathBuf>,
}

impl Resources {
    pub fn new(engine: Engine) -> Resources {
        Resources {
            engine,
            container: None,
            volume: None,
            run_dir: None,
        }
    }

    /// Returns the last lines the container wrote to its log: the message of an init that
    /// failed before it reached the host.
    pub fn logs(&self) -> String {
        let Some(container) = &self.container else {
            return String::new();
        };
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let docker = self.engine.docker();
        let lines = self.engine.block_on(async {
            let mut stream = docker.logs(container, Some(options));
            let mut text = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                text.push_str(&chunk.to_string());
            }
            text
        });
        lines.lines().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            remove_container(&self.engine, &container);
        }
        if let Some(volume) = self.volume.take() {
            remove_volume(&self.engine, &volume);
        }
        if let Some(run_dir) = self.run_dir.take() {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
}

/// How many times removal of a container is tried. Podman refuses to remove a container
/// whose init exited a moment ago until it has noted the exit ("container state improper").
const REMOVE_ATTEMPTS: u32 = 40;

/// Removes `container`, killing its processes first; a container already gone is fine.
pub fn remove_container(engine: &Engine, container: &str) {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    for attempt in 1..=REMOVE_ATTEMPTS {
        let removed = engine.block_on(
            engine
                .docker()
                .remove_container(container, Some(options.clone())),
        );
        match removed {
            Ok(()) => {
                tracing::info!(container, "container removed");
                return;
            }
            Err(error) if is_not_found(&error) => return,
            Err(error) if attempt == REMOVE_ATTEMPTS => {
                tracing::warn!(container, %error, "cannot remove the container");
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Removes `volume`; a volume already gone is fine.
pub fn remove_volume(engine: &Engine, volume: &str) {
    let removed = engine.block_on(
        engine
            .docker()
            .remove_volume(volume, None::<RemoveVolumeOptions>),
    );
    match removed {
        Ok(()) => tracing::info!(volume, "volume removed"),
        Err(error) if is_not_found(&error) => {}
        Err(error) => tracing::warn!(volume, %error, "cannot remove the volume"),
    }
}

/// A container as the engine lists it, with only the fields this backend reads. bollard's
/// own summary rejects a state it does not know, such as Podman 4.3's `stopped`, which a
/// container shows for a moment after its process exited.
#[derive(Debug, Deserialize)]
pub(crate) struct Listed {
    #[serde(rename = "Id")]
    pub(crate) id: String,
    #[serde(rename = "Labels", default)]
    pub(crate) labels: Option<HashMap<String, String>>,
}

/// Lists every container, running or not, that matches `filters`.
pub(crate) fn list_containers(
    engine: &Engine,
    filters: &HashMap<String, Vec<String>>,
) -> Result<Vec<Listed>, bollard::errors::Error> {
    let filters = serde_json::to_string(filters)?;
    let path = format!(
        "/containers/json?all=true&filters={}",
        percent_encode(&filters)
    );
    engine.block_on(engine.transport().get_json(&path))
}

/// Removes every container and volume that carries sandbox `id`'s label, and nothing else.
pub fn remove_labeled(engine: &Engine, id: &str) {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_SANDBOX}={id}")])]);
    match list_containers(engine, &filters) {
        Ok(listed) => {
            for container in listed {
                remove_container(engine, &container.id);
            }
        }
        Err(error) => tracing::warn!(sandbox = id, %error, "cannot list the sandbox's containers"),
    }
    let volumes = ListVolumesOptionsBuilder::new().filters(&filters).build();
    match engine.block_on(engine.docker().list_volumes(Some(volumes))) {
        Ok(listed) => {
            for volume in listed.volumes.unwrap_or_default() {
                remove_volume(engine, &volume.name);
            }
        }
        Err(error) => tracing::warn!(sandbox = id, %error, "cannot list the sandbox's volumes"),
    }
}

/// Removes the containers and volumes labeled with `state_dir` whose sandbox `is_known`
/// rejects: those whose sandbox's record is gone, as after a run whose end could not reach
/// the engine. It searches the engine that DOCKER_HOST or the default sockets name, and the
/// engines at `sockets`, which the state directory's sandboxes were created on. Returns the
/// ids of those sandboxes. An engine that does not reply has nothing to remove.
///
/// NOTE: an orphan on an engine that neither DOCKER_HOST nor a remaining sandbox names stays
/// until `gc` runs with DOCKER_HOST naming that engine.
pub fn remove_orphans(
    state_dir: &Path,
    sockets: &[PathBuf],
    is_known: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut searched: Vec<PathBuf> = Vec::new();
    let mut removed = Vec::new();
    let engines = std::iter::once(Engine::connect())
        .chain(sockets.iter().map(|socket| Engine::connect_to(socket)));
    for engine in engines.flatten() {
        let socket = std::fs::canonicalize(engine.socket()).unwrap_or(engine.socket().into());
        if searched.contains(&socket) {
            continue;
        }
        searched.push(socket);
        removed.extend(remove_orphans_on(&engine, state_dir, is_known));
    }
    removed.sort();
    removed.dedup();
    removed
}

/// Removes the orphans of `state_dir` from `engine`, as [`remove_orphans`] does, and returns
/// the ids of their sandboxes.
fn remove_orphans_on(
    engine: &Engine,
    state_dir: &Path,
    is_known: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_STATE_DIR}={}", state_dir.display())],
    )]);
    let orphan = |labels: Option<&HashMap<String, String>>| {
        let id = labels?.get(LABEL_SANDBOX)?;
        (!is_known(id)).then(|| id.clone())
    };

    let mut removed = Vec::new();
    let listed = list_containers(engine, &filters);
    if let Err(error) = &listed {
        tracing::warn!(%error, "cannot list the containers of this state directory");
    }
    for container in listed.unwrap_or_default() {
        if let Some(id) = orphan(container.labels.as_ref()) {
            remove_container(engine, &container.id);
            removed.push(id);
        }
    }

    let volumes = ListVolumesOptionsBuilder::new().filters(&filters).build();
    let listed = engine.block_on(engine.docker().list_volumes(Some(volumes)));
    for volume in listed
        .ok()
        .and_then(|listed| listed.volumes)
        .unwrap_or_default()
    {
        if let Some(id) = orphan(Some(&volume.labels)) {
            remove_volume(engine, &volume.name);
            removed.push(id);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_reads_containers_in_states_bollard_lacks() {
        let answer = r#"[{"Id":"c1","Names":["/airlock-x"],"State":"stopped","Status":"Exited (0)","Labels":{"airlock.sandbox":"x"}},{"Id":"c2","State":"running","Labels":null}]"#;
        let listed: Vec<Listed> = serde_json::from_str(answer).unwrap();
        assert_eq!(listed[0].id, "c1");
        let labels = listed[0].labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SANDBOX], "x");
        assert_eq!(listed[1].id, "c2");
        assert!(listed[1].labels.is_none());
    }
}
