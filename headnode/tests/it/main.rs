//! The head node's integration tests, in one binary: `headnode::run` in
//! this process on 127.0.0.1:0 with real data nodes on temporary
//! directories, test-support's scripted data nodes, and a fake prober.
//!
//! - [`cluster`]: membership (the token's proof, incarnations, heartbeats
//!   and ICMP, eviction, rejoining, draining), forwarding under load,
//!   original-style peers;
//! - [`replication`]: R copies on distinct nodes, W before the answer, a
//!   key's one id;
//! - [`repair`]: missing copies made again, once; retention left alone;
//! - [`reads`]: `get`, `getkey`, `scan` and `tail` through the head node;
//! - [`limits`]: peers that misbehave, and every bound holding;
//! - [`status`]: `/metrics`, `/healthz`, `/status.json`, the event stream,
//!   the status page;
//! - [`binary`]: the `headnode` binary as a process, stopping on SIGTERM
//!   while nobody reads its stdout;
//! - [`support`]: the in-process cluster and the client connections the
//!   areas share.

mod binary;
mod cluster;
mod limits;
mod reads;
mod repair;
mod replication;
mod status;
mod support;
