//! The seccomp filter of the sandboxed command: system calls an agent never needs fail with
//! EPERM, and system calls of a foreign ABI (x32, i386) kill the process.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
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

/// Flags of clone(2) that create namespaces.
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Terminal ioctls that push input into, or take over, another process's terminal. The
/// kernel compares only the low 32 bits of the request, so the filter does too.
const DENIED_IOCTLS: [u64; 2] = [libc::TIOCSTI, libc::TIOCLINUX];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;

fn condition(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, Error> {
    SeccompCondition::new(arg, len, op, value).map_err(Error::Build)
}

fn rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, syscalls) in DENIED {
        for &syscall in *syscalls {
            rules.insert(syscall, Vec::new());
        }
    }
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag_set = condition(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![flag_set]).map_err(Error::Build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|&request| {
            let is_request = condition(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)?;
            SeccompRule::new(vec![is_request]).map_err(Error::Build)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    Ok(rules)
}

fn statement(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Instructions that kill a process calling in with any ABI but native x86-64. seccompiler
/// checks the architecture but not the x32 bit, which shares the x86-64 audit architecture.
fn foreign_abi_guard() -> Vec<sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // Offsets of `nr` and `arch` in struct seccomp_data.
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    vec![
        statement(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        statement(RET_K, SECCOMP_RET_KILL_PROCESS),
        statement(LD_W_ABS, NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        statement(RET_K, SECCOMP_RET_KILL_PROCESS),
    ]
}

/// Compiles the deny filter; clone3 is handled by a second filter, see [`clone3_filter`].
pub fn deny_filter() -> Result<BpfProgram, Error> {
    let filter = SeccompFilter::new(
        rules()?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(Error::Build)?;
    let program: BpfProgram = filter.try_into().map_err(Error::Compile)?;
    let mut guarded = foreign_abi_guard();
    guarded.extend(program);
    Ok(guarded)
}

/// clone3 passes its flags in memory, where seccomp cannot read them. It fails with ENOSYS,
/// so that C libraries fall back to clone, whose flags the deny filter checks.
pub fn clone3_filter() -> Result<BpfProgram, Error> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(Error::Build)?;
    filter.try_into().map_err(Error::Compile)
}

/// Installs both filters on the calling thread. no_new_privs must already be set.
pub fn install(deny: &BpfProgram, clone3: &BpfProgram) -> Result<(), Error> {
    seccompiler::apply_filter(clone3).map_err(Error::Install)?;
    seccompiler::apply_filter(deny).map_err(Error::Install)
}

/// Names of the denied groups, for the enforcement report.
pub fn denied_groups() -> Vec<&'static str> {
    DENIED.iter().map(|(group, _)| *group).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let deny = deny_filter().unwrap();
        assert!(deny.len() > foreign_abi_guard().len());
        assert!(!clone3_filter().unwrap().is_empty());
    }

    #[test]
    fn guard_kills_x32_and_foreign_arch() {
        let guard = foreign_abi_guard();
        assert_eq!(guard[1].k, AUDIT_ARCH_X86_64);
        assert_eq!(guard[2].k, SECCOMP_RET_KILL_PROCESS);
        assert_eq!(guard[4].k, X32_SYSCALL_BIT);
        assert_eq!(guard[5].k, SECCOMP_RET_KILL_PROCESS);
    }
}
