//! Clients of the message store.
//!
//! - [`echo`]: Activity 1, against the echo server;
//! - [`session`]: connecting with the handshake and retrying with backoff.

pub mod echo;
pub mod session;

pub use session::{ClientError, ConnectOptions};
