//! Copies the workspace overlay's upper layer out of a guest, through the agent's
//! directory listings and file reads, into the host's `layers/upper`, in the format the
//! namespace backend's overlay leaves there: whiteouts as character devices 0:0, opaque
//! directories marked with `user.overlay.opaque`. `airlock diff` and `apply` then read it
//! as they read any other backend's.
//!
//! The export carries at most [`CopyOutLimit`] bytes of file data, as `airlock cp` does, so
//! a sparse file of a terabyte in the workspace fails the export instead of filling the
//! host's disk. The size in the agent's listing is checked before the file is read, and
//! the bytes that arrive are counted too.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use airlock_core::size::format_bytes_short;
use airlock_core::spec::SANDBOX_WORKSPACE;
use airlock_protocol::{EntryKind, FrameKind, Message};

use crate::client::{Connection, Event, Wait};
use crate::copy::CopyOutLimit;

/// A failure of the export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the agent could not list or read {path:?}: {message}")]
    Agent { path: String, message: String },
    #[error("the connection to the agent ended during the export")]
    Closed,
    #[error("the guest sent nothing, not even its heartbeat, for {} s during the export; stop the sandbox with `airlock stop`", .0.as_secs())]
    Silent(std::time::Duration),
    #[error("cannot write {path:?}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the workspace changes exceed {}, the maximum a copy out of this guest may carry, which is all it can hold: its memory ({}) and disk images ({}). The copy reached it at {path:?}. A sparse file counts at its full size, so remove such a file from /workspace before the sandbox stops, or make it elsewhere, such as in /tmp", format_bytes_short(limit.max_bytes()), format_bytes_short(limit.memory), format_bytes_short(limit.disks))]
    TooLarge { path: String, limit: CopyOutLimit },
}

/// The file data an export may still write.
struct Budget {
    limit: CopyOutLimit,
    remaining: u64,
}

impl Budget {
    /// Takes `bytes` of the guest's file `path` from the budget, or fails when fewer remain.
    fn charge(&mut self, bytes: u64, path: &str) -> Result<(), ExportError> {
        match self.remaining.checked_sub(bytes) {
            Some(remaining) => {
                self.remaining = remaining;
                Ok(())
            }
            None => Err(ExportError::TooLarge {
                path: path.to_owned(),
                limit: self.limit,
            }),
        }
    }
}

/// Copies the guest's directory `guest` into the host's empty directory `host`, with at
/// most `limit` bytes of file data in all.
pub fn upper_layer(
    connection: &mut Connection,
    guest: &str,
    host: &Path,
    limit: CopyOutLimit,
) -> Result<(), ExportError> {
    let mut budget = Budget {
        limit,
        remaining: limit.max_bytes(),
    };
    copy_dir(connection, guest, host, &mut budget).map_err(|error| match error {
        // The user knows the file by its path in the workspace, not in the upper layer.
        ExportError::TooLarge { path, limit } => ExportError::TooLarge {
            path: path.replacen(guest, SANDBOX_WORKSPACE, 1),
            limit,
        },
        other => other,
    })
}

fn copy_dir(
    connection: &mut Connection,
    guest: &str,
    host: &Path,
    budget: &mut Budget,
) -> Result<(), ExportError> {
    let entries = match request(connection, Message::ListDir { path: guest.into() }, None)? {
        Message::Entries { entries } => entries,
        other => return Err(agent_error(guest, other)),
    };
    for entry in entries {
        let guest_path = format!("{guest}/{}", entry.name);
        let host_path = host.join(&entry.name);
        let write_failed = |source| ExportError::Write {
            path: host_path.clone(),
            source,
        };
        if entry.whiteout {
            make_whiteout(&host_path).map_err(write_failed)?;
            continue;
        }
        match entry.kind {
            EntryKind::Dir => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&host_path)
                    .map_err(write_failed)?;
                if entry.opaque {
                    mark_opaque(&host_path).map_err(write_failed)?;
                }
                copy_dir(connection, &guest_path, &host_path, budget)?;
                let mode = std::fs::Permissions::from_mode(entry.mode);
                std::fs::set_permissions(&host_path, mode).map_err(write_failed)?;
            }
            EntryKind::File => {
                // A sparse file fails here, before any of its data is read.
                if entry.size > budget.remaining {
                    return Err(ExportError::TooLarge {
                        path: guest_path,
                        limit: budget.limit,
                    });
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(entry.mode & 0o777)
                    .open(&host_path)
                    .map_err(write_failed)?;
                let message = Message::ReadFile {
                    path: guest_path.clone(),
                };
                match request(connection, message, Some((&mut file, budget, &guest_path)))? {
                    Message::Done => {}
                    other => return Err(agent_error(&guest_path, other)),
                }
                let mode = std::fs::Permissions::from_mode(entry.mode & 0o777);
                std::fs::set_permissions(&host_path, mode).map_err(write_failed)?;
            }
            EntryKind::Symlink => {
                let target = entry.target.unwrap_or_default();
                std::os::unix::fs::symlink(target, &host_path).map_err(write_failed)?;
            }
            // Devices, FIFOs and sockets made in the workspace are not carried out.
            EntryKind::Other => {}
        }
    }
    Ok(())
}

fn agent_error(path: &str, reply: Message) -> ExportError {
    let message = match reply {
        Message::Error { message } => message,
        other => format!("unexpected reply {other:?}"),
    };
    ExportError::Agent {
        path: path.to_owned(),
        message,
    }
}

/// Sends `message` on a new channel and returns the reply. File data goes to the file of
/// `sink`, charged to its budget as data of the guest's file it names.
fn request(
    connection: &mut Connection,
    message: Message,
    mut sink: Option<(&mut File, &mut Budget, &str)>,
) -> Result<Message, ExportError> {
    let channel = connection.open_channel();
    connection
        .send(channel, &message)
        .map_err(|_| ExportError::Closed)?;
    let limit = crate::launch::silence_limit(crate::machine::Accel::Tcg);
    loop {
        // Heartbeats come on the control channel, so a guest that sends nothing for the
        // silence limit has stopped.
        let frame = match connection.next_event(Some(Instant::now() + limit)) {
            Wait::Event(Event::Frame(frame)) => frame,
            Wait::Event(_) => return Err(ExportError::Closed),
            Wait::TimedOut => return Err(ExportError::Silent(limit)),
        };
        if frame.channel != channel {
            continue;
        }
        match frame.kind {
            FrameKind::FileData => {
                if let Some((file, budget, path)) = sink.as_mut() {
                    budget.charge(frame.payload.len() as u64, path)?;
                    file.write_all(&frame.payload)
                        .map_err(|source| ExportError::Write {
                            path: "the workspace's upper layer".into(),
                            source,
                        })?;
                }
            }
            FrameKind::Message => {
                return frame.to_message().map_err(|error| ExportError::Agent {
                    path: String::new(),
                    message: error.to_string(),
                });
            }
            _ => {}
        }
    }
}

fn make_whiteout(path: &Path) -> std::io::Result<()> {
    let path = airlock_namespace::sys::cstring(path)?;
    // SAFETY: `path` is a NUL-terminated string alive for the call. A character device
    // 0:0 is the overlay whiteout, which Linux 5.8 and later let any user create.
    if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR, 0) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mark_opaque(path: &Path) -> std::io::Result<()> {
    let path = airlock_namespace::sys::cstring(path)?;
    let name = c"user.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and the value is one byte that lives for
    // the call.
    let result =
        unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if result == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
