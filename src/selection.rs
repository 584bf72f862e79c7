//! Picks the backend of a new sandbox: the one named, the lightest that meets a risk level,
//! or the default.

use airlock_core::enforcement::rule;
use airlock_core::risk::{self, Candidate, SelectionError};
use airlock_core::{BackendKind, BackendRequest, RiskLevel, Spec, Status, Unavailable};
use serde_json::{json, Value};

use crate::lifecycle;

/// The backend of a new sandbox and, when a risk level picked it, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub kind: BackendKind,
    pub risk: Option<RiskLevel>,
    /// The line printed on stderr and kept in the audit log, as in "risk medium: using the
    /// namespace backend (a container on the host's kernel); chroot is too weak".
    pub explanation: Option<String>,
}

impl Selected {
    /// Selects the backend the caller named, without a risk level.
    pub fn named(kind: BackendKind) -> Selected {
        Selected {
            kind,
            risk: None,
            explanation: None,
        }
    }

    /// Adds the choice to the fields of the audit log's "created" entry.
    pub fn record(&self, created: &mut Value) {
        created["backend"] = self.kind.name().into();
        if let Some(risk) = self.risk {
            created["risk"] = risk.name().into();
            created["backend_choice"] = json!(self.explanation);
        }
    }
}

/// Describes every backend of this build on this host for `spec`, in the order of
/// [`BackendKind::ALL`].
pub fn candidates(spec: &Spec) -> Vec<Candidate> {
    BackendKind::ALL
        .iter()
        .map(|&kind| {
            let backend = lifecycle::backend(kind);
            let network_off = backend
                .assess(spec)
                .get(rule::NETWORK)
                .is_some_and(|protection| protection.status == Status::Enforced);
            Candidate {
                name: kind.name(),
                class: backend.class(),
                availability: backend.availability(),
                network_off,
                is_default: kind == BackendKind::default(),
            }
        })
        .collect()
}

/// Picks the backend for `request`. Only a risk level makes this look at the host: a named
/// or default backend is taken without checking, so that a plain run starts no later.
pub fn select(request: BackendRequest, spec: &Spec) -> Result<Selected, SelectionError> {
    let Some(level) = request.risk else {
        return Ok(Selected::named(request.backend.unwrap_or_default()));
    };
    let mut candidates = candidates(spec);
    if spec.image.is_some() {
        for (candidate, kind) in candidates.iter_mut().zip(BackendKind::ALL) {
            if !matches!(kind, BackendKind::Docker | BackendKind::Vm) {
                candidate.availability = Err(Unavailable {
                    reason: "it runs no image, and the spec names one".into(),
                    fix: "drop --image, or use --backend docker or vm".into(),
                });
            }
        }
    }
    if !spec.allow_weaker {
        // A backend that would reject the spec is no choice for a risk level.
        for (candidate, kind) in candidates.iter_mut().zip(BackendKind::ALL) {
            if let (Ok(()), Some(unmet)) = (&candidate.availability, unmet_rules(kind, spec)) {
                candidate.availability = Err(Unavailable {
                    reason: format!("it cannot enforce what the spec requires: {unmet}"),
                    fix: "pass --allow-weaker to accept weaker isolation".into(),
                });
            }
        }
    }
    let named = request.backend.map(index_of);
    let chosen = risk::select(named, Some(level), &candidates)?;
    Ok(Selected {
        kind: BackendKind::ALL[chosen.index],
        risk: chosen.risk,
        explanation: chosen.explanation,
    })
}

/// Lists the rules the spec requires that backend `kind` would not enforce in full here, or
/// returns `None` when it enforces them all.
fn unmet_rules(kind: BackendKind, spec: &Spec) -> Option<String> {
    let enforcement = lifecycle::backend(kind).assess(spec);
    let unmet: Vec<&str> = enforcement
        .unmet()
        .map(|protection| protection.rule.as_str())
        .collect();
    (!unmet.is_empty()).then(|| unmet.join(", "))
}

/// Returns the position of `kind` in [`BackendKind::ALL`].
pub fn index_of(kind: BackendKind) -> usize {
    BackendKind::ALL
        .iter()
        .position(|&listed| listed == kind)
        .expect("BackendKind::ALL lists every kind")
}
