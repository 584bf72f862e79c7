//! Thin wrappers over the system calls that libc exposes without a safe interface. Each
//! wrapper holds the one `unsafe` block for its call and turns -1 into `io::Error`.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a path for a system call. Paths with a NUL byte cannot name a file.
pub fn cstring(path: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(path.as_ref().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn check_long(result: libc::c_long) -> io::Result<libc::c_long> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Forks with `flags` (namespace flags) and returns the child's pid, or 0 in the child.
/// With `cgroup`, a directory descriptor of a cgroup v2 group, the child starts in that
/// group (clone3 with CLONE_INTO_CGROUP), which spares the global lock that moving a process
/// between cgroups takes.
///
/// The caller must be single-threaded: the child gets a copy of this thread alone, and any
/// lock another thread held would stay locked forever.
pub fn clone_process(flags: libc::c_int, cgroup: Option<RawFd>) -> io::Result<libc::pid_t> {
    if let Some(cgroup) = cgroup {
        return clone_into_cgroup(flags, cgroup);
    }
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a null stack makes clone behave like fork, so the child runs on a copy of the
    // current stack. The caller guarantees there are no other threads.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    check_long(pid).map(|pid| pid as libc::pid_t)
}

/// `struct clone_args` of clone3(2), up to the `cgroup` field.
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone_into_cgroup(flags: libc::c_int, cgroup: RawFd) -> io::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: flags as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    // SAFETY: `args` is a live `struct clone_args` whose size is passed with it. A zero stack
    // makes the child run on a copy of the current stack, as with fork, and the caller
    // guarantees there are no other threads.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    check_long(pid).map(|pid| pid as libc::pid_t)
}

/// Starts `child(arg)` in a new process that shares this process's memory until it executes
/// a program or exits, as vfork(2) and posix_spawn do; this process is suspended until then.
/// It skips copying the page tables, and the copy-on-write faults after a fork. Returns the
/// child's pid.
///
/// # Safety
///
/// The caller must be single-threaded. `child` runs on `stack` with this process's heap, so
/// it must end in execve or `exit_now` and never return into code that expects the parent's
/// state; `arg` must stay valid until then, which the suspension guarantees.
pub unsafe fn spawn_shared(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &mut Stack,
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: `stack.top()` is the top of a live mapping that only the child uses until this
    // call returns. The caller guarantees the rest, as documented above.
    let pid = unsafe { libc::clone(child, stack.top(), flags, arg) };
    check(pid)
}

/// Starts a child in the new namespaces `flags` that shares this process's memory and, on
/// `stack`, waits until the pipe whose read end is `release_read` reaches end of file, then
/// exits. Meanwhile its namespaces are reachable through /proc/PID/ns. Unlike a fork, it
/// costs no copy of the page tables and no copy-on-write faults in this process. The child
/// closes its copy of `release_write`, so closing this process's copy releases it. Returns
/// the child's pid.
///
/// # Safety
///
/// The caller must be single-threaded, `stack` must outlive the child (wait for it before
/// dropping the stack), and both descriptors must be the two ends of one pipe.
pub unsafe fn spawn_namespace_holder(
    flags: libc::c_int,
    stack: &mut Stack,
    release_read: RawFd,
    release_write: RawFd,
) -> io::Result<libc::pid_t> {
    // Both descriptors travel in the argument's value, since the caller's stack frame may be
    // gone by the time the child reads it.
    let arg = (release_read as u32 as usize | ((release_write as u32 as usize) << 32)) as *mut _;
    let flags = flags | libc::CLONE_VM | libc::SIGCHLD;
    // SAFETY: `stack.top()` is the top of a live mapping that only the child uses, and the
    // caller keeps it until the child has exited. The child touches no memory but its stack.
    let pid = unsafe { libc::clone(hold_until_released, stack.top(), flags, arg) };
    check(pid)
}

/// Makes system call `number` with up to five arguments and returns what the kernel
/// returned: the result, or a negated errno. Unlike libc's `syscall`, it never writes
/// `errno`.
///
/// # Safety
///
/// The arguments must be valid for the system call: pointers must point to memory that
/// lives and has the layout the call expects for its duration.
pub(crate) unsafe fn raw_syscall(number: libc::c_long, args: [usize; 5]) -> isize {
    let result: isize;
    // SAFETY: the syscall instruction enters the kernel with the number and arguments in the
    // registers that the x86-64 Linux system call convention names. It clobbers only rcx and
    // r11, which are declared, and does not touch the stack. The caller vouches for the
    // arguments.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result
}

/// The body of [`spawn_namespace_holder`]'s child: raw system calls only, because it shares
/// the parent's memory, including the C library's state and `errno`.
extern "C" fn hold_until_released(arg: *mut libc::c_void) -> libc::c_int {
    let value = arg as usize;
    let (release_read, release_write) = (value as u32 as usize, (value >> 32) as u32 as usize);
    let mut byte = 0u8;
    let buffer = &mut byte as *mut u8 as usize;
    // SAFETY: close and read act on this child's own descriptor table, and `byte` is on the
    // child's stack. Exit ends this child alone and does not return.
    unsafe {
        raw_syscall(libc::SYS_close, [release_write, 0, 0, 0, 0]);
        raw_syscall(libc::SYS_read, [release_read, buffer, 1, 0, 0]);
        raw_syscall(libc::SYS_exit, [0; 5]);
    }
    0
}

/// Exits this process with status `code` and leaves `work` to a new child process that
/// takes over this process's memory, as a thread would, and exits with what `work` returns.
/// Unlike a fork, this copies no page tables and costs no copy-on-write faults, and the exit
/// of this process unmaps nothing, since the child still uses the memory. If the child
/// cannot be started, `work` runs here before the exit.
///
/// The caller must be single-threaded, since the exit ends its other threads wherever they
/// are, and must have written all of its output: once the child exists, this process runs
/// nothing but its exit, so no destructor or flush runs.
pub fn exit_leaving(code: libc::c_int, work: Box<dyn FnOnce() -> libc::c_int>) -> ! {
    /// As large as a main thread's default stack; only the pages the work touches are used.
    const HEIR_STACK_SIZE: usize = 8 << 20;
    let Ok(stack) = Stack::new(HEIR_STACK_SIZE) else {
        work();
        exit_now(code);
    };
    let arg = Box::into_raw(Box::new(work)).cast::<libc::c_void>();
    let flags = libc::CLONE_VM | libc::SIGCHLD;
    // SAFETY: `stack.top()` is the top of a live mapping that only the child uses, and it is
    // never unmapped, since neither process returns. `arg` owns the boxed work, which the
    // child takes over; from here on this process touches no memory but its own stack.
    let pid = unsafe { libc::clone(run_heir, stack.top(), flags, arg) };
    if pid < 0 {
        // SAFETY: no child started, so `arg` is still the pointer made by `Box::into_raw`
        // above, and nothing else owns it.
        let work = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() -> libc::c_int>>()) };
        work();
        exit_now(code);
    }
    // SAFETY: clearing the address that the kernel zeroes at exit keeps this exit from
    // writing to the C library's thread data, which the child now uses. The call takes a
    // plain value.
    unsafe { libc::syscall(libc::SYS_set_tid_address, 0usize) };
    exit_group(code)
}

