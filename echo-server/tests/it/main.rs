//! The echo server's integration tests, in one binary:
//!
//! - [`echo`]: `echo_server::run` in this process on 127.0.0.1:0, against
//!   line-framed and original-style peers, the connection cap, hostile
//!   input and shutdown;
//! - [`binary`]: the `echo-server` binary as a process, with a stdout that
//!   nobody reads.

mod binary;
mod echo;
