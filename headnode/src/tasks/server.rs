//! The accept loop: starts the tasks the head node cannot work without
//! (membership, the waiting room) and the operator's side (status, repair,
//! the HTTP port), takes each connection through registration to its
//! session, and at shutdown drains client sessions before data-node
//! sessions, so answers in flight can still arrive.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use node_kit::server::{Admission, HandshakeSlot, Handshakes};
use protocol::datanode::HeadId;
use protocol::net::{Listener, Stream};
use rand::RngExt;
use rand::rngs::SmallRng;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{self, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{Config, Limits, RngStream};
use crate::error::RunError;
use crate::state::forward::Replication;
use crate::state::ids::IdGenerator;
use crate::state::keys::{self, KeyTable};
use crate::state::probe::Prober;
use crate::state::recovery::Gate;
use crate::state::repair::{RepairProgress, Schedule};
use crate::state::retained::Retained;
use crate::state::router::{Parked, Router, Routes};
use crate::state::status::Status;
use crate::tasks::cluster::{self, ClusterConfig, Input};
use crate::tasks::prober::IcmpProber;
use crate::tasks::registration::{self, Peer};
use crate::tasks::repair::{REPAIR_EVENTS, RepairEvent, RepairTask};
use crate::tasks::status::{self, Occupancy, StatusSources};
use crate::tasks::{Shared, client_session, node_session, parking, reader_session};

/// Inputs the membership task may have queued at once. Heartbeats beyond it
/// are dropped (the next one follows within a heartbeat interval); every
/// other input waits for room.
const MEMBERSHIP_QUEUE: usize = 4096;

/// How long client sessions get to deliver answers for messages already in
/// flight when the head node shuts down.
const CLIENT_DRAIN: Duration = Duration::from_secs(2);
/// How long data-node sessions get to close.
const NODE_DRAIN: Duration = Duration::from_millis(500);

/// Serves clients and data nodes on `listener` (and the operator's
/// endpoints on `http`, if any) until `shutdown` completes.
pub(crate) async fn serve<L: Listener>(
    listener: L,
    http: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    config.validate()?;
    let started = Instant::now();
    let fd_limit = node_kit::server::raise_fd_limit();
    let limits = Limits::share(
        node_kit::server::connection_budget(fd_limit, config.max_connections),
        &config,
    );
    let (shared, ends) = build(config, limits, started);
    let mut server = Server::new(shared);
    server.spawn_essential(ends.membership, ends.parking_rx);
    announce(&listener, &server.shared, fd_limit)?;
    server.spawn_observers(ends.repair, http)?;
    let result = server.accept_until(&listener, shutdown).await;
    server.stop().await;
    result
}

/// The ends of the channels [`build`] made that the tasks read from.
struct Ends {
    membership: MembershipEnds,
    parking_rx: mpsc::UnboundedReceiver<Parked>,
    repair: RepairEnds,
}

/// What the membership task starts with.
struct MembershipEnds {
    config: ClusterConfig,
    inputs_rx: mpsc::Receiver<Input>,
}

/// What the repair task starts with.
struct RepairEnds {
    schedule: Schedule,
    events_rx: mpsc::Receiver<RepairEvent>,
    progress: Arc<RepairProgress>,
}

/// What every connection task shares, and the channels between the tasks,
/// for a head node started at `started`.
fn build(config: Config, limits: Limits, started: Instant) -> (Arc<Shared>, Ends) {
    let status = Arc::new(Status::new(started));
    let (repair_tx, repair_rx) = mpsc::channel(REPAIR_EVENTS);
    let repair = RepairEnds {
        schedule: Schedule::new(config.repair_after, started),
        events_rx: repair_rx,
        progress: Arc::default(),
    };
    let prober: Arc<dyn Prober> = match &config.prober {
        Some(prober) => prober.clone(),
        None => {
            let identifier = config.rng(RngStream::Prober).random();
            Arc::new(IcmpProber::with_identifier(identifier))
        }
    };
    let ids = Arc::new(IdGenerator::starting_at(config.id_epoch));
    let head_id = HeadId(config.rng(RngStream::HeadId).random());
    let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::default()));
    let (parking_tx, parking_rx) = mpsc::unbounded_channel();
    let (inputs_tx, inputs_rx) = mpsc::channel(MEMBERSHIP_QUEUE);
    let router = Router::new(
        routes_rx,
        parking_tx,
        config.max_attempts,
        config.sticky_run,
    );
    let recovered = Arc::new(Gate::default());
    let keys = Arc::new(KeyTable::new(
        config.dedup_keys,
        config.dedup_window,
        started,
    ));
    // Every head node starts recovering: what the data nodes report is
    // kept whole until recovery ends.
    keys.recovering();
    let membership = MembershipEnds {
        config: ClusterConfig {
            detector: config.detector.clone(),
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            observer: config.observer.clone(),
            recovery_wait: config.recovery_wait,
            remove_after: config.repair_after,
            status: status.clone(),
            repair_tx: repair_tx.clone(),
            prober,
            inputs_tx: inputs_tx.clone(),
            routes_tx,
            route_changes: router.changes(),
            recovered: recovered.clone(),
            keys: keys.clone(),
        },
        inputs_rx,
    };
    let budget = u32::try_from(config.in_flight_budget).unwrap_or(u32::MAX) as usize;
    let shared = Arc::new(Shared {
        limits,
        router,
        ids,
        head_id,
        membership_tx: inputs_tx,
        budget: Arc::new(Semaphore::new(budget)),
        read_budget: Semaphore::new(config.max_reads),
        reader_slots: Arc::new(Semaphore::new(config.max_readers)),
        keys,
        replication: Replication {
            replicas: config.replicas,
            needed: config.min_replicas,
        },
        recovered,
        client_slots: Arc::new(Semaphore::new(limits.clients)),
        node_slots: Arc::new(Semaphore::new(limits.data_nodes)),
        status,
        next_conn: AtomicU64::new(1),
        repair_tx,
        config,
    });
    let ends = Ends {
        membership,
        parking_rx,
        repair,
    };
    (shared, ends)
}

