//! The engine's objects and the host directory of one sandbox, removed together: the container, the workspace's
//! overlay volume and the run directory. Every failure path of creation, and the end of
//! every sandbox, goes through [`Resources`]'s drop.

use std::path::{Path, PathBuf};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptions,
};
use futures_util::StreamExt;

use crate::config::{LABEL_SANDBOX, LABEL_STATE_DIR};
use crate::engine::Engine;
use crate::error::is_not_found;

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

/// Removes every container and volume that carries sandbox `id`'s label, and nothing else.
pub fn remove_labeled(engine: &Engine, id: &str) {
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_SANDBOX}={id}")],
    )]);
    let containers = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    match engine.block_on(engine.docker().list_containers(Some(containers))) {
        Ok(listed) => {
            for container in listed.into_iter().filter_map(|summary| summary.id) {
                remove_container(engine, &container);
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
/// the engine. Returns the ids of those sandboxes. An engine that does not reply has
/// nothing to remove.
pub fn remove_orphans(state_dir: &Path, is_known: &dyn Fn(&str) -> bool) -> Vec<String> {
    let Ok(engine) = Engine::connect() else {
        return Vec::new();
    };
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("{LABEL_STATE_DIR}={}", state_dir.display())],
    )]);
    let orphan = |labels: Option<&std::collections::HashMap<String, String>>| {
        let id = labels?.get(LABEL_SANDBOX)?;
        (!is_known(id)).then(|| id.clone())
    };

    let mut removed = Vec::new();
    let containers = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let listed = engine.block_on(engine.docker().list_containers(Some(containers)));
    for summary in listed.unwrap_or_default() {
        if let (Some(id), Some(container)) = (orphan(summary.labels.as_ref()), &summary.id) {
            remove_container(&engine, container);
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
            remove_volume(&engine, &volume.name);
            removed.push(id);
        }
    }
    removed.sort();
    removed.dedup();
    removed
}
