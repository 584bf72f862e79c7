//! Command-line parsing: turns `airlock` arguments into an [`Action`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use airlock_core::size::{self, format_bytes};
use airlock_core::spec::{
    self, DEFAULT_MEMORY, DEFAULT_PIDS, DEFAULT_TMP_SIZE, MAX_PIDS, MIN_MEMORY, MIN_TMP_SIZE,
};
use airlock_core::specfile::{self, SpecFileError};
use airlock_core::{
    Action, BackendKind, BackendRequest, ImageAction, Limit, ProbeTargets, RiskLevel, RootFs, Spec,
    User, WorkspaceMode,
};
use clap::{Args, Parser, Subcommand};

/// Run an AI agent's commands in a sandbox whose isolation level is a choice.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, max_term_width = 100)]
pub struct Cli {
    /// Log more: -v for lifecycle events, -vv for debugging. AIRLOCK_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Directory holding the sandboxes' state [default: $AIRLOCK_STATE_DIR, else
    /// /var/lib/airlock for root and $XDG_STATE_HOME/airlock for others].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

// `defer` builds a subcommand's options only when that subcommand is the one given, which
// takes about 0.05 ms off every start.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Run one command in a fresh sandbox, stream its output, and exit with its status.
    ///
    /// Exit status: the command's own, or 128+N when a signal N killed it. Airlock's own
    /// statuses are 122 (process limit hit), 123 (memory limit hit), 124 (timed out), 125
    /// (Airlock failed), 126 (command not executable) and 127 (command not found). With the
    /// default overlay workspace, changes are kept for review when the command made any.
    Run(RunArgs),
    /// Create a sandbox that keeps running, and print its id.
    Create(CreateArgs),
    /// Run a command in a running sandbox, with the same streams and exit statuses as run.
    Exec(ExecArgs),
    /// List the sandboxes.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Stop a running sandbox: every process in it ends; its files stay.
    Stop(TargetArgs),
    /// Start a stopped sandbox again, with the same spec and workspace changes.
    Start(TargetArgs),
    /// Remove sandboxes and their workspace changes.
    Rm(RemoveArgs),
    /// Copy files between the host and a running sandbox: `cp ID:PATH HOST_PATH` or
    /// `cp HOST_PATH ID:PATH`. Relative paths in the sandbox are below /workspace.
    Cp(CopyArgs),
    /// Show the memory, CPU time and processes of a running sandbox.
    Stats(StatsArgs),
    /// List what the sandbox changed in its overlay workspace.
    Diff(DiffArgs),
    /// Copy the sandbox's workspace changes to the project on the host.
    Apply(ApplyArgs),
    /// Drop every workspace change of a sandbox.
    Discard(TargetArgs),
    /// Show or verify a sandbox's audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Remove what killed or interrupted commands left: half-created or half-removed
    /// sandboxes, and the processes and cgroups of sandboxes whose supervisor died.
    Gc(GcArgs),
    /// Show which backends this host can run, why not where it cannot, and the host
    /// features behind them. Takes a few seconds, to boot a test guest under QEMU.
    Doctor(DoctorArgs),
    /// Check a spec against the backends.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run containment probes in a sandbox of each available backend and print which
    /// escapes each backend stops.
    ///
    /// Each probe sets up a canary on the host (a process, a file, a variable, a loopback
    /// listener) and tries to reach it from inside the sandbox. The host then judges the
    /// result: contained, ESCAPED, or n/a when the probe does not apply. Exit status: 0 when
    /// the probes ran, whatever they found; 125 on invalid input or when no sandbox could be
    /// created.
    Probe(ProbeArgs),
    /// Manage the images of the container engine that the docker and vm backends run:
    /// import a root filesystem, pull from a registry, list, remove.
    ///
    /// The engine is the one at $DOCKER_HOST (a unix socket), else Docker's or Podman's
    /// default socket.
    #[command(subcommand)]
    Image(ImageCommand),
    /// One containment probe, run by `airlock probe` inside a sandbox; prints one JSON result.
    #[command(name = "__probe", hide = true)]
    ProbeInside(ProbeInsideArgs),
    /// The per-sandbox supervisor, started by create and start.
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
    /// The init of an nspawn sandbox, started by systemd-nspawn inside the container.
    #[command(name = "__nspawn-init", hide = true)]
    NspawnInit,
    /// The init of a docker sandbox, the container's entrypoint.
    #[command(name = "__docker-init", hide = true)]
    DockerInit(DockerChannelArgs),
    /// The wrapper that runs an exec's command in a docker sandbox.
    #[command(name = "__docker-exec", hide = true)]
    DockerExec(DockerChannelArgs),
    /// The helper that copies a tar stream into or out of a docker sandbox for `cp`.
    #[command(name = "__docker-cp", hide = true)]
    DockerCopy(DockerChannelArgs),
}

