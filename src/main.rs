//! The `airlock` command line.

/// musl's allocator hands small blocks back to the kernel eagerly: about 140 mmap and munmap
/// calls, with their TLB flushes, per start of a sandbox. dlmalloc keeps freed memory.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

mod changes;
mod cli;
mod doctor;
mod image;
mod lifecycle;
mod policy;
mod probe;
mod selection;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_core::audit;
use airlock_core::exit::AIRLOCK_FAILED;
use airlock_core::{
    Action, BackendError, BackendKind, BackendRequest, EndReason, ExecCommand, ExecFailure,
    Finished, RootFs, Spec,
};
use airlock_namespace::error_chain;
use clap::{CommandFactory, FromArgMatches};

use cli::{AuditCommand, Cli, Command, PolicyCommand};
use lifecycle::Engine;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == airlock_vm::agent::AGENT_ARGUMENT)
    {
        let Err(error) = airlock_vm::agent::run();
        eprintln!("airlock: {error}");
        return ExitCode::from(AIRLOCK_FAILED);
    }
    if let Some(code) = refuse_setuid() {
        return code;
    }
    if let Some(code) = start_internal_mode() {
        return code;
    }
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(error) => return usage_error(error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    init_logging(cli.verbose);
    let json = cli.command.wants_json();
    match execute(cli, &matches) {
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

/// Starts the modes that Airlock starts itself without the parser and the logger: the vm
/// backend's file share, and the inits and helpers of containers when called in the form
/// that Airlock uses. The parser took about 0.15 ms of an nspawn sandbox's start. Returns
/// the file share's exit status, and `None` for a command line that the parser takes.
fn start_internal_mode() -> Option<ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let [mode, share_args @ ..] = args.as_slice() {
        if mode == airlock_vm::share::SHARE_ARGUMENT {
            let Err(error) = airlock_vm::share::serve(share_args);
            eprintln!("airlock: {}", error_chain(&error));
            return Some(ExitCode::from(AIRLOCK_FAILED));
        }
    }
    // An option such as --help goes to the parser, which prints the mode's help.
    let is_option = |arg: &std::ffi::OsString| arg.as_encoded_bytes().starts_with(b"-");
    if args.iter().any(is_option) {
        return None;
    }
    match args.as_slice() {
        [mode] if mode == airlock_nspawn::command::INIT_SUBCOMMAND => airlock_nspawn::init::run(),
        [mode, socket] if mode == airlock_docker::inside::INIT_MODE => {
            airlock_docker::inside::init(Path::new(socket))
        }
        [mode, socket] if mode == airlock_docker::inside::EXEC_MODE => {
            airlock_docker::inside::exec(Path::new(socket))
        }
        [mode, socket] if mode == airlock_docker::inside::COPY_MODE => {
            airlock_docker::inside::copy(Path::new(socket))
        }
        _ => None,
    }
}

/// Refuses to run with setuid or setgid privileges, except for the one use that
/// `airlock probe` makes of a setuid copy: reporting the privileges it runs with. Returns
/// the exit status when it refused or reported, and `None` for an ordinary start.
fn refuse_setuid() -> Option<ExitCode> {
    // SAFETY: these calls take no arguments and cannot fail.
    let elevated =
        unsafe { libc::getuid() != libc::geteuid() || libc::getgid() != libc::getegid() };
    if !elevated {
        return None;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args == ["__probe", probe::PRIVILEGES_HELPER] {
        return Some(ExitCode::from(probe::inside::run(
            probe::PRIVILEGES_HELPER,
            &[],
        )));
    }
    eprintln!("airlock: refusing to run with setuid or setgid privileges: install Airlock without the setuid bit, and run it as root or as an ordinary user");
    Some(ExitCode::from(AIRLOCK_FAILED))
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
    // clap quotes a value as it is, so a newline in it would cut the one-line message below.
    if let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) {
        if value.chars().any(char::is_control) {
            let option = match error.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(option)) => option.clone(),
                _ => "an option".to_owned(),
            };
            let reason = std::error::Error::source(&error)
                .map(|source| format!(": {source}"))
                .unwrap_or_default();
            eprintln!(
                "airlock: invalid value {value:?} for '{option}'{reason}; run `airlock --help` for the commands"
            );
            return ExitCode::from(AIRLOCK_FAILED);
        }
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // clap lists missing arguments on the lines after "...were not provided:".
    let message = if first.ends_with(':') {
        let listed: Vec<&str> = rendered
            .lines()
            .skip(1)
            .map(str::trim)
            .take_while(|line| !line.is_empty())
            .collect();
        format!("{first} {}", listed.join(", "))
    } else {
        first.to_owned()
    };
    // Only the subcommands that take a command after `--` show it in their usage line.
    let takes_command = rendered.contains("<COMMAND>");
    let stray_command = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => takes_command && !arg.starts_with('-'),
        _ => false,
    };
    // clap reads a value such as -5M as an unknown option and suggests `-- -5M`, which would
    // make it the command.
    let negative_value = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg
            .strip_prefix('-')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())),
        _ => false,
    };
    let tip = if stray_command {
        "; put the command after `--`, as in `airlock run -- COMMAND`".to_owned()
    } else if negative_value {
        "; it reads as a negative value, which no option takes".to_owned()
    } else {
        rendered
            .lines()
            .find_map(|line| line.trim().strip_prefix("tip: "))
            .map(|tip| format!("; {tip}"))
            .unwrap_or_default()
    };
    eprintln!("airlock: {message}{tip}; run `airlock --help` for the commands");
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

