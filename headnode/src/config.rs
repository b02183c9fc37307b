//! The head node's settings, their defaults and their bounds.
//!
//! Every buffer, queue and connection count the head node keeps has a bound
//! here; `docs/limits.md` turns them into a worst-case memory table.

use std::sync::Arc;
use std::time::Duration;

use protocol::auth::ClusterToken;
use protocol::connection::ReaderConfig;
use protocol::handshake;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::mpsc;

use crate::state::membership::{self, DetectorConfig};
use crate::state::probe::Prober;

/// Settings of the head node. `Default` gives the documented defaults.
#[derive(Clone)]
pub struct Config {
    /// Framing limits for every connection.
    pub reader: ReaderConfig,
    /// Time a peer has to complete the handshake.
    pub handshake_timeout: Duration,
    /// The secret data nodes must prove they know (see `protocol::auth`).
    /// Without one, data nodes are refused unless `open_registration`.
    pub cluster_token: Option<ClusterToken>,
    /// Also accept data nodes that cannot prove the token, including
    /// original-system ones. Off by default: anyone who can reach the port
    /// could then register and be sent messages.
    pub open_registration: bool,
    /// Copies of each message the head node makes, on distinct data nodes
    /// (and distinct zones when there are enough).
    pub replicas: usize,
    /// Copies written and synced before the client is answered; the rest
    /// complete in the background. At most `replicas`.
    pub min_replicas: usize,
    /// Keys remembered for deduplication, at most. See `keys`.
    pub dedup_keys: usize,
    /// How long a key is remembered for deduplication, at least (while
    /// `dedup_keys` allows; at most about twice this).
    pub dedup_window: Duration,
    /// After a start, how long the head node waits for the data nodes the
    /// previous head node had (named in their reports) before it serves
    /// clients anyway. See `recovery`.
    pub recovery_wait: Duration,
    /// Bounds of the HTTP port (see `node_kit::http`), when there is one.
    pub http: node_kit::http::HttpConfig,
    /// Period of the ICMP heartbeat rounds.
    pub ping_interval: Duration,
    /// How long one ICMP echo may take.
    pub ping_timeout: Duration,
    /// Application-heartbeat and ICMP eviction rules.
    pub detector: DetectorConfig,
    /// Period of `ping <n>` on each data-node connection.
    pub heartbeat_interval: Duration,
    /// A message not acknowledged within this time is sent to another node.
    pub ack_timeout: Duration,
    /// How long a message waits for a data node before the client gets
    /// `ERROR no data nodes available`.
    pub no_node_wait: Duration,
    /// Data nodes tried for one message before the client gets an error.
    pub max_attempts: u32,
    /// Unanswered messages per client before the head node stops reading it.
    pub max_client_in_flight: usize,
    /// Bytes of text (plus the per-message overhead) one client may have in
    /// flight before the head node stops reading it. Data-node queues are
    /// first come, first served, so this bounds how much of a heavy
    /// client's data a light client's message can find ahead of it.
    pub max_client_in_flight_bytes: usize,
    /// Answers queued for a client and not yet taken by its socket, in
    /// bytes, before the head node stops reading from that client.
    pub max_client_unflushed: usize,
    /// A connection whose socket accepts none of the bytes queued for it for
    /// this long is closed (a peer that stopped reading).
    pub write_timeout: Duration,
    /// A client that sends nothing for this long, with nothing in flight,
    /// is disconnected. Far above the original client's 3 s interval.
    pub client_idle_timeout: Duration,
    /// Bytes of message text (plus a fixed overhead per message) held by
    /// the head node at once, over all clients: in flight to data nodes,
    /// queued for them, or waiting for one. Clients are not read while it
    /// is used up.
    pub in_flight_budget: usize,
    /// Reader (`lector`) connections at once; one more is refused
    /// `ERROR server full (N readers)`. Readers take client places too.
    pub max_readers: usize,
    /// Read requests (`get`, `tail`) served at once over all readers; a
    /// request waits up to 5 s for its turn, then gets `ERROR head node
    /// busy`.
    pub max_reads: usize,
    /// How long a data node has to answer one read (a whole scan page).
    pub read_timeout: Duration,
    /// Repair starts once a data node has been gone this long (and this
    /// long after the head node starts); see `repair`.
    pub repair_after: Duration,
    /// Messages repair gives new copies to per second, at most.
    pub repair_rate: u32,
    /// Unacknowledged messages per data node; more wait in its queue.
    pub max_node_in_flight: usize,
    /// Unacknowledged bytes of text per data node; more wait in its queue.
    pub max_node_unacked_bytes: usize,
    /// Messages waiting for a data node at once; more are refused at once.
    pub max_parked: usize,
    /// Messages in a row sent to one busy data node before another is
    /// chosen (1: every message is routed on its own). See `router`.
    pub sticky_run: usize,
    /// Connections served at once, before the open-file limit is applied.
    pub max_connections: usize,
    /// Data-node connections, reserved within `max_connections` so clients
    /// can never take their places.
    pub max_data_nodes: usize,
    /// Connections still in their handshake; when full, the one that has
    /// waited longest is closed to make room.
    pub max_handshakes: usize,
    /// The ICMP prober; `None` opens real ICMP sockets.
    pub prober: Option<Arc<dyn Prober>>,
    /// The epoch the head node starts from (at least 1), before its data
    /// nodes report theirs: it goes above every epoch they report.
    pub id_epoch: u64,
    /// Seed of every random choice the head node makes (routing, the
    /// waiting room, challenge nonces, repair's copies, the ICMP
    /// identifier, the head-id), for reproducible runs such as a simulation; each
    /// connection's generator is derived from it and the connection's
    /// number, and each task's from it and the task. `None` seeds from the
    /// operating system.
    pub rng_seed: Option<u64>,
    /// Receives every membership event, for monitoring and tests.
    pub observer: Option<mpsc::UnboundedSender<membership::Event>>,
}

