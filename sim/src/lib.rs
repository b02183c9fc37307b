//! Deterministic simulation of the head node with `turmoil`.
//!
//! The real head node ([`headnode::run_on`]) runs on a simulated network,
//! together with data nodes and models of clients, all in one process and
//! driven by one seed:
//!
//! - [`net`]: newtypes that put turmoil's sockets behind the head node's
//!   network seam ([`protocol::net`]);
//! - [`datanode`]: the real data node's decisions ([`::datanode::node`]) and
//!   registration ([`protocol::datanode::register`]), driven over the
//!   simulated network instead of the real node's blocking thread, and
//!   over a [`disk::Disk`] whose unsynced writes a crash discards;
//! - [`client`]: pipelining clients that resend after a lost connection;
//! - [`reader`]: readers that tail, as `client tail -f` does;
//! - [`heads`]: which head-node process answered, and which head node a
//!   peer connects to (a split brain runs two);
//! - [`clock`]: the data nodes' wall clocks, skewed and stepped;
//! - [`prober`]: ICMP as the simulated topology allows it;
//! - [`scenario`]: one seed's hosts, fault schedule and conditions;
//! - [`check`]: the invariants, by message id, over what a seed recorded;
//! - [`trace`]: everything observable, to prove a seed replays exactly.
#![deny(missing_docs)]

pub mod check;
pub mod client;
pub mod clock;
pub mod datanode;
pub mod disk;
pub mod heads;
pub mod net;
pub mod prober;
pub mod reader;
pub mod scenario;
pub mod trace;
