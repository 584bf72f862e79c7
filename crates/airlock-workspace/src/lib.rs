//! The copy-on-write workspace: what a sandbox changed in its overlay, and applying it.
