//! The head node: accepts clients and data nodes on one port, forwards each
//! client message to `--replicas` live data nodes chosen at random, and
//! answers the client once `--min-replicas` of them have written it.
//!
//! Parts:
//! - [`membership`]: who is in the cluster and who has failed (state machine, no I/O);
//! - [`prober`]: ICMP echo behind a trait;
//! - [`config`]: settings, defaults and bounds;
//! - `forward`: one message's envelope, shared by every attempt to store it;
//! - `router`: random (sticky under load) choice of a node;
//! - `parking`: the waiting room for messages no node can take yet;
//! - `cluster`: the task that owns the membership and writes the heartbeat log;
//! - `registration`: handshake, token challenge, and the connection pools;
//! - `client_session` / `node_session` / `reader_session`: one task per connection;
//! - `reads`: reads sent to a data node on its session, and their answers;
//! - `tail`: the merge of the nodes' scans, and its watermark;
//! - `repair`: when a re-replication pass is due, and the pass;
//! - `status`: metrics, the status snapshot and page, on the HTTP port.
//!
//! [`run`] is the entry point for the binary and the tests; [`run_on`] is
//! the same server on any [`Listener`] (a simulated network's, say), and
//! [`run_with_http`] adds the operator's HTTP port.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use node_kit::server::{Admission, Handshakes};
use protocol::net::Listener;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

mod client_session;
mod cluster;
pub mod config;
mod forward;
mod in_flight;
mod keys;
pub mod membership;
mod node_session;
mod parking;
pub mod prober;
mod reader_session;
mod reads;
mod recovery;
mod registration;
mod repair;
mod router;
mod signal;
mod status;
mod tail;

pub use config::{Config, ConfigError, DEFAULT_STICKY_RUN, Limits};
pub use forward::IdGenerator;
pub use membership::DetectorConfig;
pub use prober::{IcmpProber, Prober};

use cluster::{ClusterConfig, Input};
use registration::Peer;
use router::{Router, Routes};

/// Inputs the membership task may have queued at once. Heartbeats beyond it
/// are dropped (the next one follows within a heartbeat interval); every
/// other input waits for room.
const MEMBERSHIP_QUEUE: usize = 4096;

/// What every connection task needs.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) limits: Limits,
    pub(crate) router: Router,
    pub(crate) ids: IdGenerator,
    pub(crate) membership_tx: mpsc::Sender<Input>,
    /// Bytes of messages the head node may hold at once (see
    /// [`Config::in_flight_budget`]).
    pub(crate) budget: Arc<Semaphore>,
    /// Permits of `budget` when nothing is in flight.
    pub(crate) budget_total: usize,
    /// The data nodes that serve reads now.
    pub(crate) reads: reads::ReadPool,
    /// Read requests served at once ([`Config::max_reads`]).
    pub(crate) read_budget: Semaphore,
    /// Places for readers ([`Config::max_readers`]).
    pub(crate) reader_slots: Arc<Semaphore>,
    /// Recent client keys and what they became.
    pub(crate) keys: Arc<keys::KeyTable>,
    /// Copies per message, and before the answer.
    pub(crate) replication: forward::Replication,
    /// True once the data nodes have reported (see `recovery`).
    pub(crate) recovered: Arc<recovery::Gate>,
    pub(crate) client_slots: Arc<Semaphore>,
    pub(crate) node_slots: Arc<Semaphore>,
    /// Counters and the cluster table for the operator.
    pub(crate) status: Arc<status::Status>,
    /// When repair is due, and how it goes.
    pub(crate) repair: Arc<repair::Repair>,
    next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Why the head node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A task the head node cannot work without ended. The process stops
    /// rather than go on looking alive while it drops messages.
    #[error("the {task} task stopped unexpectedly ({why})")]
    TaskStopped {
        /// Which task.
        task: &'static str,
        /// How it ended.
        why: String,
    },
    /// The listener's address could not be read.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How long client sessions get to deliver answers for messages already in
/// flight when the head node shuts down.
const CLIENT_DRAIN: Duration = Duration::from_secs(2);
/// How long data-node sessions get to close.
const NODE_DRAIN: Duration = Duration::from_millis(500);

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
    serve(listener, None, config, shutdown).await
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
    serve(listener, Some(http), config, shutdown).await
}

