//! What the workspace's integration tests share, so each crate's one test
//! binary (`tests/it/main.rs`) keeps only what is its own.
//!
//! - [`process`]: a workspace binary as a child process: started until it
//!   logs the address it listens on (and killed when the test ends), or run
//!   to its end with its output as text;
//! - [`server`]: a `run(listener, .., shutdown)` future on 127.0.0.1:0 as a
//!   task with a stop switch, and an address where nothing listens;
//! - [`lines`]: a blocking connection whose every read and write is bounded,
//!   and reading one line from it;
//! - [`http`]: a raw HTTP/1.1 exchange and a GET, read until the server
//!   closes;
//! - [`framed`]: one line from the protocol's framed connection, with a
//!   bound;
//! - [`scripted_node`]: a data node driven by the test: it registers with a
//!   head node as the real one does, then says what the test scripts.
//!
//! Every wait here has a bound, generous enough for a loaded two-core
//! machine, so a stuck peer fails the test instead of hanging it.
//!
//! Of the workspace's crates this one depends on `protocol` alone (the
//! wire the scripted node speaks), so every crate but `protocol` can take
//! it as a dev-dependency.
#![deny(missing_docs)]

use std::time::Duration;

pub mod framed;
pub mod http;
pub mod lines;
pub mod process;
pub mod scripted_node;
pub mod server;

/// Bound on each wait for another process: to log its address, to finish,
/// to accept a connection, or to answer one read or write.
pub const WAIT: Duration = Duration::from_secs(30);