/// The body of [`exit_leaving`]'s child.
extern "C" fn run_heir(arg: *mut libc::c_void) -> libc::c_int {
    // The C library's thread data still names the parent's thread. Its abort, where a panic
    // ends, would send SIGABRT to that thread id, which another process may hold by then, so
    // a panic ends this child with an exit instead.
    std::panic::set_hook(Box::new(|_| exit_group(HEIR_PANICKED)));
    // SAFETY: `arg` is the pointer that `exit_leaving` made with `Box::into_raw` and handed
    // to this child alone.
    let work = unsafe { Box::from_raw(arg.cast::<Box<dyn FnOnce() -> libc::c_int>>()) };
    exit_now(work())
}

/// Exit status of [`exit_leaving`]'s child when its work panicked, as a Rust program's.
const HEIR_PANICKED: libc::c_int = 101;

/// Ends the process with `code` through the system call alone.
fn exit_group(code: libc::c_int) -> ! {
    // SAFETY: exit_group takes a plain value and does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, code) };
    unreachable!("exit_group returned")
}

/// Returns how many threads this process has. Procfs gives /proc/self/task a link count of
/// two plus the number of threads, so one stat(2) finds it, where reading the directory
/// or /proc/self/stat takes an open, several reads and a close.
pub fn thread_count() -> Option<usize> {
    use std::os::unix::fs::MetadataExt;
    let links = std::fs::metadata("/proc/self/task").ok()?.nlink();
    usize::try_from(links.checked_sub(2)?).ok()
}

