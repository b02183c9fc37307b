//! The message store's wire protocol, and the plumbing every node shares.
//!
//! - [`codec`]: line framing with a length limit, free of I/O;
//! - [`connection`]: [`FrameReader`]/[`FrameWriter`] over a socket, including
//!   the idle cut for peers of the original system that send no newline;
//! - [`message`]: the typed messages of each conversation;
//! - [`reads`]: what a reader (`lector`) asks the head node and its answers;
//! - [`handshake`]: `peticion` / `confirmacion` / role, for every server;
//! - [`auth`]: the cluster token's challenge and response;
//! - [`register`]: the data node's side of registration (hello, challenge,
//!   proof, welcome, a stale head node refused);
//! - [`telemetry`]: log files plus stdout; [`shutdown`]: SIGTERM and Ctrl-C;
//!   [`backoff`]: jittered reconnect delays; [`timefmt`]: log timestamps;
//! - [`server`]: accepting under a connection cap;
//! - [`http`]: a small bounded HTTP/1.1 GET server for the operator's endpoints;
//!   [`metrics`]: Prometheus helpers; [`status`]: the head node's status snapshot;
//! - [`net`]: the listener and stream traits servers are generic over.
//!
//! The protocol itself is described in `docs/protocol.md`.
#![deny(missing_docs)]

pub mod auth;
pub mod backoff;
pub mod cli;
pub mod codec;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod http;
pub mod key_window;
pub mod message;
pub mod metrics;
pub mod net;
pub mod reads;
pub mod register;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod timefmt;

pub use codec::{DEFAULT_MAX_LINE, Line, LineDecoder};
pub use connection::{Connection, FrameReader, FrameWriter, Framing, ReaderConfig};
pub use error::{FrameError, HandshakeError, ParseError, ReadError};
