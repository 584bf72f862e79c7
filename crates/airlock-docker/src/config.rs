//! The container and volume a spec maps to, as the engine's API takes them. Building them is
//! pure, so the mapping is tested without an engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_core::{SandboxId, Spec, User};
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountTmpfsOptions, MountType,
    MountVolumeOptions, ResourcesUlimits, VolumeCreateRequest,
};

use crate::error::Error;

/// Directory in the container that holds the Airlock binary and the run directory.
pub const AIRLOCK_DIR: &str = "/.airlock";
/// The Airlock binary in the container, bound read-only from the host.
pub const BINARY: &str = "/.airlock/airlock";
/// The host's run directory in the container, bound read-only: the sockets on which the
/// host hands commands over.
pub const RUN_DIR: &str = "/.airlock/run";
/// The socket the container's init connects to, in the run directory.
pub const INIT_SOCKET: &str = "init.sock";

/// Label that names the sandbox a container or volume belongs to.
pub const LABEL_SANDBOX: &str = "airlock.sandbox";
/// Label that names the state directory of the sandbox's owner.
pub const LABEL_STATE_DIR: &str = "airlock.state-dir";

/// The user a sandbox's commands run as when the spec names none and the workspace belongs
/// to root or there is none: nobody.
pub const NOBODY: User = User {
    uid: 65534,
    gid: 65534,
};

/// The mount at /workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceMount {
    /// The engine's overlay volume of this name.
    Overlay { volume: String },
    /// The project itself, read-write or read-only.
    Bind { path: PathBuf, read_only: bool },
    /// An empty, read-only directory.
    Empty,
}

/// Everything the container is made of besides the spec.
#[derive(Debug, Clone)]
pub struct Layout<'a> {
    pub id: &'a SandboxId,
    pub image: &'a str,
    pub user: User,
    /// The running Airlock binary on the host.
    pub binary: &'a Path,
    /// The host directory that becomes [`RUN_DIR`].
    pub run_dir: &'a Path,
    pub workspace: WorkspaceMount,
    pub labels: HashMap<String, String>,
    pub rlimits: Rlimits,
}

/// The soft and hard rlimits of the container's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    pub open_files: (u64, u64),
    pub processes: (u64, u64),
}

/// Returns the user a sandbox's commands run as: the spec's, else the owner of the
/// workspace when that is not root (with group 65534 instead of root's group), else nobody.
pub fn sandbox_user(spec: &Spec, workspace_owner: Option<(u32, u32)>) -> User {
    if let Some(user) = spec.user {
        return user;
    }
    match workspace_owner {
        Some((uid, gid)) if uid != 0 => User {
            uid,
            gid: if gid == 0 { NOBODY.gid } else { gid },
        },
        _ => NOBODY,
    }
}

/// Returns the name of sandbox `id`'s container.
pub fn container_name(id: &SandboxId) -> String {
    format!("airlock-{id}")
}

/// Returns the name of sandbox `id`'s overlay volume.
pub fn volume_name(id: &SandboxId) -> String {
    format!("airlock-{id}-workspace")
}

/// Returns the labels of sandbox `id`'s container and volume.
pub fn labels(id: &SandboxId, state_dir: Option<&Path>) -> HashMap<String, String> {
    let mut labels = HashMap::from([(LABEL_SANDBOX.to_owned(), id.to_string())]);
    if let Some(state_dir) = state_dir {
        labels.insert(LABEL_STATE_DIR.to_owned(), state_dir.display().to_string());
    }
    labels
}

/// Builds the container of `spec`: its init is the Airlock binary, bound read-only, which
/// connects to the host through the run directory and starts the command as `layout.user`.
pub fn container(spec: &Spec, layout: &Layout<'_>) -> ContainerCreateBody {
    let init_socket = Path::new(RUN_DIR).join(INIT_SOCKET);
    ContainerCreateBody {
        image: Some(layout.image.to_owned()),
        entrypoint: Some(vec![BINARY.to_owned()]),
        cmd: Some(vec![
            crate::inside::INIT_MODE.to_owned(),
            init_socket.display().to_string(),
        ]),
        user: Some(format!("{}:{}", layout.user.uid, layout.user.gid)),
        working_dir: Some(SANDBOX_WORKSPACE.to_owned()),
        hostname: Some(format!("airlock-{}", layout.id.short())),
        labels: Some(layout.labels.clone()),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config(spec, layout)),
        ..ContainerCreateBody::default()
    }
}

