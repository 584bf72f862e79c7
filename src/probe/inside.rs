//! `airlock __probe NAME ARGS`: the side of a probe that runs inside the sandbox. It makes
//! one attempt and prints its result as one JSON line, `{"probe": NAME, "result": ...}`.
//! Probes that may be killed midway print `{"progress": ...}` lines before it, so that the
//! host still learns how far they got.

use std::io::Write;

use serde_json::{json, Value};

use super::probes;

/// Exit status of a probe that the binary does not know, or of a failed write.
const PROBE_FAILED: u8 = 125;

/// Runs the probe `name` with the host's `args` and prints its result; returns the exit
/// status.
pub fn run(name: &str, args: &[String]) -> u8 {
    let result = if name == probes::PRIVILEGES_HELPER {
        serde_json::to_value(probes::current_privileges()).unwrap_or_default()
    } else {
        match probes::find(name) {
            Some(probe) => probe.inside(args),
            None => {
                eprintln!(
                    "airlock: unknown probe {name:?}: run `airlock probe --json` for the names"
                );
                return PROBE_FAILED;
            }
        }
    };
    if emit(&json!({ "probe": name, "result": result })) {
        0
    } else {
        PROBE_FAILED
    }
}

/// Prints a progress record of a probe that may be killed before its result.
pub fn progress(value: Value) {
    emit(&json!({ "progress": value }));
}

/// Prints one JSON line and flushes it, so that it reaches the host even if the probe is
/// killed next; returns whether the write worked.
fn emit(value: &Value) -> bool {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{value}")
        .and_then(|()| stdout.flush())
        .is_ok()
}