/// Default of [`Config::repair_after`]: long enough that a restarted
/// container or a short network blip comes back before copies are made.
pub const DEFAULT_REPAIR_AFTER: Duration = Duration::from_secs(30);
/// Default of [`Config::repair_rate`].
pub const DEFAULT_REPAIR_RATE: u32 = 2000;

/// Default of [`Config::dedup_keys`].
pub const DEFAULT_DEDUP_KEYS: usize = 1_000_000;
/// Default of [`Config::dedup_window`].
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Most copies of one message.
pub const MAX_REPLICAS: usize = 5;

/// Default of [`Config::sticky_run`].
pub const DEFAULT_STICKY_RUN: usize = 1024;

/// What one message costs the in-flight budget besides its text: its
/// envelope, its place in a queue, a reply slot and a waiting-room entry.
pub const MESSAGE_OVERHEAD: usize = 256;

impl Default for Config {
    fn default() -> Self {
        Config {
            reader: ReaderConfig::default(),
            handshake_timeout: handshake::DEFAULT_HANDSHAKE_TIMEOUT,
            cluster_token: None,
            open_registration: false,
            replicas: 2,
            min_replicas: 2,
            dedup_keys: DEFAULT_DEDUP_KEYS,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            recovery_wait: Duration::from_secs(5),
            http: node_kit::http::HttpConfig::default(),
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(1),
            detector: DetectorConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(2),
            no_node_wait: Duration::from_secs(1),
            max_attempts: 5,
            max_client_in_flight: 4096,
            max_client_in_flight_bytes: 512 * 1024,
            max_client_unflushed: 256 * 1024,
            write_timeout: Duration::from_secs(30),
            client_idle_timeout: Duration::from_secs(300),
            in_flight_budget: 32 * 1024 * 1024,
            max_readers: 64,
            max_reads: 8,
            read_timeout: Duration::from_secs(5),
            repair_after: DEFAULT_REPAIR_AFTER,
            repair_rate: DEFAULT_REPAIR_RATE,
            max_node_in_flight: 65_536,
            max_node_unacked_bytes: 4 * 1024 * 1024,
            max_parked: 65_536,
            sticky_run: DEFAULT_STICKY_RUN,
            max_connections: 16_384,
            max_data_nodes: 64,
            max_handshakes: 256,
            prober: None,
            id_epoch: crate::state::ids::FIRST_EPOCH,
            rng_seed: None,
            observer: None,
        }
    }
}

