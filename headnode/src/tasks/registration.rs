//! From an accepted socket to a served peer: the handshake, the role, the
//! cluster token's challenge and response for data nodes, a place in the
//! right pool (clients, or the data-node connections reserved so that
//! clients can never take them), and a data node's report of what it holds
//! (its keys fill the deduplication window; see `keys` and `recovery`).

use std::net::SocketAddr;
use std::sync::Arc;

use node_kit::server::HandshakeSlot;
use protocol::HandshakeError;
use protocol::auth::{Exchange, Nonce};
use protocol::connection::Connection;
use protocol::datanode::{
    DataNodeHello, FromDataNode, IdRange, STALE_HEAD, ToDataNode, newest_in_refusal,
};
use protocol::error::truncate_for_log;
use protocol::handshake::{self, PETICION, Role, RoleStep};
use protocol::ids::{ClientId, NodeId};
use protocol::net::Stream;
use rand::rngs::SmallRng;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::state::keys::{MAX_REPORTED_KEYS, ReportedKeys};
use crate::state::membership;
use crate::state::reads::read_channel;
use crate::state::repair::MemberChange;
use crate::state::retained::MAX_RANGES;
use crate::state::router::NodeLoad;
use crate::tasks::Shared;
use crate::tasks::cluster::Input;
use crate::tasks::node_session;

/// A peer past its handshake.
pub(crate) enum Peer<S: Stream> {
    /// A client, with its place among the clients and the client id it
    /// announced (its messages are then keyed).
    Client(Connection<S>, OwnedSemaphorePermit, Option<ClientId>),
    /// A reader, with its place among the readers and among the clients.
    Reader(Connection<S>, OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// A data node accepted into the cluster.
    DataNode(node_session::Registered<S>),
}

/// Handshake, role, authentication and registration. `None` when the peer
/// was refused or went away (already logged).
pub(crate) async fn accept_peer<S: Stream>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    waiting_room: HandshakeSlot,
    stop: &CancellationToken,
    rng: &mut SmallRng,
) -> Option<Peer<S>> {
    let conn = match Connection::accept(stream, shared.config.reader, PETICION.as_bytes()) {
        Ok(conn) => conn,
        Err(e) => {
            debug!(error = %e, "connection closed before it could be served");
            return None;
        }
    };
    let mut arrival = Arrival {
        conn,
        peer,
        shared,
        waiting_room,
    };
    match arrival.handshake(stop).await? {
        Ok(Some(Role::Client(client_id))) => arrival.admit_client(client_id).await,
        Ok(Some(Role::Reader)) => arrival.admit_reader().await,
        Ok(Some(Role::DataNode(hello))) => arrival.admit_data_node(hello, stop, rng).await,
        Ok(None) => None,
        Err(HandshakeError::Closed) => {
            // Health checks connect, read `confirmacion` and leave.
            debug!("peer left during the handshake");
            None
        }
        Err(e) => {
            warn!(error = %e, "handshake failed, connection closed");
            None
        }
    }
}

/// A connection in its handshake: it holds a place in the waiting room
/// until it has a place in its pool.
struct Arrival<S: Stream> {
    conn: Connection<S>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    waiting_room: HandshakeSlot,
}