impl Command {
    /// Returns whether the command prints a JSON record, also when Airlock fails.
    pub fn wants_json(&self) -> bool {
        match self {
            Command::Run(args) => args.json,
            Command::Exec(args) => args.json,
            Command::Policy(PolicyCommand::Check(args)) => args.json,
            Command::Probe(args) => args.json,
            _ => false,
        }
    }
}

// Options that describe a sandbox, shared by run and create. A doc comment here would replace
// their subcommands' descriptions in the help, because the options are built after them.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// TOML file with any of these options (keys as the option names with `_` for `-`);
    /// options given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,

    /// Backend by name; `airlock doctor` lists those this host can run [default: namespace,
    /// or the one --risk picks].
    #[arg(long, value_name = "NAME")]
    pub backend: Option<BackendKind>,

    /// Use the lightest backend this host can run that meets this risk level. low: any
    /// backend, a chroot is enough. medium: a container or stronger. high: a virtual machine
    /// or stronger. critical: a cloud machine, or a virtual machine with the network off.
    /// With --backend, that backend must meet the level.
    #[arg(long, value_name = "LEVEL")]
    pub risk: Option<RiskLevel>,

    /// Root filesystem directory, such as a debootstrap tree [default: a read-only view of the
    /// host's /usr, /bin, /sbin, /lib*, /etc and /opt, with secrets hidden].
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,

    /// Image the sandbox runs, a local image of a Docker-compatible engine such as
    /// debian:bookworm (`airlock image import` or `airlock image pull` adds one); needs
    /// --backend docker, or vm, which builds its guest's root disk from the image.
    #[arg(long, value_name = "NAME", value_parser = spec::parse_image)]
    pub image: Option<String>,

    /// Project directory shown at /workspace, the working directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub workspace: PathBuf,

    /// How the workspace appears in the sandbox: overlay (copy-on-write: changes reach the host
    /// only through `airlock apply`), bind (writes go to the host at once), readonly, none.
    #[arg(long, value_name = "MODE", default_value = "overlay")]
    pub workspace_mode: WorkspaceMode,

    /// Set an environment variable inside the sandbox (repeatable). Host variables other than
    /// LANG and TERM are never passed.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, OsString)>,

    /// Memory limit for all processes together, /tmp included, such as 512M or 4G.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory,
          default_value_t = format_bytes(DEFAULT_MEMORY), hide_default_value = false)]
    pub memory: String,

    /// CPU limit in CPUs, such as 0.5 or 2 [default: all host CPUs].
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub cpus: Option<f64>,

    /// Maximum number of processes and threads at once, not counting Airlock's init.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PIDS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PIDS))]
    pub pids: u64,

    /// Size of the private /tmp (and of /dev/shm), such as 256M.
    #[arg(long, value_name = "SIZE", value_parser = parse_tmp_size,
          default_value_t = format_bytes(DEFAULT_TMP_SIZE))]
    pub tmp_size: String,

    /// Kill the command after this long, such as 30s, 10m or 1h [default: none]. For a
    /// created sandbox, the default of each exec.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Run even when a protection the spec requires cannot be enforced on this host; the
    /// weaker protections are logged and listed in the --json record.
    #[arg(long)]
    pub allow_weaker: bool,

    /// The user the command runs as inside: root, UID or UID:GID [default: the backend's; root
    /// inside its own user namespace for namespace, 65534 (nobody) for chroot, the workspace's
    /// owner for docker]. Under chroot, and docker without user namespace remapping, root is
    /// host root and needs --allow-weaker.
    #[arg(long, value_name = "USER")]
    pub user: Option<User>,

    /// Guest kernel for --backend vm, named vmlinuz-RELEASE with its modules in
    /// /lib/modules/RELEASE [default: the newest /boot/vmlinuz-*-cloud-amd64].
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// Run each command inside the machine of --backend vm in a sandbox of this backend too:
    /// namespace. Each layer enforces its own part of the spec.
    #[arg(long, value_name = "NAME")]
    pub inner: Option<airlock_core::InnerBackend>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,

    /// Give the command a new pseudo-terminal (never the caller's terminal).
    #[arg(short, long)]
    pub tty: bool,

    /// Print one JSON record on the last line of stderr when the sandbox ends: exit code,
    /// signal, duration, peak memory, why it ended and what was enforced.
    #[arg(long)]
    pub json: bool,

    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,

    /// A readable name, usable wherever an id is: letters, digits, `-`, `_` and `.`.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,

    /// Remove the sandbox this long after its creation, such as 2h [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// Print the new sandbox as a JSON object instead of its id alone.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox's id, a unique prefix of it, or its name.
    pub sandbox: String,

    /// Set an environment variable for this command (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, OsString)>,

    /// Give the command a new pseudo-terminal.
    #[arg(short, long)]
    pub tty: bool,

    /// Kill the command after this long [default: the sandbox's --timeout].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// The user this command runs as: root, UID or UID:GID [default: the sandbox's]. In a
    /// chroot sandbox, root is host root and needs a sandbox created with --allow-weaker.
    #[arg(long, value_name = "USER")]
    pub user: Option<User>,

    /// Print one JSON record on the last line of stderr when the command ends.
    #[arg(long)]
    pub json: bool,

    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The sandbox's id, a unique prefix of it, or its name.
    pub sandbox: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Stop the sandboxes first if they run.
    #[arg(short, long)]
    pub force: bool,

    /// Sandboxes by id, unique id prefix or name.
    #[arg(required = true, value_name = "SANDBOX")]
    pub sandboxes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The source: HOST_PATH or ID:PATH.
    pub source: String,
    /// The destination: ID:PATH or HOST_PATH.
    pub target: String,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The sandbox's id, a unique prefix of it, or its name.
    pub sandbox: String,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The sandbox's id, a unique prefix of it, or its name.
    pub sandbox: String,
    /// Print a unified diff of text files; binary files are named.
    #[arg(long, conflicts_with = "json")]
    pub patch: bool,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The sandbox's id, a unique prefix of it, or its name.
    pub sandbox: String,
    /// Apply only these workspace paths and what is below them. Changes to paths that run
    /// code on the host (.git, shell start-up files, CI and editor task files) are applied
    /// only when named here.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Apply even though the sandbox runs: its processes may have changed the files since
    /// you reviewed them. Without it, stop the sandbox first.
    #[arg(long)]
    pub running: bool,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the audit log, one readable line per entry.
    Show(TargetArgs),
    /// Check the hash chain of the audit log and name the first line that breaks it.
    Verify(TargetArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show, rule by rule, whether each backend would enforce a spec on this host.
    ///
    /// Exit status: 0 when the chosen backend (--backend, the spec file's backend, what
    /// --risk picks, or else the default) enforces every rule the spec requires, 1 when it
    /// does not or cannot run here, 125 for invalid input.
    Check(PolicyCheckArgs),
}

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,

    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,

    /// TOML spec file, as --spec takes [default: the default spec with the options given].
    #[arg(value_name = "SPEC", conflicts_with = "spec")]
    pub spec_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Probe only this backend, which must be available on this host.
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub backend: Option<BackendKind>,

    /// Probe every available backend, and list the unavailable ones with the reason.
    #[arg(long)]
    pub all: bool,

    /// Image the docker backend's probes run in, a local image of its engine such as
    /// debian:bookworm; the probes copy Airlock in, so the image needs no tools of its own.
    /// The vm backend's probes run in it too when --rootfs is not given. Without it, the
    /// docker backend is not probed.
    #[arg(long, value_name = "NAME", value_parser = spec::parse_image)]
    pub image: Option<String>,

    /// Root filesystem of the probes' sandboxes other than the docker backend's, a directory
    /// such as a debootstrap tree [default: the read-only host view].
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,

    /// Print the results as one JSON document.
    #[arg(long)]
    pub json: bool,

    /// Also run every probe on the host, outside any sandbox, as a control column in which
    /// each probe should report ESCAPED. For tests: the probes then mount, fork, allocate and
    /// write on the host itself, within the same small caps.
    #[arg(long, hide = true)]
    pub unconfined: bool,
}

