//! The protections of a started container, read from its init's user namespace and cgroup
//! before its command starts, so that a run needs no `GET /info`, which takes Podman 4.3
//! about 0.25 s because it runs its runtime's binaries. This is also stronger evidence than
//! the engine's report: it shows the limits in place, not the engine's support for them.
//!
//! The container can only confirm a protection. Where it confirms none, as when this
//! process cannot see the container's cgroup, or an engine puts the limits on a parent
//! group, the engine's `GET /info` decides, as before the container existed.

use std::fs;
use std::path::{Path, PathBuf};

use airlock_core::Spec;
use airlock_namespace::cgroup::Description;

use crate::engine::Engine;
use crate::protections::Facts;

/// The protections that a container's kernel state confirms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether neither uid 0 nor gid 0 of the container is uid or gid 0 here; `None` where
    /// its identity maps cannot be read.
    pub remapped: Option<bool>,
    /// The memory limit is at most the spec's.
    pub memory: bool,
    /// The memory limit leaves no swap.
    pub swap: bool,
    /// The process limit is at most the spec's, with the init.
    pub pids: bool,
    /// The CPU quota is at most the spec's.
    pub cpu: bool,
    /// The container's cgroup version, where its cgroup was found.
    pub v2: Option<bool>,
}

/// The limits the container was created with, as [`crate::config`] sets them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    memory: u64,
    /// The engine's process limit, which counts the init.
    pids: u64,
    cpus: Option<f64>,
}

impl Expected {
    fn of(spec: &Spec) -> Expected {
        Expected {
            memory: spec.limits.memory.value,
            pids: spec.limits.pids.value.saturating_add(1),
            cpus: spec.limits.cpus.value,
        }
    }
}

/// Returns the facts of the container whose init is host process `init`, in `cgroup`: what
/// the container confirms, and for the rest what the engine reports.
pub fn facts(
    engine: &Engine,
    spec: &Spec,
    init: libc::pid_t,
    cgroup: Option<&Description>,
) -> Facts {
    let observed = observe(init, cgroup, Expected::of(spec));
    let host = Facts::host();
    if observed.settles(spec, &host) {
        tracing::debug!(?observed, "the container confirms its protections");
        return observed.into_facts(host);
    }
    tracing::debug!(
        ?observed,
        "the container leaves protections unconfirmed; asking the engine"
    );
    observed.merge(crate::launch::facts(engine))
}

impl Observed {
    /// Returns whether the observation decides every fact the assessment of `spec` reads.
    fn settles(&self, spec: &Spec, host: &Facts) -> bool {
        self.remapped.is_some()
            && self.memory
            && (self.swap || !host.host_swap)
            && self.pids
            && (self.cpu || spec.limits.cpus.value.is_none())
    }

    /// Returns the facts that this observation alone gives, on top of the host's.
    fn into_facts(self, host: Facts) -> Facts {
        Facts {
            user_namespaces: self.remapped.unwrap_or(false),
            memory: self.memory,
            swap: self.swap,
            cpu: self.cpu,
            pids: self.pids,
            cgroups: self.describe_cgroups(),
            ..host
        }
    }

    /// Returns the engine's `reported` facts with what this observation confirms.
    fn merge(self, reported: Facts) -> Facts {
        let cgroups = if reported.cgroups.is_empty() {
            self.describe_cgroups()
        } else {
            reported.cgroups.clone()
        };
        Facts {
            user_namespaces: self.remapped.unwrap_or(reported.user_namespaces),
            memory: self.memory || reported.memory,
            swap: self.swap || reported.swap,
            cpu: self.cpu || reported.cpu,
            pids: self.pids || reported.pids,
            cgroups,
            ..reported
        }
    }

    fn describe_cgroups(&self) -> String {
        match self.v2 {
            Some(true) => "cgroup v2".to_owned(),
            Some(false) => "cgroup v1".to_owned(),
            None => "an unknown cgroup setup".to_owned(),
        }
    }
}

/// Reads what host process `init`'s identity maps and `cgroup` confirm.
fn observe(init: libc::pid_t, cgroup: Option<&Description>, expected: Expected) -> Observed {
    let map = |name: &str| fs::read_to_string(format!("/proc/{init}/{name}")).ok();
    let remapped = match (map("uid_map"), map("gid_map")) {
        (Some(uids), Some(gids)) => Some(!maps_zero_to_zero(&uids) && !maps_zero_to_zero(&gids)),
        _ => None,
    };
    let limits = cgroup.map(|cgroup| limits(cgroup, expected));
    Observed {
        remapped,
        v2: cgroup.map(|cgroup| cgroup.v2),
        ..limits.unwrap_or_default()
    }
}

