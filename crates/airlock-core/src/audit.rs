//! The audit log of a sandbox: append-only JSON lines, each chained to the previous one.
