//! The protocol between Airlock on the host and its agent inside a machine (a QEMU guest
//! now, a cloud instance later). It runs over any reliable byte stream: a virtio-serial
//! port, a vsock or a TCP connection.
//!
//! The stream carries frames ([`frame`]). Each frame belongs to a channel, so one
//! connection multiplexes several commands and file transfers. Control frames carry one
//! JSON [`Message`]; data frames carry a command's stdin, stdout or stderr, or a file's
//! bytes, without any encoding. An empty data frame ends its stream.
//!
//! One exchange per channel, opened by the host with a request on a channel number it has
//! not used before:
//! - [`Message::Exec`]: the agent answers [`Message::Started`] or [`Message::ExecFailed`],
//!   then streams stdout and stderr, and ends with [`Message::Exited`]. The host sends
//!   stdin, [`Message::Signal`] and [`Message::Resize`] on the same channel meanwhile.
//! - [`Message::ReadFile`]: file data frames, then [`Message::Done`].
//! - [`Message::WriteFile`]: the host sends file data frames and an empty one; the agent
//!   answers [`Message::Done`].
//! - [`Message::PackTree`]: file data frames of a tar stream, then [`Message::Done`].
//! - [`Message::UnpackTree`]: the host sends file data frames of a tar stream and an empty
//!   one, and the agent replies with [`Message::Done`].
//! - [`Message::ListDir`]: the agent answers [`Message::Entries`].
//!
//! Any request can be answered with [`Message::Error`] instead. Channel 0 carries what
//! concerns the whole connection: [`Message::Ready`] from the agent and
//! [`Message::Shutdown`] from the host.

pub mod frame;
pub mod message;

pub use frame::{
    DataStream, Decoder, Frame, FrameError, FrameKind, FrameReader, FrameWriter, MAX_PAYLOAD,
};
pub use message::{
    DirEntry, EntryKind, Message, SkippedEntry, SpecialKind, HEARTBEAT_INTERVAL, PROTOCOL_VERSION,
};

/// The channel of messages that concern the whole connection.
pub const CONTROL_CHANNEL: u32 = 0;
