//! The `vm` backend: each sandbox is a QEMU guest with its own kernel, driven by Airlock's
//! agent inside it.
//!
//! - [`kernel`], [`modules`]: the guest kernel and the modules it needs;
//! - [`cpio`], [`initramfs`]: the initramfs with the agent as `/init`, cached by content.

pub mod cpio;
pub mod error;
pub mod initramfs;
pub mod kernel;
pub mod modules;

pub use error::Error;