/// The running head node: what each connection is handed, the tasks it
/// watches, and how it stops them.
struct Server {
    shared: Arc<Shared>,
    admission: Admission,
    handshakes: Handshakes,
    /// Tasks the head node cannot work without; one ending early stops it.
    essential: JoinSet<()>,
    /// The essential tasks' names, for the log line if one ends.
    names: HashMap<task::Id, &'static str>,
    /// The operator's side: not essential, so it never stops the head node.
    observers: TaskTracker,
    clients_stop: CancellationToken,
    /// Stops the data-node sessions and the background tasks, after the
    /// client sessions.
    nodes_stop: CancellationToken,
    client_tasks: TaskTracker,
    node_tasks: TaskTracker,
    /// Numbers the accepted connections, to derive each one's generator.
    accepted: u64,
}

impl Server {
    fn new(shared: Arc<Shared>) -> Self {
        Server {
            admission: Admission::new(shared.limits.total),
            handshakes: Handshakes::new(shared.limits.handshakes),
            shared,
            essential: JoinSet::new(),
            names: HashMap::new(),
            observers: TaskTracker::new(),
            clients_stop: CancellationToken::new(),
            nodes_stop: CancellationToken::new(),
            client_tasks: TaskTracker::new(),
            node_tasks: TaskTracker::new(),
            accepted: 0,
        }
    }

    /// Starts the membership task and the waiting room.
    fn spawn_essential(
        &mut self,
        membership: MembershipEnds,
        parking_rx: mpsc::UnboundedReceiver<Parked>,
    ) {
        let shared = &self.shared;
        let task = self.essential.spawn(cluster::run_membership(
            membership.config,
            membership.inputs_rx,
            self.nodes_stop.clone(),
        ));
        self.names.insert(task.id(), "membership");
        let task = self.essential.spawn(parking::run_parking_lot(
            parking_rx,
            shared.router.clone(),
            shared.config.no_node_wait,
            shared.config.max_parked,
            shared.config.rng(RngStream::WaitingRoom),
            self.nodes_stop.clone(),
        ));
        self.names.insert(task.id(), "waiting-room");
    }

    /// Starts the operator's side: the status ticker, repair, and the HTTP
    /// port if there is one.
    fn spawn_observers(&mut self, repair: RepairEnds, http: Option<TcpListener>) -> io::Result<()> {
        let shared = &self.shared;
        let sources = StatusSources {
            status: shared.status.clone(),
            repair: repair.progress.clone(),
            copies: shared.router.copy_counts(),
            ids: shared.ids.clone(),
            replication: shared.replication,
            repair_after: shared.config.repair_after,
            clients: Occupancy {
                slots: shared.client_slots.clone(),
                limit: shared.limits.clients,
            },
            data_nodes: Occupancy {
                slots: shared.node_slots.clone(),
                limit: shared.limits.data_nodes,
            },
        };
        let stop = &self.nodes_stop;
        self.observers
            .spawn(status::run_ticker(sources.clone(), stop.clone()));
        let repair = RepairTask {
            shared: shared.clone(),
            schedule: repair.schedule,
            events_rx: repair.events_rx,
            progress: repair.progress,
            rng: shared.config.rng(RngStream::Repair),
            retained: Retained::default(),
        };
        self.observers.spawn(repair.run(stop.clone()));
        if let Some(http) = http {
            info!(addr = %http.local_addr()?, "status page, /metrics and /status.json served over HTTP");
            self.observers.spawn(node_kit::http::run(
                http,
                shared.config.http.clone(),
                move |request: &node_kit::http::Request| status::handle(&sources, request),
                stop.clone().cancelled_owned(),
            ));
        }
        Ok(())
    }

