//! One running guest: its QEMU process, its directory of per-sandbox files, and the
//! connection to its agent. Dropping a [`Guest`] kills QEMU, reaps it and removes the
//! directory, so no failure path leaves a QEMU behind; QEMU also gets PR_SET_PDEATHSIG, so
//! it dies with Airlock when Airlock is killed.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_core::SandboxId;
use airlock_protocol::{Message, PROTOCOL_VERSION};

use crate::client::{Connection, Event, Wait};
use crate::error::Error;
use crate::machine::{Accel, Machine};
use crate::share::{self, Daemon};

/// How long a guest may take from QEMU's start to the agent's `ready`. Software emulation
/// boots the cloud kernel in about 4 s on a 2-core host; the margin covers a loaded host.
fn boot_time_limit(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(30),
        Accel::Tcg => Duration::from_secs(120),
    }
}

/// How long the agent may take to power the guest off once asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct Guest {
    qemu: Child,
    /// The virtiofsd of each share, killed with QEMU.
    daemons: Vec<Daemon>,
    directory: PathBuf,
    pub machine: Machine,
    pub connection: Connection,
}

/// The files of one guest, in a new directory.
pub struct GuestFiles {
    pub directory: PathBuf,
}

impl GuestFiles {
    /// Creates a private directory below the temporary directory, named after the sandbox
    /// so that clean-up finds it. Its path is short, since the agent's unix socket lives
    /// there and socket paths are limited to 107 bytes.
    pub fn create(id: &SandboxId) -> Result<GuestFiles, Error> {
        let directory = tempfile::Builder::new()
            .prefix(&directory_prefix(id))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(Error::GuestDirectory)?
            .keep();
        // The directory contains the copy of the workspace, which may be private. tempfile
        // applies the process's umask, so the mode is set again.
        if let Err(error) = crate::cache::make_private(&directory) {
            let _ = std::fs::remove_dir_all(&directory);
            return Err(Error::GuestDirectory(error));
        }
        Ok(GuestFiles { directory })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.directory.join(name)
    }
}

