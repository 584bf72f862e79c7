//! Landlock rules of the sandboxed command: writes are allowed only below /workspace, /tmp,
//! /dev/shm and to device files, whatever the mounts would permit.

use landlock::{
    AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, ABI,
};

/// The newest Landlock ABI these rules use.
const RULES_ABI: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the Landlock ruleset")]
    Ruleset(#[source] landlock::RulesetError),
    #[error("cannot open {path} for a Landlock rule")]
    PathFd {
        path: &'static str,
        #[source]
        source: landlock::PathFdError,
    },
}

/// Returns the Landlock ABI version of the running kernel, or 0 where Landlock is missing or
/// disabled.
pub fn kernel_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute and size 0, this call only returns the ABI version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(version).unwrap_or(0)
}

/// The ABI these rules are enforced at on this kernel: the lower of the kernel's and ours.
pub fn effective_abi() -> u32 {
    kernel_abi().min(RULES_ABI as u32)
}

/// Restricts the calling thread; returns whether every rule was enforced.
///
/// The rules set no scopes (signals, abstract unix sockets): each `airlock exec` applies its
/// own ruleset, so scoped commands of one sandbox could not signal each other or connect to
/// each other's abstract sockets. The sandbox's PID and network namespaces already keep both
/// inside it.
pub fn restrict_self() -> Result<bool, Error> {
    let abi = RULES_ABI;
    let all = AccessFs::from_write(abi);
    let device_files = AccessFs::WriteFile | AccessFs::IoctlDev;
    let rules = [
        ("/workspace", all),
        ("/tmp", all),
        ("/dev/shm", all),
        ("/dev", device_files),
    ];
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_write(abi))
        .map_err(Error::Ruleset)?
        .create()
        .map_err(Error::Ruleset)?;
    for (path, access) in rules {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            Err(source) => return Err(Error::PathFd { path, source }),
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(Error::Ruleset)?;
    }
    let status = ruleset.restrict_self().map_err(Error::Ruleset)?;
    Ok(status.ruleset == RulesetStatus::FullyEnforced)
}