impl ProbeArgs {
    pub fn into_action(self) -> Action {
        let targets = match (self.backend, self.all) {
            (Some(kind), _) => ProbeTargets::One(kind),
            (None, true) => ProbeTargets::All,
            (None, false) => ProbeTargets::Available,
        };
        Action::Probe {
            targets,
            image: self.image,
            rootfs: self.rootfs,
            unconfined: self.unconfined,
        }
    }
}

#[derive(Debug, Args)]
pub struct ProbeInsideArgs {
    /// The probe's name, as in the rows of `airlock probe`.
    pub name: String,
    /// The probe's arguments, which the host chose.
    #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    pub id: String,
}

#[derive(Debug, Args)]
pub struct DockerChannelArgs {
    /// The unix socket, inside the container, on which the host hands over the command or,
    /// for `__docker-cp`, the copy request.
    pub socket: PathBuf,
}

fn parse_env(value: &str) -> Result<(String, OsString), String> {
    spec::parse_env(value).map_err(|error| error.to_string())
}

fn parse_memory(value: &str) -> Result<String, String> {
    let bytes = size::parse_bytes("memory limit", value).map_err(|error| error.to_string())?;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "memory limit {value} is too small: the sandbox needs at least {}",
            format_bytes(MIN_MEMORY)
        ));
    }
    Ok(value.to_owned())
}

