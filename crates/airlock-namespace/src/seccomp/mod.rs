//! The seccomp filter of the sandboxed command: system calls an agent never needs fail with
//! EPERM, and system calls of a foreign ABI (x32, i386) kill the process.
//!
//! The filter is one short BPF program: a check of the architecture and the x32 bit, one
//! comparison per denied system call, then argument checks. Its length matters because the
//! kernel verifies and compiles it on every start and runs it on every system call of the
//! command.

mod bpf;

use std::io;

pub use bpf::Program;
use bpf::{Assembler, Test, To};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install the seccomp filter")]
    Install(#[source] io::Error),
}

/// System calls denied outright, grouped by the attack they serve.
const DENIED: &[(&str, &[libc::c_long])] = &[
    (
        "mounts",
        &[
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_fsopen,
            libc::SYS_fsconfig,
            libc::SYS_fsmount,
            libc::SYS_fspick,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_mount_setattr,
        ],
    ),
    ("namespaces", &[libc::SYS_unshare, libc::SYS_setns]),
    (
        "other processes' memory",
        &[
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
        ],
    ),
    (
        "kernel attack surface",
        &[
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_userfaultfd,
        ],
    ),
    (
        "file handles",
        &[libc::SYS_open_by_handle_at, libc::SYS_name_to_handle_at],
    ),
    (
        "host administration",
        &[
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_reboot,
            libc::SYS_acct,
            libc::SYS_syslog,
            libc::SYS_quotactl,
            libc::SYS_iopl,
            libc::SYS_ioperm,
            libc::SYS_chroot,
        ],
    ),
];

/// Flags of clone(2) that create namespaces; all of them are in the low 32 bits.
const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u32;

/// Terminal ioctls that push input into, or take over, another process's terminal. The
/// kernel reads the request as 32 bits, so the filter compares the low 32 bits only, and a
/// request with high bits set cannot slip past it.
const DENIED_IOCTLS: [u32; 2] = [libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

/// fchmodat2(2), added in Linux 6.6.
const SYS_FCHMODAT2: libc::c_long = 452;

/// System calls that set a file mode, and the argument that contains it. A mode with the
/// setuid or setgid bit fails with EPERM. When Airlock runs as root, files that root inside
/// writes to the workspace belong to host root (through the idmapped mount), so a setuid file
/// left there would run as root on the host.
const MODE_ARGUMENTS: [(libc::c_long, u32); 9] = [
    (libc::SYS_chmod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (SYS_FCHMODAT2, 2),
    (libc::SYS_creat, 1),
    (libc::SYS_open, 2),
    (libc::SYS_openat, 3),
    (libc::SYS_mknod, 1),
    (libc::SYS_mknodat, 2),
];
const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Offsets in `struct seccomp_data`: nr, arch, instruction_pointer, args[6]. The low half
// of a 64-bit argument comes first on little-endian x86-64.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const fn offset_arg_low(index: u32) -> u32 {
    16 + 8 * index
}

const fn errno(value: i32) -> u32 {
    RET_ERRNO | value as u32
}

/// Returns the label of the check of the mode in argument `argument`.
fn mode_label(argument: u32) -> &'static str {
    match argument {
        1 => "mode in argument 1",
        2 => "mode in argument 2",
        _ => "mode in argument 3",
    }
}

/// Builds the filter:
///
/// ```text
/// arch != x86-64 or nr has the x32 bit            -> kill
/// nr is a denied system call                      -> EPERM
/// nr is clone3 or openat2                         -> ENOSYS
/// nr is clone with a namespace flag               -> EPERM
/// nr is ioctl with a denied request               -> EPERM
/// nr sets a file mode with the setuid/setgid bit  -> EPERM
/// anything else                                   -> allow
/// ```
///
/// clone3 and openat2 pass their flags in memory, where seccomp cannot read them, so they
/// fail with ENOSYS, and C libraries fall back to clone and openat, whose flags the filter
/// checks.
pub fn build() -> Program {
    let mut asm = Assembler::default();
    native_calls_only(&mut asm);
    for (_, syscalls) in DENIED {
        for &nr in *syscalls {
            asm.jump(Test::Equal, nr as u32, To::Label("eperm"), To::Next);
        }
    }
    for nr in [libc::SYS_clone3, libc::SYS_openat2] {
        asm.jump(Test::Equal, nr as u32, To::Label("enosys"), To::Next);
    }
    let clone = libc::SYS_clone as u32;
    let ioctl = libc::SYS_ioctl as u32;
    asm.jump(Test::Equal, clone, To::Label("clone"), To::Next)
        .jump(Test::Equal, ioctl, To::Label("ioctl"), To::Next);
    for (nr, argument) in MODE_ARGUMENTS {
        asm.jump(
            Test::Equal,
            nr as u32,
            To::Label(mode_label(argument)),
            To::Next,
        );
    }
    asm.ret(RET_ALLOW);

    // The argument checks come before the shared returns, because BPF only jumps forward.
    asm.label("clone").load(offset_arg_low(0)).jump(
        Test::AnyBitSet,
        NAMESPACE_FLAGS,
        To::Label("eperm"),
        To::Label("allow"),
    );

    asm.label("ioctl").load(offset_arg_low(1));
    for request in DENIED_IOCTLS {
        asm.jump(Test::Equal, request, To::Label("eperm"), To::Next);
    }
    asm.goto("allow");

    for argument in [1, 2] {
        asm.label(mode_label(argument))
            .load(offset_arg_low(argument))
            .goto("mode");
    }
    asm.label(mode_label(3))
        .load(offset_arg_low(3))
        .label("mode")
        .jump(Test::AnyBitSet, SETID_BITS, To::Label("eperm"), To::Next);

    asm.label("allow")
        .ret(RET_ALLOW)
        .label("kill")
        .ret(RET_KILL_PROCESS)
        .label("eperm")
        .ret(errno(libc::EPERM))
        .label("enosys")
        .ret(errno(libc::ENOSYS));
    asm.finish()
}