/// Returns whether an identity map (`/proc/PID/uid_map` or `gid_map`), lines of `INSIDE
/// OUTSIDE COUNT`, maps id 0 inside to id 0 of the reader's user namespace.
fn maps_zero_to_zero(map: &str) -> bool {
    map.lines().any(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        matches!(fields.as_slice(), [0, 0, count] if *count > 0)
    })
}

/// Reads which of the `expected` limits `cgroup`'s own files hold.
fn limits(cgroup: &Description, expected: Expected) -> Observed {
    let dir = |controller: &str| -> Option<&Path> {
        cgroup
            .dirs
            .iter()
            .find(|(name, _)| name == controller)
            .map(|(_, dir)| dir.as_path())
    };
    let read =
        |controller: &str, file: &str| dir(controller).and_then(|dir| read_limit(&dir.join(file)));
    let at_most =
        |value: Option<Limit>, max: u64| matches!(value, Some(Limit::Value(n)) if n <= max);
    let (memory, swap, pids) = if cgroup.v2 {
        (
            read("memory", "memory.max"),
            matches!(read("memory", "memory.swap.max"), Some(Limit::Value(0))),
            read("pids", "pids.max"),
        )
    } else {
        // The memory and swap limit includes the memory limit, so equal values leave no swap.
        let memory = read("memory", "memory.limit_in_bytes");
        let total = read("memory", "memory.memsw.limit_in_bytes");
        let swap = at_most(memory, expected.memory)
            && matches!((memory, total), (Some(Limit::Value(m)), Some(Limit::Value(t))) if t <= m);
        (memory, swap, read("pids", "pids.max"))
    };
    Observed {
        memory: at_most(memory, expected.memory) && memory != Some(Limit::Value(0)),
        swap,
        pids: at_most(pids, expected.pids),
        cpu: expected.cpus.is_some_and(|cpus| {
            dir("cpu").is_some_and(|dir| cpu_quota_at_most(dir, cgroup.v2, cpus))
        }),
        ..Observed::default()
    }
}

/// A cgroup limit's value: a number, or `max` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Value(u64),
    Unlimited,
}

fn read_limit(path: &PathBuf) -> Option<Limit> {
    parse_limit(fs::read_to_string(path).ok()?.trim())
}

fn parse_limit(text: &str) -> Option<Limit> {
    match text {
        "max" => Some(Limit::Unlimited),
        number => number.parse().ok().map(Limit::Value),
    }
}

