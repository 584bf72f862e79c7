//! The results of a probe run: one column per backend, one cell per probe, printed as a
//! table for people or as one JSON document for programs.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::host::Canary;
use super::probes::{Finding, Probe, Verdict};

/// The width the table and its reasons fit in.
const WIDTH: usize = 100;
/// The width of the probe names' column.
const NAME_WIDTH: usize = 24;

/// One probe's verdict in one backend, with the canaries the host set up for it.
#[derive(Debug, Clone)]
pub struct Cell {
    pub finding: Finding,
    pub canaries: Vec<Canary>,
}

impl Cell {
    pub fn new(finding: Finding, canaries: Vec<Canary>) -> Cell {
        Cell { finding, canaries }
    }
}

/// Whether a backend's probes ran.
#[derive(Debug, Clone)]
pub enum ColumnState {
    Probed,
    /// The backend cannot run on this host; the reason and the fix.
    Unavailable(String),
    /// The backend can run, but the run lacks an input it needs; the reason and the fix.
    NotProbed(String),
    /// The probes' sandbox could not be created, or the binary not copied into it; the
    /// error.
    Failed(String),
}

/// The results of one backend, or of the unconfined control group.
#[derive(Debug, Clone)]
pub struct Column {
    pub backend: String,
    pub state: ColumnState,
    /// The id of the sandbox the probes ran in, removed by now.
    pub sandbox: Option<String>,
    /// The staging directory of the run, removed by now.
    pub staging: Option<PathBuf>,
    pub seconds: f64,
    /// One cell per probe, in the catalog's order.
    pub cells: Vec<Cell>,
}

impl Column {
    /// Builds a column whose every cell is n/a for the same reason.
    pub fn without_probes(backend: &str, state: ColumnState, probes: &[&dyn Probe]) -> Column {
        let reason = match &state {
            ColumnState::Unavailable(reason) => format!("the backend is not available: {reason}"),
            ColumnState::NotProbed(reason) => format!("not probed: {reason}"),
            ColumnState::Failed(error) => format!("cannot set up the probes' sandbox: {error}"),
            ColumnState::Probed => String::new(),
        };
        let cells = probes
            .iter()
            .map(|_| Cell::new(Finding::not_applicable(reason.clone()), Vec::new()))
            .collect();
        Column {
            backend: backend.to_owned(),
            state,
            sandbox: None,
            staging: None,
            seconds: 0.0,
            cells,
        }
    }
}

/// The whole run.
pub struct Matrix {
    /// The kernel release, as `uname -r` prints it.
    pub kernel: String,
    pub probes: Vec<&'static dyn Probe>,
    pub columns: Vec<Column>,
}

impl Matrix {
    /// Returns whether any backend's probes ran in a sandbox, as opposed to none being
    /// available or creatable.
    pub fn probed_any_backend(&self) -> bool {
        self.columns.iter().any(|column| {
            column.backend != super::UNCONFINED && matches!(column.state, ColumnState::Probed)
        })
    }

    pub fn to_json(&self) -> Value {
        let backends: Vec<Value> = self.columns.iter().map(column_json).collect();
        let probes: Vec<Value> = self
            .probes
            .iter()
            .enumerate()
            .map(|(index, probe)| {
                let mut results = Map::new();
                for column in &self.columns {
                    let cell = &column.cells[index];
                    results.insert(
                        column.backend.clone(),
                        json!({
                            "verdict": cell.finding.verdict,
                            "reason": cell.finding.reason,
                            "canaries": cell.canaries,
                        }),
                    );
                }
                json!({ "name": probe.name(), "attempt": probe.attempt(), "results": results })
            })
            .collect();
        json!({ "kernel": self.kernel, "backends": backends, "probes": probes })
    }

