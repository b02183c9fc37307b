//! Above: one file per task that does I/O. Each task owns its sockets and
//! timers and calls down into `state` for every decision; a session keeps
//! its state in the fields of a struct and handles each thing that happens
//! in a small `on_*` method.
//!
//! - `server`: the accept loop, the tasks it starts, and shutdown;
//! - `registration`: handshake, role, the data nodes' token challenge and
//!   report, and a place in the right pool;
//! - `client_session`, `node_session`, `reader_session`: one task per
//!   connection;
//! - `cluster`: the membership task, sole owner of the membership, which
//!   publishes the routes (and with them the nodes that serve reads);
//! - `parking`: the waiting room for messages no node can take yet;
//! - `repair`: the repair task, which owns its schedule, and its passes;
//! - `status`: the operator's HTTP endpoints and the once-a-second ticker;
//! - [`prober`]: ICMP echo behind a trait;
//! - `reads`: a read sent to a data node's session, and the wait for its
//!   answer.
//!
//! [`Shared`] is what every connection task is handed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::datanode::HeadId;
use tokio::sync::{Semaphore, mpsc};

use crate::config::{Config, Limits};
use crate::state::forward::Replication;
use crate::state::ids::IdGenerator;
use crate::state::keys::KeyTable;
use crate::state::recovery::Gate;
use crate::state::repair::MemberChange;
use crate::state::router::Router;
use crate::state::status::Status;
use crate::state::tail::Watermark;
use crate::tasks::repair::RepairEvent;

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
    /// How the connections that fit under the open-file limit are shared.
    pub(crate) limits: Limits,
    /// Chooses the data nodes for each copy, from the routes the
    /// membership task publishes.
    pub(crate) router: Router,
    /// Message ids, unique across the cluster's life, and the epoch.
    pub(crate) ids: Arc<IdGenerator>,
    /// This run's head-id: with the epoch, what data nodes fence on.
    pub(crate) head_id: HeadId,
    /// The membership task's inputs ([`cluster::Input`]).
    pub(crate) membership_tx: mpsc::Sender<cluster::Input>,
    /// Bytes of messages the head node may hold at once (see
    /// [`Config::in_flight_budget`]).
    pub(crate) budget: Arc<Semaphore>,
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
    /// Places for clients ([`Limits::clients`]).
    pub(crate) client_slots: Arc<Semaphore>,
    /// Places for data nodes ([`Limits::data_nodes`]), which clients can
    /// never take.
    pub(crate) node_slots: Arc<Semaphore>,
    /// Counters and the cluster table for the operator.
    pub(crate) status: Arc<Status>,
    /// The next data-node connection's id.
    pub(crate) next_conn: AtomicU64,
    /// The repair task's queue (the membership task holds the same
    /// sender): registration tells it of the damaged records a node
    /// reports.
    pub(crate) repair_tx: mpsc::Sender<RepairEvent>,
}

impl Shared {
    /// A new data-node connection's id, never given before.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Tells the repair task of a change that may make a pass due. Never
    /// dropped: when its queue is full this waits for room (it is read in
    /// every state of that task); when that task has ended (repair off, or
    /// shutting down), nobody needs it.
    pub(crate) async fn tell_repair(&self, change: MemberChange) {
        let event = RepairEvent {
            change,
            at: tokio::time::Instant::now(),
        };
        if let Err(mpsc::error::TrySendError::Full(event)) = self.repair_tx.try_send(event) {
            let _ = self.repair_tx.send(event).await;
        }
    }

    /// The tail's watermark now: the lowest id still on its way (see
    /// [`Watermark`]).
    pub(crate) fn watermark(&self) -> Watermark {
        Watermark {
            floor: self.ids.floor(),
        }
    }
}