type Result<T> = std::result::Result<T, BackendError>;

/// Exit status of `audit verify` for a log that fails the check, unlike 125, which means
/// that Airlock itself failed.
const AUDIT_BROKEN: u8 = 1;

/// An action and how its result is printed.
struct Request {
    action: Action,
    json: bool,
}

/// Turns a parsed subcommand into the action it requests. The HTTP API and the MCP server
/// build the same actions from their requests.
fn request(command: Command, matches: &clap::ArgMatches) -> Result<Request> {
    let sub = |name: &str| {
        matches
            .subcommand_matches(name)
            .expect("the subcommand matched")
    };
    let (action, json) = match command {
        Command::Run(args) => {
            let json = args.json;
            (args.into_action(sub("run"))?, json)
        }
        Command::Create(args) => {
            let json = args.json;
            (args.into_action(sub("create"))?, json)
        }
        Command::Exec(args) => {
            let command = ExecCommand {
                argv: args.command,
                env: args.env,
                tty: args.tty,
                timeout: args.timeout,
                user: args.user,
            };
            let sandbox = args.sandbox;
            (Action::Exec { sandbox, command }, args.json)
        }
        Command::Ls(args) => (Action::List, args.json),
        Command::Stop(args) => (
            Action::Stop {
                sandbox: args.sandbox,
            },
            false,
        ),
        Command::Start(args) => (
            Action::Start {
                sandbox: args.sandbox,
            },
            false,
        ),
        Command::Rm(args) => {
            let (sandboxes, force) = (args.sandboxes, args.force);
            (Action::Remove { sandboxes, force }, false)
        }
        Command::Cp(args) => {
            let (sandbox, source, target, into_sandbox) = copy_operands(&args)?;
            let action = Action::Copy {
                sandbox,
                source,
                target,
                into_sandbox,
            };
            (action, false)
        }
        Command::Stats(args) => (
            Action::Stats {
                sandbox: args.sandbox,
            },
            args.json,
        ),
        Command::Diff(args) => {
            let (sandbox, patch) = (args.sandbox, args.patch);
            (Action::Diff { sandbox, patch }, args.json)
        }
        Command::Apply(args) => {
            let (sandbox, paths, running) = (args.sandbox, args.paths, args.running);
            let action = Action::Apply {
                sandbox,
                paths,
                running,
            };
            (action, args.json)
        }
        Command::Discard(args) => (
            Action::Discard {
                sandbox: args.sandbox,
            },
            false,
        ),
        Command::Audit(AuditCommand::Show(args)) => (
            Action::AuditShow {
                sandbox: args.sandbox,
            },
            false,
        ),
        Command::Audit(AuditCommand::Verify(args)) => (
            Action::AuditVerify {
                sandbox: args.sandbox,
            },
            false,
        ),
        Command::Gc(args) => (Action::Gc, args.json),
        Command::Doctor(args) => (Action::Doctor, args.json),
        Command::Policy(PolicyCommand::Check(args)) => {
            let json = args.json;
            let matches = sub("policy")
                .subcommand_matches("check")
                .expect("the subcommand matched");
            (args.into_action(matches)?, json)
        }
        Command::Probe(args) => {
            let json = args.json;
            (args.into_action(), json)
        }
        Command::Image(command) => command.into_action(),
        Command::Supervise(_)
        | Command::NspawnInit
        | Command::DockerInit(_)
        | Command::DockerExec(_)
        | Command::DockerCopy(_) => {
            unreachable!("the supervisor and the containers' inits are not actions")
        }
        Command::ProbeInside(_) => unreachable!("a probe inside a sandbox is not an action"),
    };
    Ok(Request { action, json })
}

