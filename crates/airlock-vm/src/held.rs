//! Persistent vm sandboxes: the supervisor boots the guest, keeps QEMU and the agent's
//! connection, and relays the agent to `airlock exec` and `cp` through a control socket
//! ([`crate::proxy`]). Stopping the sandbox copies its workspace changes out, then powers
//! the guest off.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use airlock_core::{EndReason, HeldEnd, HeldSandbox, RunOptions, Spec};
use airlock_namespace::sys;
use serde::{Deserialize, Serialize};

use crate::agent::boot::LAYERS;
use crate::client::Connection;
use crate::container_image::PinnedImage;
use crate::copy::CopyOutLimit;
use crate::error::Error;
use crate::guest::Guest;
use crate::launch;

/// The signals that ask the supervisor to stop the sandbox.
const STOP_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// The facts that `exec`, `cp`, `stats` and clean-up need, stored in the sandbox's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    /// The supervisor's control socket.
    pub socket: PathBuf,
    /// The guest's directory of sockets, disks and logs.
    pub directory: PathBuf,
    pub qemu_pid: i32,
    pub machine: crate::machine::Machine,
    pub enforcement: airlock_core::Enforcement,
    /// The facts that every later start of the sandbox reuses, kept by the lifecycle in the
    /// sandbox's record after a stop.
    #[serde(default)]
    pub pinned: Pinned,
}

/// The facts a vm sandbox's first start fixes for its later starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pinned {
    /// The engine's image the root disk was built from, for `--image`.
    pub image: Option<PinnedImage>,
}

impl Runtime {
    /// Returns whether QEMU of this sandbox still runs: the pid is alive and its command line
    /// names the guest's directory, so a reused pid does not count.
    pub fn is_running(&self) -> bool {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.qemu_pid)).unwrap_or_default();
        let directory = self.directory.to_string_lossy();
        String::from_utf8_lossy(&cmdline).contains(directory.as_ref())
    }
}

pub struct HeldVm {
    guest: Option<Guest>,
    runtime: Runtime,
    relay: crate::proxy::Relay,
    signals: OwnedFd,
    layers: Option<PathBuf>,
}

/// Boots the guest of `spec` and starts relaying its agent.
pub fn start(spec: &Spec, options: &RunOptions, qemu: PathBuf) -> Result<HeldVm, Error> {
    // Blocked before any thread starts, so every thread inherits the mask and the signals
    // wait in the signalfd.
    let set = sys::sigset(&STOP_SIGNALS);
    sys::set_signal_mask(libc::SIG_BLOCK, &set).map_err(Error::Signals)?;
    let signals = sys::signalfd(&set).map_err(Error::Signals)?;
    let enforcement = launch::check(spec)?;
    if let Some(upper) = options.layers.as_ref().map(|layers| layers.join("upper")) {
        // NOTE: a restarted guest would get the project as it is now, without these changes, and
        // its own changes would replace them on the host at its stop.
        if std::fs::read_dir(&upper).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(Error::ChangesPending);
        }
    }
    let id = match options.id {
        Some(id) => id,
        None => airlock_core::SandboxId::generate().map_err(Error::Id)?,
    };
    let pinned = read_pinned(options.pinned.as_ref());
    let prepared = launch::prepare(spec, &id, qemu, pinned.image.as_ref())?;
    let pinned = Pinned {
        image: prepared.image.clone(),
    };
    // A stop signal during the boot waits in the signalfd, and stops the guest once it runs.
    let mut guest = Guest::boot(&prepared.qemu, prepared.machine, prepared.files, &|| None)?;
    let socket = guest.machine.agent_socket.with_file_name("control.sock");
    let listener = UnixListener::bind(&socket).map_err(Error::GuestDirectory)?;
    let events = guest.connection.take_events();
    let relay = crate::proxy::start(listener, guest.connection.writer(), events);
    let runtime = Runtime {
        socket,
        directory: guest.directory().to_owned(),
        qemu_pid: guest.qemu_pid() as i32,
        machine: guest.machine.clone(),
        enforcement,
        pinned,
    };
    Ok(HeldVm {
        guest: Some(guest),
        runtime,
        relay,
        signals,
        layers: options.layers.clone(),
    })
}

