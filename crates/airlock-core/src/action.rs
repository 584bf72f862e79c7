//! The actions a front end can ask of Airlock. The CLI parses its arguments into an
//! [`Action`]; the HTTP API and MCP server are meant to parse their requests into the same
//! enum, so every front end drives the core the same way.

use crate::spec::Spec;

#[derive(Debug, Clone)]
pub enum Action {
    /// Run one command in a fresh sandbox and remove the sandbox afterwards.
    Run { backend: BackendKind, spec: Spec },
}

/// The isolation levels this build of Airlock provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Linux namespaces, cgroups, seccomp and Landlock, started by Airlock itself.
    #[default]
    Namespace,
}

impl BackendKind {
    pub const ALL: [BackendKind; 1] = [BackendKind::Namespace];

    /// The name users pass to `--backend`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Namespace => "namespace",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|kind| kind.name()).collect();
                format!(
                    "unknown backend {name:?}: expected one of {}",
                    known.join(", ")
                )
            })
    }
}
