//! New file systems as detached mounts (fsopen, fsconfig, fsmount), made in this process or by
//! a helper process that shares its memory and descriptors while this process goes on.
//!
//! The helper is a `clone(CLONE_VM | CLONE_FILES)` child. It costs a stack mapping and a
//! clone, no copy of the page tables, and the mount it makes appears in the parent's
//! descriptor table. Because it shares the memory, the helper also shares the C library's
//! state. So its half allocates nothing (the request's strings are converted beforehand),
//! and it makes its system calls through [`raw_syscall`], which leaves `errno` alone. Both
//! processes use the thread data that contains `errno`, and the parent may be reading its own
//! at that moment.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::sys::{self, cstring, raw_syscall, Stack};

/// A value of one file system parameter.
pub enum Parameter<'a> {
    /// A parameter without a value, such as overlayfs's `userxattr`.
    Flag(&'a str),
    /// A parameter with a string value, such as a path.
    Text(&'a str, &'a OsStr),
}

/// A file system to create, with its parameters already converted for the system calls, so
/// that creating it allocates nothing.
pub struct Request {
    fs_type: &'static CStr,
    parameters: Vec<(CString, Option<CString>)>,
    attributes: u64,
}

impl Request {
    /// Prepares a file system of type `fs_type` with `parameters`, to be mounted with the
    /// mount attributes `attributes` (`MOUNT_ATTR_*`).
    pub fn new(
        fs_type: &'static CStr,
        parameters: &[Parameter<'_>],
        attributes: u64,
    ) -> io::Result<Request> {
        let parameters = parameters
            .iter()
            .map(|parameter| match parameter {
                Parameter::Flag(key) => Ok((cstring(key)?, None)),
                Parameter::Text(key, value) => Ok((cstring(key)?, Some(cstring(value)?))),
            })
            .collect::<io::Result<_>>()?;
        Ok(Request {
            fs_type,
            parameters,
            attributes,
        })
    }

    /// Creates the file system in this process and returns it as a detached mount, for
    /// [`sys::move_mount`].
    pub fn make(&self) -> io::Result<OwnedFd> {
        let fd = self.make_raw().map_err(io::Error::from_raw_os_error)?;
        // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Starts a helper process that creates the file system while this process goes on.
    /// [`Helper::finish`] returns the mount. The caller must be single-threaded.
    pub fn start(self) -> io::Result<Helper> {
        /// Far more than the helper's few frames use; only the pages touched cost memory.
        const HELPER_STACK_SIZE: usize = 256 << 10;
        let stack = Stack::new(HELPER_STACK_SIZE)?;
        let job = Box::new(Job {
            request: self,
            result: AtomicI32::new(NO_RESULT),
        });
        // No exit signal: the parent waits for the helper by its pid, with __WALL, and a
        // SIGCHLD would wake whatever later waits for the parent's other children.
        let flags = libc::CLONE_VM | libc::CLONE_FILES;
        let arg = (&*job as *const Job).cast_mut().cast::<libc::c_void>();
        // SAFETY: `stack.top()` is the top of a live mapping that only the helper uses, and
        // `arg` points to the boxed job. The `Helper` returned owns both and waits for the
        // helper's exit before it frees either. The helper touches no other memory of this
        // process and makes no call into the C library.
        let pid = unsafe { libc::clone(make_in_helper, stack.top(), flags, arg) };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Helper {
            pid,
            job,
            _stack: stack,
            waited: false,
        })
    }

    /// Creates the file system with raw system calls only, and returns the mount's
    /// descriptor or the errno of the call that failed.
    fn make_raw(&self) -> Result<RawFd, i32> {
        const FSOPEN_CLOEXEC: usize = 1;
        // SAFETY: `fs_type` is a NUL-terminated string that lives for the call.
        let context = checked(unsafe {
            raw_syscall(
                libc::SYS_fsopen,
                [self.fs_type.as_ptr() as usize, FSOPEN_CLOEXEC, 0, 0, 0],
            )
        })?;
        let mounted = self.configure_and_mount(context);
        // SAFETY: close takes a descriptor that this function opened and nothing else uses.
        unsafe { raw_syscall(libc::SYS_close, [context, 0, 0, 0, 0]) };
        mounted
    }

    /// Sets the parameters on the file system context `context`, creates the file system
    /// and mounts it, detached.
    fn configure_and_mount(&self, context: usize) -> Result<RawFd, i32> {
        const FSCONFIG_SET_FLAG: usize = 0;
        const FSCONFIG_SET_STRING: usize = 1;
        const FSCONFIG_CMD_CREATE: usize = 6;
        const FSMOUNT_CLOEXEC: usize = 1;
        let configure = |command: usize, key: Option<&CString>, value: Option<&CString>| {
            let pointer = |text: Option<&CString>| text.map_or(0, |text| text.as_ptr() as usize);
            // SAFETY: `key` and `value` are null or NUL-terminated strings that live for the
            // call.
            checked(unsafe {
                raw_syscall(
                    libc::SYS_fsconfig,
                    [context, command, pointer(key), pointer(value), 0],
                )
            })
        };
        for (key, value) in &self.parameters {
            let command = match value {
                Some(_) => FSCONFIG_SET_STRING,
                None => FSCONFIG_SET_FLAG,
            };
            configure(command, Some(key), value.as_ref())?;
        }
        configure(FSCONFIG_CMD_CREATE, None, None)?;
        let attributes = self.attributes as usize;
        // SAFETY: plain integer arguments; the context descriptor is open.
        let mounted = checked(unsafe {
            raw_syscall(
                libc::SYS_fsmount,
                [context, FSMOUNT_CLOEXEC, attributes, 0, 0],
            )
        })?;
        Ok(mounted as RawFd)
    }
}

/// The memory that the helper shares with its parent: the request, and the helper's result,
/// a descriptor or a negated errno.
struct Job {
    request: Request,
    result: AtomicI32,
}

/// The value of [`Job::result`] until the helper stores its result.
const NO_RESULT: i32 = i32::MIN;

/// The body of the helper. Its return value is its exit status, which nothing reads.
extern "C" fn make_in_helper(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the job that `Request::start` boxed, which its `Helper` keeps
    // until this process has exited.
    let job = unsafe { &*arg.cast::<Job>() };
    let result = match job.request.make_raw() {
        Ok(fd) => fd,
        Err(errno) => -errno,
    };
    job.result.store(result, Ordering::Release);
    0
}

/// A file system that a helper process is creating.
pub struct Helper {
    pid: libc::pid_t,
    job: Box<Job>,
    _stack: Stack,
    waited: bool,
}

impl Helper {
    /// Waits for the helper and returns the mount it made. The helper's stack stays mapped
    /// until this value is dropped.
    pub fn finish(&mut self) -> io::Result<OwnedFd> {
        self.wait()?;
        match self.job.result.swap(NO_RESULT, Ordering::Acquire) {
            // SAFETY: the helper stored a fresh descriptor from fsmount, in the descriptor
            // table it shared with this process, and the swap took it out of the job, so
            // nothing else owns it.
            fd if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            NO_RESULT => Err(io::Error::other(
                "the helper process ended without a result",
            )),
            errno => Err(io::Error::from_raw_os_error(-errno)),
        }
    }

