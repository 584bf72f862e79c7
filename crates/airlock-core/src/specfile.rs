//! Spec files: every option of `run` and `create` in TOML.
