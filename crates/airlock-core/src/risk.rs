//! Risk levels, and the choice of the lightest backend that meets one on this host.
//!
//! A risk level names the weakest [`IsolationClass`] that may run a workload: `low` accepts
//! a chroot, `medium` needs a container, `high` a virtual machine, and `critical` a cloud
//! machine or a virtual machine with the network off. The choice is pure data in and out, so
//! front ends build the [`Candidate`]s from their backends and print the result.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backend::{IsolationClass, Unavailable};

/// How much damage a workload could do, and so how strongly it must be isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
    Critical,
}

impl RiskLevel {
    pub const ALL: [RiskLevel; 4] = [
        RiskLevel::Low,
        RiskLevel::Medium,
        RiskLevel::High,
        RiskLevel::Critical,
    ];

    /// Returns the name users pass to `--risk`.
    pub fn name(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
            RiskLevel::Critical => "critical",
        }
    }

    /// Returns whether a backend of `class` meets this level. `network_off` is whether
    /// that backend would cut the sandbox off the network, which `critical` requires of a
    /// virtual machine.
    pub fn is_met_by(self, class: IsolationClass, network_off: bool) -> bool {
        match self {
            RiskLevel::Low => true,
            RiskLevel::Medium => class >= IsolationClass::Container,
            RiskLevel::High => class >= IsolationClass::VirtualMachine,
            RiskLevel::Critical => {
                class == IsolationClass::CloudMachine
                    || (class == IsolationClass::VirtualMachine && network_off)
            }
        }
    }

    /// Describes what the level requires, for messages: "a virtual machine or stronger".
    pub fn requirement(self) -> &'static str {
        match self {
            RiskLevel::Low => "any backend",
            RiskLevel::Medium => "a container or stronger",
            RiskLevel::High => "a virtual machine or stronger",
            RiskLevel::Critical => "a cloud machine, or a virtual machine with the network off",
        }
    }

    /// Returns the classes that can meet the level, weakest first.
    fn classes(self) -> impl Iterator<Item = IsolationClass> {
        [
            IsolationClass::Chroot,
            IsolationClass::Container,
            IsolationClass::VirtualMachine,
            IsolationClass::CloudMachine,
        ]
        .into_iter()
        .filter(move |&class| self.is_met_by(class, true))
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RiskLevel {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.name() == name)
            .ok_or_else(|| {
                format!("unknown risk level {name:?}: expected one of low, medium, high, critical")
            })
    }
}

/// One backend of this build, with the facts about it on this host that the choice uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The name users pass to `--backend`.
    pub name: &'static str,
    pub class: IsolationClass,
    /// Whether this host and caller can run the backend, from [`crate::Backend::availability`].
    pub availability: Result<(), Unavailable>,
    /// Whether the backend would keep the sandbox off the network for the spec at hand.
    pub network_off: bool,
    /// Whether this is the backend used when none is named.
    pub is_default: bool,
}

impl Candidate {
    fn meets(&self, level: RiskLevel) -> bool {
        level.is_met_by(self.class, self.network_off)
    }
}

/// The backend picked for a new sandbox and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The chosen backend's index in the candidates.
    pub index: usize,
    /// The risk level the backend was chosen for, if one was given.
    pub risk: Option<RiskLevel>,
    /// One line that names the backend, its class and why it won, for stderr and the audit
    /// log; `None` when no risk level was given.
    pub explanation: Option<String>,
}

/// The reason no backend can run a sandbox at the requested risk level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// No backend that meets the level can run on this host.
    #[error("risk {level} needs {}, and this host can run none. Missing: {}. Fix one of these, or choose a lower --risk", .level.requirement(), .missing.join("; "))]
    NothingMeets {
        level: RiskLevel,
        /// For each class that would meet the level, what is missing, as one clause each.
        missing: Vec<String>,
    },
    /// The backend named with `--backend` is weaker than the level.
    #[error("backend {name} ({}) does not meet risk {level}, which needs {}: name a stronger backend, or none to let Airlock choose, or lower the risk level", .class.describe(), .level.requirement())]
    TooWeak {
        name: &'static str,
        class: IsolationClass,
        level: RiskLevel,
    },
}

