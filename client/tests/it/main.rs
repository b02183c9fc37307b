//! The client's integration tests, in one binary:
//!
//! - [`echo_client`]: `client echo` against an in-process echo server;
//! - [`store`]: `client store` against a fake head node, as a library and
//!   as the binary;
//! - [`bench`]: `client bench`, every reply checked;
//! - [`status`]: `client status` against an HTTP port serving a snapshot;
//! - [`read_cli`]: the arguments of `client get` and `client tail`;
//! - [`reads`]: `client tail` and `client get` against a fake head node:
//!   an incomplete tail asked again, and get's exit status;
//! - [`helpers`]: the echo server and the binary's command line they share.

mod bench;
mod echo_client;
mod helpers;
mod read_cli;
mod reads;
mod status;
mod store;