    /// Waits until the helper has exited, so that its stack and job can be freed. An error
    /// other than EINTR means the helper is no longer a child of this process (ECHILD): it
    /// has exited and was reaped, so nothing uses its memory either.
    fn wait(&mut self) -> io::Result<()> {
        while !self.waited {
            match sys::waitpid(self.pid, libc::__WALL) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                result => {
                    self.waited = true;
                    result?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Helper {
    /// Waits for the helper, and closes a mount that no caller took.
    fn drop(&mut self) {
        let _ = self.wait();
        let fd = self.job.result.load(Ordering::Acquire);
        if fd >= 0 {
            // SAFETY: the helper stored a fresh descriptor that no caller took.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// Turns a raw system call's return value into its result or its errno.
fn checked(result: isize) -> Result<usize, i32> {
    match result {
        -4095..=-1 => Err(-result as i32),
        _ => Ok(result as usize),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// Runs `check` in a child process, in new user and mount namespaces where it may mount,
    /// and returns whether it passed. Only a single-threaded process may enter a new user
    /// namespace, as the init that starts helpers is.
    fn in_own_mount_namespace(check: fn()) -> bool {
        sys::passes_in_child(move || {
            sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS).unwrap();
            check();
        })
    }

    fn tmpfs(parameters: &[Parameter<'_>]) -> Request {
        Request::new(c"tmpfs", parameters, 0).unwrap()
    }

    #[test]
    fn helper_mount_reaches_parent() {
        assert!(in_own_mount_namespace(|| {
            let size = Parameter::Text("size", OsStr::new("1m"));
            let mounted = tmpfs(&[size]).start().unwrap().finish().unwrap();
            // SAFETY: statfs is plain data, so all zeros is a valid value for fstatfs to fill.
            let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: `stat` is live and writable for the call.
            assert_eq!(unsafe { libc::fstatfs(mounted.as_raw_fd(), &mut stat) }, 0);
            assert_eq!(stat.f_type as i64, libc::TMPFS_MAGIC);
            assert_eq!(stat.f_blocks * stat.f_bsize as u64, 1 << 20);
        }));
    }

    #[test]
    fn helper_returns_parameter_errno() {
        assert!(in_own_mount_namespace(|| {
            let unknown = Parameter::Flag("no-such-option");
            let error = tmpfs(&[unknown]).start().unwrap().finish().unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
        }));
    }

    #[test]
    fn helper_leaves_no_child() {
        assert!(in_own_mount_namespace(|| {
            tmpfs(&[]).start().unwrap().finish().unwrap();
            drop(tmpfs(&[]).start().unwrap());
            let left = sys::waitpid(-1, libc::WNOHANG | libc::__WALL).unwrap_err();
            assert_eq!(left.raw_os_error(), Some(libc::ECHILD));
        }));
    }

    #[test]
    fn make_returns_mount_or_errno() {
        assert!(in_own_mount_namespace(|| {
            let here = tmpfs(&[]).make().unwrap();
            let error = tmpfs(&[Parameter::Flag("no-such-option")]).make();
            assert!(here.as_raw_fd() >= 0);
            assert_eq!(error.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        }));
    }
}
