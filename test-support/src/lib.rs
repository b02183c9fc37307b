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
//!   closes.
//!
//! Every wait here has a bound, generous enough for a loaded two-core
//! machine, so a stuck peer fails the test instead of hanging it.
//!
//! This crate depends on no crate of the workspace, so every crate can take
//! it as a dev-dependency.
#![deny(missing_docs)]

use std::time::Duration;

pub mod http;
pub mod lines;
pub mod process;
pub mod server;

/// Bound on each wait for another process: to log its address, to finish,
/// to accept a connection, or to answer one read or write.
pub const WAIT: Duration = Duration::from_secs(30);