/// Reads the facts an earlier start pinned. Facts this version cannot read are dropped
/// with a warning, so the start looks the image up by its name again.
fn read_pinned(value: Option<&serde_json::Value>) -> Pinned {
    let Some(value) = value else {
        return Pinned::default();
    };
    serde_json::from_value(value.clone()).unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read the facts pinned at the sandbox's first start");
        Pinned::default()
    })
}

impl HeldSandbox for HeldVm {
    fn runtime(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.runtime).expect("runtimes always serialize");
        value["init"] = serde_json::json!({ "pid": self.runtime.qemu_pid });
        value
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        _limit_hit: &mut dyn FnMut(EndReason),
    ) -> std::io::Result<HeldEnd> {
        use std::os::fd::AsRawFd;
        loop {
            if self.relay.guest_gone.load(Ordering::SeqCst) {
                return Ok(HeldEnd::Exited);
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(HeldEnd::Expired);
            }
            let mut fds = [libc::pollfd {
                fd: self.signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            sys::poll(&mut fds, 200)?;
            if let Some(signal) = sys::read_signalfd(&self.signals)? {
                return Ok(HeldEnd::Signal(signal));
            }
        }
    }
}

impl Drop for HeldVm {
    fn drop(&mut self) {
        let Some(guest) = self.guest.take() else {
            return;
        };
        if launch::has_overlay(&guest) && !self.relay.guest_gone.load(Ordering::SeqCst) {
            if let Some(layers) = &self.layers {
                // NOTE: `stop` still succeeds after a failed export, such as one over the
                // copy-out limit, and the sandbox's changes are lost.
                if let Err(error) = export_through(&self.runtime, layers) {
                    tracing::warn!(error = %airlock_namespace::error_chain(&error), "cannot copy the workspace changes out of the guest");
                }
            }
        }
        guest.shut_down();
    }
}

/// Copies the workspace changes out through the control socket, as a client of the relay,
/// into `layers/upper`. The guest's layer has every change since the guest started, so it
/// replaces the host's copy. It is copied to a new directory first, so that a failed or
/// concurrent copy never leaves a mix of both.
pub fn export_through(runtime: &Runtime, layers: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut connection = Connection::connect(&runtime.socket, || {
        (Instant::now() >= deadline).then(|| "the control socket does not accept".to_owned())
    })
    .map_err(|message| Error::AgentFailed { message })?;
    let layers_failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Layers { path, source }
    };
    let work = layers.join("work");
    std::fs::create_dir_all(&work).map_err(layers_failed(&work))?;
    let staging = tempfile::Builder::new()
        .prefix("upper-")
        .tempdir_in(layers)
        .map_err(layers_failed(layers))?;
    let guest_upper = format!("{LAYERS}/upper");
    let limit = CopyOutLimit::of(&runtime.machine);
    crate::export::upper_layer(&mut connection, &guest_upper, staging.path(), limit)
        .map_err(Error::Export)?;

    let upper = layers.join("upper");
    let mode = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(staging.path(), mode).map_err(layers_failed(staging.path()))?;
    match std::fs::remove_dir_all(&upper) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(layers_failed(&upper)(error));
        }
        _ => {}
    }
    std::fs::rename(staging.keep(), &upper).map_err(layers_failed(&upper))
}

/// Kills the QEMU of a sandbox whose supervisor is gone and removes the guest's directory,
/// also for a run or supervisor killed before it recorded its runtime.
pub fn clean_up(id: &airlock_core::SandboxId, runtime: Option<&Runtime>) {
    crate::guest::remove_leftovers(id);
    let Some(runtime) = runtime else {
        return;
    };
    if runtime.is_running() {
        let _ = sys::kill(runtime.qemu_pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while runtime.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = std::fs::remove_dir_all(&runtime.directory);
}