/// Parses the command line, carries out its action, and prints the result; returns the
/// exit status.
fn execute(cli: Cli, matches: &clap::ArgMatches) -> Result<u8> {
    let state_dir = cli.state_dir.as_deref();
    match &cli.command {
        Command::NspawnInit => airlock_nspawn::init::run(),
        Command::DockerInit(args) => airlock_docker::inside::init(&args.socket),
        Command::DockerExec(args) => airlock_docker::inside::exec(&args.socket),
        Command::DockerCopy(args) => airlock_docker::inside::copy(&args.socket),
        _ => {}
    }
    if let Command::Supervise(args) = &cli.command {
        // The process that started this supervisor, whose exit before the handshake ends it.
        let parent = std::env::var(lifecycle::SUPERVISOR_PARENT_VARIABLE)
            .ok()
            .and_then(|pid| pid.parse().ok())
            .unwrap_or(0);
        lifecycle::supervise(state_dir, &args.id, parent)?;
        return Ok(0);
    }
    if let Command::ProbeInside(args) = &cli.command {
        // Inside a sandbox: no state directory, no logging, one JSON line.
        return Ok(probe::inside::run(&args.name, &args.args));
    }
    let Request { action, json } = request(cli.command, matches)?;
    if !matches!(
        action,
        Action::Run { .. } | Action::Exec { .. } | Action::Copy { .. }
    ) {
        // A listing piped into `head` ends quietly when the reader goes, as other tools
        // do. run and exec keep ignoring SIGPIPE: their relays drop output that no reader takes.
        // cp keeps ignoring it too: its data pipe breaks when the side in the sandbox fails,
        // and the copy then reports that side's error.
        // SAFETY: setting a signal's disposition to the default touches no memory.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match action {
        Action::Doctor => Ok(report_doctor(json)?),
        Action::Image(action) => image::perform(action, json),
        Action::PolicyCheck { backend, spec } => check_policy(backend, spec, json),
        action => {
            let engine = Engine::new(state_dir)?;
            perform(&engine, action, json)
        }
    }
}

/// Exit status of `policy check` when the chosen backend would not enforce every rule the
/// spec requires.
const POLICY_UNMET: u8 = 1;

fn report_doctor(json: bool) -> serde_json::Result<u8> {
    let report = doctor::examine();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        doctor::print(&report);
    }
    Ok(0)
}

/// Prints what each backend would enforce for `spec`; returns 0 when the chosen backend
/// enforces every required rule.
fn check_policy(request: BackendRequest, mut spec: Spec, json: bool) -> Result<u8> {
    spec.validate_sandbox()?;
    let check = policy::check(request, &spec);
    if json {
        println!("{}", serde_json::to_string_pretty(&check.to_json())?);
    } else {
        check.print();
    }
    Ok(if check.is_met() { 0 } else { POLICY_UNMET })
}

/// Picks the backend for a new sandbox, and prints on stderr why when a risk level picked it.
fn select_backend(request: BackendRequest, spec: &Spec) -> Result<selection::Selected> {
    let selected = selection::select(request, spec)?;
    if let Some(explanation) = &selected.explanation {
        eprintln!("airlock: {explanation}");
    }
    Ok(selected)
}

