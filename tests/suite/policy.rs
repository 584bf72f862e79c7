//! `airlock policy check`: what each backend would enforce for a spec, and the exit status
//! that shows whether the chosen backend meets every rule the spec requires.

use std::fs;

use airlock_core::enforcement::rule;
use airlock_core::BackendKind;

use super::harness::{describe, run, stderr, stdout, Caller, Workspace};

fn check_json(caller: Caller, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let workspace = Workspace::new(caller);
    let mut full = vec!["policy", "check", "--json"];
    full.extend_from_slice(args);
    let output = run(caller, &full, workspace.path());
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON: {error}\n{}", describe(&output)));
    (output.status.code(), report)
}

fn rule_entry<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|entry| entry["rule"] == name)
        .unwrap_or_else(|| panic!("no rule {name:?} in {report}"))
}

#[test]
fn memory_limit_without_cgroup_is_unmet() {
    let (code, report) = check_json(Caller::UserWithoutCgroup, &["--memory", "1G"]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["met"], false, "{report}");
    assert_eq!(report["chosen"], BackendKind::default().name(), "{report}");
    assert_eq!(report["chosen_by"], "default", "{report}");
    assert_eq!(
        report["unmet"],
        serde_json::json!([rule::MEMORY]),
        "{report}"
    );
    let memory = rule_entry(&report, rule::MEMORY);
    assert_eq!(memory["required"], true, "{memory}");
    let namespace = &memory["backends"]["namespace"];
    assert_eq!(namespace["status"], "unsupported", "{memory}");
    assert!(
        namespace["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("delegated"),
        "{memory}"
    );
}

#[test]
fn memory_limit_without_cgroup_text_names_rule() {
    let caller = Caller::UserWithoutCgroup;
    let workspace = Workspace::new(caller);
    let output = run(
        caller,
        &[
            "policy",
            "check",
            "--backend",
            "namespace",
            "--memory",
            "1G",
        ],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let text = stdout(&output);
    let row = text
        .lines()
        .find(|line| line.contains(rule::MEMORY) && !line.contains(':'))
        .unwrap_or_else(|| panic!("no memory row in:\n{text}"));
    assert!(
        row.starts_with('*'),
        "the requested limit is marked required: {row:?}"
    );
    assert!(row.trim_end().ends_with("no"), "{row:?}");
    assert!(
        text.contains("namespace: memory limit: not enforced ("),
        "the detail says why:\n{text}"
    );
    assert!(
        text.contains("does not enforce 1 required rule: memory limit"),
        "{text}"
    );
}

#[test]
fn default_memory_without_cgroup_is_met() {
    // The default limit is applied as far as the host allows, so it is not required.
    let (code, report) = check_json(Caller::UserWithoutCgroup, &[]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        rule_entry(&report, rule::MEMORY)["required"],
        false,
        "{report}"
    );
}

#[test]
fn memory_limit_met_with_cgroups() {
    for caller in [Caller::Root, Caller::User] {
        if caller == Caller::User && !std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
            eprintln!("skipped {caller:?}: the harness delegates cgroup v1 groups only");
            continue;
        }
        let (code, report) = check_json(caller, &["--memory", "1G"]);
        assert_eq!(code, Some(0), "{caller:?}: {report}");
        let memory = rule_entry(&report, rule::MEMORY);
        assert_eq!(
            memory["backends"]["namespace"]["status"], "enforced",
            "{memory}"
        );
    }
}

#[test]
fn rules_in_report_order_per_backend() {
    let (_, report) = check_json(Caller::Root, &[]);
    let names: Vec<&str> = report["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|entry| entry["rule"].as_str())
        .collect();
    let positions: Vec<usize> = names
        .iter()
        .filter_map(|name| rule::ALL.iter().position(|known| known == name))
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "{names:?}"
    );
    let backends: Vec<&str> = report["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|backend| backend["name"].as_str())
        .collect();
    let all: Vec<&str> = BackendKind::ALL.iter().map(|kind| kind.name()).collect();
    assert_eq!(backends, all);
    for entry in report["rules"].as_array().unwrap() {
        for name in &all {
            assert!(
                entry["backends"].get(name).is_some(),
                "{entry} lacks {name}"
            );
        }
    }

    let (_, report) = check_json(Caller::Root, &["--backend", "namespace"]);
    assert_eq!(
        report["backends"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(report["chosen_by"], "backend", "{report}");
}

#[test]
fn spec_file_argument_is_checked() {
    for (caller, expected) in [(Caller::UserWithoutCgroup, 1), (Caller::Root, 0)] {
        let workspace = Workspace::new(caller);
        let spec = workspace.path().join("limits.toml");
        fs::write(&spec, "memory = \"1G\"\n").expect("write spec");
        let output = run(
            caller,
            &["policy", "check", spec.to_str().expect("UTF-8 path")],
            workspace.path(),
        );
        assert_eq!(
            output.status.code(),
            Some(expected),
            "{caller:?}: {}",
            describe(&output)
        );
    }
}

#[test]
fn invalid_input_exits_125() {
    let workspace = Workspace::new(Caller::Root);
    let bad_key = workspace.path().join("bad.toml");
    fs::write(&bad_key, "memroy = \"1G\"\n").expect("write spec");
    let bad_key = bad_key.to_str().expect("UTF-8 path").to_owned();
    for args in [
        vec!["policy", "check", "/nonexistent/spec.toml"],
        vec!["policy", "check", bad_key.as_str()],
        vec!["policy", "check", "--backend", "nope"],
        vec!["policy", "check", "--risk", "severe"],
        vec!["policy", "check", "--memory", "lots"],
    ] {
        let output = run(Caller::Root, &args, workspace.path());
        assert_eq!(
            output.status.code(),
            Some(125),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(
            stderr(&output).starts_with("airlock: "),
            "{args:?}: {}",
            describe(&output)
        );
    }
}

#[test]
fn backend_weaker_than_risk_exits_1() {
    let (code, report) = check_json(Caller::Root, &["--backend", "namespace", "--risk", "high"]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["met"], false, "{report}");
    assert_eq!(report["chosen"], serde_json::Value::Null, "{report}");
    assert!(
        report["verdict"]
            .as_str()
            .unwrap_or_default()
            .contains("does not meet risk high"),
        "{report}"
    );
}
