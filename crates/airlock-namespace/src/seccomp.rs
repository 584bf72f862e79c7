//! The seccomp filter of the sandboxed command: system calls an agent never needs fail with
//! EPERM, and system calls of a foreign ABI (x32, i386) kill the process.
//!
//! The filter is one short BPF program: a check of the architecture and the x32 bit, one
//! comparison per denied system call, and argument checks for clone and ioctl. Its length
//! matters because the kernel verifies and compiles it on every start, and runs it on every
//! system call of the command.

use std::io;

/// One BPF instruction, `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// A compiled filter, ready to install.
#[derive(Debug, Clone)]
pub struct Filter(Vec<Instruction>);

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

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn load(offset: u32) -> Instruction {
    Instruction {
        code: LD_W_ABS,
        jt: 0,
        jf: 0,
        k: offset,
    }
}

fn ret(action: u32) -> Instruction {
    Instruction {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: action,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Instruction {
    Instruction { code, jt, jf, k }
}

fn errno(value: i32) -> u32 {
    RET_ERRNO | value as u32
}

/// Builds the filter. Layout, with jumps only forward as BPF requires:
///
/// ```text
/// arch != x86-64 or nr has the x32 bit      -> kill
/// nr is a denied system call                -> EPERM
/// nr is clone3                              -> ENOSYS
/// nr is clone with a namespace flag         -> EPERM
/// nr is ioctl with a denied request         -> EPERM
/// anything else                             -> allow
/// ```
///
/// clone3 passes its flags in memory, where seccomp cannot read them, so it fails with ENOSYS
/// and C libraries fall back to clone, whose flags the filter checks.
pub fn build() -> Filter {
    let denied: Vec<u32> = DENIED
        .iter()
        .flat_map(|(_, syscalls)| syscalls.iter().map(|&nr| nr as u32))
        .collect();
    let mut program = vec![
        load(OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        ret(RET_KILL_PROCESS),
        load(OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        ret(RET_KILL_PROCESS),
    ];
    // Each comparison jumps over the rest of the list and the 4 instructions after it, to
    // the EPERM return. The jump offsets below count the instructions skipped.
    let to_eperm = |index: usize| (denied.len() - index - 1 + 4) as u8;
    for (index, &nr) in denied.iter().enumerate() {
        program.push(jump(JEQ_K, nr, to_eperm(index), 0));
    }
    let clone3 = libc::SYS_clone3 as u32;
    let clone = libc::SYS_clone as u32;
    let ioctl = libc::SYS_ioctl as u32;
    program.extend([
        jump(JEQ_K, clone3, 4, 0), // to the ENOSYS return
        jump(JEQ_K, clone, 4, 0),  // to the clone check
        jump(JEQ_K, ioctl, 7, 0),  // to the ioctl check
        ret(RET_ALLOW),
        ret(errno(libc::EPERM)),
        ret(errno(libc::ENOSYS)),
        // clone: the flags are argument 0.
        load(offset_arg_low(0)),
        jump(JSET_K, NAMESPACE_FLAGS, 0, 1),
        ret(errno(libc::EPERM)),
        ret(RET_ALLOW),
        // ioctl: the request is argument 1.
        load(offset_arg_low(1)),
        jump(JEQ_K, DENIED_IOCTLS[0], 1, 0),
        jump(JEQ_K, DENIED_IOCTLS[1], 0, 1),
        ret(errno(libc::EPERM)),
        ret(RET_ALLOW),
    ]);
    Filter(program)
}

impl Filter {
    /// Installs the filter on the calling thread. no_new_privs must already be set.
    pub fn install(&self) -> Result<(), Error> {
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const Instruction,
        }
        let program = SockFprog {
            len: self.0.len() as u16,
            filter: self.0.as_ptr(),
        };
        const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
        // SAFETY: `program` points to this filter's instructions, which outlive the call;
        // the kernel copies them.
        let result = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const SockFprog,
            )
        };
        if result == -1 {
            return Err(Error::Install(io::Error::last_os_error()));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter on one system call, as the kernel's BPF interpreter would for the
    /// instructions this module emits.
    fn evaluate(filter: &Filter, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (index, arg) in args.iter().enumerate() {
            data[16 + 8 * index..24 + 8 * index].copy_from_slice(&arg.to_le_bytes());
        }
        let mut accumulator = 0u32;
        let mut pc = 0usize;
        loop {
            let instruction = filter.0[pc];
            pc += 1;
            match instruction.code {
                LD_W_ABS => {
                    let offset = instruction.k as usize;
                    accumulator = u32::from_le_bytes(data[offset..offset + 4].try_into().unwrap());
                }
                JEQ_K | JGE_K | JSET_K => {
                    let taken = match instruction.code {
                        JEQ_K => accumulator == instruction.k,
                        JGE_K => accumulator >= instruction.k,
                        _ => accumulator & instruction.k != 0,
                    };
                    pc += usize::from(if taken {
                        instruction.jt
                    } else {
                        instruction.jf
                    });
                }
                RET_K => return instruction.k,
                code => panic!("unexpected instruction code {code:#x}"),
            }
        }
    }

    fn call(nr: libc::c_long, args: [u64; 6]) -> u32 {
        evaluate(&build(), AUDIT_ARCH_X86_64, nr as u32, args)
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

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
    fn clone3_gets_enosys() {
        assert_eq!(
            call(libc::SYS_clone3, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
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
        let tiocsti = libc::TIOCSTI;
        assert_eq!(call(libc::SYS_ioctl, [0, tiocsti, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            call(libc::SYS_ioctl, [0, tiocsti | 1 << 32, 0, 0, 0, 0]),
            EPERM
        );
        let tioclinux = libc::TIOCLINUX;
        assert_eq!(call(libc::SYS_ioctl, [0, tioclinux, 0, 0, 0, 0]), EPERM);
        let tcgets = libc::TCGETS;
        assert_eq!(call(libc::SYS_ioctl, [0, tcgets, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn foreign_abis_killed() {
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        let filter = build();
        assert_eq!(
            evaluate(&filter, AUDIT_ARCH_I386, 3, [0; 6]),
            RET_KILL_PROCESS
        );
        let x32_read = X32_SYSCALL_BIT;
        assert_eq!(
            evaluate(&filter, AUDIT_ARCH_X86_64, x32_read, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn filter_stays_short() {
        assert!(build().len() < 80, "{} instructions", build().len());
    }
}