/// Builds the filter of a backend that leaves the other system calls to the host. It only
/// keeps setuid and setgid bits off the files a command creates or changes. A backend that
/// binds the workspace from the host needs it, because a setuid file left there would run
/// with its owner's host privileges.
///
/// ```text
/// arch != x86-64 or nr has the x32 bit            -> kill
/// nr is openat2                                   -> ENOSYS
/// nr is an io_uring call                          -> EPERM
/// nr sets a file mode with the setuid/setgid bit  -> EPERM
/// anything else                                   -> allow
/// ```
///
/// io_uring's requests carry their modes in memory, where seccomp cannot read them, so
/// io_uring is denied outright.
pub fn build_setid_guard() -> Program {
    let mut asm = Assembler::default();
    native_calls_only(&mut asm).jump(
        Test::Equal,
        libc::SYS_openat2 as u32,
        To::Label("enosys"),
        To::Next,
    );
    for nr in [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        asm.jump(Test::Equal, nr as u32, To::Label("eperm"), To::Next);
    }
    for (nr, argument) in MODE_ARGUMENTS {
        asm.jump(
            Test::Equal,
            nr as u32,
            To::Label(mode_label(argument)),
            To::Next,
        );
    }
    asm.ret(RET_ALLOW);
    for argument in [1, 2] {
        asm.label(mode_label(argument))
            .load(offset_arg_low(argument))
            .goto("mode");
    }
    asm.label(mode_label(3))
        .load(offset_arg_low(3))
        .label("mode")
        .jump(Test::AnyBitSet, SETID_BITS, To::Label("eperm"), To::Next)
        .ret(RET_ALLOW)
        .label("kill")
        .ret(RET_KILL_PROCESS)
        .label("eperm")
        .ret(errno(libc::EPERM))
        .label("enosys")
        .ret(errno(libc::ENOSYS));
    asm.finish()
}

/// Builds the filter under which setgroups(2) returns success and changes nothing. It
/// serves a daemon that drops its supplementary groups in a user namespace created by an
/// unprivileged caller, where setgroups is forbidden and the daemon would exit. The groups
/// it keeps are its caller's own.
///
/// ```text
/// arch != x86-64 or nr has the x32 bit  -> kill
/// nr is setgroups                       -> return 0
/// anything else                         -> allow
/// ```
pub fn build_setgroups_no_op() -> Program {
    let mut asm = Assembler::default();
    native_calls_only(&mut asm)
        .jump(
            Test::Equal,
            libc::SYS_setgroups as u32,
            To::Label("no-op"),
            To::Next,
        )
        .ret(RET_ALLOW)
        .label("no-op")
        .ret(errno(0))
        .label("kill")
        .ret(RET_KILL_PROCESS);
    asm.finish()
}

/// Emits the start of every filter: a jump to the label `kill` for a foreign architecture
/// or an x32 call, then the load of the call's number.
fn native_calls_only(asm: &mut Assembler) -> &mut Assembler {
    asm.load(OFFSET_ARCH)
        .jump(Test::Equal, AUDIT_ARCH_X86_64, To::Next, To::Label("kill"))
        .load(OFFSET_NR)
        .jump(Test::AtLeast, X32_SYSCALL_BIT, To::Label("kill"), To::Next)
}

