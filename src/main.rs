//! The `airlock` command line.

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use airlock_core::exit::AIRLOCK_FAILED;
use airlock_core::{Action, Backend, BackendKind, ExecFailure, Finished, RunOptions};
use airlock_namespace::{error_chain, NamespaceBackend};
use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(error) => return usage_error(error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    init_logging(cli.verbose);
    let (json, action) = match cli.command {
        Command::Run(args) => {
            let run_matches = matches
                .subcommand_matches("run")
                .expect("the run subcommand matched");
            (args.json, args.into_action(run_matches))
        }
    };
    match execute(action, json) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let message = error_chain(error.as_ref());
            eprintln!("airlock: {message}");
            if json {
                let record = serde_json::json!({ "reason": "airlock_failed", "error": message });
                eprintln!("{record}");
            }
            ExitCode::from(AIRLOCK_FAILED)
        }
    }
}

/// Prints a command-line error as one line with a pointer to the help, and returns 125. Help
/// and version requests print in full and succeed; `airlock` alone prints the help and fails.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            return ExitCode::from(AIRLOCK_FAILED);
        }
        _ => {}
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let stray_command = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => !arg.starts_with('-'),
        _ => false,
    };
    let tip = if stray_command {
        "; put the command after `--`, as in `airlock run -- COMMAND`".to_owned()
    } else {
        rendered
            .lines()
            .find_map(|line| line.trim().strip_prefix("tip: "))
            .map(|tip| format!("; {tip}"))
            .unwrap_or_default()
    };
    eprintln!("airlock: {message}{tip}; run `airlock run --help` for the options");
    ExitCode::from(AIRLOCK_FAILED)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn backend(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::Namespace => Box::new(NamespaceBackend),
    }
}

fn execute(action: Action, json: bool) -> Result<u8, airlock_core::BackendError> {
    match action {
        Action::Run {
            backend: kind,
            mut spec,
        } => {
            spec.validate()?;
            let options = RunOptions {
                track_stderr_line: json,
            };
            let finished = backend(kind).run(&spec, options)?;
            Ok(report(&finished, json))
        }
    }
}

/// Prints what the caller should know after the command's own output; returns the exit
/// status.
fn report(finished: &Finished, json: bool) -> u8 {
    let outcome = &finished.outcome;
    let mut stderr = std::io::stderr().lock();
    let mut line_open = !finished.stderr_ends_line;
    let mut say = |text: String| {
        let separator = if line_open { "\n" } else { "" };
        let _ = writeln!(stderr, "{separator}airlock: {text}");
        line_open = false;
    };
    match &outcome.exec_failure {
        Some(ExecFailure::NotFound { command }) => say(format!(
            "command not found in the sandbox: {command:?}; check the name, or install it under /usr or /opt on the host"
        )),
        Some(ExecFailure::NotExecutable { command, error }) => {
            say(format!("cannot execute {command:?} in the sandbox: {error}"))
        }
        None => {}
    }
    if let Some(message) = outcome.reason.message() {
        say(message.to_owned());
    }
    if json {
        let record = serde_json::to_string(outcome).expect("outcomes always serialize");
        let separator = if line_open { "\n" } else { "" };
        let _ = writeln!(stderr, "{separator}{record}");
    }
    outcome.exit_status()
}