fn parse_tmp_size(value: &str) -> Result<String, String> {
    let bytes = size::parse_bytes("tmp size", value).map_err(|error| error.to_string())?;
    if bytes < MIN_TMP_SIZE {
        return Err(spec::tmp_size_too_small(value));
    }
    Ok(value.to_owned())
}

fn parse_cpus(value: &str) -> Result<f64, String> {
    size::parse_cpus("cpu limit", value).map_err(|error| error.to_string())
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    size::parse_duration("duration", value).map_err(|error| error.to_string())
}

fn parse_name(value: &str) -> Result<String, String> {
    airlock_core::specfile::validate_name(value)?;
    Ok(value.to_owned())
}

/// Returns whether the user gave `--NAME` on the command line rather than taking its default.
fn given(matches: &clap::ArgMatches, name: &str) -> bool {
    // `run` has no --name or --ttl, which a spec file may still give.
    matches.ids().any(|id| id.as_str() == name)
        && matches.value_source(name) == Some(clap::parser::ValueSource::CommandLine)
}

fn limit<T>(value: T, requested: bool) -> Limit<T> {
    if requested {
        Limit::requested(value)
    } else {
        Limit::default_value(value)
    }
}

impl SandboxArgs {
    /// Builds the spec of the sandbox and how its backend is picked. `matches` shows which
    /// options were given explicitly, because a limit the caller requested must be enforced
    /// in full and command-line options win over the spec file's. --backend and --risk are
    /// one choice: given either on the command line, the file's backend and risk are ignored.
    pub fn into_spec(
        self,
        command: Vec<OsString>,
        matches: &clap::ArgMatches,
    ) -> Result<(BackendRequest, Spec), SpecFileError> {
        let mut spec = Spec::new(command);
        spec.rootfs = self.rootfs.map_or(RootFs::HostView, RootFs::Directory);
        spec.image = self.image;
        spec.workspace = Some(self.workspace);
        spec.workspace_mode = self.workspace_mode;
        spec.env = self.env;
        let memory = size::parse_bytes("memory limit", &self.memory).unwrap_or(DEFAULT_MEMORY);
        spec.limits.memory = limit(memory, given(matches, "memory"));
        spec.limits.cpus = limit(self.cpus, self.cpus.is_some());
        spec.limits.pids = limit(self.pids, given(matches, "pids"));
        spec.limits.tmp_size =
            size::parse_bytes("tmp size", &self.tmp_size).unwrap_or(DEFAULT_TMP_SIZE);
        spec.limits.timeout = self.timeout;
        spec.allow_weaker = self.allow_weaker;
        if self.user.is_some() {
            spec.user = self.user;
        }
        spec.kernel = self.kernel;
        spec.inner = self.inner;
        let mut request = BackendRequest {
            backend: self.backend,
            risk: self.risk,
        };
        if let Some(path) = &self.spec {
            let file = specfile::load(path)?;
            file.apply(&mut spec, &|option| {
                given(matches, &option.replace('-', "_"))
            });
            if request == BackendRequest::default() {
                request = BackendRequest {
                    backend: file.backend.as_deref().and_then(|name| name.parse().ok()),
                    risk: file.risk,
                };
            }
        }
        Ok((request, spec))
    }
}