impl<S: Stream> Arrival<S> {
    /// The handshake and the role the peer takes; `None` when the head
    /// node stops or the waiting room needs the place first.
    async fn handshake(
        &mut self,
        stop: &CancellationToken,
    ) -> Option<Result<Option<Role>, HandshakeError>> {
        let handshake = handshake::accept(
            &mut self.conn.reader,
            &mut self.conn.writer,
            RoleStep::Required,
            self.shared.config.handshake_timeout,
        );
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            _ = self.waiting_room.evicted() => {
                debug!("closed while still in its handshake, to make room for a newer connection");
                self.conn.close_with_error(&"server busy: handshake not finished in time").await;
                None
            }
            role = handshake => Some(role),
        }
    }

    /// A client, if there is a place for it.
    async fn admit_client(mut self, client_id: Option<ClientId>) -> Option<Peer<S>> {
        let limits = self.shared.limits;
        let Ok(slot) = self.shared.client_slots.clone().try_acquire_owned() else {
            warn!(max = limits.clients, "cliente refused: server full");
            let reason = format!("server full ({} clients)", limits.clients);
            self.conn.close_with_error(&reason).await;
            return None;
        };
        drop(self.waiting_room);
        info!(framing = ?self.conn.reader.framing(), client_id = ?client_id.as_ref().map(ClientId::as_str), "cliente connected");
        Some(Peer::Client(self.conn, slot, client_id))
    }

    /// A reader, if there is a place for it among the readers and among
    /// the clients.
    async fn admit_reader(mut self) -> Option<Peer<S>> {
        // Readers prove nothing, like clients: whoever may store may
        // read. They take a client place too.
        let shared = &self.shared;
        let Ok(slot) = shared.reader_slots.clone().try_acquire_owned() else {
            let max = shared.config.max_readers;
            warn!(max, "lector refused: too many readers");
            let reason = format!("server full ({max} readers)");
            self.conn.close_with_error(&reason).await;
            return None;
        };
        let Ok(client_slot) = shared.client_slots.clone().try_acquire_owned() else {
            let max = shared.limits.clients;
            warn!(max, "lector refused: server full");
            let reason = format!("server full ({max} clients)");
            self.conn.close_with_error(&reason).await;
            return None;
        };
        drop(self.waiting_room);
        info!("lector connected");
        Some(Peer::Reader(self.conn, slot, client_slot))
    }

    /// A data node, once it proved itself, reported what it holds and the
    /// membership took it, all within the handshake timeout.
    async fn admit_data_node(
        mut self,
        hello: DataNodeHello,
        stop: &CancellationToken,
        rng: &mut SmallRng,
    ) -> Option<Peer<S>> {
        let timeout = self.shared.config.handshake_timeout;
        let reported_epoch = hello.epoch;
        let (conn, peer, shared) = (&mut self.conn, self.peer, &self.shared);
        let registered = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            _ = self.waiting_room.evicted() => {
                conn.close_with_error(&"server busy: registration not finished in time").await;
                return None;
            }
            registered = tokio::time::timeout(
                timeout,
                async {
                    let (info, slot) = register_data_node(conn, peer, hello, shared, rng).await?;
                    let report = read_report(conn, &info, reported_epoch, shared).await?;
                    Ok::<_, String>((info, slot, report))
                },
            ) => registered,
        };
        match registered {
            Ok(Ok((info, slot, report))) => Some(Peer::DataNode(
                registration(self.conn, info, slot, report, self.shared).await?,
            )),
            Ok(Err(refusal)) => {
                self.conn.close_with_error(&refusal).await;
                None
            }
            Err(_) => {
                warn!("dataNode did not finish registering in time");
                let reason = format!("registration not finished within {timeout:?}");
                self.conn.close_with_error(&reason).await;
                None
            }
        }
    }
}

/// Authenticates a data node and takes one of the reserved data-node
/// places. On refusal, the reason to send it (logged already).
async fn register_data_node<S: Stream>(
    conn: &mut Connection<S>,
    peer: SocketAddr,
    hello: DataNodeHello,
    shared: &Shared,
    rng: &mut SmallRng,
) -> Result<(membership::MemberInfo, OwnedSemaphorePermit), String> {
    authenticate(conn, &hello, shared, rng).await?;
    let named = hello.node_id.as_ref().map(NodeId::as_str).unwrap_or("?");
    let Ok(slot) = shared.node_slots.clone().try_acquire_owned() else {
        warn!(
            node = named,
            max = shared.limits.data_nodes,
            "dataNode refused: too many data nodes"
        );
        return Err(format!(
            "too many data nodes ({})",
            shared.limits.data_nodes
        ));
    };
    let info = member_info(peer, hello, shared.next_conn_id())?;
    Ok((info, slot))
}

