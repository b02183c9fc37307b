//! node-kit's integration tests, in one binary:
//!
//! - [`http`]: the operator's HTTP server against well-behaved, malformed,
//!   huge, slow and too many peers.

mod http;
