use super::*;

fn available(name: &'static str, class: IsolationClass) -> Candidate {
    Candidate {
        name,
        class,
        availability: Ok(()),
        network_off: true,
        is_default: name == "namespace",
    }
}

fn unavailable(name: &'static str, class: IsolationClass, reason: &str) -> Candidate {
    Candidate {
        availability: Err(Unavailable {
            reason: reason.into(),
            fix: "install it".into(),
        }),
        ..available(name, class)
    }
}

/// Builds the full ladder as a root caller with every backend usable would see it.
fn ladder() -> Vec<Candidate> {
    vec![
        available("namespace", IsolationClass::Container),
        available("chroot", IsolationClass::Chroot),
        available("nspawn", IsolationClass::Container),
        available("vm", IsolationClass::VirtualMachine),
        available("cloud", IsolationClass::CloudMachine),
    ]
}

fn chosen_name(risk: RiskLevel, candidates: &[Candidate]) -> &'static str {
    let chosen = select(None, Some(risk), candidates).unwrap();
    candidates[chosen.index].name
}

#[test]
fn each_level_takes_lightest_class_meeting_it() {
    let candidates = ladder();
    assert_eq!(chosen_name(RiskLevel::Low, &candidates), "chroot");
    assert_eq!(chosen_name(RiskLevel::Medium, &candidates), "namespace");
    assert_eq!(chosen_name(RiskLevel::High, &candidates), "vm");
    assert_eq!(chosen_name(RiskLevel::Critical, &candidates), "vm");
}

#[test]
fn medium_explains_why_chroot_lost() {
    let candidates = ladder();
    let chosen = select(None, Some(RiskLevel::Medium), &candidates).unwrap();
    assert_eq!(
        chosen.explanation.as_deref(),
        Some(
            "risk medium: using the namespace backend (a container on the host's kernel); \
             chroot is too weak"
        )
    );
    assert_eq!(chosen.risk, Some(RiskLevel::Medium));
}

#[test]
fn unavailable_lighter_backend_is_skipped_with_reason() {
    let mut candidates = ladder();
    candidates[1] = unavailable("chroot", IsolationClass::Chroot, "chroot needs root");
    let chosen = select(None, Some(RiskLevel::Low), &candidates).unwrap();
    assert_eq!(candidates[chosen.index].name, "namespace");
    let explanation = chosen.explanation.unwrap();
    assert!(
        explanation.ends_with("chroot cannot run here: chroot needs root"),
        "{explanation}"
    );
}

#[test]
fn default_backend_wins_within_its_class() {
    let candidates = vec![
        available("nspawn", IsolationClass::Container),
        available("namespace", IsolationClass::Container),
    ];
    assert_eq!(chosen_name(RiskLevel::Medium, &candidates), "namespace");
}

#[test]
fn critical_needs_network_off_on_virtual_machine() {
    let mut candidates = ladder();
    candidates[3].network_off = false;
    assert_eq!(chosen_name(RiskLevel::Critical, &candidates), "cloud");
    assert_eq!(chosen_name(RiskLevel::High, &candidates), "vm");
    let chosen = select(None, Some(RiskLevel::Critical), &candidates).unwrap();
    let explanation = chosen.explanation.unwrap();
    assert!(
        explanation.contains("vm would leave the network on"),
        "{explanation}"
    );
}

#[test]
fn nothing_meets_lists_missing_per_class() {
    let candidates = vec![
        available("namespace", IsolationClass::Container),
        available("chroot", IsolationClass::Chroot),
        unavailable(
            "vm",
            IsolationClass::VirtualMachine,
            "QEMU is not installed",
        ),
    ];
    let error = select(None, Some(RiskLevel::High), &candidates).unwrap_err();
    let SelectionError::NothingMeets { level, missing } = &error else {
        panic!("expected NothingMeets, got {error:?}");
    };
    assert_eq!(*level, RiskLevel::High);
    assert_eq!(
        missing,
        &[
            "a virtual machine: vm cannot run here (QEMU is not installed; fix: install it)",
            "a cloud machine: no backend of this build provides one",
        ]
    );
    let message = error.to_string();
    assert!(
        message.starts_with("risk high needs a virtual machine or stronger"),
        "{message}"
    );
    assert!(message.ends_with("choose a lower --risk"), "{message}");
}

#[test]
fn critical_without_machines_names_both_classes() {
    let candidates = vec![available("namespace", IsolationClass::Container)];
    let error = select(None, Some(RiskLevel::Critical), &candidates).unwrap_err();
    let SelectionError::NothingMeets { missing, .. } = error else {
        panic!("expected NothingMeets");
    };
    assert_eq!(missing.len(), 2);
    assert!(missing[0].starts_with("a virtual machine:"));
    assert!(missing[1].starts_with("a cloud machine:"));
}

#[test]
fn named_backend_must_meet_level() {
    let candidates = ladder();
    let error = select(Some(1), Some(RiskLevel::Medium), &candidates).unwrap_err();
    assert_eq!(
        error,
        SelectionError::TooWeak {
            name: "chroot",
            class: IsolationClass::Chroot,
            level: RiskLevel::Medium
        }
    );
    let chosen = select(Some(2), Some(RiskLevel::Medium), &candidates).unwrap();
    assert_eq!(chosen.index, 2);
    assert!(chosen
        .explanation
        .unwrap()
        .contains("as --backend requests"));
}

#[test]
fn named_backend_without_risk_is_taken_as_is() {
    let mut candidates = ladder();
    candidates[1] = unavailable("chroot", IsolationClass::Chroot, "chroot needs root");
    let chosen = select(Some(1), None, &candidates).unwrap();
    assert_eq!(chosen.index, 1);
    assert_eq!(chosen.explanation, None);
}

#[test]
fn no_request_takes_default_backend() {
    let candidates = ladder();
    let chosen = select(None, None, &candidates).unwrap();
    assert_eq!(candidates[chosen.index].name, "namespace");
    assert_eq!(chosen.risk, None);
}

#[test]
fn levels_parse_by_name() {
    for level in RiskLevel::ALL {
        assert_eq!(level.name().parse::<RiskLevel>(), Ok(level));
    }
    let error = "severe".parse::<RiskLevel>().unwrap_err();
    assert!(error.contains("\"severe\""), "{error}");
}
