//! The accept loop: starts the tasks the head node cannot work without
//! (membership, the waiting room) and the operator's side (status, repair),
//! takes each connection through registration to its session, and at
//! shutdown drains client sessions before data-node sessions, so answers
//! in flight can still arrive.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use protocol::net::Listener;
use protocol::server::{Admission, Handshakes};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::{Config, Limits};
use crate::error::RunError;
use crate::state::forward::{self, IdGenerator};
use crate::state::keys;
use crate::state::recovery;
use crate::state::repair::{RepairProgress, Schedule};
use crate::state::router::{Router, Routes};
use crate::state::status::Status;
use crate::tasks::cluster::{self, ClusterConfig};
use crate::tasks::prober::{IcmpProber, Prober};
use crate::tasks::registration::{self, Peer};
use crate::tasks::status::{Occupancy, StatusSources};
use crate::tasks::{Shared, client_session, node_session, parking, reader_session, repair, status};

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
    let status = Arc::new(Status::new(tokio::time::Instant::now()));
    let repair_schedule = Schedule::new(config.repair_after, tokio::time::Instant::now());
    let repair_progress = Arc::new(RepairProgress::default());
    let (repair_tx, repair_rx) = mpsc::channel(repair::REPAIR_EVENTS);
    let fd_limit = protocol::server::raise_fd_limit();
    let limits = Limits::share(
        protocol::server::connection_budget(fd_limit, config.max_connections),
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
            repair_tx,
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
        next_conn: AtomicU64::new(1),
        config,
    });
    announce(&listener, &shared, fd_limit)?;
    // The operator's side: not essential, so it never stops the head node.
    let observers = TaskTracker::new();
    let status_sources = StatusSources {
        status: shared.status.clone(),
        repair: repair_progress.clone(),
        copies: shared.router.copy_counts(),
        epoch: shared.ids.epoch(),
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
    observers.spawn(status::run_ticker(
        status_sources.clone(),
        nodes_stop.clone(),
    ));
    let repair = repair::RepairTask {
        shared: shared.clone(),
        schedule: repair_schedule,
        events_rx: repair_rx,
        progress: repair_progress,
        rng: SmallRng::from_rng(&mut rand::rng()),
    };
    observers.spawn(repair.run(nodes_stop.clone()));
    if let Some(http) = http {
        info!(addr = %http.local_addr()?, "status page, /metrics and /status.json served over HTTP");
        observers.spawn(protocol::http::run(
            http,
            shared.config.http.clone(),
            move |request: &protocol::http::Request| status::handle(&status_sources, request),
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
