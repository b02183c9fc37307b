//! Clients of the message store.
//!
//! - [`echo`]: Activity 1, against the echo server;
//! - [`store`]: Activity 2, against the head node, with keyed messages;
//! - [`bench`](mod@bench): load generator with latency percentiles;
//! - [`read`]: `get` and `tail`, reading stored messages back as a reader;
//! - [`reply`]: the head node's answers, read one way by store and bench;
//! - [`session`]: connecting with the handshake and retrying with backoff;
//! - [`status`]: the head node's status, from its HTTP port, as a table.

pub mod bench;
pub mod echo;
pub mod read;
pub mod reply;
pub mod session;
pub mod status;
pub mod store;

pub use session::{ClientError, ConnectOptions};