/// Carries out `action` and prints its result; returns the exit status.
fn perform(engine: &Engine, action: Action, json: bool) -> Result<u8> {
    match action {
        Action::Run { backend, spec } => {
            let selected = select_backend(backend, &spec)?;
            warn_about(selected.kind, &spec);
            let advice = install_advice(&spec);
            let result = engine.run(&selected, spec, json)?;
            let kept_sandbox = Some(result.kept.as_deref());
            let code = report(
                &result.finished,
                json,
                EndReason::message,
                &advice,
                kept_sandbox,
            );
            if let Some(cleanup) = result.cleanup {
                cleanup.finish(code)?;
            }
            Ok(code)
        }
        Action::Create { backend, spec } => {
            let selected = select_backend(backend, &spec)?;
            warn_about(selected.kind, &spec);
            let record = engine.create(&selected, spec)?;
            if json {
                let value = serde_json::json!({ "id": record.id, "name": record.name });
                println!("{value}");
            } else {
                println!("{}", record.id);
            }
            Ok(0)
        }
        Action::Exec { sandbox, command } => {
            let finished = engine.exec(&sandbox, command, json)?;
            let advice = "install it in the sandbox's root file system";
            Ok(report(
                &finished,
                json,
                EndReason::exec_message,
                advice,
                None,
            ))
        }
        Action::List => {
            let listed = engine.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print_list(&listed);
            }
            Ok(0)
        }
        Action::Stop { sandbox } => {
            let record = engine.stop(&sandbox)?;
            eprintln!("airlock: stopped {}", record.id);
            Ok(0)
        }
        Action::Start { sandbox } => {
            let record = engine.start(&sandbox)?;
            eprintln!("airlock: started {}", record.id);
            Ok(0)
        }
        Action::Remove { sandboxes, force } => {
            let mut failed = false;
            for sandbox in &sandboxes {
                match engine.remove(sandbox, force) {
                    Ok(id) => eprintln!("airlock: removed {id}"),
                    Err(error) => {
                        eprintln!("airlock: {}", error_chain(error.as_ref()));
                        failed = true;
                    }
                }
            }
            Ok(if failed { AIRLOCK_FAILED } else { 0 })
        }
        Action::Copy {
            sandbox,
            source,
            target,
            into_sandbox,
        } => {
            engine.copy(&sandbox, &source, &target, into_sandbox)?;
            Ok(0)
        }
        Action::Stats { sandbox } => {
            let (id, stats) = engine.stats(&sandbox)?;
            if json {
                let mut value = serde_json::to_value(stats)?;
                value["id"] = id.into();
                println!("{value}");
            } else {
                let memory = stats.memory.map_or_else(
                    || "unknown".to_owned(),
                    airlock_core::size::format_bytes_short,
                );
                println!(
                    "{id}  memory {memory}  cpu {:.2}s  processes {}",
                    stats.cpu_seconds, stats.processes
                );
            }
            Ok(0)
        }
        Action::Diff { sandbox, patch } => {
            let (layers, changes, running) = changes::diff(engine, &sandbox)?;
            if running {
                eprintln!(
                    "airlock: the sandbox is running, so its processes can still change these files; stop it before you apply them"
                );
            }
            if json {
                let list: Vec<_> = changes.iter().map(changes::change_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if patch {
                let stdout = std::io::stdout();
                if stdout.is_terminal() {
                    let mut out = EscapeControls::new(stdout.lock());
                    airlock_workspace::patch(&layers.lower, &layers.upper, &changes, &mut out)?;
                    out.flush()?;
                } else {
                    let mut out = stdout.lock();
                    airlock_workspace::patch(&layers.lower, &layers.upper, &changes, &mut out)?;
                }
            } else {
                print_changes(&changes);
            }
            Ok(0)
        }
        Action::Apply {
            sandbox,
            paths,
            running,
        } => {
            let (id, report) = changes::apply(engine, &sandbox, paths, running)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&changes::report_json(&report))?
                );
            } else {
                print_apply(&id, &report);
            }
            let unmatched = report
                .skipped
                .iter()
                .any(|skipped| matches!(skipped.reason, airlock_workspace::SkipReason::NoChange));
            let incomplete = !report.conflicts.is_empty() || !report.failed.is_empty() || unmatched;
            Ok(if incomplete { 1 } else { 0 })
        }
        Action::Discard { sandbox } => {
            let (id, restarted) = changes::discard(engine, &sandbox)?;
            let note = if restarted {
                " (the sandbox was stopped and started again)"
            } else {
                ""
            };
            eprintln!("airlock: discarded the workspace changes of {id}{note}");
            Ok(0)
        }
        Action::AuditShow { sandbox } => {
            let (_, path) = engine.audit_path(&sandbox)?;
            for entry in audit::read(&path)? {
                println!("{}", audit::render(&entry));
            }
            Ok(0)
        }
        Action::AuditVerify { sandbox } => {
            let (id, path) = engine.audit_path(&sandbox)?;
            let verified = match audit::verify(&path) {
                Ok(verified) => verified,
                Err(error @ audit::AuditError::BrokenChain { .. }) => {
                    eprintln!("airlock: {}", error_chain(&error));
                    return Ok(AUDIT_BROKEN);
                }
                Err(error) => return Err(error.into()),
            };
            if verified.lines == 0 {
                eprintln!("airlock: audit log {path:?} of {id} is empty: every sandbox's log starts with its creation, so it was truncated");
                return Ok(AUDIT_BROKEN);
            }
            if let Some(entry) = audit::read(&path)?.iter().find(|entry| entry.sandbox != id) {
                eprintln!(
                    "airlock: audit log {path:?} of {id} holds entry {} of sandbox {}: the log was replaced",
                    entry.seq, entry.sandbox
                );
                return Ok(AUDIT_BROKEN);
            }
            println!(
                "audit log of {id} is intact: {} lines, head hash {}",
                verified.lines, verified.head
            );
            Ok(0)
        }
        Action::Gc => {
            let collected = engine.gc()?;
            let incomplete = collected
                .iter()
                .any(|item| item.action.starts_with("not collected"));
            if json {
                println!("{}", serde_json::to_string_pretty(&collected)?);
            } else if collected.is_empty() {
                eprintln!("airlock: nothing to collect");
            } else {
                for item in &collected {
                    eprintln!("airlock: {}: {}", item.id, item.action);
                }
            }
            Ok(if incomplete { 1 } else { 0 })
        }
        Action::Doctor | Action::PolicyCheck { .. } | Action::Image(_) => {
            unreachable!("execute handles these without a state directory")
        }
        Action::Probe {
            targets,
            image,
            rootfs,
            unconfined,
        } => {
            let sources = probe::Sources {
                image: image.as_deref(),
                rootfs: rootfs.as_deref(),
            };
            print_probes(engine, targets, sources, unconfined, json)
        }
    }
}

