//! The protections a backend enforced, rule by rule, so that none is assumed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The names of the rules every backend reports on, in the order they are listed. A backend
/// reports each rule that applies to the spec, so that reports of different backends line up.
pub mod rule {
    pub const FILE_TREE: &str = "host paths outside the root unreachable";
    pub const ROOT_READ_ONLY: &str = "read-only root filesystem";
    pub const SECRETS_HIDDEN: &str = "host secrets under /etc hidden";
    pub const WORKSPACE: &str = "workspace mode";
    pub const PROCESSES: &str = "host processes hidden";
    pub const NETWORK: &str = "network limited to a private loopback";
    pub const IPC: &str = "ipc and hostname isolated";
    pub const USER: &str = "root inside holds no privilege on the host";
    pub const CAPABILITIES: &str = "all capabilities dropped";
    pub const NO_NEW_PRIVS: &str = "no_new_privs";
    pub const SECCOMP: &str = "seccomp filter";
    pub const LANDLOCK: &str = "landlock";
    pub const MEMORY: &str = "memory limit";
    pub const CPU: &str = "cpu limit";
    pub const PIDS: &str = "pids limit";
    pub const TMP_SIZE: &str = "tmp size";
    pub const TIMEOUT: &str = "timeout";
    pub const CLEANUP: &str = "no process outlives the sandbox";

    /// Every rule, in report order.
    pub const ALL: [&str; 18] = [
        FILE_TREE,
        ROOT_READ_ONLY,
        SECRETS_HIDDEN,
        WORKSPACE,
        PROCESSES,
        NETWORK,
        IPC,
        USER,
        CAPABILITIES,
        NO_NEW_PRIVS,
        SECCOMP,
        LANDLOCK,
        MEMORY,
        CPU,
        PIDS,
        TMP_SIZE,
        TIMEOUT,
        CLEANUP,
    ];
}

/// How far one protection is enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Status {
    Enforced,
    /// Enforced in part; the text says what is missing.
    Partial(String),
    /// Not enforced; the text says why and how to get it.
    Unsupported(String),
}

/// One protection and its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// Short rule name, such as `seccomp` or `memory limit`.
    pub rule: String,
    #[serde(flatten)]
    pub status: Status,
    /// Whether the spec requires this rule in full, so that anything less fails creation.
    pub required: bool,
}

/// The protections of one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Enforcement(pub Vec<Protection>);

impl Enforcement {
    pub fn push(&mut self, rule: impl Into<String>, status: Status, required: bool) {
        self.0.push(Protection {
            rule: rule.into(),
            status,
            required,
        });
    }

    /// Returns the required protections that are not fully enforced.
    pub fn unmet(&self) -> impl Iterator<Item = &Protection> {
        self.0
            .iter()
            .filter(|protection| protection.required && protection.status != Status::Enforced)
    }

    /// Checks that every required protection is enforced in full. Returns the unmet ones as
    /// one line, separated by `; `, unless `allow_weaker` accepts them.
    pub fn check_required(&self, allow_weaker: bool) -> Result<(), String> {
        let unmet: Vec<String> = self.unmet().map(ToString::to_string).collect();
        if unmet.is_empty() || allow_weaker {
            return Ok(());
        }
        Err(unmet.join("; "))
    }

    pub fn get(&self, rule: &str) -> Option<&Protection> {
        self.0.iter().find(|protection| protection.rule == rule)
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.status {
            Status::Enforced => write!(f, "{}: enforced", self.rule),
            Status::Partial(detail) => write!(f, "{}: partial ({detail})", self.rule),
            Status::Unsupported(detail) => write!(f, "{}: not enforced ({detail})", self.rule),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmet_lists_only_required_and_weaker() {
        let mut enforcement = Enforcement::default();
        enforcement.push("seccomp", Status::Enforced, true);
        enforcement.push(
            "memory limit",
            Status::Unsupported("no cgroup".into()),
            true,
        );
        enforcement.push("cpu limit", Status::Unsupported("no cgroup".into()), false);
        let unmet: Vec<_> = enforcement.unmet().map(|p| p.rule.as_str()).collect();
        assert_eq!(unmet, ["memory limit"]);
    }

    #[test]
    fn check_required_lists_unmet_unless_allowed() {
        let mut enforcement = Enforcement::default();
        enforcement.push("seccomp filter", Status::Enforced, true);
        assert_eq!(enforcement.check_required(false), Ok(()));
        enforcement.push("memory limit", Status::Partial("rlimit".into()), true);
        enforcement.push("cpu limit", Status::Unsupported("none".into()), true);
        assert_eq!(
            enforcement.check_required(false),
            Err("memory limit: partial (rlimit); cpu limit: not enforced (none)".into())
        );
        assert_eq!(enforcement.check_required(true), Ok(()));
    }

    #[test]
    fn serializes_status_with_detail() {
        let mut enforcement = Enforcement::default();
        enforcement.push("landlock", Status::Partial("ABI 1".into()), false);
        let json = serde_json::to_string(&enforcement).unwrap();
        assert_eq!(
            json,
            r#"[{"rule":"landlock","status":"partial","detail":"ABI 1","required":false}]"#
        );
    }
}
