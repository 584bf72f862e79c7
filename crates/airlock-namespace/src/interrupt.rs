//! Deferred interruption. SIGINT, SIGTERM and SIGHUP are blocked during a step that must
//! not end half-done, such as a probe run between creating a sandbox or canary and removing
//! it, or the build of a disk image in a temporary directory. The step checks for them
//! while it works, and unwinds through the guards that clean up.

use std::io;

use crate::sys;

/// The signals that request the end of the step.
const INTERRUPTS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The interrupting signals, blocked for as long as this value lives.
pub struct Interrupts {
    previous: libc::sigset_t,
}

/// The signal that interrupted the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by signal {0}")]
pub struct Interrupted(pub libc::c_int);

impl Interrupts {
    pub fn block() -> io::Result<Interrupts> {
        let previous = sys::set_signal_mask(libc::SIG_BLOCK, &sys::sigset(&INTERRUPTS))?;
        Ok(Interrupts { previous })
    }

    /// Returns the interrupting signal that arrived, if one did.
    pub fn pending(&self) -> Option<libc::c_int> {
        // SAFETY: sigset_t is plain data, and sigpending fills it.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pending` is a live sigset_t.
        if unsafe { libc::sigpending(&mut pending) } == -1 {
            return None;
        }
        INTERRUPTS
            .into_iter()
            // SAFETY: `pending` was filled by sigpending, and each signal number is valid.
            .find(|&signal| unsafe { libc::sigismember(&pending, signal) } == 1)
    }

    /// Fails with the interrupting signal if one arrived.
    pub fn check(&self) -> Result<(), Interrupted> {
        match self.pending() {
            Some(signal) => Err(Interrupted(signal)),
            None => Ok(()),
        }
    }
}

impl Drop for Interrupts {
    /// Takes the pending interrupts, which the caller has handled, before the mask is
    /// restored, so that restoring it does not deliver them.
    fn drop(&mut self) {
        let set = sys::sigset(&INTERRUPTS);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `set` and `zero` are live; a null info pointer is allowed.
        while unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) } > 0 {}
        let _ = sys::set_signal_mask(libc::SIG_SETMASK, &self.previous);
    }
}