/// Which of the head node's random generators: each is derived from
/// [`Config::rng_seed`] and its stream, so no two repeat each other's draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RngStream {
    /// The waiting room's.
    WaitingRoom,
    /// The `n`-th accepted connection's (from 1).
    Connection(u64),
    /// The repair task's.
    Repair,
    /// The ICMP prober's identifier.
    Prober,
    /// The head-id this run fences data nodes with.
    HeadId,
}

impl RngStream {
    fn number(self) -> u64 {
        match self {
            RngStream::WaitingRoom => 0,
            RngStream::Connection(n) => n,
            RngStream::Repair => u64::MAX,
            RngStream::Prober => u64::MAX - 1,
            RngStream::HeadId => u64::MAX - 2,
        }
    }
}

impl Config {
    /// The generator of `stream`: derived from [`Config::rng_seed`] when
    /// there is one, so a seeded run repeats its choices exactly; else
    /// seeded from the operating system.
    pub(crate) fn rng(&self, stream: RngStream) -> SmallRng {
        match self.rng_seed {
            Some(seed) => SmallRng::seed_from_u64(splitmix64(seed ^ splitmix64(stream.number()))),
            None => SmallRng::seed_from_u64(rand::random()),
        }
    }
}

/// One step of SplitMix64: spreads nearby inputs far apart.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Refuses settings that would panic or make no sense (a zero period,
    /// a zero cap), so a bad value fails at start-up with a clear message
    /// instead of inside a background task later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let periods = [
            ("ping interval", self.ping_interval),
            ("heartbeat interval", self.heartbeat_interval),
        ];
        for (name, value) in periods {
            if value < node_kit::cli::MIN_PERIOD {
                return Err(ConfigError(format!(
                    "{name} {value:?} is too short (at least {:?})",
                    node_kit::cli::MIN_PERIOD
                )));
            }
        }
        let timeouts = [
            ("handshake timeout", self.handshake_timeout),
            ("line timeout", self.reader.line_timeout),
            ("ping timeout", self.ping_timeout),
            ("ack timeout", self.ack_timeout),
            ("no-node wait", self.no_node_wait),
            ("write timeout", self.write_timeout),
            ("client idle timeout", self.client_idle_timeout),
            ("suspect-after", self.detector.suspect_after),
            ("dedup window", self.dedup_window),
            ("recovery wait", self.recovery_wait),
            ("read timeout", self.read_timeout),
            ("repair-after", self.repair_after),
        ];
        for (name, value) in timeouts {
            if value.is_zero() {
                return Err(ConfigError(format!("{name} must be more than zero")));
            }
        }
        let caps = [
            ("max attempts", self.max_attempts as usize),
            ("max client in flight", self.max_client_in_flight),
            (
                "max client in-flight bytes",
                self.max_client_in_flight_bytes,
            ),
            ("max client unflushed", self.max_client_unflushed),
            ("in-flight budget", self.in_flight_budget),
            ("max node in flight", self.max_node_in_flight),
            ("max node unacked bytes", self.max_node_unacked_bytes),
            ("max parked", self.max_parked),
            ("sticky run", self.sticky_run),
            ("max connections", self.max_connections),
            ("max data nodes", self.max_data_nodes),
            ("max handshakes", self.max_handshakes),
            ("ping misses", self.detector.ping_misses as usize),
            ("replicas", self.replicas),
            ("min replicas", self.min_replicas),
            ("dedup keys", self.dedup_keys),
            ("max readers", self.max_readers),
            ("max reads", self.max_reads),
            ("repair rate", self.repair_rate as usize),
        ];
        for (name, value) in caps {
            if value == 0 {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
        }
        if self.replicas > MAX_REPLICAS {
            return Err(ConfigError(format!(
                "replicas {} is more than {MAX_REPLICAS}",
                self.replicas
            )));
        }
        if self.min_replicas > self.replicas {
            return Err(ConfigError(format!(
                "min replicas {} is more than replicas {}",
                self.min_replicas, self.replicas
            )));
        }
        if self.in_flight_budget < self.reader.max_line + MESSAGE_OVERHEAD {
            return Err(ConfigError(format!(
                "in-flight budget {} is smaller than one message of the longest line ({} bytes)",
                self.in_flight_budget,
                self.reader.max_line + MESSAGE_OVERHEAD
            )));
        }
        Ok(())
    }
}