/// Installs `program` on the calling thread. no_new_privs must already be set.
pub fn install(program: &Program) -> Result<(), Error> {
    program.install().map_err(Error::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(nr: libc::c_long, args: [u64; 6]) -> u32 {
        build().evaluate(AUDIT_ARCH_X86_64, nr as u32, args)
    }

    #[test]
    fn setgroups_succeeds_without_effect() {
        let program = build_setgroups_no_op();
        let setgroups = libc::SYS_setgroups as u32;
        assert_eq!(
            program.evaluate(AUDIT_ARCH_X86_64, setgroups, [0; 6]),
            RET_ERRNO
        );
        let getgroups = libc::SYS_getgroups as u32;
        assert_eq!(
            program.evaluate(AUDIT_ARCH_X86_64, getgroups, [0; 6]),
            RET_ALLOW
        );
        assert_eq!(
            program.evaluate(AUDIT_ARCH_X86_64, setgroups | X32_SYSCALL_BIT, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn setid_guard_denies_only_setid_modes() {
        let guard = build_setid_guard();
        let call =
            |nr: libc::c_long, args: [u64; 6]| guard.evaluate(AUDIT_ARCH_X86_64, nr as u32, args);
        assert_eq!(call(libc::SYS_chmod, [0, 0o4755, 0, 0, 0, 0]), EPERM);
        assert_eq!(call(libc::SYS_fchmodat, [0, 0, 0o2755, 0, 0, 0]), EPERM);
        assert_eq!(call(libc::SYS_openat, [0, 0, 0o100, 0o4755, 0, 0]), EPERM);
        assert_eq!(call(libc::SYS_mkdirat, [0, 0, 0o755, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(libc::SYS_chmod, [0, 0o755, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call(libc::SYS_io_uring_setup, [0; 6]), EPERM);
        assert_eq!(call(libc::SYS_chroot, [0; 6]), RET_ALLOW);
        assert_eq!(call(libc::SYS_mount, [0; 6]), RET_ALLOW);
        assert_eq!(
            call(libc::SYS_openat2, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }
    const ENOSYS: u32 = RET_ERRNO | libc::ENOSYS as u32;

    #[test]
    fn denied_syscalls_get_eperm() {
        for (_, syscalls) in DENIED {
            for &nr in *syscalls {
                assert_eq!(call(nr, [0; 6]), EPERM, "syscall {nr}");
            }
        }
    }

    #[test]
    fn ordinary_syscalls_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
        ] {
            assert_eq!(call(nr, [0; 6]), RET_ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn memory_flag_syscalls_get_enosys() {
        assert_eq!(call(libc::SYS_clone3, [0; 6]), ENOSYS);
        assert_eq!(call(libc::SYS_openat2, [0; 6]), ENOSYS);
    }

    #[test]
    fn clone_with_namespace_flag_denied() {
        let fork_flags = (libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u64;
        assert_eq!(
            call(libc::SYS_clone, [fork_flags, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
            let flags = fork_flags | flag as u64;
            assert_eq!(
                call(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]),
                EPERM,
                "{flag:#x}"
            );
        }
    }

    #[test]
    fn terminal_injection_ioctls_denied_on_low_bits() {
        // The request constants are signed on musl and unsigned on glibc.
        let request = |value: libc::Ioctl| u64::from(value as u32);
        let tiocsti = request(libc::TIOCSTI);
        assert_eq!(call(libc::SYS_ioctl, [0, tiocsti, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            call(libc::SYS_ioctl, [0, tiocsti | 1 << 32, 0, 0, 0, 0]),
            EPERM
        );
        let tioclinux = request(libc::TIOCLINUX);
        assert_eq!(call(libc::SYS_ioctl, [0, tioclinux, 0, 0, 0, 0]), EPERM);
        let tcgets = request(libc::TCGETS);
        assert_eq!(call(libc::SYS_ioctl, [0, tcgets, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn setuid_and_setgid_modes_denied() {
        for (nr, argument) in MODE_ARGUMENTS {
            let with_mode = |mode: u32| {
                let mut args = [0u64; 6];
                args[argument as usize] = u64::from(mode);
                call(nr, args)
            };
            assert_eq!(with_mode(0o755), RET_ALLOW, "syscall {nr}");
            assert_eq!(with_mode(0o4755), EPERM, "syscall {nr} setuid");
            assert_eq!(with_mode(0o2755), EPERM, "syscall {nr} setgid");
        }
    }

    #[test]
    fn foreign_abis_killed() {
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        let filter = build();
        assert_eq!(
            filter.evaluate(AUDIT_ARCH_I386, 3, [0; 6]),
            RET_KILL_PROCESS
        );
        let x32_read = X32_SYSCALL_BIT;
        assert_eq!(
            filter.evaluate(AUDIT_ARCH_X86_64, x32_read, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn filter_stays_short() {
        assert!(build().len() < 100, "{} instructions", build().len());
    }
}