/// Returns whether the CPU quota in `dir` allows at most `cpus` CPUs: `cpu.max` (`QUOTA
/// PERIOD`, or `max PERIOD`) in v2, `cpu.cfs_quota_us` over `cpu.cfs_period_us` in v1, where
/// -1 means none.
fn cpu_quota_at_most(dir: &Path, v2: bool, cpus: f64) -> bool {
    let read = |file: &str| fs::read_to_string(dir.join(file)).ok();
    let quota_and_period = if v2 {
        read("cpu.max").and_then(|text| {
            let (quota, period) = text.trim().split_once(' ')?;
            Some((quota.parse::<i64>().ok()?, period.parse::<i64>().ok()?))
        })
    } else {
        read("cpu.cfs_quota_us")
            .zip(read("cpu.cfs_period_us"))
            .and_then(|(quota, period)| {
                Some((quota.trim().parse().ok()?, period.trim().parse().ok()?))
            })
    };
    // The engine rounds the quota to whole microseconds, hence the tolerance of 0.1 %.
    quota_and_period.is_some_and(|(quota, period)| {
        quota > 0 && period > 0 && quota as f64 / period as f64 <= cpus * 1.001
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn expected(cpus: Option<f64>) -> Expected {
        Expected {
            memory: 2 * GIB,
            pids: 1025,
            cpus,
        }
    }

    fn group(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    fn description(dir: &Path, v2: bool) -> Description {
        Description {
            v2,
            dirs: ["memory", "pids", "cpu"]
                .iter()
                .map(|name| (name.to_string(), dir.to_owned()))
                .collect(),
        }
    }

    #[test]
    fn identity_map_maps_root_to_root() {
        assert!(maps_zero_to_zero("         0          0 4294967295\n"));
        assert!(!maps_zero_to_zero("         0     100000      65536\n"));
        assert!(!maps_zero_to_zero("0 1000 1\n1 100000 65536\n"));
        assert!(!maps_zero_to_zero(""));
    }

    #[test]
    fn v1_limits_set_by_the_engine_are_confirmed() {
        let dir = group(&[
            ("memory.limit_in_bytes", "2147483648\n"),
            ("memory.memsw.limit_in_bytes", "2147483648\n"),
            ("pids.max", "1025\n"),
            ("cpu.cfs_quota_us", "50000\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ]);
        let observed = limits(&description(dir.path(), false), expected(Some(0.5)));
        assert!(observed.memory, "{observed:?}");
        assert!(observed.swap, "{observed:?}");
        assert!(observed.pids, "{observed:?}");
        assert!(observed.cpu, "{observed:?}");
    }

    #[test]
    fn v1_missing_or_looser_limits_are_not_confirmed() {
        // The kernel's "no limit" on cgroup v1, and a swap allowance on top of the memory.
        let dir = group(&[
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
            ("pids.max", "max\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ]);
        let observed = limits(&description(dir.path(), false), expected(Some(0.5)));
        assert_eq!(observed, Observed::default());

        let dir = group(&[
            ("memory.limit_in_bytes", "2147483648\n"),
            ("memory.memsw.limit_in_bytes", "4294967296\n"),
            ("pids.max", "4096\n"),
            ("cpu.cfs_quota_us", "200000\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ]);
        let observed = limits(&description(dir.path(), false), expected(Some(0.5)));
        assert!(observed.memory, "{observed:?}");
        assert!(!observed.swap, "swap beyond the memory limit: {observed:?}");
        assert!(
            !observed.pids,
            "more processes than the spec's: {observed:?}"
        );
        assert!(!observed.cpu, "more CPU than the spec's: {observed:?}");
    }

    #[test]
    fn v1_without_swap_accounting_leaves_swap_unconfirmed() {
        let dir = group(&[
            ("memory.limit_in_bytes", "2147483648\n"),
            ("pids.max", "1025\n"),
        ]);
        let observed = limits(&description(dir.path(), false), expected(None));
        assert!(observed.memory, "{observed:?}");
        assert!(observed.pids, "{observed:?}");
        assert!(!observed.swap, "{observed:?}");
        assert!(!observed.cpu, "no CPU limit was requested: {observed:?}");
    }

    #[test]
    fn v2_limits_set_by_the_engine_are_confirmed() {
        let dir = group(&[
            ("memory.max", "2147483648\n"),
            ("memory.swap.max", "0\n"),
            ("pids.max", "1025\n"),
            ("cpu.max", "150000 100000\n"),
        ]);
        let observed = limits(&description(dir.path(), true), expected(Some(1.5)));
        assert!(observed.memory, "{observed:?}");
        assert!(observed.swap, "{observed:?}");
        assert!(observed.pids, "{observed:?}");
        assert!(observed.cpu, "{observed:?}");

        let dir = group(&[
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("pids.max", "max\n"),
            ("cpu.max", "max 100000\n"),
        ]);
        let observed = limits(&description(dir.path(), true), expected(Some(1.5)));
        assert_eq!(observed, Observed::default());
    }

    #[test]
    fn observation_settles_only_what_it_confirms() {
        let spec = Spec::new(vec!["true".into()]);
        let host = Facts {
            host_swap: true,
            ..Facts::host()
        };
        let confirmed = Observed {
            remapped: Some(false),
            memory: true,
            swap: true,
            pids: true,
            cpu: false,
            v2: Some(false),
        };
        assert!(confirmed.settles(&spec, &host));

        let without_swap = Observed {
            swap: false,
            ..confirmed.clone()
        };
        assert!(!without_swap.settles(&spec, &host), "the host has swap");
        let host_without_swap = Facts {
            host_swap: false,
            ..host.clone()
        };
        assert!(without_swap.settles(&spec, &host_without_swap));

        let unknown_user = Observed {
            remapped: None,
            ..confirmed.clone()
        };
        assert!(!unknown_user.settles(&spec, &host));

        let mut with_cpus = spec.clone();
        with_cpus.limits.cpus = airlock_core::Limit::requested(Some(1.0));
        assert!(
            !confirmed.settles(&with_cpus, &host),
            "the CPU quota is unconfirmed"
        );
    }

    #[test]
    fn engine_report_fills_unconfirmed_facts() {
        let observed = Observed {
            remapped: Some(false),
            memory: true,
            ..Observed::default()
        };
        let reported = Facts {
            user_namespaces: true,
            memory: false,
            swap: true,
            pids: false,
            cgroups: "cgroup v1 through the cgroupfs driver".to_owned(),
            ..Facts::host()
        };
        let facts = observed.merge(reported);
        assert!(!facts.user_namespaces, "the identity maps decide");
        assert!(facts.memory, "the container confirms the memory limit");
        assert!(facts.swap, "the engine reports swap limits");
        assert!(!facts.pids, "neither confirms the process limit");
        assert_eq!(facts.cgroups, "cgroup v1 through the cgroupfs driver");
    }
}
