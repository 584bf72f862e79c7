//! Whether this host can run vm sandboxes, checked without starting a guest.

use std::path::PathBuf;

use airlock_core::Unavailable;

use crate::kernel;

pub const QEMU: &str = "qemu-system-x86_64";

/// The programs a vm sandbox needs besides QEMU: `mkfs.ext4` for the disk images.
const HELPERS: [(&str, &str); 1] = [("mkfs.ext4", "e2fsprogs")];

/// Returns QEMU's path when QEMU, its helpers and a guest kernel are installed.
pub fn check() -> Result<PathBuf, Unavailable> {
    let qemu = airlock_host::find_program(QEMU).ok_or_else(|| Unavailable {
        reason: format!("{QEMU} is not installed"),
        fix: "install QEMU (Debian: `apt-get install qemu-system-x86`)".into(),
    })?;
    for (program, package) in HELPERS {
        if find(program).is_none() {
            return Err(Unavailable {
                reason: format!("{program} is not installed"),
                fix: format!("install it (Debian: `apt-get install {package}`)"),
            });
        }
    }
    kernel::find(None).map_err(|error| Unavailable {
        reason: "no guest kernel".into(),
        fix: error.to_string(),
    })?;
    Ok(qemu)
}

/// Finds a program in $PATH, or in /usr/sbin and /sbin, where Debian puts mkfs.ext4 but
/// an ordinary user's PATH may not reach.
pub fn find(program: &str) -> Option<PathBuf> {
    airlock_host::find_program(program).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|directory| PathBuf::from(directory).join(program))
            .find(|path| path.is_file())
    })
}