/// Picks the backend among `candidates`, every backend of this build in the order of
/// [`crate::BackendKind::ALL`]. `named` is the index of a backend the caller named, which is
/// taken as it is unless `risk` is also given and the backend does not meet it. Whether a
/// named backend can run here is left to its creation, which reports it with its own fix.
/// Without either, the default backend is chosen.
pub fn select(
    named: Option<usize>,
    risk: Option<RiskLevel>,
    candidates: &[Candidate],
) -> Result<Chosen, SelectionError> {
    match (named, risk) {
        (None, None) => Ok(Chosen {
            index: candidates
                .iter()
                .position(|candidate| candidate.is_default)
                .expect("one candidate is the default backend"),
            risk: None,
            explanation: None,
        }),
        (Some(index), None) => Ok(Chosen {
            index,
            risk: None,
            explanation: None,
        }),
        (None, Some(level)) => choose_for_risk(level, candidates),
        (Some(index), Some(level)) => check_named(index, level, candidates),
    }
}

fn check_named(
    index: usize,
    level: RiskLevel,
    candidates: &[Candidate],
) -> Result<Chosen, SelectionError> {
    let candidate = &candidates[index];
    if !candidate.meets(level) {
        return Err(SelectionError::TooWeak {
            name: candidate.name,
            class: candidate.class,
            level,
        });
    }
    let explanation = format!(
        "risk {level}: using the {} backend ({}), as --backend requests",
        candidate.name,
        candidate.class.describe()
    );
    Ok(Chosen {
        index,
        risk: Some(level),
        explanation: Some(explanation),
    })
}

/// Picks the lightest available backend that meets `level`: the weakest class that does, and
/// within a class the default backend, then the first in the list.
fn choose_for_risk(level: RiskLevel, candidates: &[Candidate]) -> Result<Chosen, SelectionError> {
    let mut ranked: Vec<usize> = (0..candidates.len()).collect();
    ranked.sort_by_key(|&index| {
        let candidate = &candidates[index];
        (candidate.class, !candidate.is_default, index)
    });
    let usable = |index: &usize| {
        let candidate = &candidates[*index];
        candidate.meets(level) && candidate.availability.is_ok()
    };
    let Some(rank) = ranked.iter().position(usable) else {
        return Err(SelectionError::NothingMeets {
            level,
            missing: missing_by_class(level, candidates),
        });
    };
    let chosen = &candidates[ranked[rank]];
    let mut explanation = format!(
        "risk {level}: using the {} backend ({})",
        chosen.name,
        chosen.class.describe()
    );
    for &index in &ranked[..rank] {
        explanation.push_str("; ");
        explanation.push_str(&passed_over_reason(level, &candidates[index]));
    }
    Ok(Chosen {
        index: ranked[rank],
        risk: Some(level),
        explanation: Some(explanation),
    })
}

/// Says why a backend ranked before the chosen one was not taken: it does not meet the
/// level, or it cannot run here.
fn passed_over_reason(level: RiskLevel, candidate: &Candidate) -> String {
    let name = candidate.name;
    if candidate.meets(level) {
        let reason = candidate
            .availability
            .as_ref()
            .err()
            .map_or("", |unavailable| unavailable.reason.as_str());
        format!("{name} cannot run here: {reason}")
    } else if level.is_met_by(candidate.class, true) {
        format!("{name} would leave the network on")
    } else {
        format!("{name} is too weak")
    }
}

/// Lists, for each class that would meet `level`, what keeps its backends from running.
fn missing_by_class(level: RiskLevel, candidates: &[Candidate]) -> Vec<String> {
    level
        .classes()
        .map(|class| {
            let reasons: Vec<String> = candidates
                .iter()
                .filter(|candidate| candidate.class == class)
                .map(|candidate| match &candidate.availability {
                    Err(unavailable) => format!(
                        "{} cannot run here ({}; fix: {})",
                        candidate.name, unavailable.reason, unavailable.fix
                    ),
                    Ok(()) => format!("{} would leave the network on", candidate.name),
                })
                .collect();
            if reasons.is_empty() {
                format!(
                    "{}: no backend of this build provides one",
                    class.describe()
                )
            } else {
                format!("{}: {}", class.describe(), reasons.join(", "))
            }
        })
        .collect()
}

#[cfg(test)]
#[path = "risk_tests.rs"]
mod tests;