impl Guest {
    /// Starts QEMU on `machine` and waits until the agent is ready. `interrupted` is
    /// polled meanwhile: a signal it returns ends the boot with [`Error::Interrupted`].
    pub fn boot(
        qemu_binary: &Path,
        machine: Machine,
        files: GuestFiles,
        interrupted: &dyn Fn() -> Option<i32>,
    ) -> Result<Guest, Error> {
        let directory = files.directory;
        // The daemons listen before QEMU starts, since QEMU connects to them at once.
        let started = start_daemons(&machine)
            .and_then(|daemons| Ok((spawn_qemu(qemu_binary, &machine, &directory)?, daemons)));
        let (mut qemu, mut daemons) = match started {
            Ok(started) => started,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&directory);
                return Err(error);
            }
        };
        tracing::info!(
            pid = qemu.id(),
            accel = machine.accel.name(),
            "QEMU started"
        );
        let deadline = Instant::now() + boot_time_limit(machine.accel);
        let connection = match connect(&mut qemu, &machine.agent_socket, deadline, interrupted) {
            Ok(connection) => connection,
            Err(failure) => {
                let error = match failure {
                    ConnectFailure::Interrupted(signal) => Error::Interrupted { signal },
                    ConnectFailure::Stopped(reason) => {
                        stopped(&mut qemu, &machine, &directory, reason)
                    }
                };
                let _ = qemu.kill();
                let _ = qemu.wait();
                daemons.iter_mut().for_each(Daemon::kill);
                let _ = std::fs::remove_dir_all(&directory);
                return Err(error);
            }
        };
        let mut guest = Guest {
            qemu,
            daemons,
            directory,
            machine,
            connection,
        };
        guest.wait_ready(deadline, interrupted)?;
        Ok(guest)
    }

    /// Waits for the agent's `ready`. An error drops the guest, which kills QEMU and
    /// removes its directory.
    fn wait_ready(
        &mut self,
        deadline: Instant,
        interrupted: &dyn Fn() -> Option<i32>,
    ) -> Result<(), Error> {
        loop {
            if let Some(signal) = interrupted() {
                return Err(Error::Interrupted { signal });
            }
            let wake = deadline.min(Instant::now() + INTERRUPT_POLL);
            match self.connection.next_event(Some(wake)) {
                Wait::TimedOut if Instant::now() < deadline => {}
                Wait::TimedOut => {
                    let limit = boot_time_limit(self.machine.accel).as_secs();
                    return Err(
                        self.stopped(format!("the guest's agent was not ready within {limit} s"))
                    );
                }
                Wait::Event(Event::Frame(frame)) => {
                    if let Ok(Message::Ready { version }) = frame.to_message() {
                        if version != PROTOCOL_VERSION {
                            return Err(Error::AgentVersion { version });
                        }
                        return Ok(());
                    }
                }
                Wait::Event(Event::Closed) => {
                    let reason = "the guest stopped before its agent was ready".to_owned();
                    return Err(self.stopped(reason));
                }
                Wait::Event(Event::Broken(error)) => return Err(Error::Protocol(error)),
            }
        }
    }

    /// Builds the error for a guest that stopped or never started.
    pub fn stopped(&mut self, reason: String) -> Error {
        stopped(&mut self.qemu, &self.machine, &self.directory, reason)
    }

    /// Asks the agent to power the guest off and waits for QEMU to exit, killing it after
    /// [`SHUTDOWN_GRACE`].
    pub fn shut_down(mut self) {
        let _ = self
            .connection
            .send(airlock_protocol::CONTROL_CHANNEL, &Message::Shutdown);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.qemu.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(
            pid = self.qemu.id(),
            "the guest did not power off in time; killing QEMU"
        );
    }

    /// Kills QEMU and the share daemons at once and reaps them. A later kill, as when the
    /// guest is dropped, then signals nothing, also in a process forked after this.
    pub fn kill(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        self.daemons.iter_mut().for_each(Daemon::kill);
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub fn qemu_pid(&self) -> u32 {
        self.qemu.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Starts the daemon of each of the machine's shares.
fn start_daemons(machine: &Machine) -> Result<Vec<Daemon>, Error> {
    if machine.shares.is_empty() {
        return Ok(Vec::new());
    }
    let virtiofsd = share::find_virtiofsd()?;
    machine
        .shares
        .iter()
        .map(|share| share::start(share, &virtiofsd))
        .collect()
}

/// How often a boot checks for a signal that ends it.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// The reason the host could not connect to the agent's socket.
enum ConnectFailure {
    Interrupted(i32),
    Stopped(String),
}

/// Connects to the agent's socket once QEMU has created it.
fn connect(
    qemu: &mut Child,
    socket: &Path,
    deadline: Instant,
    interrupted: &dyn Fn() -> Option<i32>,
) -> Result<Connection, ConnectFailure> {
    let mut signal = None;
    let connected = Connection::connect(socket, || {
        signal = interrupted();
        if signal.is_some() {
            return Some("interrupted".into());
        }
        if let Ok(Some(status)) = qemu.try_wait() {
            return Some(format!("QEMU exited with {status}"));
        }
        (Instant::now() >= deadline).then(|| "QEMU did not open the agent's socket in time".into())
    });
    match (connected, signal) {
        (Ok(connection), _) => Ok(connection),
        (Err(_), Some(signal)) => Err(ConnectFailure::Interrupted(signal)),
        (Err(reason), None) => Err(ConnectFailure::Stopped(reason)),
    }
}

/// Builds the error for a guest that stopped or never started, with the last lines of its
/// console and of QEMU's own messages.
fn stopped(qemu: &mut Child, machine: &Machine, directory: &Path, reason: String) -> Error {
    // QEMU may still be writing its last lines; it ends within moments of the guest.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline && matches!(qemu.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let console = std::fs::read(&machine.console_log).unwrap_or_default();
    let console = String::from_utf8_lossy(&console);
    let qemu_log = std::fs::read(directory.join(QEMU_LOG)).unwrap_or_default();
    let qemu_log = String::from_utf8_lossy(&qemu_log);
    Error::GuestStopped {
        reason,
        console: console_summary(&console),
        qemu: tail(&qemu_log, 3, |line| {
            !line.contains("QEMU waiting for connection")
        }),
        shares: share_messages(machine),
    }
}

/// Returns the last messages of each share's daemon that are not about its connection,
/// as "; virtiofsd of TAG: ...", or nothing when they have none.
fn share_messages(machine: &Machine) -> String {
    let routine = ["virtio_session_mount", "virtio_loop", "vhost socket"];
    let mut messages = String::new();
    for share in &machine.shares {
        let log = std::fs::read(share.log()).unwrap_or_default();
        let last = tail(&String::from_utf8_lossy(&log), 2, |line| {
            !routine.iter().any(|prefix| line.starts_with(prefix))
        });
        if !last.is_empty() {
            messages.push_str(&format!("; virtiofsd of {}: {last:?}", share.tag));
        }
    }
    messages
}

/// Returns the line of a kernel panic with the line before it, which names the cause, or
/// else the last lines of the console.
fn console_summary(console: &str) -> String {
    let lines: Vec<&str> = console.lines().map(str::trim).collect();
    if let Some(at) = lines.iter().position(|line| line.contains("Kernel panic")) {
        // A panic of the agent itself comes first, as the reason init exited.
        let agent_panic = lines[..at]
            .iter()
            .rev()
            .find(|line| line.contains("panicked at"));
        let mut summary: Vec<&str> = agent_panic.into_iter().copied().collect();
        summary.extend_from_slice(&lines[at.saturating_sub(1)..=at]);
        return summary.join(" | ");
    }
    tail(console, 6, |_| true)
}

/// Returns the start of the name of sandbox `id`'s guest directory.
fn directory_prefix(id: &SandboxId) -> String {
    let id = id.to_string();
    format!("airlock-vm-{}-", &id[..12.min(id.len())])
}

/// Kills any QEMU still running from a guest directory of sandbox `id` in the temporary
/// directory, and removes those directories: what an `airlock run` killed with SIGKILL
/// leaves, since its QEMU dies with it but its directory stays.
pub fn remove_leftovers(id: &SandboxId) {
    let prefix = directory_prefix(id);
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let directory = entry.path();
        for pid in processes_mentioning(&directory) {
            // SAFETY: kill takes integers only.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&directory);
    }
}

/// Returns the processes whose command line names `directory`: its QEMU.
fn processes_mentioning(directory: &Path) -> Vec<libc::pid_t> {
    let needle = directory.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: libc::pid_t = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&needle)
                .then_some(pid)
        })
        .collect()
}

/// QEMU's stdout and stderr, in the guest's directory.
const QEMU_LOG: &str = "qemu.log";

fn spawn_qemu(binary: &Path, machine: &Machine, directory: &Path) -> Result<Child, Error> {
    let log = File::create(directory.join(QEMU_LOG)).map_err(Error::GuestDirectory)?;
    let mut command = Command::new(binary);
    command
        .args(machine.arguments())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(Error::GuestDirectory)?)
        .stderr(log)
        // QEMU's own group, so a Ctrl-C at the caller's terminal reaches Airlock, which
        // ends the guest, rather than QEMU directly.
        .process_group(0);
    // SAFETY: the closure runs between fork and exec and makes one async-signal-safe system
    // call on integers: the kernel kills QEMU if this thread ends first.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(Error::SpawnQemu)
}

/// Returns the last `lines` non-empty lines of `text` that `keep` accepts, joined with " | ".
fn tail(text: &str, lines: usize, keep: impl Fn(&str) -> bool) -> String {
    let mut last: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && keep(line))
        .rev()
        .take(lines)
        .collect();
    last.reverse();
    last.join(" | ")
}