fn host_config(spec: &Spec, layout: &Layout<'_>) -> HostConfig {
    let limits = &spec.limits;
    let memory = i64::try_from(limits.memory.value).unwrap_or(i64::MAX);
    let tmp_size = i64::try_from(limits.tmp_size).unwrap_or(i64::MAX);
    let tmp_options = format!("rw,nosuid,nodev,size={},mode=1777", limits.tmp_size);
    HostConfig {
        memory: Some(memory),
        // Equal to the memory limit, so the sandbox gets no swap.
        memory_swap: Some(memory),
        nano_cpus: limits.cpus.value.map(|cpus| (cpus * 1e9).round() as i64),
        // The init is not counted against --pids, as with the other backends.
        pids_limit: Some(i64::try_from(limits.pids.value + 1).unwrap_or(i64::MAX)),
        ulimits: Some(ulimits(layout.rlimits)),
        network_mode: Some("none".to_owned()),
        ipc_mode: Some("private".to_owned()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        tmpfs: Some(HashMap::from([("/tmp".to_owned(), tmp_options)])),
        shm_size: Some(tmp_size),
        mounts: Some(mounts(layout)),
        init: Some(false),
        auto_remove: Some(false),
        ..HostConfig::default()
    }
}

/// Sets the container's rlimits explicitly, as the other backends set their commands':
/// without them Podman raises open files and processes to the kernel's maximum, which fails
/// where the engine itself may not raise its limits (no CAP_SYS_RESOURCE). Core dumps are
/// off, as for the other backends' commands.
fn ulimits(rlimits: Rlimits) -> Vec<ResourcesUlimits> {
    let value = |limit: u64| i64::try_from(limit).unwrap_or(-1);
    let ulimit = |name: &str, (soft, hard): (u64, u64)| ResourcesUlimits {
        name: Some(name.to_owned()),
        soft: Some(value(soft)),
        hard: Some(value(hard)),
    };
    vec![
        ulimit("core", (0, 0)),
        ulimit("nofile", rlimits.open_files),
        ulimit("nproc", rlimits.processes),
    ]
}

fn mounts(layout: &Layout<'_>) -> Vec<Mount> {
    let bind = |source: &Path, target: &str| Mount {
        typ: Some(MountType::BIND),
        source: Some(source.display().to_string()),
        target: Some(target.to_owned()),
        read_only: Some(true),
        ..Mount::default()
    };
    vec![
        bind(layout.binary, BINARY),
        bind(layout.run_dir, RUN_DIR),
        workspace_mount(&layout.workspace),
    ]
}

fn workspace_mount(workspace: &WorkspaceMount) -> Mount {
    let target = Some(SANDBOX_WORKSPACE.to_owned());
    match workspace {
        WorkspaceMount::Overlay { volume } => Mount {
            typ: Some(MountType::VOLUME),
            source: Some(volume.clone()),
            target,
            // The engine would otherwise copy what the image has at /workspace into the
            // upper layer, where it would show as the sandbox's own change.
            volume_options: Some(MountVolumeOptions {
                no_copy: Some(true),
                ..MountVolumeOptions::default()
            }),
            ..Mount::default()
        },
        WorkspaceMount::Bind { path, read_only } => Mount {
            typ: Some(MountType::BIND),
            source: Some(path.display().to_string()),
            target,
            read_only: Some(*read_only),
            // Mounts below the project stay out, as with the other backends.
            bind_options: Some(MountBindOptions {
                non_recursive: Some(true),
                ..MountBindOptions::default()
            }),
            ..Mount::default()
        },
        WorkspaceMount::Empty => Mount {
            typ: Some(MountType::TMPFS),
            target,
            read_only: Some(true),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: Some(4096),
                mode: Some(0o555),
                ..MountTmpfsOptions::default()
            }),
            ..Mount::default()
        },
    }
}

/// Builds the overlay volume of the workspace: the engine's `local` driver mounts an overlay
/// of `lower` with the upper and work directories in `layers`, with the options the workspace
/// crate's diff expects (`userxattr`, so no redirect_dir and no metacopy).
pub fn overlay_volume(
    name: &str,
    lower: &Path,
    layers: &Path,
    labels: &HashMap<String, String>,
) -> Result<VolumeCreateRequest, Error> {
    for path in [lower, layers] {
        check_option_path(path)?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr,nosuid,nodev",
        lower.display(),
        layers.join("upper").display(),
        layers.join("work").display()
    );
    Ok(VolumeCreateRequest {
        name: Some(name.to_owned()),
        driver: Some("local".to_owned()),
        driver_opts: Some(HashMap::from([
            ("type".to_owned(), "overlay".to_owned()),
            ("device".to_owned(), "overlay".to_owned()),
            ("o".to_owned(), options),
        ])),
        labels: Some(labels.clone()),
        ..VolumeCreateRequest::default()
    })
}

