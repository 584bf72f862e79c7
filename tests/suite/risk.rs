//! `--risk`: the lightest backend this host can run that meets the level, as root and as an
//! unprivileged user, and a clear failure that leaves nothing behind where none does.

use std::fs;
use std::path::Path;

use airlock_core::BackendKind;

use super::harness::{describe, run, stderr, stdout, Caller, Workspace, CALLERS};

/// A backend as `policy check --json` lists it for one caller.
#[derive(Debug)]
struct Listed {
    name: String,
    class: String,
    available: bool,
    network_off: bool,
}

/// Lists the backends of this build for `caller`, with the class and availability that the
/// risk choice uses.
fn backends(caller: Caller) -> Vec<Listed> {
    let workspace = Workspace::new(caller);
    let output = run(caller, &["policy", "check", "--json"], workspace.path());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("policy check --json: {error}\n{}", describe(&output)));
    let network = report["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|rule| rule["rule"] == "network limited to a private loopback")
        .cloned()
        .unwrap_or_default();
    report["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|backend| {
            let name = backend["name"].as_str().expect("name").to_owned();
            Listed {
                network_off: network["backends"][&name]["status"] == "enforced",
                class: backend["class"].as_str().expect("class").to_owned(),
                available: backend["available"] == true,
                name,
            }
        })
        .collect()
}

fn class_rank(class: &str) -> u8 {
    match class {
        "chroot" => 0,
        "container" => 1,
        "virtual_machine" => 2,
        "cloud_machine" => 3,
        other => panic!("unknown isolation class {other:?}"),
    }
}

fn meets(level: &str, backend: &Listed) -> bool {
    let rank = class_rank(&backend.class);
    match level {
        "low" => true,
        "medium" => rank >= 1,
        "high" => rank >= 2,
        "critical" => rank == 3 || (rank == 2 && backend.network_off),
        other => panic!("unknown level {other:?}"),
    }
}

/// Returns the backend the documented rule picks: among available backends, the weakest
/// class that meets the level, the default backend first within a class, then list order.
fn expected_choice<'a>(level: &str, listed: &'a [Listed]) -> Option<&'a Listed> {
    let mut ranked: Vec<(usize, &Listed)> = listed.iter().enumerate().collect();
    ranked.sort_by_key(|(index, backend)| {
        (
            class_rank(&backend.class),
            backend.name != "namespace",
            *index,
        )
    });
    ranked
        .into_iter()
        .map(|(_, backend)| backend)
        .find(|backend| backend.available && meets(level, backend))
}

#[test]
fn low_and_medium_choose_lightest_backend() {
    for caller in CALLERS {
        let listed = backends(caller);
        for level in ["low", "medium"] {
            let expected = expected_choice(level, &listed)
                .unwrap_or_else(|| panic!("{caller:?}: nothing meets {level}: {listed:?}"));
            let workspace = Workspace::new(caller);
            let output = run(
                caller,
                &["run", "--risk", level, "--", "echo", "ran"],
                workspace.path(),
            );
            // How another backend runs the command is for its own tests; the default
            // backend's run is checked here.
            if expected.name == BackendKind::default().name() {
                assert!(
                    output.status.success(),
                    "{caller:?} {level}: {}",
                    describe(&output)
                );
                assert_eq!(stdout(&output), "ran\n", "{caller:?} {level}");
            }
            let line = stderr(&output);
            let line = line.lines().next().unwrap_or_default();
            let prefix = format!(
                "airlock: risk {level}: using the {} backend (",
                expected.name
            );
            assert!(
                line.starts_with(&prefix),
                "{caller:?}: {line:?}, expected {prefix:?}"
            );
            if level == "medium" {
                for weaker in listed.iter().filter(|b| class_rank(&b.class) == 0) {
                    let note = format!("{} is too weak", weaker.name);
                    assert!(line.contains(&note), "{caller:?}: {line:?} lacks {note:?}");
                }
            }
        }
    }
}

#[test]
fn risk_choice_recorded_in_audit_log() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let output = run(
        caller,
        &["create", "--json", "--risk", "medium"],
        workspace.path(),
    );
    assert!(output.status.success(), "{}", describe(&output));
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let id = created["id"].as_str().expect("id").to_owned();
    let audit = super::harness::state_dir(caller)
        .join("audit")
        .join(format!("{id}.jsonl"));
    let log = fs::read_to_string(&audit).expect("read audit log");
    let removed = run(caller, &["rm", "--force", &id], workspace.path());
    assert!(removed.status.success(), "{}", describe(&removed));

    let entry: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .find(|entry: &serde_json::Value| entry["event"] == "created")
        .unwrap_or_else(|| panic!("no created entry in {log}"));
    // An entry's fields sit beside its seq, time and hash on the same line.
    assert_eq!(entry["risk"], "medium", "{entry}");
    let choice = entry["backend_choice"].as_str().unwrap_or_default();
    assert!(choice.starts_with("risk medium: using the "), "{entry}");
    assert!(
        choice.contains(entry["backend"].as_str().unwrap_or("?")),
        "{entry}"
    );
}

