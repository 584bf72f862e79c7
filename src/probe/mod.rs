//! `airlock probe`: containment probes run inside a sandbox of each backend, judged on the
//! host.
//!
//! For each backend, the host:
//! 1. stages a private directory with an empty workspace and a copy of this binary
//!    ([`staging`]), creates a sandbox from it with small limits through the [`Engine`], and
//!    copies the binary in;
//! 2. for each probe, sets up the probe's canary on the host ([`host`]) and runs
//!    `airlock __probe NAME ARGS` in the sandbox as its own exec with a timeout
//!    ([`executor`], [`inside`]). It then judges from what happened to the canary and from
//!    the probe's report, and removes the canary;
//! 3. removes the sandbox, then judges the probes that look for what outlived it.
//!
//! SIGINT, SIGTERM and SIGHUP are held back while this runs
//! ([`airlock_namespace::interrupt`]) and checked between steps, so an interrupted run
//! unwinds through the same guards that remove every sandbox, canary and temporary file.
//!
//! NOTE: SIGKILL cannot be held back. A killed run leaves its staging directory and canary
//! files behind. Its canary processes die with it, and its sandbox removes itself when its
//! time to live ends, or with `airlock gc`.

mod executor;
mod host;
pub mod inside;
pub mod matrix;
mod probes;
mod staging;
mod system;

use std::path::Path;
use std::time::Instant;

use airlock_core::{BackendKind, ProbeTargets, Unavailable};
use airlock_namespace::{error_chain, sys};

use crate::lifecycle::{self, Engine};
use airlock_namespace::interrupt::Interrupts;
use executor::{Executor, SandboxExecutor, UnconfinedExecutor};
use host::{Host, LIMITS};
use matrix::{Cell, Column, ColumnState, Matrix};
use probes::{Armed, Finding, Probe, CATALOG};
use staging::Staging;

pub use airlock_namespace::interrupt::Interrupted;
pub use probes::PRIVILEGES_HELPER;

