//! A data node's settings, their defaults, and the framing room it keeps
//! around a client's text.

use std::path::PathBuf;
use std::time::Duration;

use protocol::auth::ClusterToken;
use protocol::ids::{NodeId, Zone};

use crate::keys;
use crate::node::SessionConfig;
use crate::storage::StoreConfig;
use crate::storage::{self, FsyncPolicy};

/// Settings of a data node.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the head node; resolved on every attempt.
    pub headnode: String,
    /// This node's name.
    pub node_id: NodeId,
    /// This node's failure domain, sent in its hello: the head node puts
    /// copies of one message in distinct zones. `None` sends none.
    pub zone: Option<Zone>,
    /// Client keys remembered, at most (`--dedup-keys`).
    pub dedup_keys: usize,
    /// How long after its record is written a key is remembered, at least
    /// while `dedup_keys` allows, at most about twice this
    /// (`--dedup-window`).
    pub dedup_window: Duration,
    /// This process's incarnation, which grows on every start: `None` (the
    /// default) raises the data directory's counter (`incarnation`) and
    /// takes it; `Some` takes the given one (tests that play another
    /// process).
    pub incarnation: Option<u64>,
    /// Directory of `data.txt`.
    pub data_dir: PathBuf,
    /// Durability of acknowledged messages.
    pub fsync: FsyncPolicy,
    /// What `data.txt` is written through: the file itself, or one that
    /// injects disk faults (to test how the node handles them).
    pub storage: storage::Backend,
    /// Segment size and retention (`--segment-bytes`, `--retention-age`,
    /// `--retention-bytes`).
    pub store: StoreConfig,
    /// Under `--fsync batch`: how long a batch smaller than the one before
    /// may wait for the rest of its burst before it is committed (zero:
    /// never wait).
    pub commit_linger: Duration,
    /// The cluster's shared secret: this node proves it knows it, and
    /// accepts only a head node that proves it knows it too.
    pub cluster_token: Option<ClusterToken>,
    /// Without a token: join a head node that accepts data nodes without
    /// one (the head node is then not authenticated either).
    pub open_registration: bool,
    /// Longest accepted client text.
    pub max_line: usize,
    /// Reconnect when the head node has sent nothing (not even a heartbeat) for this long.
    pub head_timeout: Duration,
    /// First reconnect delay.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// On shutdown, how long to wait for the head node to drain this node.
    pub leave_timeout: Duration,
    /// How often this node reports its fsync latency to the head node (an
    /// `fsync` line after a `pong`), over the last two such periods.
    pub fsync_report_every: Duration,
    /// Local address to connect from (multi-homed hosts); `None` lets the OS choose.
    pub source_ip: Option<std::net::IpAddr>,
}

/// Default of [`Config::commit_linger`].
pub const DEFAULT_COMMIT_LINGER: Duration = Duration::from_micros(400);

impl Config {
    /// Defaults for a node with this id: data in `logs/datanode-<id>`.
    pub fn new(headnode: impl Into<String>, node_id: NodeId) -> Self {
        Config {
            headnode: headnode.into(),
            data_dir: PathBuf::from(format!("logs/datanode-{node_id}")),
            node_id,
            zone: None,
            dedup_keys: keys::DEFAULT_DEDUP_KEYS,
            dedup_window: keys::DEFAULT_DEDUP_WINDOW,
            incarnation: None,
            fsync: FsyncPolicy::Batch,
            storage: storage::Backend::File,
            store: StoreConfig::default(),
            commit_linger: DEFAULT_COMMIT_LINGER,
            cluster_token: None,
            open_registration: false,
            max_line: protocol::DEFAULT_MAX_LINE,
            head_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            leave_timeout: Duration::from_secs(5),
            fsync_report_every: protocol::datanode::FSYNC_REPORT_EVERY,
            source_ip: None,
        }
    }
}

impl Config {
    /// The times a session with a head node keeps to. Only a batch commit
    /// has an fdatasync worth sharing, so only `--fsync batch` lingers.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            commit_linger: match self.fsync {
                FsyncPolicy::Batch => self.commit_linger,
                FsyncPolicy::Always | FsyncPolicy::Never => Duration::ZERO,
            },
            fsync_report_every: self.fsync_report_every,
            head_timeout: self.head_timeout,
            leave_timeout: self.leave_timeout,
        }
    }
}

/// Extra room for the `mensaje <id> <key>: ` prefix around a client's
/// text, in the longest line a data node reads from the head node.
pub(crate) const FORWARD_OVERHEAD: usize = 256;