/// Prints the warning of a backend whose isolation callers must not overestimate, unless the
/// backend cannot run here, which the action then reports.
fn warn_about(kind: BackendKind, spec: &Spec) {
    let backend = lifecycle::backend(kind);
    // A spec the backend rejects gets its error alone.
    if backend.availability().is_err() || lifecycle::check_image(kind, spec).is_err() {
        return;
    }
    if let Some(warning) = backend.warning() {
        eprintln!("airlock: warning: {warning}");
    }
    // The rules --allow-weaker accepted; the audit log records them with the sandbox.
    if spec.allow_weaker {
        for protection in backend.assess(spec).unmet() {
            eprintln!("airlock: warning: running with weaker isolation than the spec requires: {protection}");
        }
    }
}

/// Runs the containment probes and prints the matrix; returns 0 when any backend was
/// probed, 128+N when signal N interrupted the run.
fn print_probes(
    engine: &Engine,
    targets: airlock_core::ProbeTargets,
    sources: probe::Sources<'_>,
    unconfined: bool,
    json: bool,
) -> Result<u8> {
    let matrix = match probe::run(engine, targets, sources, unconfined) {
        Ok(matrix) => matrix,
        Err(error @ probe::ProbeError::Interrupted(probe::Interrupted(signal))) => {
            eprintln!("airlock: {}", error_chain(&error));
            return Ok(128u8.saturating_add(signal as u8));
        }
        Err(error) => return Err(error.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&matrix.to_json())?);
    } else {
        print!("{}", matrix.render());
    }
    if matrix.probed_any_backend() {
        return Ok(0);
    }
    let selected_any = matrix
        .columns
        .iter()
        .any(|column| column.backend != probe::UNCONFINED);
    if !selected_any {
        eprintln!("airlock: no backend is available on this host; `airlock probe --all` lists the reasons");
    } else {
        eprintln!("airlock: no sandbox for the probes could be set up; the output lists why");
    }
    Ok(AIRLOCK_FAILED)
}

