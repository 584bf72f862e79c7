//! Sandbox identifiers.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};

/// A random 128-bit sandbox id, printed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SandboxId([u8; 16]);

impl SandboxId {
    /// Draws a new id from the kernel's random source.
    pub fn generate() -> io::Result<Self> {
        let mut bytes = [0u8; 16];
        File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// Parses the 32 hex digits of a printed id.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// Returns the first 12 hex digits, used in hostnames and cgroup names.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SandboxId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_id_is_prefix_of_full_id() {
        let id = SandboxId::generate().unwrap();
        let full = id.to_string();
        assert_eq!(full.len(), 32);
        assert!(full.starts_with(&id.short()));
        assert_eq!(id.short().len(), 12);
    }

    #[test]
    fn printed_id_parses_back() {
        let id = SandboxId::generate().unwrap();
        assert_eq!(SandboxId::parse(&id.to_string()), Some(id));
        assert_eq!(SandboxId::parse("xyz"), None);
        assert_eq!(SandboxId::parse(&"g".repeat(32)), None);
    }

    #[test]
    fn ids_differ() {
        assert_ne!(
            SandboxId::generate().unwrap(),
            SandboxId::generate().unwrap()
        );
    }
}
