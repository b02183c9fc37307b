//! What the head node shows an operator, on its HTTP port
//! (`--http-listen`): Prometheus metrics at `/metrics`, `/healthz`, the
//! status snapshot at `/status.json`, the status page at `/`, and the same
//! snapshot once a second as server-sent events at `/events`.
//!
//! The counters and the cluster table are `state::status`; this is the
//! handler and the ticker, which read them and the few [`Facts`] kept
//! elsewhere, from the [`StatusSources`] they are given.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use node_kit::http::{Body, Request, Response};
use node_kit::metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use protocol::status::StatusSnapshot;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::state::forward::Replication;
use crate::state::ids::IdGenerator;
use crate::state::repair::RepairProgress;
use crate::state::router::CopyCounts;
use crate::state::status::{Facts, Status};

/// Connections of one kind: places taken out of a pool of `limit`.
#[derive(Debug, Clone)]
pub(crate) struct Occupancy {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) limit: usize,
}

impl Occupancy {
    fn in_use(&self) -> usize {
        self.limit.saturating_sub(self.slots.available_permits())
    }
}

/// What the status page reads: the counters and table, and where the
/// other facts are kept.
#[derive(Debug, Clone)]
pub(crate) struct StatusSources {
    pub(crate) status: Arc<Status>,
    /// How repair passes went.
    pub(crate) repair: Arc<RepairProgress>,
    /// Copies too few and too many, counted by the router.
    pub(crate) copies: Arc<CopyCounts>,
    /// Message ids: the epoch now.
    pub(crate) ids: Arc<IdGenerator>,
    pub(crate) replication: Replication,
    pub(crate) repair_after: Duration,
    pub(crate) clients: Occupancy,
    pub(crate) data_nodes: Occupancy,
}

impl StatusSources {
    /// The facts now.
    fn facts(&self) -> Facts {
        let (repair_running, repair_pass) = self.repair.pass();
        Facts {
            epoch: self.ids.epoch(),
            replication: self.replication,
            repair_after: self.repair_after,
            clients: self.clients.in_use(),
            data_node_connections: self.data_nodes.in_use(),
            under_replicated: self.copies.under_replicated(),
            over_replicated: self.copies.over_replicated(),
            repair_running,
            repair_pass,
            repair_totals: self.repair.totals(),
        }
    }

    /// The status snapshot now.
    fn snapshot(&self) -> StatusSnapshot {
        self.status
            .snapshot(&self.facts(), Instant::now(), SystemTime::now())
    }
}

/// Writes the head node's metrics when scraped.
#[derive(Debug)]
struct Scrape(StatusSources);

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = &self.0;
        let facts = sources.facts();
        sources
            .status
            .encode_metrics(&mut e, &facts, Instant::now())?;
        metrics::process(&mut e, "head node", sources.status.uptime(Instant::now()))?;
        metrics::gauge(
            &mut e,
            "msgstore_epoch",
            "The message-id epoch of this head node: above every epoch its data nodes had accepted when they registered.",
            None,
            facts.epoch as i64,
        )
    }
}

/// The status page.
const PAGE: &str = include_str!("status.html");

/// Answers the HTTP endpoints of the head node.
pub(crate) fn handle(sources: &StatusSources, request: &Request) -> Response {
    match request.path.as_str() {
        "/metrics" => {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(Scrape(sources.clone())));
            Response::ok(metrics::CONTENT_TYPE, metrics::encode(&registry))
        }
        "/healthz" => Response::text(200, "ok"),
        "/status.json" => match serde_json::to_vec(&sources.snapshot()) {
            Ok(json) => Response::ok("application/json", json),
            Err(e) => Response::text(500, &format!("cannot encode the status: {e}")),
        },
        "/" | "/index.html" => Response::ok("text/html; charset=utf-8", PAGE),
        "/events" => {
            // A new subscriber starts from a fresh snapshot, not the last
            // one published (perhaps long ago, while nobody listened).
            if let Ok(json) = serde_json::to_string(&sources.snapshot()) {
                sources.status.publish(Arc::from(json));
            }
            Response {
                status: 200,
                body: Body::Events(sources.status.subscribe()),
            }
        }
        _ => Response::not_found(),
    }
}

/// Once a second: samples the message rate and, while someone listens on
/// `/events`, publishes the snapshot. Ends on `stop`.
pub(crate) async fn run_ticker(sources: StatusSources, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        sources.status.sample(Instant::now());
        if sources.status.has_subscribers()
            && let Ok(json) = serde_json::to_string(&sources.snapshot())
        {
            sources.status.publish(Arc::from(json));
        }
    }
}
