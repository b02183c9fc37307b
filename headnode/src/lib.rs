//! The head node: accepts clients and data nodes on one port, forwards each
//! client message to `--replicas` live data nodes chosen at random, and
//! answers the client once `--min-replicas` of them have written it.
//!
//! The crate has two floors:
//! - `state`, below: decisions and state, with no sockets and no tasks.
//!   [`membership`] (who is in the cluster, who has failed), a message's
//!   envelope (`forward`), the key table, the router, the copies in flight
//!   on one node, recovery, the tail's merge and watermark, the repair
//!   schedule, the status counters, reads in flight and the reply window.
//!   Nothing there imports from `tasks`; where a decision depends on time,
//!   the time comes in as an argument.
//! - `tasks`, above: one file per task that does I/O, each calling down:
//!   the accept loop, registration, the client, data-node and reader
//!   sessions, the membership task (`cluster`), the waiting room, the
//!   repair pass, the status page and its ticker, and the ICMP [`prober`].
//!   What every connection task shares lives there too.
//!
//! [`config`] holds the settings, their defaults and their bounds.
//!
//! [`run`] is the entry point for the binary and the tests; [`run_on`] is
//! the same server on any [`Listener`] (a simulated network's, say), and
//! [`run_with_http`] adds the operator's HTTP port.

use std::future::Future;

use protocol::net::Listener;
use tokio::net::TcpListener;

pub mod config;
mod error;
mod state;
mod tasks;

pub use config::{Config, ConfigError, DEFAULT_STICKY_RUN, Limits};
pub use error::RunError;
pub use state::forward::IdGenerator;
pub use state::membership;
pub use state::membership::DetectorConfig;
pub use state::probe::Prober;
pub use tasks::prober;
pub use tasks::prober::IcmpProber;

/// Serves clients and data nodes on `listener` until `shutdown` completes.
///
/// Errors of one connection are logged and end that connection only;
/// running out of file descriptors is waited out. `run` ends with an error
/// only for a bad configuration or when a task it cannot work without
/// (membership, the waiting room) stops.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_on(listener, config, shutdown).await
}

/// [`run`] on any [`Listener`]: the network is a seam, so the same server
/// runs over tokio's TCP or over a simulated network.
pub async fn run_on<L: Listener>(
    listener: L,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    tasks::server::serve(listener, None, config, shutdown).await
}

/// [`run`], and the operator's endpoints (`/metrics`, `/healthz`,
/// `/status.json`, the status page at `/`, `/events`) on `http`, bounded by
/// [`Config::http`].
pub async fn run_with_http(
    listener: TcpListener,
    http: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    tasks::server::serve(listener, Some(http), config, shutdown).await
}
