//! Command-line parsing: turns `airlock` arguments into an [`Action`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use airlock_core::size::{self, format_bytes};
use airlock_core::spec::{
    self, DEFAULT_MEMORY, DEFAULT_PIDS, DEFAULT_TMP_SIZE, MAX_PIDS, MIN_MEMORY,
};
use airlock_core::{Action, BackendKind, Limit, RootFs, Spec};
use clap::{Args, Parser, Subcommand};

/// Run an AI agent's commands in a sandbox whose isolation level is a choice.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, max_term_width = 100)]
pub struct Cli {
    /// Log more: -v for lifecycle events, -vv for debugging. AIRLOCK_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one command in a fresh sandbox, stream its output, and exit with its status.
    ///
    /// Exit status: the command's own, or 128+N when a signal N killed it. Airlock's own
    /// statuses are 122 (process limit hit), 123 (memory limit hit), 124 (timed out), 125
    /// (Airlock failed), 126 (command not executable) and 127 (command not found).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Isolation level.
    #[arg(long, value_name = "NAME", default_value = "namespace")]
    pub backend: BackendKind,

    /// Root filesystem directory, such as a debootstrap tree [default: a read-only view of the
    /// host's /usr, /bin, /sbin, /lib*, /etc and /opt, with secrets hidden].
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,

    /// Directory mounted read-write at /workspace, the working directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub workspace: PathBuf,

    /// Set an environment variable inside the sandbox (repeatable). Host variables other than
    /// LANG and TERM are never passed.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, OsString)>,

    /// Memory limit for all processes together, /tmp included, such as 512M or 4G.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory,
          default_value_t = format_bytes(DEFAULT_MEMORY), hide_default_value = false)]
    pub memory: String,

    /// CPU limit in CPUs, such as 0.5 or 2 [default: all host CPUs].
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<f64>,

    /// Maximum number of processes and threads of the command at once, not counting
    /// Airlock's init.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PIDS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PIDS))]
    pub pids: u64,

    /// Size of the private /tmp (and of /dev/shm), such as 256M.
    #[arg(long, value_name = "SIZE", value_parser = parse_tmp_size,
          default_value_t = format_bytes(DEFAULT_TMP_SIZE))]
    pub tmp_size: String,

    /// Kill the whole sandbox after this long, such as 30s, 10m or 1h [default: none].
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Give the command a new pseudo-terminal (never the caller's terminal).
    #[arg(short, long)]
    pub tty: bool,

    /// Print one JSON record on the last line of stderr when the sandbox ends: exit code,
    /// signal, duration, peak memory, why it ended and what was enforced.
    #[arg(long)]
    pub json: bool,

    /// Run even when a protection the spec requires cannot be enforced on this host; the
    /// weaker protections are logged and listed in the --json record.
    #[arg(long)]
    pub allow_weaker: bool,

    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
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
    size::parse_bytes("tmp size", value).map_err(|error| error.to_string())?;
    Ok(value.to_owned())
}

fn parse_cpus(value: &str) -> Result<f64, String> {
    size::parse_cpus("cpu limit", value).map_err(|error| error.to_string())
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    size::parse_duration("timeout", value).map_err(|error| error.to_string())
}

/// Returns whether the user gave `--NAME` on the command line rather than taking its default.
fn given(matches: &clap::ArgMatches, name: &str) -> bool {
    matches.value_source(name) == Some(clap::parser::ValueSource::CommandLine)
}

fn limit<T>(value: T, requested: bool) -> Limit<T> {
    if requested {
        Limit::requested(value)
    } else {
        Limit::default_value(value)
    }
}

impl RunArgs {
    /// Builds the action. `matches` shows which limits were given explicitly, because a limit
    /// the caller requested must be enforced in full.
    pub fn into_action(self, matches: &clap::ArgMatches) -> Action {
        let mut spec = Spec::new(self.command);
        spec.rootfs = self.rootfs.map_or(RootFs::HostView, RootFs::Directory);
        spec.workspace = Some(self.workspace);
        spec.env = self.env;
        let memory = size::parse_bytes("memory limit", &self.memory).unwrap_or(DEFAULT_MEMORY);
        spec.limits.memory = limit(memory, given(matches, "memory"));
        spec.limits.cpus = limit(self.cpus, self.cpus.is_some());
        spec.limits.pids = limit(self.pids, given(matches, "pids"));
        spec.limits.tmp_size =
            size::parse_bytes("tmp size", &self.tmp_size).unwrap_or(DEFAULT_TMP_SIZE);
        spec.limits.timeout = self.timeout;
        spec.tty = self.tty;
        spec.allow_weaker = self.allow_weaker;
        Action::Run {
            backend: self.backend,
            spec,
        }
    }
}