    /// Renders the table of verdicts, then each backend's reasons.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Containment probes on Linux {}\n", self.kernel);
        let widths: Vec<usize> = self
            .columns
            .iter()
            .map(|column| column.backend.len().max(Verdict::Contained.label().len()) + 2)
            .collect();
        let _ = write!(out, "{:<NAME_WIDTH$}", "PROBE");
        for (column, width) in self.columns.iter().zip(&widths) {
            let _ = write!(out, "{:<width$}", column.backend);
        }
        out = out.trim_end().to_owned() + "\n";
        for (index, probe) in self.probes.iter().enumerate() {
            let mut row = format!("{:<NAME_WIDTH$}", probe.name());
            for (column, width) in self.columns.iter().zip(&widths) {
                let _ = write!(
                    row,
                    "{:<width$}",
                    column.cells[index].finding.verdict.label()
                );
            }
            let _ = writeln!(out, "{}", row.trim_end());
        }
        for column in &self.columns {
            out.push('\n');
            self.render_reasons(column, &mut out);
        }
        out
    }

    fn render_reasons(&self, column: &Column, out: &mut String) {
        match &column.state {
            ColumnState::Unavailable(reason) => {
                let text = format!("{}: not available: {reason}", column.backend);
                out.push_str(&wrap("", &text, 2));
                return;
            }
            ColumnState::NotProbed(reason) => {
                let text = format!("{}: not probed: {reason}", column.backend);
                out.push_str(&wrap("", &text, 2));
                return;
            }
            ColumnState::Failed(error) => {
                let text = format!(
                    "{}: cannot set up the probes' sandbox: {error}",
                    column.backend
                );
                out.push_str(&wrap("", &text, 2));
                return;
            }
            ColumnState::Probed => {}
        }
        let place = match &column.sandbox {
            Some(id) => format!("sandbox {}", id.get(..12).unwrap_or(id)),
            None => "on the host, outside any sandbox".to_owned(),
        };
        let _ = writeln!(
            out,
            "{} ({place}, {:.1} s):",
            column.backend, column.seconds
        );
        for (probe, cell) in self.probes.iter().zip(&column.cells) {
            let prefix = format!("  {:<NAME_WIDTH$}", probe.name());
            out.push_str(&wrap(&prefix, &cell.finding.reason, NAME_WIDTH + 2));
        }
    }
}

fn column_json(column: &Column) -> Value {
    let (status, reason) = match &column.state {
        ColumnState::Probed => ("probed", None),
        ColumnState::Unavailable(reason) => ("unavailable", Some(reason)),
        ColumnState::NotProbed(reason) => ("not_probed", Some(reason)),
        ColumnState::Failed(error) => ("failed", Some(error)),
    };
    json!({
        "name": column.backend,
        "status": status,
        "reason": reason,
        "sandbox": column.sandbox,
        "staging": column.staging,
        "seconds": column.seconds,
    })
}

/// Wraps `text` after `prefix` at [`WIDTH`] columns, between words; continuation lines
/// start with `indent` spaces. Returns the lines, each ending in a newline.
fn wrap(prefix: &str, text: &str, indent: usize) -> String {
    let mut out = String::new();
    let mut line = prefix.to_owned();
    let mut line_has_word = false;
    for word in text.split_whitespace() {
        if line_has_word && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(indent);
            line_has_word = false;
        }
        if line_has_word {
            line.push(' ');
        }
        line.push_str(word);
        line_has_word = true;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reason_wrapped_under_indent() {
        let wrapped = wrap(&format!("  {:<24}", "name"), &"word ".repeat(40), 26);
        let lines: Vec<&str> = wrapped.lines().collect();
        assert!(lines.len() > 1, "{wrapped}");
        assert!(lines.iter().all(|line| line.len() <= WIDTH), "{wrapped}");
        assert!(
            lines[0].starts_with("  name                    word"),
            "{wrapped}"
        );
        assert!(lines[1].starts_with(&" ".repeat(26)), "{wrapped}");
        assert!(!lines[1].starts_with(&" ".repeat(27)), "{wrapped}");
    }
}
