//! `airlock policy check`: rule by rule, what each backend would enforce for a spec on this
//! host, and whether the chosen backend enforces every rule the spec requires.

use airlock_core::enforcement::rule;
use airlock_core::risk::{self, Candidate};
use airlock_core::{BackendKind, BackendRequest, Enforcement, Spec, Status};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::{lifecycle, selection};

/// One backend's column: whether it can run here and what it would enforce.
struct Column {
    candidate: Candidate,
    enforcement: Enforcement,
}

/// How the backend whose verdict decides the exit status was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum ChosenBy {
    Default,
    Backend,
    Risk,
}

/// The result of a policy check.
pub struct Check {
    columns: Vec<Column>,
    /// Index in `columns` of the backend that decides the verdict; `None` when no backend
    /// could be chosen.
    chosen: Option<usize>,
    chosen_by: ChosenBy,
    /// The reason a risk level picked the backend, or the reason none could be picked.
    explanation: Option<String>,
    /// Rule names in report order: those of [`rule::ALL`] first, then any other a backend
    /// reported.
    rules: Vec<String>,
}

/// Assesses `spec` with the backend `request` names, or with every backend when it names
/// none. A risk level picks the backend as `run --risk` would.
pub fn check(request: BackendRequest, spec: &Spec) -> Check {
    let candidates = selection::candidates(spec);
    let named = request.backend.map(selection::index_of);
    let selected = risk::select(named, request.risk, &candidates);
    let chosen_by = match (request.backend, request.risk) {
        (Some(_), _) => ChosenBy::Backend,
        (None, Some(_)) => ChosenBy::Risk,
        (None, None) => ChosenBy::Default,
    };
    let mut columns: Vec<Column> = BackendKind::ALL
        .iter()
        .zip(candidates)
        .map(|(&kind, candidate)| Column {
            candidate,
            enforcement: lifecycle::backend(kind).assess(spec),
        })
        .collect();
    let (mut chosen, explanation) = match selected {
        Ok(chosen) => (Some(chosen.index), chosen.explanation),
        Err(error) => (None, Some(error.to_string())),
    };
    if let Some(index) = named {
        columns = columns.into_iter().skip(index).take(1).collect();
        chosen = chosen.map(|_| 0);
    }
    let rules = rule_order(&columns);
    Check {
        columns,
        chosen,
        chosen_by,
        explanation,
        rules,
    }
}

fn rule_order(columns: &[Column]) -> Vec<String> {
    let mut rules: Vec<String> = rule::ALL
        .iter()
        .filter(|name| columns.iter().any(|c| c.enforcement.get(name).is_some()))
        .map(|name| name.to_string())
        .collect();
    for column in columns {
        for protection in &column.enforcement.0 {
            if !rules.contains(&protection.rule) {
                rules.push(protection.rule.clone());
            }
        }
    }
    rules
}

impl Check {
    fn is_required(&self, rule: &str) -> bool {
        self.columns.iter().any(|column| {
            column
                .enforcement
                .get(rule)
                .is_some_and(|protection| protection.required)
        })
    }

    fn chosen_column(&self) -> Option<&Column> {
        self.chosen.map(|index| &self.columns[index])
    }

    /// Required rules the chosen backend would not enforce in full.
    fn unmet(&self) -> Vec<String> {
        self.chosen_column().map_or_else(Vec::new, |column| {
            column
                .enforcement
                .unmet()
                .map(|protection| protection.rule.clone())
                .collect()
        })
    }

    /// Returns whether the chosen backend can run here and enforces every required rule.
    pub fn is_met(&self) -> bool {
        self.chosen_column()
            .is_some_and(|column| column.candidate.availability.is_ok())
            && self.unmet().is_empty()
    }

    /// Describes the outcome in one line.
    fn verdict(&self) -> String {
        let Some(column) = self.chosen_column() else {
            return self.explanation.clone().unwrap_or_default();
        };
        let name = column.candidate.name;
        let by = match self.chosen_by {
            ChosenBy::Default => format!("{name} (the default backend)"),
            ChosenBy::Backend => format!("{name} (the backend requested)"),
            ChosenBy::Risk => format!("{name} (the backend the risk level picks)"),
        };
        if let Err(unavailable) = &column.candidate.availability {
            return format!("{by} cannot run here: {unavailable}");
        }
        let unmet = self.unmet();
        if unmet.is_empty() {
            format!("{by} enforces every rule the spec requires")
        } else {
            let rules = if unmet.len() == 1 { "rule" } else { "rules" };
            format!(
                "{by} does not enforce {} required {rules}: {}",
                unmet.len(),
                unmet.join(", ")
            )
        }
    }