    /// Accepts connections until `shutdown`, or until an essential task
    /// ends (then with why).
    async fn accept_until<L: Listener>(
        &mut self,
        listener: &L,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer, permit) = tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(()),
                ended = self.essential.join_next_with_id() => {
                    let (id, why) = match ended {
                        Some(Ok((id, ()))) => (id, "returned".to_owned()),
                        Some(Err(e)) => (e.id(), if e.is_panic() { "panicked".to_owned() } else { e.to_string() }),
                        None => unreachable!("the essential tasks run until shutdown"),
                    };
                    let task = self.names.get(&id).copied().unwrap_or("background");
                    error!(task, why, "a task the head node cannot work without stopped; shutting down");
                    return Err(RunError::TaskStopped { task, why });
                }
                accepted = self.admission.accept(listener) => accepted,
            };
            self.spawn_connection(stream, peer, permit);
        }
    }

    /// Takes one accepted connection through registration to its session,
    /// on a task of its own.
    fn spawn_connection<S: Stream>(
        &mut self,
        stream: S,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        self.accepted += 1;
        let connection = Connection {
            shared: self.shared.clone(),
            waiting_room: self.handshakes.enter(),
            rng: self.shared.config.rng(RngStream::Connection(self.accepted)),
            clients_stop: self.clients_stop.clone(),
            nodes_stop: self.nodes_stop.clone(),
            node_tasks: self.node_tasks.clone(),
        };
        let task = connection.serve(stream, peer, permit);
        self.client_tasks
            .spawn(task.instrument(info_span!("conn", %peer)));
    }

    /// Stops the head node: client sessions first, given a little time to
    /// answer what they have in flight, then the data-node sessions and
    /// the background tasks.
    async fn stop(mut self) {
        info!("head node shutting down: answering messages in flight, then closing connections");
        self.clients_stop.cancel();
        self.client_tasks.close();
        if tokio::time::timeout(CLIENT_DRAIN, self.client_tasks.wait())
            .await
            .is_err()
        {
            warn!("some client connections did not finish in time");
        }
        self.nodes_stop.cancel();
        self.node_tasks.close();
        let essential = &mut self.essential;
        let node_tasks = &self.node_tasks;
        if tokio::time::timeout(NODE_DRAIN, async {
            node_tasks.wait().await;
            while essential.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("some data-node connections did not close in time");
        }
        self.essential.abort_all();
        self.observers.close();
        let _ = tokio::time::timeout(NODE_DRAIN, self.observers.wait()).await;
        info!(
            under_replicated = self.shared.router.under_replicated(),
            over_replicated = self.shared.router.over_replicated(),
            "head node stopped"
        );
    }
}

/// What one accepted connection's task is handed.
struct Connection {
    shared: Arc<Shared>,
    /// Its place among the connections still in their handshake.
    waiting_room: HandshakeSlot,
    /// Its generator, derived from the seed and its number.
    rng: SmallRng,
    clients_stop: CancellationToken,
    nodes_stop: CancellationToken,
    /// Where a data node's session goes: it outlives the client sessions
    /// at shutdown.
    node_tasks: TaskTracker,
}

impl Connection {
    /// Registration, then the session of the role the peer took; `permit`
    /// is its place among the connections, held until it ends.
    async fn serve<S: Stream>(self, stream: S, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let Connection {
            shared,
            waiting_room,
            mut rng,
            clients_stop,
            nodes_stop,
            node_tasks,
        } = self;
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
                node_tasks.spawn(
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
    }
}

/// The start-up lines: where the head node listens, how many connections
/// of each kind it takes, and, loudly, how data nodes are admitted.
fn announce<L: Listener>(listener: &L, shared: &Shared, fd_limit: u64) -> io::Result<()> {
    let config = &shared.config;
    let limits = shared.limits;
    info!(
        addr = %listener.local_addr()?,
        epoch = shared.ids.epoch(),
        head_id = %shared.head_id,
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
