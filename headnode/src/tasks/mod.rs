//! Above: one file per task that does I/O. Each task owns its sockets and
//! timers and calls down into `state` for every decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::{Semaphore, mpsc};

use crate::config::{Config, Limits};
use crate::state::forward::{IdGenerator, Replication};
use crate::state::keys::KeyTable;
use crate::state::recovery::Gate;
use crate::state::router::Router;
use crate::state::status::Status;
use crate::state::tail::Watermark;

pub(crate) mod client_session;
pub(crate) mod cluster;
pub(crate) mod node_session;
pub(crate) mod parking;
pub mod prober;
pub(crate) mod reader_session;
pub(crate) mod reads;
pub(crate) mod registration;
pub(crate) mod repair;
pub(crate) mod server;
pub(crate) mod status;

/// What every connection task needs.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) limits: Limits,
    pub(crate) router: Router,
    pub(crate) ids: IdGenerator,
    pub(crate) membership_tx: mpsc::Sender<cluster::Input>,
    /// Bytes of messages the head node may hold at once (see
    /// [`Config::in_flight_budget`]).
    pub(crate) budget: Arc<Semaphore>,
    /// Permits of `budget` when nothing is in flight.
    pub(crate) budget_total: usize,
    /// Read requests served at once ([`Config::max_reads`]).
    pub(crate) read_budget: Semaphore,
    /// Places for readers ([`Config::max_readers`]).
    pub(crate) reader_slots: Arc<Semaphore>,
    /// Recent client keys and what they became.
    pub(crate) keys: Arc<KeyTable>,
    /// Copies per message, and before the answer.
    pub(crate) replication: Replication,
    /// True once the data nodes have reported (see `recovery`).
    pub(crate) recovered: Arc<Gate>,
    pub(crate) client_slots: Arc<Semaphore>,
    pub(crate) node_slots: Arc<Semaphore>,
    /// Counters and the cluster table for the operator.
    pub(crate) status: Arc<Status>,
    pub(crate) next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The tail's watermark now: the next id is read before whether the
    /// head node holds any message (see [`Watermark`]).
    pub(crate) fn watermark(&self) -> Watermark {
        let next_seq = self.ids.peek_next_seq();
        let idle = self.budget.available_permits() >= self.budget_total;
        Watermark::new(
            self.ids.epoch(),
            next_seq,
            idle,
            SystemTime::now(),
            self.config.tail_lag(),
        )
    }
}