impl RunArgs {
    pub fn into_action(self, matches: &clap::ArgMatches) -> Result<Action, SpecFileError> {
        let (backend, mut spec) = self.sandbox.into_spec(self.command, matches)?;
        spec.tty = self.tty || spec.tty;
        Ok(Action::Run { backend, spec })
    }
}

impl CreateArgs {
    pub fn into_action(self, matches: &clap::ArgMatches) -> Result<Action, SpecFileError> {
        let spec_path = self.sandbox.spec.clone();
        let (backend, mut spec) = self.sandbox.into_spec(Vec::new(), matches)?;
        if self.name.is_some() {
            spec.name = self.name;
        }
        if self.ttl.is_some() {
            spec.ttl = self.ttl;
        }
        if !spec.command.is_empty() {
            return Err(SpecFileError::CommandForCreate {
                path: spec_path.unwrap_or_default(),
            });
        }
        // Each `exec -t` gets its own terminal, and the sandbox itself has none.
        spec.tty = false;
        Ok(Action::Create { backend, spec })
    }
}

impl PolicyCheckArgs {
    pub fn into_action(mut self, matches: &clap::ArgMatches) -> Result<Action, SpecFileError> {
        if self.spec_file.is_some() {
            self.sandbox.spec = self.spec_file.take();
        }
        let (backend, spec) = self.sandbox.into_spec(Vec::new(), matches)?;
        Ok(Action::PolicyCheck { backend, spec })
    }
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a root filesystem as an image: a directory, such as a debootstrap tree, or a
    /// tarball (plain, gzip, zstd or xz). Owners, modes, symlinks, hard links, device nodes
    /// and extended attributes are kept. Symlinks are stored as links and never followed.
    /// Prints the image id.
    Import(ImageImportArgs),
    /// Pull an image from a registry, such as debian:bookworm or 127.0.0.1:5000/tools:1,
    /// and print its id. Progress goes to stderr.
    Pull(ImagePullArgs),
    /// List the engine's images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Remove images by name or id.
    Rm(ImageRemoveArgs),
}

#[derive(Debug, Args)]
pub struct ImageImportArgs {
    /// The root filesystem: a directory, or a tarball of one.
    #[arg(value_name = "DIR|TARBALL")]
    pub source: PathBuf,
    /// The image's name, NAME[:TAG] with lowercase path components [default tag: latest].
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ImagePullArgs {
    /// The image: [HOST[:PORT]/]NAME[:TAG][@DIGEST] [default tag: latest].
    #[arg(value_name = "REF")]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct ImageRemoveArgs {
    /// Remove an image even when a container uses it, and every tag of an image given by id.
    #[arg(short, long)]
    pub force: bool,
    /// Images by name (NAME[:TAG]) or id.
    #[arg(required = true, value_name = "IMAGE", value_parser = spec::parse_image)]
    pub names: Vec<String>,
}

impl ImageCommand {
    /// Returns the action and whether its result is printed as JSON.
    pub fn into_action(self) -> (Action, bool) {
        let (action, json) = match self {
            ImageCommand::Import(args) => (
                ImageAction::Import {
                    source: args.source,
                    name: args.name,
                },
                false,
            ),
            ImageCommand::Pull(args) => (
                ImageAction::Pull {
                    reference: args.reference,
                },
                false,
            ),
            ImageCommand::Ls(args) => (ImageAction::List, args.json),
            ImageCommand::Rm(args) => (
                ImageAction::Remove {
                    names: args.names,
                    force: args.force,
                },
                false,
            ),
        };
        (Action::Image(action), json)
    }
}