/// How the connections that fit under the open-file limit are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, in all.
    pub total: usize,
    /// Connections still in their handshake.
    pub handshakes: usize,
    /// Registered data nodes.
    pub data_nodes: usize,
    /// Clients.
    pub clients: usize,
}

impl Limits {
    /// Shares `total` connections: data nodes and handshakes first (each at
    /// most a quarter), clients get the rest.
    pub fn share(total: usize, config: &Config) -> Limits {
        let total = total.max(3);
        let data_nodes = config.max_data_nodes.min(total / 4).max(1);
        let handshakes = config.max_handshakes.min(total / 4).max(1);
        Limits {
            total,
            handshakes,
            data_nodes,
            clients: total - data_nodes - handshakes,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("cluster_token", &self.cluster_token)
            .field("open_registration", &self.open_registration)
            .field("ping_interval", &self.ping_interval)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("detector", &self.detector)
            .field("ack_timeout", &self.ack_timeout)
            .field("no_node_wait", &self.no_node_wait)
            .field("sticky_run", &self.sticky_run)
            .field("replicas", &self.replicas)
            .field("min_replicas", &self.min_replicas)
            .field("dedup_keys", &self.dedup_keys)
            .field("dedup_window", &self.dedup_window)
            .field("recovery_wait", &self.recovery_wait)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_each_stream_its_own_repeatable_generator() {
        use rand::RngExt;
        let seeded = Config {
            rng_seed: Some(7),
            ..Config::default()
        };
        let draw = |stream| seeded.rng(stream).random::<u64>();
        let streams = [
            RngStream::WaitingRoom,
            RngStream::Connection(1),
            RngStream::Connection(2),
            RngStream::Repair,
            RngStream::Prober,
        ];
        let first: Vec<u64> = streams.iter().map(|&s| draw(s)).collect();
        let again: Vec<u64> = streams.iter().map(|&s| draw(s)).collect();
        assert_eq!(first, again, "the same seed draws the same");
        let mut distinct = first.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), streams.len(), "each stream its own");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn zero_periods_and_caps_are_refused() {
        let zero_interval = Config {
            ping_interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(
            zero_interval
                .validate()
                .unwrap_err()
                .0
                .contains("ping interval")
        );
        let no_nodes = Config {
            max_data_nodes: 0,
            ..Config::default()
        };
        assert!(no_nodes.validate().is_err());
        let tiny_budget = Config {
            in_flight_budget: 1000,
            ..Config::default()
        };
        assert!(tiny_budget.validate().is_err());
    }

    #[test]
    fn data_nodes_and_handshakes_are_reserved_out_of_the_total() {
        let config = Config::default();
        let small = Limits::share(1024 - node_kit::server::RESERVED_FDS, &config);
        assert_eq!(small.data_nodes, 64);
        assert_eq!(small.handshakes, 224);
        assert_eq!(small.clients, 896 - 64 - 224);
        let big = Limits::share(16_384, &config);
        assert_eq!((big.data_nodes, big.handshakes), (64, 256));
        assert_eq!(big.clients, 16_384 - 64 - 256);
    }
}
