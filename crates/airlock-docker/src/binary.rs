//! The Airlock binary that the container runs as its init and exec wrapper. It is bound from
//! the host into an image with a C library of its own, or none, so it must be linked
//! statically: an ELF program without an interpreter (`PT_INTERP`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The type of the program header that names the dynamic loader.
const PT_INTERP: u32 = 3;

/// Returns the path of the running binary, checked to be statically linked.
pub fn running() -> Result<PathBuf, Error> {
    // A path rather than /proc/self/exe, which the engine would resolve in its own process.
    let path = std::env::current_exe().map_err(Error::CurrentExe)?;
    if is_static(&path) {
        Ok(path)
    } else {
        Err(Error::BinaryNotStatic { path })
    }
}

/// Returns whether `image`, the start of a file, is a 64-bit little-endian ELF program whose
/// program headers (within `image`) name no interpreter.
fn is_static_elf(image: &[u8]) -> bool {
    let read = |offset: usize, len: usize| image.get(offset..offset + len);
    let word = |offset| read(offset, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let long =
        |offset| read(offset, 4).map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")));
    let quad =
        |offset| read(offset, 8).map(|b| u64::from_le_bytes(b.try_into().expect("eight bytes")));
    // ELF magic, 64-bit class, little-endian data.
    if read(0, 6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(table), Some(size), Some(count)) = (quad(0x20), word(0x36), word(0x38)) else {
        return false;
    };
    let Ok(table) = usize::try_from(table) else {
        return false;
    };
    (0..count).all(|index| {
        let kind = long(table + index * size);
        kind.is_some_and(|kind| kind != PT_INTERP)
    })
}

/// Returns whether `path` names a statically linked program; false where it cannot be read.
pub fn is_static(path: &Path) -> bool {
    let mut header = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(64 * 1024).read_to_end(&mut header))
        .is_ok_and(|_| is_static_elf(&header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_are_told_from_static_ones() {
        // /bin/sh on a Debian host is dynamically linked.
        assert!(!is_static(Path::new("/bin/sh")));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(b""));
    }

    #[test]
    fn test_binary_static_on_musl_only() {
        let path = std::env::current_exe().unwrap();
        let expected = cfg!(target_env = "musl");
        assert_eq!(is_static(&path), expected, "{}", path.display());
    }
}