/// The column of the control group, which runs the probes on the host itself.
pub const UNCONFINED: &str = "unconfined";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("backend {backend} is not available on this host: {unavailable}")]
    Unavailable {
        backend: &'static str,
        unavailable: Unavailable,
    },
    #[error("the docker backend runs its probes in an image: pass --image NAME, a local image of its engine such as debian:bookworm (`airlock image ls` lists them, `airlock image import` or `airlock image pull` adds one)")]
    ImageMissing,
    #[error("--image {image:?} needs the docker or vm backend: the {backend} backend runs no image; drop --image, or probe --backend docker or vm")]
    ImageNeedsDocker {
        image: String,
        backend: &'static str,
    },
    #[error("--rootfs does not apply to the docker backend, whose probes run in the --image; drop --rootfs")]
    RootfsWithDocker,
    #[error("cannot hold back SIGINT, SIGTERM and SIGHUP while the probes run")]
    Signals(#[source] std::io::Error),
    #[error("cannot stage the probes")]
    Staging(#[source] staging::StagingError),
    #[error("cannot remove the probes' sandbox {id}: remove it with `airlock rm --force {id}`")]
    Remove {
        id: String,
        #[source]
        source: airlock_core::BackendError,
    },
    #[error("the probe run was interrupted; every sandbox and canary it made was removed")]
    Interrupted(#[source] Interrupted),
}

impl From<Interrupted> for ProbeError {
    fn from(interrupted: Interrupted) -> Self {
        ProbeError::Interrupted(interrupted)
    }
}

/// The sources of the probes' sandboxes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// The image of the docker backend's sandbox, and of the vm backend's without `rootfs`.
    pub image: Option<&'a str>,
    /// The root filesystem tree of the other backends' sandboxes; the host view without it.
    pub rootfs: Option<&'a Path>,
}

/// Runs every probe in a sandbox of each backend that `targets` selects, made from
/// `sources`, and with `unconfined` on the host too.
pub fn run(
    engine: &Engine,
    targets: ProbeTargets,
    sources: Sources<'_>,
    unconfined: bool,
) -> Result<Matrix, ProbeError> {
    let interrupts = Interrupts::block().map_err(ProbeError::Signals)?;
    let mut matrix = Matrix {
        kernel: kernel_release(),
        probes: CATALOG.to_vec(),
        columns: Vec::new(),
    };
    for (kind, plan) in selected_backends(targets, sources)? {
        let skipped = |state| Column::without_probes(kind.name(), state, &CATALOG);
        let column = match plan {
            Plan::Probe => probe_backend(engine, kind, sources, &interrupts)?,
            Plan::Unavailable(unavailable) => {
                skipped(ColumnState::Unavailable(unavailable.to_string()))
            }
            Plan::NotProbed(missing) => skipped(ColumnState::NotProbed(missing.to_string())),
        };
        matrix.columns.push(column);
    }
    if unconfined {
        matrix.columns.push(probe_unconfined(&interrupts)?);
    }
    Ok(matrix)
}

/// The action a probe run takes for one backend it selected.
enum Plan {
    Probe,
    /// The backend cannot run on this host.
    Unavailable(Unavailable),
    /// The backend can run, but the run lacks an input it needs: the docker backend's image.
    NotProbed(Unavailable),
}

/// Lists the backends to probe, each with its plan; fails when the one backend requested
/// cannot run here or does not match `image`. Without `--all`, the unavailable backends are
/// left out, except the docker backend when an image names it.
fn selected_backends(
    targets: ProbeTargets,
    sources: Sources<'_>,
) -> Result<Vec<(BackendKind, Plan)>, ProbeError> {
    let image = sources.image;
    let plans = BackendKind::ALL
        .into_iter()
        .map(|kind| (kind, plan(kind, sources)));
    match targets {
        ProbeTargets::One(kind) => {
            check_one_backend(kind, sources)?;
            Ok(vec![(kind, Plan::Probe)])
        }
        ProbeTargets::All => Ok(plans.collect()),
        // An image requests the docker backend, so it stays listed when its engine is gone.
        ProbeTargets::Available => Ok(plans
            .filter(|(kind, plan)| {
                let requested = *kind == BackendKind::Docker && image.is_some();
                requested || !matches!(plan, Plan::Unavailable(_))
            })
            .collect()),
    }
}

fn plan(kind: BackendKind, sources: Sources<'_>) -> Plan {
    match lifecycle::backend(kind).availability() {
        Err(unavailable) => Plan::Unavailable(unavailable),
        Ok(()) if kind == BackendKind::Docker && sources.image.is_none() => {
            Plan::NotProbed(Unavailable {
                reason: "the docker backend runs its probes in an image, and none was given".into(),
                fix: "pass --image NAME, a local image of its engine such as debian:bookworm"
                    .into(),
            })
        }
        Ok(()) => Plan::Probe,
    }
}

/// Checks that `kind`, the one backend requested, gets an image only where it runs one,
/// no root filesystem tree when it runs an image, and can run here.
fn check_one_backend(kind: BackendKind, sources: Sources<'_>) -> Result<(), ProbeError> {
    if kind == BackendKind::Docker && sources.rootfs.is_some() {
        return Err(ProbeError::RootfsWithDocker);
    }
    match (kind, sources.image) {
        (BackendKind::Docker, None) => return Err(ProbeError::ImageMissing),
        (BackendKind::Docker | BackendKind::Vm, _) => {}
        (_, Some(image)) => {
            return Err(ProbeError::ImageNeedsDocker {
                image: image.to_owned(),
                backend: kind.name(),
            })
        }
        _ => {}
    }
    lifecycle::backend(kind)
        .availability()
        .map_err(|unavailable| ProbeError::Unavailable {
            backend: kind.name(),
            unavailable,
        })
}

/// Returns the sources that `kind` takes: the docker backend the image, the vm backend the
/// tree or else the image, the others the tree or the host view.
fn sources_of(kind: BackendKind, sources: Sources<'_>) -> Sources<'_> {
    let takes_image = match kind {
        BackendKind::Docker => true,
        BackendKind::Vm => sources.rootfs.is_none(),
        _ => false,
    };
    if takes_image {
        Sources {
            rootfs: None,
            ..sources
        }
    } else {
        Sources {
            image: None,
            ..sources
        }
    }
}

/// Probes one backend: stages, creates the sandbox, runs every probe, removes it all.
fn probe_backend(
    engine: &Engine,
    kind: BackendKind,
    sources: Sources<'_>,
    interrupts: &Interrupts,
) -> Result<Column, ProbeError> {
    let started = Instant::now();
    let is_root = sys::geteuid() == 0;
    let staging = Staging::create(is_root).map_err(ProbeError::Staging)?;
    interrupts.check()?;
    let sources = sources_of(kind, sources);
    let mut sandbox = match SandboxExecutor::start(engine, kind, sources, &staging, &LIMITS) {
        Ok(sandbox) => sandbox,
        Err(error) => {
            let state = ColumnState::Failed(error_chain(error.as_ref()));
            return Ok(Column::without_probes(kind.name(), state, &CATALOG));
        }
    };
    let id = sandbox.id().map(str::to_owned);
    tracing::info!(backend = kind.name(), sandbox = ?id, "probing");
    let host = host_for(&staging);
    let cells = run_probes(&host, &mut sandbox, interrupts, |error| {
        ProbeError::Remove {
            id: id.clone().unwrap_or_default(),
            source: error,
        }
    })?;
    Ok(Column {
        backend: kind.name().to_owned(),
        state: ColumnState::Probed,
        sandbox: id,
        staging: Some(staging.root().to_owned()),
        seconds: started.elapsed().as_secs_f64(),
        cells,
    })
}

/// Runs every probe on the host, outside any sandbox: the control group, in which each
/// probe should find its escape.
fn probe_unconfined(interrupts: &Interrupts) -> Result<Column, ProbeError> {
    let started = Instant::now();
    let is_root = sys::geteuid() == 0;
    let staging = Staging::create(is_root).map_err(ProbeError::Staging)?;
    let host = host_for(&staging);
    let mut executor = UnconfinedExecutor::new(staging.workspace(), is_root);
    let cells = run_probes(&host, &mut executor, interrupts, |error| {
        ProbeError::Remove {
            id: UNCONFINED.to_owned(),
            source: error,
        }
    })?;
    Ok(Column {
        backend: UNCONFINED.to_owned(),
        state: ColumnState::Probed,
        sandbox: None,
        staging: Some(staging.root().to_owned()),
        seconds: started.elapsed().as_secs_f64(),
        cells,
    })
}

fn host_for(staging: &Staging) -> Host {
    Host {
        canary_dir: host::canary_dir(),
        setuid_copy: staging.setuid_copy(),
        limits: LIMITS,
    }
}

/// Runs the catalog through `executor`: each probe armed, run and judged in turn, except
/// those judged after the removal, whose canaries stay until the executor has ended.
fn run_probes(
    host: &Host,
    executor: &mut dyn Executor,
    interrupts: &Interrupts,
    removal_failed: impl FnOnce(airlock_core::BackendError) -> ProbeError,
) -> Result<Vec<Cell>, ProbeError> {
    let mut cells: Vec<Option<Cell>> = vec![None; CATALOG.len()];
    let mut after_removal = Vec::new();
    for (index, probe) in CATALOG.iter().enumerate() {
        interrupts.check()?;
        let mut armed = match probe.arm(host) {
            Ok(armed) => armed,
            Err(reason) => {
                cells[index] = Some(Cell::new(Finding::not_applicable(reason), Vec::new()));
                continue;
            }
        };
        let execution = executor.exec(probe.name(), &armed.invocation(), interrupts)?;
        if probe.judged_after_removal() {
            after_removal.push((index, armed, execution));
            continue;
        }
        cells[index] = Some(judge(*probe, armed.as_mut(), &execution));
    }
    executor.end().map_err(removal_failed)?;
    for (index, mut armed, execution) in after_removal {
        cells[index] = Some(judge(CATALOG[index], armed.as_mut(), &execution));
    }
    Ok(cells.into_iter().flatten().collect())
}

fn judge(probe: &dyn Probe, armed: &mut dyn Armed, execution: &executor::Execution) -> Cell {
    let finding = armed.judge(execution);
    tracing::debug!(probe = probe.name(), verdict = ?finding.verdict, reason = %finding.reason, "judged");
    Cell::new(finding, armed.canaries())
}

/// Returns the kernel release, as `uname -r` prints it.
fn kernel_release() -> String {
    // SAFETY: utsname is plain data, and uname fills it.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a live utsname.
    if unsafe { libc::uname(&mut name) } == -1 {
        return "unknown".to_owned();
    }
    // SAFETY: uname NUL-terminates each field within its array.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_probes_rootfs_else_image() {
        let tree = Path::new("/srv/tree");
        let both = Sources {
            image: Some("debian:bookworm"),
            rootfs: Some(tree),
        };
        let vm = sources_of(BackendKind::Vm, both);
        assert_eq!((vm.image, vm.rootfs), (None, Some(tree)));
        let docker = sources_of(BackendKind::Docker, both);
        assert_eq!(
            (docker.image, docker.rootfs),
            (Some("debian:bookworm"), None)
        );
        let namespace = sources_of(BackendKind::Namespace, both);
        assert_eq!((namespace.image, namespace.rootfs), (None, Some(tree)));

        let image_only = Sources {
            image: Some("debian:bookworm"),
            rootfs: None,
        };
        let vm = sources_of(BackendKind::Vm, image_only);
        assert_eq!((vm.image, vm.rootfs), (Some("debian:bookworm"), None));
        let chroot = sources_of(BackendKind::Chroot, image_only);
        assert_eq!((chroot.image, chroot.rootfs), (None, None));
    }
}
