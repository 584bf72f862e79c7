//! The choice between KVM and software emulation (TCG).
//!
//! `/dev/kvm` existing is not enough: on some nested hosts guests hang under KVM. So KVM
//! is used only after the test guest of `airlock doctor` ([`airlock_host::guest`]) finished
//! under it within its time limit. That check takes up to 5 seconds when KVM hangs, so its
//! verdict is cached, keyed by the QEMU binary and the host's kernel.

use std::path::Path;

use airlock_host::guest::{self, GuestOutcome};
use serde::{Deserialize, Serialize};

use crate::machine::Accel;

const VERDICT_FILE: &str = "accel.json";

/// The cached verdict and what it depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Verdict {
    key: String,
    accel: Accel,
    /// Why KVM is not used; `None` under KVM.
    reason: Option<String>,
    /// The host's TSC frequency, which a guest under TCG keeps time with. It is `None` under
    /// KVM, in verdicts cached before it was recorded, or when it could not be measured.
    #[serde(default)]
    tsc_khz: Option<u64>,
}

/// The accelerator chosen, and a notice to print when the choice was just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub notice: Option<String>,
    /// The host's TSC frequency in kHz, measured for a guest under TCG.
    pub tsc_khz: Option<u64>,
}

/// Picks the accelerator, from the cache in `cache` when its key still matches.
pub fn choose(qemu: &Path, cache: &Path) -> Choice {
    let key = verdict_key(qemu);
    let path = cache.join(VERDICT_FILE);
    let cached = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Verdict>(&bytes).ok())
        .filter(|verdict| verdict.key == key);
    if let Some(verdict) = cached.clone().filter(|verdict| !needs_tsc(verdict)) {
        return Choice {
            accel: verdict.accel,
            notice: None,
            tsc_khz: verdict.tsc_khz,
        };
    }
    let fresh = cached.is_none();
    let mut verdict = cached.unwrap_or_else(|| test_kvm(qemu, key));
    if needs_tsc(&verdict) {
        verdict.tsc_khz = crate::clock::measure_tsc_khz();
    }
    if let Ok(bytes) = serde_json::to_vec(&verdict) {
        // A cache that cannot be written only costs the next run the same check.
        let _ = std::fs::write(&path, bytes);
    }
    let notice = verdict.reason.as_ref().filter(|_| fresh).map(|reason| {
        format!("KVM cannot be used ({reason}); vm sandboxes run under software emulation (TCG), which is slower; `airlock doctor` shows the details")
    });
    Choice {
        accel: verdict.accel,
        notice,
        tsc_khz: verdict.tsc_khz,
    }
}

/// Returns whether a verdict for TCG lacks the TSC frequency its guests keep time with.
fn needs_tsc(verdict: &Verdict) -> bool {
    verdict.accel == Accel::Tcg && verdict.tsc_khz.is_none()
}

/// Keys the verdict by QEMU's path, size and modification time, /dev/kvm's presence, and
/// the host kernel's release and boot, any of which can change the verdict.
fn verdict_key(qemu: &Path) -> String {
    let qemu_identity = std::fs::metadata(qemu)
        .map(|metadata| {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}", qemu.display(), metadata.len(), metadata.mtime())
        })
        .unwrap_or_default();
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    format!(
        "{qemu_identity}|kvm:{}|{}|{}",
        Path::new("/dev/kvm").exists(),
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/sys/kernel/random/boot_id").trim()
    )
}

fn test_kvm(qemu: &Path, key: String) -> Verdict {
    let tcg = |reason: String| Verdict {
        key: key.clone(),
        accel: Accel::Tcg,
        reason: Some(reason),
        tsc_khz: None,
    };
    if let Err(error) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm cannot be opened: {error}"));
    }
    let outcomes = guest::boot_all(qemu, &[guest::Accel::Kvm]);
    match outcomes.first().map(|(_, outcome)| outcome) {
        Some(GuestOutcome::Finished { .. }) => Verdict {
            key,
            accel: Accel::Kvm,
            reason: None,
            tsc_khz: None,
        },
        Some(GuestOutcome::TimedOut { limit, .. }) => tcg(format!(
            "a test guest did not finish within {} s under KVM",
            limit.as_secs()
        )),
        Some(GuestOutcome::Ended {
            status: Some(0),
            stage,
            ..
        }) => tcg(format!("a test guest reset under KVM {}", stage.describe())),
        Some(GuestOutcome::Ended {
            status, message, ..
        }) => tcg(format!(
            "QEMU under KVM ended with status {status:?} before the test guest finished: {message}"
        )),
        Some(GuestOutcome::NotStarted { error }) => tcg(format!("cannot start QEMU: {error}")),
        None => tcg("the KVM test guest did not run".into()),
    }
}
