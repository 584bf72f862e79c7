//! Kernel features the namespace backend uses beyond namespaces: Landlock, seccomp filters
//! and overlayfs.

use crate::Fact;

/// `SECCOMP_RET_KILL_PROCESS` and `SECCOMP_RET_ERRNO`, the actions Airlock's filter returns.
const SECCOMP_ACTIONS: [(u32, &str); 2] = [(0x8000_0000, "kill_process"), (0x0005_0000, "errno")];

pub fn facts() -> Vec<Fact> {
    vec![landlock_fact(), seccomp_fact(), overlayfs_fact()]
}

fn landlock_fact() -> Fact {
    let kernel = airlock_namespace::landlock::kernel_abi();
    let enforced = airlock_namespace::landlock::effective_abi();
    if kernel == 0 {
        return Fact::missing(
            "landlock",
            "Landlock",
            "this kernel has no Landlock, or it is disabled",
            "boot Linux 5.13 or later with landlock in the lsm= boot parameter; until then the \
             sandbox's write rules rest on its read-only mounts alone",
        );
    }
    Fact::ok(
        "landlock",
        "Landlock",
        format!("ABI {kernel}; Airlock's rules are enforced at ABI {enforced}"),
    )
}

/// Asks the kernel whether it would run a filter that returns each action Airlock uses,
/// without installing one (SECCOMP_GET_ACTION_AVAIL, Linux 4.14 and later).
fn seccomp_fact() -> Fact {
    let mut missing = Vec::new();
    for (action, name) in SECCOMP_ACTIONS {
        // SAFETY: the operation only reads the action through the pointer, which points to a
        // live u32.
        let result = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_GET_ACTION_AVAIL,
                0,
                &action as *const u32,
            )
        };
        if result != 0 {
            missing.push(format!("{name} ({})", std::io::Error::last_os_error()));
        }
    }
    if missing.is_empty() {
        return Fact::ok(
            "seccomp",
            "seccomp filter mode",
            "available, with the errno and kill_process actions",
        );
    }
    Fact::missing(
        "seccomp",
        "seccomp filter mode",
        format!("the kernel rejects the actions {}", missing.join(", ")),
        "use a kernel built with CONFIG_SECCOMP_FILTER, Linux 4.14 or later",
    )
}

fn overlayfs_fact() -> Fact {
    let listed = std::fs::read_to_string("/proc/filesystems").is_ok_and(|filesystems| {
        filesystems
            .lines()
            .any(|line| line.split_whitespace().last() == Some("overlay"))
    });
    if listed {
        Fact::ok("overlayfs", "overlayfs", "listed in /proc/filesystems")
    } else {
        Fact::missing(
            "overlayfs",
            "overlayfs",
            "not listed in /proc/filesystems",
            "load it with `modprobe overlay` as root; without it, use --workspace-mode bind, \
             readonly or none",
        )
    }
}
