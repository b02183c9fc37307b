//! Deterministic simulation of the head node with `turmoil`.
//!
//! The real head node ([`headnode::run_on`]) runs on a simulated network,
//! together with models of data nodes and clients, all in one process and
//! driven by one seed:
//!
//! - [`net`]: newtypes that put turmoil's sockets behind the head node's
//!   network seam ([`protocol::net`]);
//! - [`datanode`]: an async, protocol-exact **model** of a data node. The
//!   real data node writes on a blocking thread with std sockets, which a
//!   simulated network cannot drive, so the model speaks the same protocol
//!   (registration, token challenge, `mensaje`/`recibido`, `ping`/`pong`)
//!   over a [`disk::Disk`] whose unsynced writes a crash discards;
//! - [`client`]: pipelining clients that resend after a lost connection;
//! - [`prober`]: ICMP as the simulated topology allows it;
//! - [`scenario`]: one seed's hosts, fault schedule and invariant checks;
//! - [`trace`]: everything observable, to prove a seed replays exactly.
#![deny(missing_docs)]

pub mod client;
pub mod datanode;
pub mod disk;
pub mod net;
pub mod prober;
pub mod scenario;
pub mod trace;
