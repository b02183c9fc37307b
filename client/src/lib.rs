//! Clients of the message store.
//!
//! - [`echo`]: Activity 1, against the echo server;
//! - [`store`]: Activity 2, against the head node;
//! - [`session`]: connecting with the handshake and retrying with backoff.

pub mod echo;
pub mod session;
pub mod store;

pub use session::{ClientError, ConnectOptions};
