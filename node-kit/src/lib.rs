//! What every process of the message store needs besides the wire, which
//! is the `protocol` crate's alone.
//!
//! - [`telemetry`]: log files plus stdout; [`timefmt`]: log timestamps;
//! - [`cli`]: the flags and value parsers every binary shares;
//! - [`shutdown`]: SIGTERM and Ctrl-C;
//! - [`backoff`]: jittered reconnect delays, from the caller's random source;
//! - [`server`]: accepting under a connection cap that fits the open-file
//!   limit, and the bounded room for handshakes not yet finished;
//! - [`http`]: a small bounded HTTP/1.1 GET server for the operator's
//!   endpoints; [`metrics`]: Prometheus helpers;
//! - [`key_window`]: the bounded window of recent client keys that the head
//!   node's key table and the data nodes' key index are built on.
#![deny(missing_docs)]

pub mod backoff;
pub mod cli;
pub mod http;
pub mod key_window;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod timefmt;
