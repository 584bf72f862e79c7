//! The systemd-nspawn command line for one sandbox, computed as plain data so that it can be
//! tested without starting a container.

use std::ffi::OsString;
use std::path::Path;

use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_core::WorkspaceMode;

/// Directory inside the container that holds Airlock's own entries.
pub const AIRLOCK_DIR: &str = "/.airlock";
/// The Airlock binary inside the container, which runs as the container's init.
pub const INIT_PATH: &str = "/.airlock/airlock";
/// The hidden subcommand that makes the binary the container's init.
pub const INIT_SUBCOMMAND: &str = "__nspawn-init";
/// The workspace inside the container, read-only, as the lower layer of the overlay.
pub const OVERLAY_LOWER: &str = "/.airlock/lower";
/// The directory holding the overlay's `upper` and `work` directories inside the container.
pub const OVERLAY_LAYERS: &str = "/.airlock/layers";

/// The inputs of one systemd-nspawn invocation. Its paths are in the launcher's private mount
/// namespace.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub machine: &'a str,
    /// The assembled root directory.
    pub root: &'a Path,
    /// The staged workspace, for every mode but `none`.
    pub workspace: Option<&'a Path>,
    /// The staged layers directory, for an overlay workspace.
    pub layers: Option<&'a Path>,
    pub mode: WorkspaceMode,
    pub user_namespaces: bool,
    pub tty: bool,
    /// Size of the container's /tmp, in bytes.
    pub tmp_size: u64,
    /// RLIMIT_NPROC for every process, where no pids cgroup limits the sandbox.
    pub nproc: Option<u64>,
}