/// Splits the operands of `cp` into the sandbox, the source, the target and the direction.
fn copy_operands(args: &cli::CopyArgs) -> Result<(String, PathBuf, PathBuf, bool)> {
    let split = |operand: &str| -> Option<(String, PathBuf)> {
        let (sandbox, path) = operand.split_once(':')?;
        if sandbox.is_empty() || sandbox.contains('/') || path.is_empty() {
            return None;
        }
        let path = Path::new(path);
        let inside = if path.is_absolute() {
            path.to_owned()
        } else {
            Path::new(airlock_core::spec::SANDBOX_WORKSPACE).join(path)
        };
        Some((sandbox.to_owned(), inside))
    };
    match (split(&args.source), split(&args.target)) {
        (Some((sandbox, source)), None) => Ok((sandbox, source, args.target.clone().into(), false)),
        (None, Some((sandbox, target))) => Ok((sandbox, args.source.clone().into(), target, true)),
        _ => Err(format!(
            "cp needs exactly one operand of the form ID:PATH with a non-empty PATH, got {:?} and {:?}; for example `airlock cp ID:/workspace/out.txt .`",
            args.source, args.target
        )
        .into()),
    }
}

fn print_list(listed: &[lifecycle::Listed]) {
    let rows: Vec<[String; 8]> = listed
        .iter()
        .map(|sandbox| {
            let short = sandbox.id.get(..12).unwrap_or(&sandbox.id);
            let created = sandbox.created.get(..19).unwrap_or(&sandbox.created);
            let expires = sandbox
                .expires
                .as_deref()
                .map_or("-", |expires| expires.get(..19).unwrap_or(expires));
            let workspace = sandbox
                .workspace
                .as_ref()
                .map_or_else(String::new, |path| printable(path));
            let name = sandbox
                .name
                .as_deref()
                .map_or_else(|| "-".into(), printable_text);
            [
                short.to_owned(),
                name,
                sandbox.status.to_string(),
                sandbox.backend.to_string(),
                sandbox.workspace_mode.to_string(),
                created.to_owned(),
                expires.to_owned(),
                workspace,
            ]
        })
        .collect();
    let header = [
        "ID",
        "NAME",
        "STATUS",
        "BACKEND",
        "MODE",
        "CREATED",
        "EXPIRES",
        "WORKSPACE",
    ];
    // Each column is as wide as its widest cell, so long names and statuses stay aligned.
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let print_row = |cells: &[&str]| {
        let last = cells.len() - 1;
        let mut line = String::new();
        for (index, cell) in cells.iter().enumerate() {
            if index == last {
                line.push_str(cell);
            } else {
                let padding = widths[index] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(padding + 2));
            }
        }
        println!("{}", line.trim_end());
    };
    print_row(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        print_row(&cells);
    }
}

/// Shows a name's control characters as escapes, so that a name cannot break the table.
fn printable_text(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).collect()
}

/// Writes text for a terminal with its control characters shown rather than obeyed: a file's
/// content must not move the cursor or erase lines of a patch under review. C0 controls other
/// than newline and tab, and DEL, become caret notation (`^[`); C1 controls, encoded in UTF-8
/// as 0xC2 0x80 to 0xC2 0x9F, become `\u{80}` to `\u{9f}`.
struct EscapeControls<W: Write> {
    inner: W,
    /// A 0xC2 byte that ended the last write, which may start a C1 control.
    pending_c2: bool,
}

impl<W: Write> EscapeControls<W> {
    fn new(inner: W) -> Self {
        EscapeControls {
            inner,
            pending_c2: false,
        }
    }
}

impl<W: Write> Write for EscapeControls<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(bytes.len());
        for &byte in bytes {
            if std::mem::take(&mut self.pending_c2) {
                if (0x80..=0x9f).contains(&byte) {
                    out.extend_from_slice(format!("\\u{{{byte:x}}}").as_bytes());
                    continue;
                }
                out.push(0xc2);
            }
            match byte {
                b'\n' | b'\t' => out.push(byte),
                0x00..=0x1f | 0x7f => out.extend_from_slice(&[b'^', byte ^ 0x40]),
                0xc2 => self.pending_c2 = true,
                _ => out.push(byte),
            }
        }
        self.inner.write_all(&out)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.pending_c2) {
            self.inner.write_all(&[0xc2])?;
        }
        self.inner.flush()
    }
}

