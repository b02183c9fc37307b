//! The head node's status snapshot, as served at `/status.json` (and each
//! second on `/events`) and read by `client status`. One definition for
//! the writer and the reader.

use serde::{Deserialize, Serialize};

/// The cluster as the head node sees it, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// When the snapshot was taken (UTC, `2026-11-24 12:00:00,000`).
    pub at: String,
    /// The message-id epoch of this head node (changes on every start).
    pub epoch: u64,
    /// Seconds since the head node started.
    pub uptime_seconds: f64,
    /// Copies made of each message (R).
    pub replicas: usize,
    /// Copies written before the client is answered (W).
    pub min_replicas: usize,
    /// Clients connected now.
    pub clients: usize,
    /// Messages stored per second, over the last `rate_window_seconds`.
    pub message_rate: f64,
    /// The window of `message_rate`, in seconds (0 just after start).
    pub rate_window_seconds: f64,
    /// One row per data node: current members first, then the departed
    /// ones still remembered (a bounded number, for a bounded time).
    pub nodes: Vec<NodeStatus>,
    /// Totals since the head node started.
    pub totals: Totals,
    /// The most recent membership events, newest last (bounded).
    pub recent_events: Vec<ClusterEvent>,
}

/// What the cluster holds, since the head node started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Messages stored with the copies their client waited for.
    pub messages_stored: u64,
    /// Messages left with fewer copies than `replicas`.
    pub under_replicated: u64,
    /// Copies written beyond `replicas` (a late acknowledgement of a copy
    /// already moved elsewhere).
    pub over_replicated: u64,
    /// Whether a repair pass is running now.
    pub repair_in_progress: bool,
    /// Repair in a few words: `off`, `idle`, `running`, with the last
    /// pass's outcome.
    pub repair: String,
    /// The pass running now, or else the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_pass: Option<RepairPass>,
}

/// One repair pass: why it ran, how far it got, what it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairPass {
    /// Why it ran.
    pub trigger: String,
    /// When it started (UTC).
    pub started_at: String,
    /// Messages whose copies were counted.
    pub checked: u64,
    /// Messages found with fewer live copies than wanted.
    pub under_replicated: u64,
    /// Messages given their missing copies.
    pub copied: u64,
    /// Copies made.
    pub new_copies: u64,
    /// Messages left alone because a node's retention removed them, or a
    /// node that cannot answer now may have.
    pub removed_by_retention: u64,
    /// Messages left alone because a member that is absent (not yet lost:
    /// still in the member set) may hold their missing copies.
    #[serde(default)]
    pub unknown: u64,
    /// Messages that could not be checked or copied (tried again, one by
    /// one, a bounded number of times).
    pub failed: u64,
    /// Whether it has ended.
    pub finished: bool,
    /// How it ended (`done`, `done up to the messages still in flight`,
    /// `stopped before the end`); empty while it runs.
    pub outcome: String,
    /// How long it took, once ended.
    pub took_seconds: f64,
}

/// One data node's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its node id.
    pub id: String,
    /// Its failure domain, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Its IP address as the head node sees it.
    pub address: String,
    /// `live`, `suspect`, `leaving`, `evicted` or `left`.
    pub state: String,
    /// Its process incarnation (grows on every start).
    pub incarnation: u64,
    /// Seconds since its last application heartbeat answer (or its
    /// registration), while it is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_seconds_ago: Option<f64>,
    /// Round-trip time of its last ICMP echo, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_rtt_ms: Option<f64>,
    /// Copies it acknowledged since the head node started (all its
    /// incarnations).
    pub messages_stored: u64,
    /// Bytes of message text in those copies.
    pub bytes_stored: u64,
    /// The 99th percentile of its fdatasyncs over the window of its last
    /// report (`fsync_window_seconds`, about the last 10 s), in
    /// milliseconds, estimated from its histogram buckets as Prometheus's
    /// `histogram_quantile` does. Absent when the node reports none (an
    /// original-system data node), made no fdatasync in the window (idle,
    /// or `--fsync never`), has not reported for a while, or is no longer
    /// a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync_p99_ms: Option<f64>,
    /// fdatasyncs in that window; absent as the report is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsyncs_in_window: Option<u64>,
    /// That window, in seconds; absent as the report is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync_window_seconds: Option<f64>,
    /// Its last eviction, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_eviction: Option<Eviction>,
}

/// An eviction: why and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eviction {
    /// A short, fixed kind: `unreachable`, `hung`, `silent`, `ack_timeout`,
    /// `connection_lost`, `left`, `replaced` or `shutdown`.
    pub reason: String,
    /// The whole reason, as in the heartbeat log.
    pub detail: String,
    /// When (UTC, `2026-11-24 12:00:00,000`).
    pub at: String,
    /// Seconds before the snapshot.
    pub seconds_ago: f64,
}

/// One membership event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// When (UTC).
    pub at: String,
    /// Seconds before the snapshot.
    pub seconds_ago: f64,
    /// The node it concerns.
    pub node: String,
    /// `joined`, `rejoined`, `suspect`, `recovered`, `leaving` or `evicted`.
    pub kind: String,
    /// For an eviction, its reason kind (see [`Eviction::reason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A readable line.
    pub detail: String,
}
