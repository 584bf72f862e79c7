//! `airlock doctor`: what this host can run, backend by backend, and the host facts behind
//! it.

use airlock_core::{BackendKind, IsolationClass};
use airlock_host::{Fact, Status};
use serde::Serialize;

use crate::lifecycle;

/// One backend of this build and whether this host and caller can run it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub name: &'static str,
    pub class: IsolationClass,
    pub status: Status,
    /// The reason the backend cannot run; `None` when it can.
    pub reason: Option<String>,
    pub fix: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub backends: Vec<BackendStatus>,
    pub facts: Vec<Fact>,
}

/// Checks every backend and every host fact. Takes up to a few seconds for the QEMU guests.
pub fn examine() -> Report {
    let backends = BackendKind::ALL
        .iter()
        .map(|&kind| {
            let backend = lifecycle::backend(kind);
            let availability = backend.availability();
            BackendStatus {
                name: kind.name(),
                class: backend.class(),
                status: if availability.is_ok() {
                    Status::Ok
                } else {
                    Status::Missing
                },
                reason: availability.as_ref().err().map(|u| u.reason.clone()),
                fix: availability.err().map(|u| u.fix),
            }
        })
        .collect();
    Report {
        backends,
        facts: airlock_host::examine(),
    }
}

/// Prints the report as two tables, with each fix on its own line below its row.
pub fn print(report: &Report) {
    let name_width = report
        .backends
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(0);
    let class_width = report
        .backends
        .iter()
        .map(|b| b.class.describe().len())
        .max()
        .unwrap_or(0);
    println!(
        "{:<name_width$}  {:<class_width$}  STATUS",
        "BACKEND", "CLASS"
    );
    for backend in &report.backends {
        let reason = backend
            .reason
            .as_deref()
            .map_or_else(String::new, |reason| format!(": {reason}"));
        println!(
            "{:<name_width$}  {:<class_width$}  {}{reason}",
            backend.name,
            backend.class.describe(),
            backend.status.name()
        );
        print_fix(backend.fix.as_deref(), name_width + class_width + 4);
    }

    println!();
    let fact_width = report.facts.iter().map(|f| f.name.len()).max().unwrap_or(0);
    println!("{:<fact_width$}  {:<7}  DETAIL", "HOST", "STATUS");
    for fact in &report.facts {
        println!(
            "{:<fact_width$}  {:<7}  {}",
            fact.name,
            fact.status.name(),
            fact.detail
        );
        print_fix(fact.fix.as_deref(), fact_width + 11);
    }
}

fn print_fix(fix: Option<&str>, indent: usize) {
    if let Some(fix) = fix {
        println!("{:indent$}fix: {fix}", "");
    }
}
