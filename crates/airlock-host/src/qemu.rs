//! QEMU, and whether its guests run under KVM or only under software emulation (TCG).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::guest::{self, Accel, GuestOutcome};
use crate::nspawn::first_output_line;
use crate::{find_program, Fact, Status};

const QEMU: &str = "qemu-system-x86_64";
const KVM_DEVICE: &str = "/dev/kvm";

/// Places where distributions install virtiofsd: QEMU's C daemon on Debian 12 and Ubuntu,
/// then Fedora and Arch.
// NOTE: Fedora and Arch ship the Rust virtiofsd there, whose compatibility with the C
// daemon's `-o` options that the vm backend passes was not tested.
pub const VIRTIOFSD_PATHS: [&str; 3] = [
    "/usr/lib/qemu/virtiofsd",
    "/usr/libexec/virtiofsd",
    "/usr/lib/virtiofsd",
];

/// Returns the path of virtiofsd, the first of [`VIRTIOFSD_PATHS`] that is a file.
pub fn find_virtiofsd() -> Option<PathBuf> {
    VIRTIOFSD_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// Lists virtiofsd, which the vm backend needs for the host view and a bind workspace.
fn virtiofsd_fact() -> Fact {
    let name = "virtiofsd (the vm backend's host view and bind workspace)";
    match find_virtiofsd() {
        Some(path) => Fact::ok("virtiofsd", name, path.display().to_string()),
        None => Fact::missing(
            "virtiofsd",
            name,
            format!("not found in {}", VIRTIOFSD_PATHS.join(", ")),
            "install it (Debian 12: `apt-get install qemu-system-common`); without it the vm backend needs --rootfs and a workspace mode other than bind",
        ),
    }
}

/// Lists QEMU, KVM, TCG and virtiofsd. Boots the test guest under both accelerators at once, so this
/// takes up to [`guest::KVM_TIME_LIMIT`] when KVM hangs.
pub fn facts() -> Vec<Fact> {
    let Some(qemu) = find_program(QEMU) else {
        let install = "install QEMU (Debian and Ubuntu: `apt-get install qemu-system-x86`)";
        return vec![
            Fact::missing(
                "qemu",
                "QEMU",
                format!("{QEMU} not found in $PATH"),
                install,
            ),
            kvm_untested(format!("not tested: {QEMU} is not installed"), install),
            Fact::missing(
                "tcg",
                "QEMU software emulation (TCG)",
                format!("not tested: {QEMU} is not installed"),
                install,
            ),
            virtiofsd_fact(),
        ];
    };
    let version = first_output_line(&qemu, "--version");
    let program = match &version {
        Some(version) => Fact::ok("qemu", "QEMU", format!("{}: {version}", qemu.display())),
        None => Fact::broken(
            "qemu",
            "QEMU",
            format!("{} --version failed", qemu.display()),
            "reinstall QEMU",
        ),
    };
    let kvm_access = kvm_access();
    let accels: &[Accel] = if kvm_access.is_ok() {
        &[Accel::Kvm, Accel::Tcg]
    } else {
        &[Accel::Tcg]
    };
    let outcomes = guest::boot_all(&qemu, accels);
    let outcome_of = |accel| {
        outcomes
            .iter()
            .find(|(ran, _)| *ran == accel)
            .map(|(_, outcome)| outcome.clone())
    };
    let tcg = tcg_fact(&outcome_of(Accel::Tcg).expect("TCG always runs"));
    let kvm = match (kvm_access, outcome_of(Accel::Kvm)) {
        (Err(fact), _) => fact,
        (Ok(()), Some(outcome)) => kvm_fact(&outcome, tcg.status == Status::Ok),
        (Ok(()), None) => unreachable!("KVM runs when /dev/kvm opens"),
    };
    vec![program, kvm, tcg, virtiofsd_fact()]
}

fn kvm_untested(detail: String, fix: &str) -> Fact {
    Fact::missing("kvm", "KVM", detail, fix)
}

/// Checks that /dev/kvm exists and that this user can open it.
fn kvm_access() -> Result<(), Fact> {
    let device = Path::new(KVM_DEVICE);
    if !device.exists() {
        return Err(kvm_untested(
            format!(
                "{KVM_DEVICE} is absent: the CPU's virtualization extensions are off, or the \
                 kvm module is not loaded"
            ),
            "enable VT-x or AMD-V in the firmware and load kvm_intel or kvm_amd; meanwhile \
             guests run under software emulation (TCG)",
        ));
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(_) => Ok(()),
        Err(error) => Err(kvm_untested(
            format!("{KVM_DEVICE} exists, but this user cannot open it: {error}"),
            "ask root to add this user to the group that owns /dev/kvm (usually kvm); \
             meanwhile guests run under software emulation (TCG)",
        )),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// Describes a guest that did not finish under `accel`.
fn describe_failure(accel: Accel, outcome: &GuestOutcome) -> String {
    let accel = accel.name();
    match outcome {
        GuestOutcome::Finished { elapsed } => {
            format!(
                "the test guest finished under -accel {accel} in {}",
                seconds(*elapsed)
            )
        }
        GuestOutcome::TimedOut { limit, stage } => format!(
            "the test guest did not finish within {} under -accel {accel}; it stopped {}",
            seconds(*limit),
            stage.describe()
        ),
        GuestOutcome::Ended {
            status: Some(0),
            elapsed,
            stage,
            ..
        } => format!(
            "the test guest reset under -accel {accel} {} (QEMU, run with -no-reboot, exited \
             with status 0 after {}; without it the guest would reboot forever, which looks \
             like a hang)",
            stage.describe(),
            seconds(*elapsed)
        ),
        GuestOutcome::Ended {
            status,
            stage,
            message,
            ..
        } => {
            let status =
                status.map_or_else(|| "a signal".to_owned(), |code| format!("status {code}"));
            format!(
                "QEMU under -accel {accel} ended with {status} while the guest was {}: {message}",
                stage.describe()
            )
        }
        GuestOutcome::NotStarted { error } => format!("cannot start QEMU: {error}"),
    }
}

fn kvm_fact(outcome: &GuestOutcome, tcg_works: bool) -> Fact {
    let fallback = if tcg_works {
        "guests will run under software emulation (TCG), which works here"
    } else {
        "software emulation (TCG) does not work here either, so no guest can run"
    };
    if let GuestOutcome::Finished { elapsed } = outcome {
        let detail = format!(
            "a test guest with paging ran under -accel kvm in {}",
            seconds(*elapsed)
        );
        return Fact::ok("kvm", "KVM", detail);
    }
    Fact::broken(
        "kvm",
        "KVM",
        format!(
            "{KVM_DEVICE} opens, but {}; {fallback}",
            describe_failure(Accel::Kvm, outcome)
        ),
        "for full speed, fix the host's KVM (on a virtual machine, its nested \
         virtualization); until then guests can run under software emulation (TCG)",
    )
}

fn tcg_fact(outcome: &GuestOutcome) -> Fact {
    let (id, name) = ("tcg", "QEMU software emulation (TCG)");
    if let GuestOutcome::Finished { elapsed } = outcome {
        let detail = format!(
            "a test guest with paging ran under -accel tcg in {}",
            seconds(*elapsed)
        );
        return Fact::ok(id, name, detail);
    }
    Fact::broken(
        id,
        name,
        describe_failure(Accel::Tcg, outcome),
        "reinstall QEMU, and check that its firmware (SeaBIOS, from the seabios package) is \
         installed",
    )
}
