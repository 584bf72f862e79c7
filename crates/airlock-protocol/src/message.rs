//! The control messages, carried as JSON in message frames.

use serde::{Deserialize, Serialize};

/// The version the agent reports in [`Message::Ready`]. A host refuses an agent of another
/// version, since both sides come from the same Airlock binary.
pub const PROTOCOL_VERSION: u32 = 1;

/// How often the agent sends [`Message::Alive`].
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// One control message. Requests go from the host to the agent, and the other messages
/// reply to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The agent serves requests from now on.
    Ready {
        version: u32,
    },
    /// Runs a command. `argv[0]` is searched in the `PATH` of `env`.
    Exec {
        argv: Vec<String>,
        /// The whole environment of the command.
        env: Vec<(String, String)>,
        cwd: String,
        /// Give the command a new pseudo-terminal of this size (rows, columns).
        tty: Option<(u16, u16)>,
        /// The user and group ids the command runs as.
        uid: u32,
        gid: u32,
        /// The host's wall clock when it sent the request, in nanoseconds since the Unix
        /// epoch. The agent sets the guest's clock to it before the command starts, since
        /// the guest's own clock starts from a real-time clock of whole seconds and may
        /// drift.
        #[serde(default)]
        host_time: Option<u64>,
    },
    /// The command runs as process `pid` in the guest.
    Started {
        pid: i32,
    },
    /// The command could not be started. `not_found` distinguishes a missing program from
    /// other failures.
    ExecFailed {
        error: String,
        not_found: bool,
    },
    /// The command ended: with `code` when it exited, `signal` when a signal killed it.
    /// `out_of_memory` is set when the guest kernel's OOM killer killed it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        #[serde(default)]
        out_of_memory: bool,
        /// Set when a fork was refused at the process limit and the agent killed every
        /// command for it.
        #[serde(default)]
        pids_limit: bool,
    },
    /// Sends a signal to the command's process group.
    Signal {
        signal: i32,
    },
    /// Sets the size of the command's terminal.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Sends the bytes of a regular file.
    ReadFile {
        path: String,
    },
    /// Replaces a file with the bytes that follow, created with `mode`.
    WriteFile {
        path: String,
        mode: u32,
    },
    /// Sends `path` and what is below it as a tar stream in file data frames. Symlinks are
    /// sent as symlinks, never followed.
    PackTree {
        path: String,
    },
    /// Unpacks the tar stream that follows in file data frames: into `path` when it is a
    /// directory, else as `path`, whose name replaces the stream's top-level name.
    UnpackTree {
        path: String,
    },
    /// Lists a directory.
    ListDir {
        path: String,
    },
    Entries {
        entries: Vec<DirEntry>,
    },
    /// The request on this channel succeeded.
    Done,
    /// The [`Message::PackTree`] on this channel succeeded, but the stream leaves out
    /// `entries`, device nodes, FIFOs or sockets, and `unnamed` more of them.
    Skipped {
        entries: Vec<SkippedEntry>,
        unnamed: u64,
    },
    /// The request on this channel failed.
    Error {
        message: String,
    },
    /// Ends every process and powers the machine off.
    Shutdown,
    /// Sent by the agent on the control channel every [`HEARTBEAT_INTERVAL`], so that the
    /// host can tell a silent command from a guest that stopped.
    Alive,
    /// A message type this side does not know, from a newer peer.
    #[serde(other)]
    Unknown,
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A file that [`Message::Skipped`] names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEntry {
    pub path: String,
    pub kind: SpecialKind,
}

/// The type of a file that a tar stream of `airlock cp` leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialKind {
    DeviceNode,
    Fifo,
    Socket,
}

/// One entry of [`Message::Entries`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// A symlink's target.
    #[serde(default)]
    pub target: Option<String>,
    /// An overlay whiteout: a character device 0:0 that marks a deleted lower entry.
    #[serde(default)]
    pub whiteout: bool,
    /// An overlay directory marked opaque, which hides every lower entry it lacks.
    #[serde(default)]
    pub opaque: bool,
}