    pub fn to_json(&self) -> Value {
        let backends: Vec<Value> = self
            .columns
            .iter()
            .map(|column| {
                let candidate = &column.candidate;
                json!({
                    "name": candidate.name,
                    "class": candidate.class,
                    "available": candidate.availability.is_ok(),
                    "reason": candidate.availability.as_ref().err().map(|u| &u.reason),
                    "fix": candidate.availability.as_ref().err().map(|u| &u.fix),
                })
            })
            .collect();
        let rules: Vec<Value> = self.rules.iter().map(|rule| self.rule_json(rule)).collect();
        json!({
            "chosen": self.chosen_column().map(|column| column.candidate.name),
            "chosen_by": self.chosen_by,
            "explanation": self.explanation,
            "met": self.is_met(),
            "unmet": self.unmet(),
            "verdict": self.verdict(),
            "backends": backends,
            "rules": rules,
        })
    }

    fn rule_json(&self, rule: &str) -> Value {
        let mut by_backend = Map::new();
        for column in &self.columns {
            let status = column
                .enforcement
                .get(rule)
                .map(|protection| json!(protection.status));
            by_backend.insert(
                column.candidate.name.to_owned(),
                status.unwrap_or(Value::Null),
            );
        }
        json!({
            "rule": rule,
            "required": self.is_required(rule),
            "backends": by_backend,
        })
    }

    /// Prints the backends, the rule table, the details of every rule not fully enforced,
    /// and the verdict.
    pub fn print(&self) {
        self.print_backends();
        println!();
        self.print_rules();
        self.print_details();
        println!();
        if let (Some(explanation), Some(_)) = (&self.explanation, self.chosen) {
            println!("{explanation}");
        }
        println!("{}", self.verdict());
    }

    fn print_backends(&self) {
        let name_width = self.name_width();
        let class_width = self
            .columns
            .iter()
            .map(|c| c.candidate.class.describe().len())
            .max()
            .unwrap_or(0);
        println!(
            "{:<name_width$}  {:<class_width$}  HERE",
            "BACKEND", "CLASS"
        );
        for column in &self.columns {
            let candidate = &column.candidate;
            let availability = match &candidate.availability {
                Ok(()) => "available".to_owned(),
                Err(unavailable) => format!("unavailable: {unavailable}"),
            };
            println!(
                "{:<name_width$}  {:<class_width$}  {availability}",
                candidate.name,
                candidate.class.describe()
            );
        }
    }

    fn name_width(&self) -> usize {
        self.columns
            .iter()
            .map(|c| c.candidate.name.len())
            .max()
            .unwrap_or(0)
            .max("BACKEND".len())
    }

    fn print_rules(&self) {
        let rule_width = self.rules.iter().map(String::len).max().unwrap_or(0);
        let cell_width = self.name_width().max("enforced".len());
        let mut header = format!("  {:<rule_width$}", "RULE (* required by the spec)");
        for column in &self.columns {
            header.push_str(&format!("  {:<cell_width$}", column.candidate.name));
        }
        println!("{}", header.trim_end());
        for rule in &self.rules {
            let mark = if self.is_required(rule) { '*' } else { ' ' };
            let mut line = format!("{mark} {rule:<rule_width$}");
            for column in &self.columns {
                let cell = match column.enforcement.get(rule).map(|p| &p.status) {
                    Some(Status::Enforced) => "enforced",
                    Some(Status::Partial(_)) => "partial",
                    Some(Status::Unsupported(_)) => "no",
                    None => "-",
                };
                line.push_str(&format!("  {cell:<cell_width$}"));
            }
            println!("{}", line.trim_end());
        }
    }

    fn print_details(&self) {
        let weaker: Vec<String> = self
            .columns
            .iter()
            .flat_map(|column| {
                column
                    .enforcement
                    .0
                    .iter()
                    .filter(|protection| protection.status != Status::Enforced)
                    .map(move |protection| format!("{}: {protection}", column.candidate.name))
            })
            .collect();
        if weaker.is_empty() {
            return;
        }
        println!();
        for line in weaker {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::IsolationClass;

    fn column(name: &'static str, rules: &[&str]) -> Column {
        let mut enforcement = Enforcement::default();
        for rule in rules {
            enforcement.push(*rule, Status::Enforced, false);
        }
        Column {
            candidate: Candidate {
                name,
                class: IsolationClass::Container,
                availability: Ok(()),
                network_off: true,
                is_default: name == "namespace",
            },
            enforcement,
        }
    }

    #[test]
    fn rule_order_follows_rule_list_then_extras() {
        let columns = [
            column(
                "namespace",
                &[rule::MEMORY, "backend's own rule", rule::FILE_TREE],
            ),
            column("other", &[rule::SECCOMP, "another own rule"]),
        ];
        assert_eq!(
            rule_order(&columns),
            [
                rule::FILE_TREE,
                rule::SECCOMP,
                rule::MEMORY,
                "backend's own rule",
                "another own rule"
            ]
        );
    }
}