/// Returns the entries of `dir`, or none when it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn high_and_critical_fail_with_missing_list() {
    for caller in CALLERS {
        let listed = backends(caller);
        for level in ["high", "critical"] {
            if let Some(backend) = expected_choice(level, &listed) {
                eprintln!(
                    "skipped {level} for {caller:?}: {} meets it here",
                    backend.name
                );
                continue;
            }
            let workspace = Workspace::new(caller);
            let state = workspace.path().join("state");
            let state_arg = state.to_str().expect("UTF-8 path").to_owned();
            let output = run(
                caller,
                &[
                    "--state-dir",
                    &state_arg,
                    "run",
                    "--risk",
                    level,
                    "--",
                    "true",
                ],
                workspace.path(),
            );
            assert_eq!(
                output.status.code(),
                Some(125),
                "{caller:?} {level}: {}",
                describe(&output)
            );
            let message = stderr(&output);
            for class in ["a virtual machine", "a cloud machine"] {
                assert!(message.contains(class), "{caller:?} {level}: {message}");
            }
            for backend in listed.iter().filter(|b| meets(level, b)) {
                assert!(message.contains(&backend.name), "{caller:?}: {message}");
            }
            assert!(message.contains("lower --risk"), "{message}");
            assert!(
                entries(&state.join("sandboxes")).is_empty(),
                "{caller:?} left a sandbox"
            );
            assert!(
                entries(&state.join("audit")).is_empty(),
                "{caller:?} left an audit log"
            );
        }
    }
}

#[test]
fn backend_weaker_than_risk_is_rejected() {
    let workspace = Workspace::new(Caller::Root);
    let output = run(
        Caller::Root,
        &[
            "run",
            "--risk",
            "high",
            "--backend",
            "namespace",
            "--",
            "true",
        ],
        workspace.path(),
    );
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    assert!(
        stderr(&output).contains(
            "backend namespace (a container on the host's kernel) does not meet risk high"
        ),
        "{}",
        describe(&output)
    );

    let output = run(
        Caller::Root,
        &[
            "run",
            "--risk",
            "medium",
            "--backend",
            "namespace",
            "--",
            "true",
        ],
        workspace.path(),
    );
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        stderr(&output).contains("as --backend requests"),
        "{}",
        describe(&output)
    );
}

#[test]
fn spec_file_risk_picks_backend() {
    let caller = Caller::Root;
    let workspace = Workspace::new(caller);
    let spec = workspace.path().join("spec.toml");
    fs::write(&spec, "risk = \"medium\"\ncommand = [\"true\"]\n").expect("write spec");
    let spec_arg = spec.to_str().expect("UTF-8 path");
    let output = run(caller, &["run", "--spec", spec_arg], workspace.path());
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        stderr(&output).starts_with("airlock: risk medium: using the "),
        "{}",
        describe(&output)
    );

    // A risk level on the command line replaces the file's choice.
    fs::write(&spec, "risk = \"critical\"\ncommand = [\"true\"]\n").expect("write spec");
    let output = run(
        caller,
        &["run", "--spec", spec_arg, "--risk", "medium"],
        workspace.path(),
    );
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        stderr(&output).starts_with("airlock: risk medium: "),
        "{}",
        describe(&output)
    );
}

#[test]
fn risk_skips_backend_that_would_reject_the_spec() {
    // As root, low picks chroot. Its rlimits cannot enforce a requested memory limit, and its
    // root is host root, so both specs must go to the next lightest backend instead.
    let workspace = Workspace::new(Caller::Root);
    for extra in [["--memory", "1G"], ["--user", "root"]] {
        let mut args = vec!["run", "--risk", "low"];
        args.extend_from_slice(&extra);
        args.extend_from_slice(&["--", "true"]);
        let output = run(Caller::Root, &args, workspace.path());
        assert!(output.status.success(), "{extra:?}: {}", describe(&output));
        assert!(
            stderr(&output).contains("using the namespace backend"),
            "{extra:?}: {}",
            describe(&output)
        );
    }
}