/// Ignores the signals that end a process by default and that a terminal or a process
/// group sends: SIGHUP, SIGINT, SIGQUIT and SIGTERM. Pending ones are discarded.
pub fn ignore_interruptions() {
    for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
        // SAFETY: setting a signal's disposition to SIG_IGN touches no memory.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// An anonymous mapping for a child's stack, with an inaccessible page below it so that an
/// overflow faults instead of writing over other memory. The kernel fills its pages with
/// zeros when they are first touched, so a child that uses a few kilobytes costs a few page
/// faults. A zeroed heap buffer of the same size would fault in every page before the child
/// starts.
pub struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    /// Maps a stack of `len` bytes, plus its guard page.
    pub fn new(len: usize) -> io::Result<Stack> {
        const GUARD: usize = 4096;
        let len = len + GUARD;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE;
        let protection = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: an anonymous mapping at an address of the kernel's choice touches no
        // existing memory.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, protection, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the first page lies inside the mapping made above, which nothing uses yet.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Returns the highest address of the stack, 16-byte aligned, where an x86-64 stack starts.
    pub(crate) fn top(&self) -> *mut libc::c_void {
        ((self.base as usize + self.len) & !15) as *mut libc::c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` describe the mapping made in `new`, which nothing uses
        // once the child that ran on it has executed a program or exited.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Forks the current single-threaded process.
pub fn fork() -> io::Result<libc::pid_t> {
    clone_process(0, None)
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    check_long(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens a pidfd for the child `pid` that this process just started. If that fails, kills and
/// reaps the child, so that no process is left that the caller cannot watch.
pub fn pidfd_of_child(pid: libc::pid_t) -> io::Result<OwnedFd> {
    pidfd_open(pid).inspect_err(|_| {
        let _ = kill(pid, libc::SIGKILL);
        let _ = waitpid(pid, 0);
    })
}

/// Sends `signal` to the process that `pidfd` refers to, which cannot be a reused pid.
pub fn pidfd_send_signal(pidfd: RawFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal, a null siginfo and flags.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check_long(result).map(drop)
}

/// Drops this process's mappings of its own program code, which the kernel maps again from
/// the page cache on the next access. An idle supervisor or init then holds only the few
/// code pages it touches while it waits, instead of everything setup ran through. Only
/// executable file mappings are dropped: their pages are never written, so nothing is lost.
pub fn release_code_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let file_backed = fields.nth(3).is_some_and(|path| path.starts_with('/'));
        if perms != "r-xp" || !file_backed {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a private, read-only, executable file mapping of this process,
        // so discarding its pages loses nothing: the next access reads them from the file.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Returns this process's id.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid takes no arguments and cannot fail.
    unsafe { libc::getpid() }
}

/// Returns the parent of this process.
pub fn getppid() -> libc::pid_t {
    // SAFETY: getppid takes no arguments and cannot fail.
    unsafe { libc::getppid() }
}

/// Returns the size of a memory page in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf takes an integer and returns one.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Clock ticks per second, the unit of CPU times in /proc.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and returns one.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Joins the namespaces in `nstype` of the process that `pidfd` refers to.
pub fn setns(pidfd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and flags.
    check(unsafe { libc::setns(pidfd, nstype) }).map(drop)
}

/// Creates a pipe whose ends are closed on exec; returns (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors are fresh, so these are their only owners.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor with integer arguments touches no memory.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(drop)
}

pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only changes the descriptor table.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Marks every descriptor from `first` up as close-on-exec.
pub fn cloexec_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags in the descriptor table.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    check_long(result).map(drop)
}

/// Closes every descriptor except those in `keep`.
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    // No allocation: a child forked from a process with other threads may run this, and an
    // allocator lock that another thread held at the fork would stay locked in the child.
    const MAX_KEPT: usize = 32;
    let mut sorted = [0 as RawFd; MAX_KEPT];
    let mut count = 0;
    for &fd in keep.iter().filter(|&&fd| fd >= 0) {
        if count == MAX_KEPT {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        sorted[count] = fd;
        count += 1;
    }
    let sorted = &mut sorted[..count];
    sorted.sort_unstable();
    let mut first: libc::c_uint = 0;
    for &fd in sorted.iter() {
        if (fd as libc::c_uint) < first {
            continue;
        }
        let fd = fd as libc::c_uint;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, libc::c_uint::MAX)
}

fn close_range(first: libc::c_uint, last: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range only changes the descriptor table; the caller owns every
    // descriptor in the range and uses none of them afterwards.
    let result = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    check_long(result).map(drop)
}

pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty reads no memory of ours.
    unsafe { libc::isatty(fd) == 1 }
}

/// Returns the file mode and device number of `fd`, or `None` if `fd` is not open.
pub fn fstat_mode(fd: RawFd) -> io::Result<Option<(libc::mode_t, libc::dev_t)>> {
    // SAFETY: stat is plain data, so an all-zero value is valid for the kernel to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a live stat buffer for the call.
    if unsafe { libc::fstat(fd, &mut stat) } == -1 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EBADF) {
            return Ok(None);
        }
        return Err(error);
    }
    Ok(Some((stat.st_mode, stat.st_rdev)))
}

/// Returns the device and inode numbers of the file that `fd` refers to, which may be an
/// O_PATH descriptor.
pub fn fstat_identity(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: stat is plain data, so an all-zero value is valid for the kernel to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a live stat buffer for the call.
    check(unsafe { libc::fstat(fd, &mut stat) })?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Returns the type of the file system `fd` is on, as statfs(2) reports it.
pub fn fstatfs_type(fd: RawFd) -> io::Result<i64> {
    // SAFETY: statfs is plain data, so an all-zero value is valid for the kernel to fill.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a live statfs buffer for the call.
    check(unsafe { libc::fstatfs(fd, &mut stat) })?;
    Ok(fs_type(&stat))
}

/// Returns the file system type of a statfs result. The C libraries declare `f_type` with different
/// integer types; the magic numbers compared against it all fit in 32 bits.
#[allow(clippy::unnecessary_cast)]
pub fn fs_type(stat: &libc::statfs) -> i64 {
    stat.f_type as i64
}

pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr = |value: &Option<CString>| value.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or points to a NUL-terminated string alive for the call.
    let result = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(result).map(drop)
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is a NUL-terminated string alive for the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let new_root = cstring(new_root)?;
    let put_old = cstring(put_old)?;
    // SAFETY: both arguments are NUL-terminated strings alive for the call.
    let result =
        unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check_long(result).map(drop)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// Sets mount attributes on `path` and, with `recursive`, on every mount below it.
pub fn mount_setattr(path: &Path, attr_set: u64, recursive: bool) -> io::Result<()> {
    let path = cstring(path)?;
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is NUL-terminated and `attr` is a live `struct mount_attr` whose size is
    // passed alongside it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check_long(result).map(drop)
}

/// Clones the mount at the directory `dir` into a new detached mount, without the mounts
/// below it; returns its descriptor.
pub fn open_tree_clone(dir: RawFd) -> io::Result<OwnedFd> {
    clone_tree(dir, c"", libc::AT_EMPTY_PATH)
}

/// Clones the mount at `path` like [`open_tree_clone`], in one call instead of an open and
/// a clone. A symlink in the last component of `path` is not followed.
pub fn open_tree_clone_path(path: &Path) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    clone_tree(libc::AT_FDCWD, &path, libc::AT_SYMLINK_NOFOLLOW)
}

fn clone_tree(dir: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | flags as libc::c_uint;
    // SAFETY: `path` is a NUL-terminated string that lives for the call; with AT_EMPTY_PATH
    // an empty one names `dir` itself.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dir, path.as_ptr(), flags) };
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    check_long(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sets attributes on the detached mount `tree`, and, with `userns`, maps its file owners
/// through that user namespace (an idmapped mount).
pub fn mount_setattr_tree(tree: RawFd, attr_set: u64, userns: Option<RawFd>) -> io::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let attr = MountAttr {
        attr_set: attr_set | userns.map_or(0, |_| MOUNT_ATTR_IDMAP),
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd as u64),
    };
    let flags = libc::AT_EMPTY_PATH;
    // SAFETY: the path is an empty NUL-terminated string and `attr` is a live
    // `struct mount_attr` whose size is passed alongside it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check_long(result).map(drop)
}

/// Attaches the detached mount `tree` at `target`.
pub fn move_mount(tree: RawFd, target: &Path) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let target = cstring(target)?;
    // SAFETY: both paths are NUL-terminated strings alive for the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check_long(result).map(drop)
}

/// Sets the real, effective and saved user and group ids to `id` in this user namespace.
pub fn become_id(id: u32) -> io::Result<()> {
    // SAFETY: setresgid and setresuid take integers only.
    check(unsafe { libc::setresgid(id, id, id) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(id, id, id) }).map(drop)
}

/// Creates the device node, FIFO or socket `path`, whose type and permission bits `mode`
/// gives, with device number `device` for a device node.
pub fn mknod(path: &Path, mode: libc::mode_t, device: libc::dev_t) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: `path` is a NUL-terminated string that lives for the call.
    check(unsafe { libc::mknod(path.as_ptr(), mode, device) })?;
    Ok(())
}

pub fn chdir(path: &Path) -> io::Result<()> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated and alive for the call.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes only flags.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

pub fn setgroups_empty() -> io::Result<()> {
    // SAFETY: a zero-length list with a null pointer clears the supplementary groups.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map(drop)
}

pub fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(drop)
}

/// Returns whether `capability` is in this thread's bounding set; fails with EINVAL for a
/// number the kernel does not know.
pub fn capability_in_bounding_set(capability: libc::c_ulong) -> io::Result<bool> {
    // SAFETY: PR_CAPBSET_READ takes an integer argument only.
    let result = check(unsafe {
        libc::prctl(
            libc::PR_CAPBSET_READ,
            capability,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    Ok(result == 1)
}

/// The type of setrlimit's resource argument, which differs between the C libraries.
#[cfg(target_env = "gnu")]
pub type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub type RlimitResource = libc::c_int;

/// Sets the soft and hard limits of `resource` to `limit`, or to the current hard limit
/// where that is lower. Without CAP_SYS_RESOURCE a process cannot raise its hard limit, and
/// the lower limit is the stricter one, so it is kept rather than failing the sandbox.
pub fn setrlimit(resource: RlimitResource, limit: u64) -> io::Result<()> {
    let set = |limit: u64| {
        let value = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: `value` is a valid rlimit for the call.
        check(unsafe { libc::setrlimit(resource, &value) }).map(drop)
    };
    match set(limit) {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
            // SAFETY: rlimit is plain data, so all zeros is a valid value for the kernel to
            // fill.
            let mut current: libc::rlimit = unsafe { std::mem::zeroed() };
            // SAFETY: `current` is live and writable for the call.
            check(unsafe { libc::getrlimit(resource, &mut current) })?;
            if current.rlim_max < limit {
                set(current.rlim_max)
            } else {
                Err(error)
            }
        }
        result => result,
    }
}

/// Clears the effective, permitted and inheritable capability sets of this thread.
pub fn clear_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: version 3 takes two data structs, which `data` provides.
    let result = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check_long(result).map(drop)
}

pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Waits for a child; returns (pid, wait status), or `None` with WNOHANG and nothing ready.
pub fn waitpid(
    pid: libc::pid_t,
    flags: libc::c_int,
) -> io::Result<Option<(libc::pid_t, libc::c_int)>> {
    let mut status = 0;
    // SAFETY: `status` is a valid int for the kernel to fill.
    let result = check(unsafe { libc::waitpid(pid, &mut status, flags) })?;
    Ok((result != 0).then_some((result, status)))
}

/// Builds a signal set from a list of signals.
pub fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the zeroed set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Sets the signal mask of this thread and returns the previous one.
pub fn set_signal_mask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<libc::sigset_t> {
    // SAFETY: both pointers point to valid sigset_t values.
    let old = unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        let result = libc::pthread_sigmask(how, set, &mut old);
        if result != 0 {
            return Err(io::Error::from_raw_os_error(result));
        }
        old
    };
    Ok(old)
}

/// Resets each of `signals` to its default action.
pub fn reset_signal_dispositions(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal, and an invalid
        // number only returns an error.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

/// Waits for one of the signals in `set`, which must be blocked.
pub fn sigwait(set: &libc::sigset_t) -> io::Result<libc::c_int> {
    // SAFETY: `set` is a valid signal set and a null info pointer is allowed.
    check(unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) })
}

pub fn signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: `set` is a valid signal set; -1 asks for a new descriptor.
    let fd = check(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: the descriptor is fresh, so this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal number from a signalfd, or `None` if none is pending.
pub fn read_signalfd(fd: &OwnedFd) -> io::Result<Option<libc::c_int>> {
    // SAFETY: signalfd_siginfo is plain data, so an all-zero value is valid.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: the buffer is `info`, exactly `size` bytes long.
    let read = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if read == -1 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(error);
    }
    Ok(Some(info.ssi_signo as libc::c_int))
}

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: the pointer and length describe the caller's slice.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }) {
        Ok(ready) => Ok(ready as usize),
        Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(error) => Err(error),
    }
}

pub fn read(fd: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buffer`.
    let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    check_long(read as libc::c_long).map(|read| read as usize)
}

pub fn write(fd: RawFd, buffer: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buffer`.
    let written = unsafe { libc::write(fd, buffer.as_ptr().cast(), buffer.len()) };
    check_long(written as libc::c_long).map(|written| written as usize)
}

/// Writes all of `buffer`, retrying after interrupts and short writes.
pub fn write_all(fd: RawFd, mut buffer: &[u8]) -> io::Result<()> {
    while !buffer.is_empty() {
        match write(fd, buffer) {
            Ok(written) => buffer = &buffer[written..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

pub fn ioctl_int(fd: RawFd, request: libc::Ioctl, arg: libc::c_int) -> io::Result<libc::c_int> {
    // SAFETY: the requests used with this wrapper take an integer argument.
    check(unsafe { libc::ioctl(fd, request, arg) })
}

pub fn get_window_size(fd: RawFd) -> io::Result<libc::winsize> {
    // SAFETY: winsize is plain data and TIOCGWINSZ fills it.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        check(libc::ioctl(fd, libc::TIOCGWINSZ, &mut size))?;
        Ok(size)
    }
}

pub fn set_window_size(fd: RawFd, size: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, size) }).map(drop)
}

pub fn tcgetattr(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data and tcgetattr fills it.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        check(libc::tcgetattr(fd, &mut termios))?;
        Ok(termios)
    }
}

pub fn tcsetattr(fd: RawFd, termios: &libc::termios) -> io::Result<()> {
    // SAFETY: tcsetattr reads the termios behind the pointer.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, termios) }).map(drop)
}

pub fn make_raw(termios: &mut libc::termios) {
    // SAFETY: cfmakeraw edits the termios it is given.
    unsafe { libc::cfmakeraw(termios) };
}

/// Opens a file with `flags` (O_CLOEXEC is added).
pub fn open(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    // SAFETY: `path` is NUL-terminated; the mode argument is unused without O_CREAT.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the descriptor is fresh, so this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` relative to the directory `dir` with `flags` (O_CLOEXEC is added).
pub fn openat(dir: RawFd, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = cstring(name)?;
    // SAFETY: `name` is NUL-terminated; the mode argument is unused without O_CREAT.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the descriptor is fresh, so this is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Executes `program` with `argv` and `envp`; returns only on failure.
pub fn execve(program: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let to_pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let argv = to_pointers(argv);
    let envp = to_pointers(envp);
    // SAFETY: `argv` and `envp` are null-terminated arrays of pointers to NUL-terminated
    // strings that outlive the call.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Exits at once, without running destructors or flushing stdio buffers that belong to the
/// parent's copy of this process.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

pub fn geteuid() -> libc::uid_t {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> libc::gid_t {
    // SAFETY: getegid has no arguments and cannot fail.
    unsafe { libc::getegid() }
}

/// Maximum resident set size of this process, in bytes.
pub fn own_max_rss() -> u64 {
    max_rss(libc::RUSAGE_SELF)
}

/// Maximum resident set size of the largest waited-for descendant, in bytes.
pub fn children_max_rss() -> u64 {
    max_rss(libc::RUSAGE_CHILDREN)
}

fn max_rss(who: libc::c_int) -> u64 {
    // SAFETY: rusage is plain data and getrusage fills it.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        (usage.ru_maxrss as u64) * 1024
    }
}

/// Runs `check` in a forked child and returns whether it returned without panicking. The
/// test harness runs tests on threads, while some checks need a single-threaded process, as
/// the launcher and the init are.
#[cfg(test)]
pub(crate) fn passes_in_child(check: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    // SAFETY: the child runs `check` and exits without returning into the harness.
    match unsafe { libc::fork() } {
        0 => {
            let passed = std::panic::catch_unwind(check).is_ok();
            // SAFETY: _exit ends the child without running the harness's exit handlers.
            unsafe { libc::_exit(if passed { 0 } else { 1 }) }
        }
        -1 => panic!("fork: {}", io::Error::last_os_error()),
        child => matches!(waitpid(child, 0), Ok(Some((_, 0)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_follows_threads() {
        assert!(passes_in_child(|| {
            assert_eq!(thread_count(), Some(1));
            let (release, released) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || released.recv());
            assert_eq!(thread_count(), Some(2));
            drop(release);
            let _ = thread.join();
        }));
    }

    /// Finds a cgroup v2 hierarchy this process may create groups in.
    fn v2_mount() -> Option<&'static str> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|path| Path::new(path).join("cgroup.subtree_control").exists() && geteuid() == 0)
    }

    #[test]
    fn clone_into_cgroup_starts_child_there() {
        let Some(mount) = v2_mount() else {
            eprintln!("skipped: needs root and a cgroup v2 hierarchy");
            return;
        };
        let name = format!("airlock-clone3-test-{}", std::process::id());
        let dir = Path::new(mount).join(&name);
        std::fs::create_dir(&dir).unwrap();
        let cgroup = open(&dir, libc::O_RDONLY | libc::O_DIRECTORY).unwrap();
        let expected = format!("0::/{name}\n");
        let expected = expected.as_bytes();
        let pid = clone_process(0, Some(cgroup.as_raw_fd())).unwrap();
        if pid == 0 {
            // Only system calls here: the test process has other threads, whose locks the
            // child must not touch.
            let mut buffer = [0u8; 4096];
            let path = c"/proc/self/cgroup";
            // SAFETY: `path` is NUL-terminated; `buffer` is a live array of its length.
            let read = unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len())
            };
            let content = &buffer[..read.max(0) as usize];
            let found = content.windows(expected.len()).any(|line| line == expected);
            exit_now(if found { 0 } else { 1 });
        }
        let (_, status) = waitpid(pid, 0).unwrap().unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child was not in {name}");
    }
}
