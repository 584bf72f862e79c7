//! The sandboxes that a containment test runs against. They are the namespace backend as each
//! caller in [`CALLERS`], and the docker backend on each engine that scripts/test starts, run
//! by root. One test body runs against every target, so the backends meet the same checks.

use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::docker::{engines, image, Engine};
use super::harness::{
    self, binary, shell_quote, state_dir, test_user, Caller, Delegation, Workspace, CALLERS,
};

/// One backend, with the caller or engine it runs under.
pub enum Target {
    Namespace(Caller),
    /// The docker backend on one engine, run by root. The workspaces that [`Target::workspace`]
    /// makes for it belong to the test user, as a project usually does, so its commands run
    /// as that user's uid.
    Docker(Engine),
}

impl fmt::Debug for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Namespace(caller) => write!(formatter, "namespace as {caller:?}"),
            Target::Docker(engine) => write!(formatter, "docker on {}", engine.name),
        }
    }
}

/// Returns every target. Fails, naming scripts/test, where the engines' sockets are not set.
pub fn targets() -> Vec<Target> {
    let namespace = CALLERS.into_iter().map(Target::Namespace);
    let docker = engines().into_iter().map(Target::Docker);
    namespace.chain(docker).collect()
}

/// Returns the targets in which root runs Airlock: the namespace backend as root, and the
/// docker backend on each engine.
pub fn root_targets() -> Vec<Target> {
    let docker = engines().into_iter().map(Target::Docker);
    std::iter::once(Target::Namespace(Caller::Root))
        .chain(docker)
        .collect()
}

impl Target {
    /// Returns the host user that has the uid of the sandbox's commands, which a test runs
    /// a probe as on the host, to show that the probe works without the sandbox.
    pub fn host_caller(&self) -> Caller {
        match self {
            Target::Namespace(caller) => *caller,
            Target::Docker(_) => Caller::User,
        }
    }

    /// Returns a fresh workspace: owned by the caller, or for docker by the test user.
    pub fn workspace(&self) -> Workspace {
        Workspace::new(self.host_caller())
    }

    /// Returns the options of `airlock run` that select this target's backend.
    fn backend_args(&self) -> Vec<String> {
        match self {
            Target::Namespace(_) => Vec::new(),
            Target::Docker(_) => vec![
                "--backend".to_owned(),
                "docker".to_owned(),
                "--image".to_owned(),
                image(),
            ],
        }
    }

    /// Builds `airlock run BACKEND-OPTIONS ARGS` in `cwd`, run directly as the caller with
    /// no input. An unprivileged caller gets no delegated cgroup this way.
    pub fn command(&self, args: &[&str], cwd: &Path) -> Command {
        let mut command = Command::new(binary());
        command
            .arg("run")
            .args(self.backend_args())
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null());
        match self {
            Target::Namespace(caller) => {
                command.env("AIRLOCK_STATE_DIR", state_dir(*caller));
                if *caller != Caller::Root {
                    let (uid, gid) = test_user();
                    command.uid(uid).gid(gid);
                }
            }
            Target::Docker(engine) => {
                command
                    .env("AIRLOCK_STATE_DIR", state_dir(Caller::Root))
                    .env("DOCKER_HOST", &engine.host);
            }
        }
        command
    }

    /// Runs `airlock run BACKEND-OPTIONS ARGS` in `cwd` and collects its output. The test
    /// user runs inside its delegated cgroups, as [`harness::run`] sets them up.
    pub fn run(&self, args: &[&str], cwd: &Path) -> Output {
        match self {
            Target::Namespace(caller) => {
                let mut argv = vec!["run"];
                argv.extend_from_slice(args);
                harness::run(*caller, &argv, cwd)
            }
            Target::Docker(_) => self.command(args, cwd).output().expect("run airlock"),
        }
    }

    /// Builds a shell script that runs `airlock run BACKEND-OPTIONS ARGS`, to which a test
    /// can append redirections. The delegation guard must outlive the script.
    pub fn shell_command(&self, args: &[&str]) -> (String, Option<Delegation>) {
        let mut argv = vec!["run".to_owned()];
        argv.extend(self.backend_args());
        argv.extend(args.iter().map(|arg| arg.to_string()));
        match self {
            Target::Namespace(caller) => harness::airlock_shell_command(*caller, &[], &argv),
            Target::Docker(engine) => {
                let (script, delegation) = harness::airlock_shell_command(Caller::Root, &[], &argv);
                let host = shell_quote(&engine.host);
                (format!("export DOCKER_HOST={host}; {script}"), delegation)
            }
        }
    }

    /// Runs `sh -c SCRIPT` in a sandbox with a fresh workspace.
    pub fn sh(&self, script: &str) -> Output {
        let workspace = self.workspace();
        self.run(&["--", "sh", "-c", script], workspace.path())
    }
}