async fn serve<L: Listener>(
    listener: L,
    http: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    config.validate()?;
    let status = Arc::new(status::Status::default());
    let repair = Arc::new(repair::Repair::new(config.repair_after));
    let fd_limit = node_kit::server::raise_fd_limit();
    let limits = Limits::share(
        node_kit::server::connection_budget(fd_limit, config.max_connections),
        &config,
    );
    let prober: Arc<dyn Prober> = match &config.prober {
        Some(prober) => prober.clone(),
        None => Arc::new(IcmpProber::new()),
    };
    let ids = match config.id_epoch {
        Some(epoch) => IdGenerator::with_epoch(epoch),
        None => IdGenerator::new(),
    };
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let (parking_tx, parking_rx) = mpsc::unbounded_channel();
    let (inputs_tx, inputs_rx) = mpsc::channel(MEMBERSHIP_QUEUE);
    let recovered = Arc::new(recovery::Gate::default());
    let router = Router::new(
        routes_rx,
        parking_tx,
        config.max_attempts,
        config.sticky_run,
    );

    let clients_stop = CancellationToken::new();
    let nodes_stop = CancellationToken::new();
    let client_tasks = TaskTracker::new();
    let node_tasks = TaskTracker::new();
    // Tasks the head node cannot work without; one ending early stops it.
    let mut essential = JoinSet::new();
    let mut names = std::collections::HashMap::new();
    let membership = essential.spawn(cluster::run_membership(
        ClusterConfig {
            detector: config.detector.clone(),
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            observer: config.observer.clone(),
            recovery_wait: config.recovery_wait,
            status: status.clone(),
            repair: repair.clone(),
        },
        prober,
        inputs_tx.clone(),
        inputs_rx,
        (routes_tx, router.changes()),
        recovered.clone(),
        nodes_stop.clone(),
    ));
    names.insert(membership.id(), "membership");
    let parking = essential.spawn(parking::run_parking_lot(
        parking_rx,
        router.clone(),
        config.no_node_wait,
        config.max_parked,
        seeded_rng(config.rng_seed, 0),
        nodes_stop.clone(),
    ));
    names.insert(parking.id(), "waiting-room");

    let admission = Admission::new(limits.total);
    let handshakes = Handshakes::new(limits.handshakes);
    let budget = u32::try_from(config.in_flight_budget).unwrap_or(u32::MAX) as usize;
    let shared = Arc::new(Shared {
        limits,
        router,
        ids,
        membership_tx: inputs_tx,
        budget: Arc::new(Semaphore::new(budget)),
        budget_total: budget,
        reads: reads::ReadPool::default(),
        read_budget: Semaphore::new(config.max_reads),
        reader_slots: Arc::new(Semaphore::new(config.max_readers)),
        keys: Arc::new(keys::KeyTable::new(config.dedup_keys, config.dedup_window)),
        replication: forward::Replication {
            replicas: config.replicas,
            needed: config.min_replicas,
        },
        recovered,
        client_slots: Arc::new(Semaphore::new(limits.clients)),
        node_slots: Arc::new(Semaphore::new(limits.data_nodes)),
        status,
        repair,
        next_conn: AtomicU64::new(1),
        config,
    });
    announce(&listener, &shared, fd_limit)?;
    // The operator's side: not essential, so it never stops the head node.
    let observers = TaskTracker::new();
    observers.spawn(status::run_ticker(shared.clone(), nodes_stop.clone()));
    observers.spawn(repair::run(shared.clone(), nodes_stop.clone()));
    if let Some(http) = http {
        info!(addr = %http.local_addr()?, "status page, /metrics and /status.json served over HTTP");
        let handler_shared = shared.clone();
        observers.spawn(node_kit::http::run(
            http,
            shared.config.http.clone(),
            move |request: &node_kit::http::Request| status::handle(&handler_shared, request),
            nodes_stop.clone().cancelled_owned(),
        ));
    }

    tokio::pin!(shutdown);
    // Numbers the accepted connections, to derive each one's generator.
    let mut accepted_count = 0u64;
    let result = loop {
        let (stream, peer, permit) = tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            ended = essential.join_next_with_id() => {
                let (id, why) = match ended {
                    Some(Ok((id, ()))) => (id, "returned".to_owned()),
                    Some(Err(e)) => (e.id(), if e.is_panic() { "panicked".to_owned() } else { e.to_string() }),
                    None => unreachable!("the essential tasks run until shutdown"),
                };
                let task = names.get(&id).copied().unwrap_or("background");
                error!(task, why, "a task the head node cannot work without stopped; shutting down");
                break Err(RunError::TaskStopped { task, why });
            }
            accepted = admission.accept(&listener) => accepted,
        };
        let shared = shared.clone();
        let (clients_stop, nodes_stop) = (clients_stop.clone(), nodes_stop.clone());
        let node_tasks_inner = node_tasks.clone();
        let waiting_room = handshakes.enter();
        accepted_count += 1;
        let mut rng = seeded_rng(shared.config.rng_seed, accepted_count);
        let task = async move {
            // Boxed: the handshake's state is freed once it is done, so
            // an idle client's task stays small.
            let session = Box::pin(registration::accept_peer(
                stream,
                peer,
                shared.clone(),
                waiting_room,
                &clients_stop,
                &mut rng,
            ))
            .await;
            match session {
                Some(Peer::Client(conn, slot, client_id)) => {
                    client_session::run(conn, client_id, shared, clients_stop, rng).await;
                    drop(slot);
                }
                Some(Peer::Reader(conn, slot, client_slot)) => {
                    reader_session::run(conn, shared, clients_stop).await;
                    drop((slot, client_slot));
                }
                Some(Peer::DataNode(registered)) => {
                    // Data-node sessions outlive client sessions at shutdown,
                    // so answers in flight can still arrive.
                    node_tasks_inner.spawn(
                        async move {
                            node_session::run(registered, rng, nodes_stop).await;
                            drop(permit);
                        }
                        .in_current_span(),
                    );
                    return;
                }
                None => {}
            }
            drop(permit);
        };
        client_tasks.spawn(task.instrument(info_span!("conn", %peer)));
    };

    info!("head node shutting down: answering messages in flight, then closing connections");
    clients_stop.cancel();
    client_tasks.close();
    if tokio::time::timeout(CLIENT_DRAIN, client_tasks.wait())
        .await
        .is_err()
    {
        warn!("some client connections did not finish in time");
    }
    nodes_stop.cancel();
    node_tasks.close();
    if tokio::time::timeout(NODE_DRAIN, async {
        node_tasks.wait().await;
        while essential.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("some data-node connections did not close in time");
    }
    essential.abort_all();
    observers.close();
    let _ = tokio::time::timeout(NODE_DRAIN, observers.wait()).await;
    info!(
        under_replicated = shared.router.under_replicated(),
        over_replicated = shared.router.over_replicated(),
        "head node stopped"
    );
    result
}

