//! The status as Prometheus metrics: the cluster table by state, what was
//! stored and repaired, evictions by reason, each node's copies, the
//! latencies, readers' requests and the connections.

use std::fmt;
use std::sync::atomic::Ordering;

use node_kit::metrics;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;
use tokio::time::Instant;

use super::{Facts, READ_FAILURES, READ_KINDS, REASONS, STATES, Status, lock, prune};

impl Status {
    /// Writes the head node's metrics at `now`, with `facts` from
    /// elsewhere: everything but the process's own.
    pub(crate) fn encode_metrics(
        &self,
        e: &mut DescriptorEncoder,
        facts: &Facts,
        now: Instant,
    ) -> fmt::Result {
        // One look at the table for both: the counts agree.
        let (by_state, per_node) = self.table(now);
        self.encode_table(e, by_state)?;
        self.encode_copies(e, facts, &per_node)?;
        self.encode_reads(e)?;
        metrics::gauge(
            e,
            "msgstore_client_connections",
            "Clients connected.",
            None,
            facts.clients as i64,
        )?;
        metrics::gauge(
            e,
            "msgstore_data_node_connections",
            "Data nodes connected.",
            None,
            facts.data_node_connections as i64,
        )
    }

    /// The rows by state, and each node's copies and bytes (sorted by
    /// node), at `now`.
    fn table(&self, now: Instant) -> ([i64; STATES.len()], Vec<(String, u64, u64)>) {
        let mut view = lock(&self.view);
        prune(&mut view, now);
        let mut by_state = [0i64; STATES.len()];
        for row in view.rows.values() {
            by_state[row.state] += 1;
        }
        let mut per_node: Vec<(String, u64, u64)> = view
            .counters
            .iter()
            .map(|(node, c)| {
                (
                    node.to_string(),
                    c.copies.load(Ordering::Relaxed),
                    c.bytes.load(Ordering::Relaxed),
                )
            })
            .collect();
        drop(view);
        per_node.sort();
        (by_state, per_node)
    }

    /// The data nodes by state, then the messages stored.
    fn encode_table(
        &self,
        e: &mut DescriptorEncoder,
        by_state: [i64; STATES.len()],
    ) -> fmt::Result {
        metrics::gauge_family(
            e,
            "msgstore_data_nodes",
            "Data nodes by state (evicted and left: those still in the status table).",
            "state",
            STATES.iter().copied().zip(by_state),
        )?;
        metrics::counter(
            e,
            "msgstore_messages_stored",
            "Messages stored with the copies their client waited for.",
            None,
            self.stored.load(Ordering::Relaxed),
        )
    }

    /// Copies too few and too many, repair, evictions, each node's
    /// copies and the acknowledgement latency.
    fn encode_copies(
        &self,
        e: &mut DescriptorEncoder,
        facts: &Facts,
        per_node: &[(String, u64, u64)],
    ) -> fmt::Result {
        metrics::counter(
            e,
            "msgstore_messages_under_replicated",
            "Messages left with fewer copies than --replicas.",
            None,
            facts.under_replicated,
        )?;
        metrics::counter(
            e,
            "msgstore_copies_over_replicated",
            "Copies written beyond --replicas (a late acknowledgement of a moved copy).",
            None,
            facts.over_replicated,
        )?;
        let (passes, repair_copies, unrepairable) = facts.repair_totals;
        metrics::counter(
            e,
            "msgstore_repair_passes",
            "Repair passes run (each checks every message's copies).",
            None,
            passes,
        )?;
        metrics::counter(
            e,
            "msgstore_repair_copies",
            "Copies made by repair.",
            None,
            repair_copies,
        )?;
        metrics::counter(
            e,
            "msgstore_repair_unrepairable",
            "Messages repair gave up on: not checked or copied in every try after their pass.",
            None,
            unrepairable,
        )?;
        metrics::gauge(
            e,
            "msgstore_repair_in_progress",
            "1 while a repair pass runs.",
            None,
            i64::from(facts.repair_running),
        )?;
        metrics::counter_family(
            e,
            "msgstore_evictions",
            "Data nodes evicted, by reason.",
            None,
            "reason",
            REASONS
                .iter()
                .copied()
                .zip(self.evictions.iter().map(|c| c.load(Ordering::Relaxed))),
        )?;
        encode_per_node(e, per_node)?;
        metrics::histogram(
            e,
            "msgstore_ack_latency",
            "From a client's message to its answer (sampled: one message in flight per client at a time).",
            Some(&Unit::Seconds),
            &self.ack_latency,
        )
    }

    /// Readers' requests: answered, failed, and how long they took.
    fn encode_reads(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let reads = &self.reads;
        metrics::counter_family(
            e,
            "msgstore_reads",
            "Readers' requests answered (found, notfound, or a tail's end), by kind.",
            None,
            "kind",
            READ_KINDS
                .iter()
                .copied()
                .zip(reads.served.iter().map(|c| c.load(Ordering::Relaxed))),
        )?;
        metrics::counter_family(
            e,
            "msgstore_read_failures",
            "Readers' requests answered with an error, by reason.",
            None,
            "reason",
            READ_FAILURES
                .iter()
                .copied()
                .zip(reads.failed.iter().map(|c| c.load(Ordering::Relaxed))),
        )?;
        metrics::histogram_family(
            e,
            "msgstore_read_latency",
            "From a reader's request's turn to its answer (the wait for the read budget included; failed requests too), by kind.",
            Some(&Unit::Seconds),
            "kind",
            READ_KINDS.iter().copied().zip(&reads.latency),
        )
    }
}

/// The copies and bytes each data node in the table acknowledged.
fn encode_per_node(e: &mut DescriptorEncoder, per_node: &[(String, u64, u64)]) -> fmt::Result {
    metrics::counter_family(
        e,
        "msgstore_node_copies_stored",
        "Copies each data node acknowledged (nodes in the status table).",
        None,
        "node",
        per_node.iter().map(|(n, copies, _)| (n.as_str(), *copies)),
    )?;
    metrics::counter_family(
        e,
        "msgstore_node_stored",
        "Bytes of message text each data node acknowledged (nodes in the status table).",
        Some(&Unit::Bytes),
        "node",
        per_node.iter().map(|(n, _, bytes)| (n.as_str(), *bytes)),
    )
}