/// Formats a path that a sandbox named for a terminal. It is quoted with escapes when it
/// contains control characters, quotes, backslashes or bytes that are not UTF-8, so that it
/// can neither fake other lines nor send escape sequences.
fn printable(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = matches!(text, std::borrow::Cow::Borrowed(_))
        && !text
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\');
    if plain {
        text.into_owned()
    } else {
        format!("{:?}", path.as_os_str())
    }
}

fn print_changes(changes: &[airlock_workspace::Change]) {
    for change in changes {
        let mark = match change.kind {
            airlock_workspace::ChangeKind::Added => 'A',
            airlock_workspace::ChangeKind::Modified => 'M',
            airlock_workspace::ChangeKind::Deleted => 'D',
        };
        let sensitive = if change.sensitive {
            "  (sensitive: applied only when named)"
        } else {
            ""
        };
        let slash = if matches!(change.file_type, airlock_workspace::FileType::Dir) {
            "/"
        } else {
            ""
        };
        println!("{mark} {}{slash}{sensitive}", printable(&change.path));
    }
}

fn print_apply(id: &str, report: &airlock_workspace::ApplyReport) {
    for path in &report.applied {
        println!("applied   {}", printable(path));
    }
    for conflict in &report.conflicts {
        println!(
            "conflict  {}: {}",
            printable(&conflict.path),
            conflict.reason
        );
    }
    for skipped in &report.skipped {
        println!("skipped   {}: {}", printable(&skipped.path), skipped.reason);
    }
    for failure in &report.failed {
        println!(
            "failed    {}: {}",
            printable(&failure.path),
            error_chain(&failure.error)
        );
    }
    eprintln!(
        "airlock: {id}: {} applied, {} conflicts, {} skipped, {} failed",
        report.applied.len(),
        report.conflicts.len(),
        report.skipped.len(),
        report.failed.len()
    );
}

/// Returns where a command missing from the sandbox of `spec` should be installed.
fn install_advice(spec: &Spec) -> String {
    match (&spec.image, &spec.rootfs) {
        (Some(image), _) => format!("install it in the image {image}"),
        (None, RootFs::Directory(root)) => format!("install it in the root tree {root:?}"),
        (None, RootFs::HostView) => "install it under /usr or /opt on the host".to_owned(),
    }
}

/// Prints what the caller should know after the command's own output; returns the exit
/// status. `advice` names the way to provide a command that was not found.
///
/// `kept_sandbox` is given for `run`: the id of the sandbox when it was kept for its workspace
/// changes, which the `--json` record states too, as its last line on stderr.
fn report(
    finished: &Finished,
    json: bool,
    describe: fn(EndReason) -> Option<&'static str>,
    advice: &str,
    kept_sandbox: Option<Option<&str>>,
) -> u8 {
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
            "command not found in the sandbox: {command:?}; check the name, or {advice}"
        )),
        Some(ExecFailure::NotExecutable { command, error }) => say(format!(
            "cannot execute {command:?} in the sandbox: {error}"
        )),
        None => {}
    }
    if let Some(message) = describe(outcome.reason) {
        say(message.to_owned());
    }
    if let Some(Some(id)) = kept_sandbox {
        say(format!("the command changed the workspace; the changes are kept in sandbox {id}: review them with `airlock diff {id}`, then `airlock apply {id}` or `airlock rm {id}`"));
    }
    if json {
        let mut record = serde_json::to_value(outcome).expect("outcomes always serialize");
        if let Some(kept_id) = kept_sandbox {
            record["kept"] = kept_id.is_some().into();
        }
        let separator = if line_open { "\n" } else { "" };
        let _ = writeln!(stderr, "{separator}{record}");
    }
    outcome.exit_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(chunks: &[&[u8]]) -> String {
        let mut out = EscapeControls::new(Vec::new());
        for chunk in chunks {
            out.write_all(chunk).unwrap();
        }
        out.flush().unwrap();
        String::from_utf8(out.inner).unwrap()
    }

    #[test]
    fn patch_controls_shown_escaped() {
        assert_eq!(escaped(&[b"a\x1b[2K\rb\tc\n"]), "a^[[2K^Mb\tc\n");
        assert_eq!(escaped(&[b"\x7f"]), "^?");
        // A C1 control split across two writes, and an ordinary two-byte letter.
        assert_eq!(escaped(&[b"x\xc2", b"\x9by"]), "x\\u{9b}y");
        assert_eq!(escaped(&["é\u{a0}".as_bytes()]), "é\u{a0}");
    }
}