/// A generator for stream `stream` of the head node: derived from `seed`
/// when there is one, so a seeded run repeats its choices exactly.
fn seeded_rng(seed: Option<u64>, stream: u64) -> SmallRng {
    match seed {
        Some(seed) => SmallRng::seed_from_u64(splitmix64(seed ^ splitmix64(stream))),
        None => SmallRng::seed_from_u64(rand::random()),
    }
}

/// One step of SplitMix64: spreads nearby inputs far apart.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The start-up lines: where the head node listens, how many connections
/// of each kind it takes, and, loudly, how data nodes are admitted.
fn announce<L: Listener>(listener: &L, shared: &Shared, fd_limit: u64) -> io::Result<()> {
    let config = &shared.config;
    let limits = shared.limits;
    info!(
        addr = %listener.local_addr()?,
        message_id_epoch = shared.ids.epoch(),
        open_file_limit = fd_limit,
        clients = limits.clients,
        data_nodes = limits.data_nodes,
        handshakes = limits.handshakes,
        in_flight_budget = config.in_flight_budget,
        replicas = config.replicas,
        min_replicas = config.min_replicas,
        dedup_keys = config.dedup_keys,
        dedup_window = ?config.dedup_window,
        dedup_memory_max_mib = (config.dedup_keys * keys::BYTES_PER_KEY) >> 20,
        "head node listening"
    );
    match (&config.cluster_token, config.open_registration) {
        (Some(_), false) => info!("data nodes must prove they know the cluster token"),
        (Some(_), true) => warn!(
            "OPEN REGISTRATION: data nodes that cannot prove the cluster token (original-system ones included) are accepted too; anyone who can reach this port can register as a data node and be sent messages"
        ),
        (None, true) => warn!(
            "OPEN REGISTRATION without a cluster token: ANY peer that says dataNode is accepted and sent messages; use only on a trusted network"
        ),
        (None, false) => warn!(
            "no cluster token configured: every data node will be refused (set CLUSTER_TOKEN or --cluster-token-file, or --open-registration)"
        ),
    }
    Ok(())
}