/// Whether the data node may join: it proves the cluster token, or
/// registration is open. On refusal, the reason to send it (logged
/// already).
async fn authenticate<S: Stream>(
    conn: &mut Connection<S>,
    hello: &DataNodeHello,
    shared: &Shared,
    rng: &mut SmallRng,
) -> Result<(), String> {
    let config = &shared.config;
    let named = hello.node_id.as_ref().map(NodeId::as_str).unwrap_or("?");
    match (&config.cluster_token, &hello.nonce) {
        (Some(token), Some(node_nonce)) => {
            let (Some(node_id), Some(incarnation)) = (&hello.node_id, hello.incarnation) else {
                warn!("dataNode refused: a challenge needs an id and an incarnation");
                return Err("unauthorized".into());
            };
            let head_nonce = Nonce::from_rng(rng);
            let exchange = Exchange {
                node_id: node_id.as_str(),
                incarnation,
                node_nonce,
                head_nonce: &head_nonce,
            };
            let proof = token.head_proof(&exchange);
            conn.writer.queue_with(|buf| {
                ToDataNode::Challenge {
                    nonce: head_nonce,
                    proof,
                }
                .encode(buf)
            });
            conn.writer
                .flush()
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            let answer = conn
                .reader
                .read_frame()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("closed during registration")?;
            let verified = match FromDataNode::parse(answer.as_str()) {
                Ok(FromDataNode::Proof(proof)) => token.verify_node(&exchange, &proof),
                _ => false,
            };
            if !verified {
                warn!(
                    node = named,
                    "dataNode refused: wrong cluster token (its proof does not match)"
                );
                return Err("unauthorized".into());
            }
        }
        (_, None) if config.open_registration => {
            debug!(
                node = named,
                "dataNode registers without a token (open registration)"
            );
        }
        (Some(_), None) => {
            warn!(
                node = named,
                "dataNode refused: it did not offer to prove the cluster token"
            );
            return Err("unauthorized".into());
        }
        (None, _) => {
            warn!(
                node = named,
                "dataNode refused: this head node has no cluster token (set CLUSTER_TOKEN or --cluster-token-file, or allow --open-registration)"
            );
            return Err("unauthorized: the head node has no cluster token configured".into());
        }
    }
    Ok(())
}

/// What the cluster will know of the data node at `peer`, on connection
/// `conn_id`.
fn member_info(
    peer: SocketAddr,
    hello: DataNodeHello,
    conn_id: u64,
) -> Result<membership::MemberInfo, String> {
    let legacy = hello.is_legacy();
    let node = match hello.node_id {
        Some(node) => node,
        // Original-system nodes have no name; name them by address.
        None => format!(
            "dn-{}-{}",
            crate::state::probe::canonical_ip(peer.ip()),
            peer.port()
        )
        .replace(':', ".")
        .parse()
        .map_err(|e: protocol::ParseError| e.to_string())?,
    };
    Ok(membership::MemberInfo {
        node,
        incarnation: hello.incarnation.unwrap_or(conn_id),
        conn: conn_id,
        addr: crate::state::probe::canonical_ip(peer.ip()),
        legacy,
        zone: hello.zone,
        store: hello.store,
    })
}

/// What a data node reports after `welcome`, besides the keys it holds.
#[derive(Debug, Default)]
struct Report {
    /// The member set it keeps (as the last head node sent it).
    peers: Vec<NodeId>,
    /// Records it found damaged since it started (`damaged <n>`).
    damaged: u64,
    /// The keys it holds, for the key table once it is accepted.
    keys: ReportedKeys,
    /// Ranges of what its retention removed (`removed`), one per epoch.
    removed: Vec<IdRange>,
}

