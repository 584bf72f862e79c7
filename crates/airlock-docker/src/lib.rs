//! The `docker` backend: each sandbox is a container of a Docker-compatible engine, Docker
//! Engine or Podman's API service, driven through its HTTP API on a unix socket.

pub mod engine;
pub mod image;

pub use engine::{Engine, EngineError};
