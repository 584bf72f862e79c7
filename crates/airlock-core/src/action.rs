//! The actions a front end can ask of Airlock. The CLI parses its arguments into an
//! [`Action`]; the HTTP API and MCP server are meant to parse their requests into the same
//! enum, so every front end drives the core the same way.

use crate::spec::Spec;

#[derive(Debug, Clone)]
pub enum Action {
    /// Run one command in a fresh sandbox and remove the sandbox afterwards.
    Run { backend: String, spec: Spec },
}