/// Builds the arguments after the binary's name.
///
/// - `--register=no --keep-unit`: no systemd-machined and no transient scope, which both
///   need systemd as PID 1.
/// - `--private-users=pick --private-users-ownership=off`: a user namespace with a UID range
///   of its own, without touching the owners of the files in the root, which are the
///   host's own read-only files. The workspace is bound with `rootidmap`, so root inside
///   reads and writes it as the workspace's owner on the host, as the namespace backend's
///   root inside does.
/// - `--read-only`, `--private-network` (only `lo`), `--no-new-privileges=yes`.
/// - `--link-journal=no --resolv-conf=off --timezone=off`: nspawn touches no file of the
///   root and prints nothing about the journal.
/// - `--system-call-filter=` adds the Landlock calls to nspawn's seccomp allow-list, which
///   lacks them in systemd 252, so that the command can confine itself with Landlock.
pub fn arguments(invocation: &Invocation<'_>) -> Vec<OsString> {
    let mut arguments: Vec<OsString> = [
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--read-only",
        "--private-network",
        "--no-new-privileges=yes",
        "--link-journal=no",
        "--resolv-conf=off",
        "--timezone=off",
        "--rlimit=RLIMIT_CORE=0",
        "--system-call-filter=landlock_create_ruleset landlock_add_rule landlock_restrict_self",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let mut push = |argument: String| arguments.push(argument.into());
    push(format!("--machine={}", invocation.machine));
    push(format!("--directory={}", invocation.root.display()));
    if invocation.user_namespaces {
        push("--private-users=pick".into());
        push("--private-users-ownership=off".into());
    } else {
        push("--private-users=no".into());
    }
    let console = if invocation.tty {
        "interactive"
    } else {
        "pipe"
    };
    push(format!("--console={console}"));
    push(format!(
        "--tmpfs=/tmp:mode=1777,size={}",
        invocation.tmp_size
    ));
    if let Some(nproc) = invocation.nproc {
        push(format!("--rlimit=RLIMIT_NPROC={nproc}"));
    }
    push_workspace(&mut arguments, invocation);
    arguments.push(format!("--chdir={SANDBOX_WORKSPACE}").into());
    arguments.push("--".into());
    arguments.push(INIT_PATH.into());
    arguments.push(INIT_SUBCOMMAND.into());
    arguments
}

/// Adds the workspace's bind mounts. An overlay is mounted by the init inside the container,
/// because overlayfs accepts ID-mapped layers but cannot be ID-mapped itself.
fn push_workspace(arguments: &mut Vec<OsString>, invocation: &Invocation<'_>) {
    let Some(workspace) = invocation.workspace else {
        return;
    };
    // NOTE: systemd 252 maps groups with the owner's UID as the GID, so new files of a
    // workspace whose owner's UID and GID differ get the group whose GID is that UID.
    let options = if invocation.user_namespaces {
        "rootidmap,norbind"
    } else {
        "norbind"
    };
    let bind = |kind: &str, source: &Path, target: &str| -> OsString {
        format!("--{kind}={}:{target}:{options}", escape(source)).into()
    };
    match (invocation.mode, invocation.layers) {
        (WorkspaceMode::Overlay, Some(layers)) => {
            arguments.push(bind("bind-ro", workspace, OVERLAY_LOWER));
            arguments.push(bind("bind", layers, OVERLAY_LAYERS));
        }
        (WorkspaceMode::Readonly, _) => {
            arguments.push(bind("bind-ro", workspace, SANDBOX_WORKSPACE));
        }
        (WorkspaceMode::Bind, _) | (WorkspaceMode::Overlay, None) => {
            arguments.push(bind("bind", workspace, SANDBOX_WORKSPACE));
        }
        (WorkspaceMode::None, _) => {}
    }
}

/// Escapes a path for a `--bind=` argument, where `:` separates fields and `\` escapes.
fn escape(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(mode: WorkspaceMode) -> Invocation<'static> {
        Invocation {
            machine: "airlock-0123456789ab",
            root: Path::new("/run/airlock/nspawn/x/root"),
            workspace: Some(Path::new("/run/airlock/nspawn/x/workspace")),
            layers: Some(Path::new("/run/airlock/nspawn/x/layers")),
            mode,
            user_namespaces: true,
            tty: false,
            tmp_size: 1 << 20,
            nproc: None,
        }
    }

    fn strings(arguments: Vec<OsString>) -> Vec<String> {
        arguments
            .into_iter()
            .map(|argument| argument.into_string().unwrap())
            .collect()
    }

    #[test]
    fn overlay_binds_lower_read_only_and_layers() {
        let arguments = strings(arguments(&invocation(WorkspaceMode::Overlay)));
        assert!(arguments.contains(
            &"--bind-ro=/run/airlock/nspawn/x/workspace:/.airlock/lower:rootidmap,norbind".into()
        ));
        assert!(arguments.contains(
            &"--bind=/run/airlock/nspawn/x/layers:/.airlock/layers:rootidmap,norbind".into()
        ));
        assert!(!arguments.iter().any(|a| a.contains(":/workspace:")));
    }

    #[test]
    fn each_mode_binds_the_workspace_as_asked() {
        let readonly = strings(arguments(&invocation(WorkspaceMode::Readonly)));
        assert!(readonly.contains(
            &"--bind-ro=/run/airlock/nspawn/x/workspace:/workspace:rootidmap,norbind".into()
        ));
        let bind = strings(arguments(&invocation(WorkspaceMode::Bind)));
        assert!(bind.contains(
            &"--bind=/run/airlock/nspawn/x/workspace:/workspace:rootidmap,norbind".into()
        ));
        let none = strings(arguments(&invocation(WorkspaceMode::None)));
        assert!(!none.iter().any(|a| a.starts_with("--bind")));
    }

    #[test]
    fn isolation_options_always_present_and_init_last() {
        let arguments = strings(arguments(&invocation(WorkspaceMode::None)));
        for required in [
            "--register=no",
            "--keep-unit",
            "--read-only",
            "--private-network",
            "--private-users=pick",
            "--private-users-ownership=off",
            "--no-new-privileges=yes",
            "--console=pipe",
        ] {
            assert!(arguments.contains(&required.into()), "{required} missing");
        }
        assert_eq!(
            arguments[arguments.len() - 3..],
            ["--", INIT_PATH, INIT_SUBCOMMAND]
        );
    }

    #[test]
    fn bind_paths_escape_colons() {
        assert_eq!(escape(Path::new("/a:b\\c")), "/a\\:b\\\\c");
    }
}