/// Welcomes a data node, whose newest accepted epoch is `reported` (`None`
/// from a node older than epochs as counters), at an epoch above it, and
/// reads its report: the keys it holds (into the deduplication window),
/// the member set it keeps and the records it found damaged. An
/// original-system node reports nothing. A node that refuses the welcome
/// names its newest epoch, and the next welcome goes above it.
async fn read_report<S: Stream>(
    conn: &mut Connection<S>,
    info: &membership::MemberInfo,
    reported: Option<u64>,
    shared: &Shared,
) -> Result<Report, String> {
    if info.legacy {
        shared.ids.welcomed_without_epoch();
        return Ok(Report::default());
    }
    let before = shared.ids.epoch();
    let epoch = shared.ids.welcome_epoch(reported.unwrap_or(0));
    if epoch != before {
        info!(
            node = %info.node, reported = ?reported, epoch,
            "epoch raised above the newest epoch a data node has accepted: ids are given under {epoch} from now on"
        );
    }
    conn.writer.queue_with(|buf| {
        ToDataNode::Welcome {
            node: info.node.clone(),
            epoch,
            head: reported.map(|_| shared.head_id),
        }
        .encode(buf)
    });
    conn.writer
        .flush()
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let mut keys = ReportedKeys::default();
    let mut peers = Vec::new();
    let mut damaged = 0;
    // One per epoch: bounded by the epochs the node names, a few.
    let mut removed = Vec::new();
    loop {
        let line = conn
            .reader
            .read_frame()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("closed during its report")?;
        match FromDataNode::parse(line.as_str()) {
            Ok(FromDataNode::Held { client, keys: held }) => {
                keys.add(client, held);
                if keys.len() > MAX_REPORTED_KEYS {
                    warn!(node = %info.node, "dataNode reported more than {MAX_REPORTED_KEYS} keys; refused");
                    return Err(format!(
                        "a report of more than {MAX_REPORTED_KEYS} keys (the most a data node keeps)"
                    ));
                }
            }
            Ok(FromDataNode::Peers(named)) => peers = named,
            Ok(FromDataNode::Damaged(records)) => damaged = records,
            Ok(FromDataNode::Removed(ranges)) => {
                for range in ranges {
                    IdRange::merge_into(&mut removed, range);
                }
                if removed.len() > MAX_RANGES {
                    return Err(format!(
                        "more than {MAX_RANGES} epochs in its removed ranges"
                    ));
                }
            }
            Ok(FromDataNode::Ready) => break,
            Ok(FromDataNode::Error(reason)) if reason.starts_with(STALE_HEAD) => {
                let raised =
                    newest_in_refusal(&reason).is_some_and(|newest| shared.ids.raise_above(newest));
                if raised {
                    warn!(
                        node = %info.node, epoch = shared.ids.epoch(),
                        "dataNode refuses this head node's epoch: {reason}; the next welcome goes above it"
                    );
                } else {
                    error!(
                        node = %info.node,
                        "dataNode refuses this head node: {reason}"
                    );
                }
                return Err(format!("refused by the data node: {reason}"));
            }
            _ => {
                warn!(node = %info.node, "dataNode sent an unexpected line in its report: {}", truncate_for_log(line.as_str()));
                return Err(format!(
                    "expected 'held', 'peers', 'removed', 'damaged' or 'ready', got {:?}",
                    truncate_for_log(line.as_str())
                ));
            }
        }
    }
    info!(
        node = %info.node,
        keys = keys.len(),
        peers = ?peers.iter().map(NodeId::as_str).collect::<Vec<_>>(),
        damaged,
        removed = ?removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "dataNode reported what it holds"
    );
    if damaged > 0 {
        warn!(
            node = %info.node, damaged,
            "dataNode found {damaged} damaged records in its data files; a repair pass gives their messages their copies"
        );
    }
    Ok(Report {
        peers,
        damaged,
        keys,
        removed,
    })
}

/// Hands a data node that proved itself to the membership task.
async fn registration<S: Stream>(
    mut conn: Connection<S>,
    info: membership::MemberInfo,
    slot: OwnedSemaphorePermit,
    report: Report,
    shared: Arc<Shared>,
) -> Option<node_session::Registered<S>> {
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    // Original-system nodes cannot serve reads.
    let (reads_tx, reads_rx) = if info.legacy {
        (None, None)
    } else {
        let (reads_tx, reads_rx) = read_channel();
        (Some(reads_tx), Some(reads_rx))
    };
    let load = Arc::new(NodeLoad::new(tokio::time::Instant::now()));
    let evicted = CancellationToken::new();
    let (respond, response) = tokio::sync::oneshot::channel();
    let registration = Input::Register {
        info: info.clone(),
        queue: queue_tx,
        load: load.clone(),
        evicted: evicted.clone(),
        reads: reads_tx,
        peers: report.peers,
        keys: report.keys,
        respond,
    };
    if shared.membership_tx.send(registration).await.is_err() {
        return None;
    }
    match response.await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => {
            conn.close_with_error(&refusal).await;
            return None;
        }
        Err(_) => return None,
    }
    info!(node = %info.node, legacy = info.legacy, "dataNode connected");
    // Whole: what was known of its removals is replaced (a new data
    // directory removed nothing).
    if !info.legacy {
        shared
            .tell_repair(MemberChange::Retention {
                node: info.node.clone(),
                ranges: report.removed,
                whole: true,
            })
            .await;
    }
    if report.damaged > 0 {
        shared
            .tell_repair(MemberChange::Damaged {
                node: info.node.clone(),
                records: report.damaged,
            })
            .await;
    }
    Some(node_session::Registered {
        conn,
        info,
        queue: queue_rx,
        reads: reads_rx,
        load,
        evicted,
        shared,
        _slot: slot,
    })
}
