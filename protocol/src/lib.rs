//! The message store's wire protocol: what crosses a socket.
//!
//! - [`codec`]: line framing with a length limit, free of I/O;
//! - [`connection`]: [`FrameReader`]/[`FrameWriter`] over a socket, including
//!   the idle cut for peers of the original system that send no newline;
//! - [`handshake`]: `peticion` / `confirmacion` / role, for every server;
//! - [`ids`]: message ids, node ids, zones, client ids and keys, and the rule
//!   every name follows;
//! - the conversations after the handshake, one module each, as in the
//!   sections of `docs/protocol.md`: [`client`] (`cliente`: messages to
//!   store and their answers), [`datanode`] (`dataNode`: registration,
//!   storing, heartbeats, reads) and [`reader`] (`lector`: reading stored
//!   messages back);
//! - [`auth`]: the cluster token's challenge and response;
//! - [`status`]: the head node's status snapshot, as JSON;
//! - [`net`]: the listener and stream traits servers are generic over;
//! - [`error`]: what goes wrong reading frames and parsing lines, and the
//!   `ERROR <reason>` line that says so.
//!
//! The protocol itself is described in `docs/protocol.md`.
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod codec;
pub mod connection;
pub mod datanode;
pub mod error;
pub mod handshake;
pub mod ids;
pub mod net;
pub mod reader;
pub mod status;

pub use codec::{DEFAULT_MAX_LINE, Line, LineDecoder};
pub use connection::{Connection, FrameReader, FrameWriter, Framing, ReaderConfig};
pub use error::{FrameError, HandshakeError, ParseError, ReadError};
