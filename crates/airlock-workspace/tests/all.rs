//! Integration tests of the workspace crate, built as one binary.

mod suite;
