//! The message store's wire protocol: what crosses a socket.
//!
//! - [`codec`]: line framing with a length limit, free of I/O;
//! - [`connection`]: [`FrameReader`]/[`FrameWriter`] over a socket, including
//!   the idle cut for peers of the original system that send no newline;
//! - [`message`]: the typed messages of each conversation;
//! - [`reads`]: what a reader (`lector`) asks the head node and its answers;
//! - [`handshake`]: `peticion` / `confirmacion` / role, for every server;
//! - [`auth`]: the cluster token's challenge and response;
//! - [`status`]: the head node's status snapshot, as JSON;
//! - [`net`]: the listener and stream traits servers are generic over;
//! - [`error`]: what goes wrong reading frames and parsing lines.
//!
//! The protocol itself is described in `docs/protocol.md`.
#![deny(missing_docs)]

pub mod auth;
pub mod codec;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod message;
pub mod net;
pub mod reads;
pub mod status;

pub use codec::{DEFAULT_MAX_LINE, Line, LineDecoder};
pub use connection::{Connection, FrameReader, FrameWriter, Framing, ReaderConfig};
pub use error::{FrameError, HandshakeError, ParseError, ReadError};
