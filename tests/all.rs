//! Integration tests: each runs the built `airlock` binary against the real kernel, as root
//! and as an unprivileged user. They need root, because they create the unprivileged user
//! and its delegated cgroups.

mod suite;