/// Rejects a path that the overlay's option string cannot carry: `,` separates options, `:`
/// separates lower directories, and `\` escapes either.
fn check_option_path(path: &Path) -> Result<(), Error> {
    let text = path.to_string_lossy();
    match text
        .chars()
        .find(|c| matches!(c, ',' | ':' | '\\') || c.is_control())
    {
        Some(character) => Err(Error::WorkspacePath {
            path: path.to_owned(),
            character,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::Limit;

    fn id() -> SandboxId {
        SandboxId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn layout(id: &SandboxId, workspace: WorkspaceMount) -> Layout<'_> {
        Layout {
            id,
            image: "debian:bookworm",
            user: NOBODY,
            binary: Path::new("/usr/local/bin/airlock"),
            run_dir: Path::new("/var/lib/airlock/sandboxes/x/docker"),
            workspace,
            labels: labels(id, Some(Path::new("/var/lib/airlock"))),
            rlimits: Rlimits {
                open_files: (1024, 4096),
                processes: (4000, 8000),
            },
        }
    }

    #[test]
    fn container_confines_the_command() {
        let id = id();
        let mut spec = Spec::new(vec!["true".into()]);
        spec.limits.memory = Limit::requested(256 << 20);
        spec.limits.cpus = Limit::requested(Some(0.5));
        spec.limits.pids = Limit::requested(64);
        spec.limits.tmp_size = 32 << 20;
        let body = container(&spec, &layout(&id, WorkspaceMount::Empty));
        let host = body.host_config.expect("host config");
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_swap, host.memory, "no swap");
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(65));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.shm_size, Some(32 << 20));
        let tmp = &host.tmpfs.expect("tmpfs")["/tmp"];
        assert!(tmp.contains(&format!("size={}", 32 << 20)), "{tmp}");
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        assert_eq!(body.hostname.as_deref(), Some("airlock-0123456789ab"));
        assert_eq!(body.entrypoint, Some(vec![BINARY.to_owned()]));
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_SANDBOX], id.to_string());
        assert_eq!(labels[LABEL_STATE_DIR], "/var/lib/airlock");
    }

    #[test]
    fn rlimits_are_explicit() {
        let id = id();
        let spec = Spec::new(vec!["true".into()]);
        let body = container(&spec, &layout(&id, WorkspaceMount::Empty));
        let ulimits = body.host_config.unwrap().ulimits.unwrap();
        let find = |name: &str| {
            let ulimit = ulimits
                .iter()
                .find(|u| u.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no {name} ulimit"));
            (ulimit.soft.unwrap(), ulimit.hard.unwrap())
        };
        assert_eq!(find("core"), (0, 0));
        assert_eq!(find("nofile"), (1024, 4096));
        assert_eq!(find("nproc"), (4000, 8000));
    }

    #[test]
    fn workspace_modes_map_to_mounts() {
        let id = id();
        let bind = workspace_mount(&WorkspaceMount::Bind {
            path: "/srv/project".into(),
            read_only: true,
        });
        assert_eq!(bind.typ, Some(MountType::BIND));
        assert_eq!(bind.read_only, Some(true));
        assert_eq!(bind.target.as_deref(), Some(SANDBOX_WORKSPACE));
        let overlay = workspace_mount(&WorkspaceMount::Overlay {
            volume: volume_name(&id),
        });
        assert_eq!(overlay.typ, Some(MountType::VOLUME));
        assert_eq!(
            overlay.source.as_deref(),
            Some("airlock-0123456789abcdef0123456789abcdef-workspace")
        );
        let empty = workspace_mount(&WorkspaceMount::Empty);
        assert_eq!(empty.typ, Some(MountType::TMPFS));
        assert_eq!(empty.read_only, Some(true));
    }

    #[test]
    fn overlay_volume_names_layers_and_rejects_separators() {
        let labels = HashMap::new();
        let volume = overlay_volume(
            "v",
            Path::new("/srv/project"),
            Path::new("/state/layers"),
            &labels,
        )
        .unwrap();
        let options = volume.driver_opts.unwrap();
        assert_eq!(options["type"], "overlay");
        assert_eq!(
            options["o"],
            "lowerdir=/srv/project,upperdir=/state/layers/upper,workdir=/state/layers/work,userxattr,nosuid,nodev"
        );
        for bad in ["/srv/a,b", "/srv/a:b"] {
            let error = overlay_volume("v", Path::new(bad), Path::new("/s"), &labels);
            assert!(matches!(error, Err(Error::WorkspacePath { .. })), "{bad}");
        }
    }

    #[test]
    fn default_user_is_the_workspace_owner_unless_root() {
        let spec = Spec::new(vec!["true".into()]);
        assert_eq!(
            sandbox_user(&spec, Some((1000, 1000))),
            User {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            sandbox_user(&spec, Some((1000, 0))),
            User {
                uid: 1000,
                gid: 65534
            }
        );
        assert_eq!(sandbox_user(&spec, Some((0, 0))), NOBODY);
        assert_eq!(sandbox_user(&spec, None), NOBODY);
        let mut spec = spec;
        spec.user = Some(User::ROOT);
        assert_eq!(sandbox_user(&spec, Some((1000, 1000))), User::ROOT);
    }
}
