//! Cluster membership and failure detection, as a state machine.
//!
//! No sockets and no clocks in here: every input carries the time it
//! happened (`now`), and every decision comes back as an [`Event`] for the
//! caller to carry out (update routes, close a connection, log a line).
//! That keeps the rules testable with fabricated instants.
//!
//! Three detectors feed it:
//! - **ICMP rounds** (the original system's heartbeat): a member whose host
//!   does not answer `ping_misses` rounds in a row is evicted as unreachable,
//!   and so is a member whose host misses one round while its application
//!   heartbeat is already silent (two detectors agreeing). One lost echo
//!   alone evicts no one. When no host answers a round while every heartbeat
//!   does, ICMP itself is failing (filtered, rate-limited), not the members:
//!   such a round counts against no one, and after `ping_misses` of them in
//!   a row ICMP alone evicts no one until some host answers again;
//! - **connection loss**: evicted at once;
//! - **application heartbeat**: a member whose process stops answering
//!   `ping <n>` for `suspect_after` is *suspect* (sent no new messages);
//!   after `hung_grace` more, one ICMP probe tells whether its host still
//!   answers: if it does, the process is **hung**; if not, it is
//!   **unreachable**. Either way it is evicted.
//!
//! Members are keyed by node id plus *incarnation* (which grows on every
//! process start), and each registration by its connection id, so a late
//! result about an old connection or an old incarnation is ignored, and an
//! older process cannot take an id back from a newer one. Incarnations are
//! compared only within one data directory (its store id): a node that
//! comes back with another directory supersedes the old one, whose process
//! is then refused.
//!
//! Besides who is live, it keeps the cluster's member set ([`set`]): the
//! nodes the cluster is made of, live or not, and whether a majority of
//! them is live ([`Quorum`]), which the head node needs to answer clients.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use protocol::ids::NodeId;

pub mod set;

use set::MemberSet;
pub use set::Quorum;

/// Identifies one accepted data-node connection for its whole life.
pub type ConnId = u64;

/// How many node ids [`Membership`] remembers (with the highest incarnation
/// each has registered), for "rejoined" logs and to refuse older processes.
///
/// Current members are always remembered; beyond this many ids, the one
/// registered least recently among the rest is forgotten, so registration
/// churn with made-up ids cannot grow the head node's memory without bound.
/// Forgetting an id costs little but is not free: when it registers again
/// it is logged as joined rather than rejoined, and an older incarnation of
/// it (a stale process) could register again, since nothing newer is known.
pub const REMEMBERED_IDS: usize = 4096;

/// Data directories (store ids) remembered per node id as replaced by a
/// newer one, whose processes are refused: the oldest is forgotten beyond
/// this many.
pub const SUPERSEDED_STORES: usize = 4;

/// Timings of the failure detectors.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// ICMP rounds a member may miss in a row before eviction (a member whose
    /// heartbeat is already silent goes at its first miss). Also the number
    /// of rounds in a row no host may answer, while every heartbeat does,
    /// before ICMP is taken to be failing rather than the members.
    pub ping_misses: u32,
    /// Silence on the application heartbeat after which a member is suspect.
    pub suspect_after: Duration,
    /// Further silence after which a suspect member is evicted.
    pub hung_grace: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            ping_misses: 3,
            suspect_after: Duration::from_secs(2),
            hung_grace: Duration::from_secs(3),
        }
    }
}

/// What the cluster knows of one registered data node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The node's name.
    pub node: NodeId,
    /// Changes on every start of the node's process.
    pub incarnation: u64,
    /// The connection this registration lives on.
    pub conn: ConnId,
    /// The node's IP address, for ICMP and logs.
    pub addr: IpAddr,
    /// An original-system node: no application heartbeat, one message at a time.
    pub legacy: bool,
    /// Its failure domain, if it named one.
    pub zone: Option<protocol::ids::Zone>,
    /// Names its data directory, if it sent one (see `DataNodeHello::store`).
    pub store: Option<u64>,
}

impl fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.node, self.addr)
    }
}

/// Result of one ICMP echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The host answered after this round-trip time.
    Reply(Duration),
    /// No answer within the timeout.
    NoReply,
    /// ICMP cannot be used here (no permission); nothing is known.
    Unavailable,
}

/// Why a member was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictReason {
    /// Its host missed ICMP rounds (or the confirming probe).
    Unreachable,
    /// Its host answers ICMP but its process stopped answering.
    Hung {
        /// Time since its last heartbeat answer.
        silent_for: Duration,
    },
    /// It stopped answering and ICMP is unavailable to tell why.
    Silent {
        /// Time since its last heartbeat answer.
        silent_for: Duration,
    },
    /// An original-system node did not acknowledge a message in time.
    AckTimeout,
    /// Its connection dropped or broke the protocol.
    ConnectionLost(String),
    /// It asked to leave and was drained.
    Left,
    /// A newer registration of the same node replaced it.
    Replaced {
        /// The incarnation that took its place.
        by_incarnation: u64,
    },
    /// The head node is shutting down.
    Shutdown,
}

impl fmt::Display for EvictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvictReason::Unreachable => write!(f, "no disponible"),
            EvictReason::Hung { silent_for } => write!(
                f,
                "hung (no heartbeat reply for {:.1}s while its host still answers ping)",
                silent_for.as_secs_f64()
            ),
            EvictReason::Silent { silent_for } => write!(
                f,
                "hung or unreachable (no heartbeat reply for {:.1}s; ICMP unavailable to tell which)",
                silent_for.as_secs_f64()
            ),
            EvictReason::AckTimeout => {
                write!(f, "hung (no acknowledgement within the ack timeout)")
            }
            EvictReason::ConnectionLost(why) => write!(f, "connection lost ({why})"),
            EvictReason::Left => write!(f, "left the cluster"),
            EvictReason::Replaced { by_incarnation } => {
                write!(
                    f,
                    "replaced by a new registration (incarnation {by_incarnation})"
                )
            }
            EvictReason::Shutdown => write!(f, "head node shutting down"),
        }
    }
}

/// A decision for the caller to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node registered. `rejoined` if this id was a member before.
    Joined {
        /// The new member.
        member: MemberInfo,
        /// Whether the id had been a member before (and is still
        /// remembered: see [`REMEMBERED_IDS`]).
        rejoined: bool,
    },
    /// A member stopped answering the application heartbeat; route nothing new to it.
    Suspected {
        /// The member.
        member: MemberInfo,
        /// Time since its last heartbeat answer.
        silent_for: Duration,
    },
    /// A suspect member answered again; route to it again.
    Recovered {
        /// The member.
        member: MemberInfo,
    },
    /// Probe this member's host once now and report with [`Membership::confirm_result`].
    ProbeNow {
        /// The member.
        member: MemberInfo,
    },
    /// The member asked to leave; route nothing new to it, let it drain.
    Leaving {
        /// The member.
        member: MemberInfo,
    },
    /// The member is gone; close its connection and resend what it held.
    Evicted {
        /// The former member.
        member: MemberInfo,
        /// Why.
        reason: EvictReason,
    },
    /// An ICMP round found the member's host alive.
    Available {
        /// The member.
        member: MemberInfo,
        /// Round-trip time.
        rtt: Duration,
    },
    /// An ICMP round got no answer, but the member has misses to spare.
    Missed {
        /// The member.
        member: MemberInfo,
        /// Rounds missed in a row.
        misses: u32,
        /// Whether its application heartbeat still answers (never for an
        /// original-system node, which has none).
        heartbeat_answers: bool,
    },
    /// No host has answered ICMP for `rounds` rounds in a row while every
    /// heartbeat answers: ICMP is failing, not the members. Until
    /// [`Event::IcmpAnswering`], missed rounds count against no one.
    IcmpUnanswered {
        /// Rounds in a row without any reply.
        rounds: u32,
    },
    /// A host answered ICMP again after [`Event::IcmpUnanswered`]; missed
    /// rounds count again, from zero.
    IcmpAnswering,
    /// The last member is gone.
    NoneLeft,
    /// A member absent for the removal wait, while a majority of the set
    /// was live, is no longer in the member set.
    Removed {
        /// The former member.
        node: NodeId,
        /// How long it had been absent.
        absent_for: Duration,
    },
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another live process holds this node id.
    #[error("node id {0} is already in use by a live data node")]
    IdInUse(NodeId),
    /// A newer process of this node has registered since this one started:
    /// this one is a leftover and must not take the id back.
    #[error("stale incarnation {incarnation} of {node}: incarnation {newer} has registered since")]
    StaleIncarnation {
        /// The node id asked for.
        node: NodeId,
        /// The incarnation that asked.
        incarnation: u64,
        /// The highest incarnation of `node` that has registered.
        newer: u64,
    },
    /// The process of a data directory another one has replaced under this
    /// node id: it must stop.
    #[error(
        "stale incarnation {incarnation} of {node}: its data directory (store {store:016x}) has been replaced by store {by:016x}"
    )]
    SupersededStore {
        /// The node id asked for.
        node: NodeId,
        /// The incarnation that asked.
        incarnation: u64,
        /// Its data directory's store id.
        store: u64,
        /// The store id that replaced it.
        by: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Alive,
    /// Silent past `suspect_after`.
    Suspect,
    /// Silent past the grace; an ICMP probe is deciding hung vs unreachable.
    Confirming,
    /// Asked to leave; draining.
    Leaving,
}

#[derive(Debug, Clone)]
struct Member {
    info: MemberInfo,
    health: Health,
    last_heartbeat: Instant,
    icmp_misses: u32,
}

impl Member {
    /// Whether its heartbeat answered within `suspect_after` (judged from
    /// the time, too: `tick` may not have run since it went quiet). Never
    /// for a legacy member, which has no heartbeat.
    fn heartbeat_answers(&self, now: Instant, suspect_after: Duration) -> bool {
        !self.info.legacy
            && matches!(self.health, Health::Alive | Health::Leaving)
            && now.saturating_duration_since(self.last_heartbeat) < suspect_after
    }
}

/// What is remembered of a node id that has registered.
#[derive(Debug, Clone)]
struct Seen {
    /// The highest incarnation that has registered under the id, from its
    /// current data directory.
    incarnation: u64,
    /// That directory's store id, if the node named one.
    store: Option<u64>,
    /// Directories replaced under this id, newest last (at most
    /// [`SUPERSEDED_STORES`]).
    superseded: Vec<u64>,
    /// When it last registered, in registrations since start: the order in
    /// which ids are forgotten.
    registered: u64,
    /// It came back with a new data directory (`store`) and repair has not
    /// yet given it its share: what it held before is not there.
    rebuilding: bool,
}

/// The membership state machine. See the module docs.
#[derive(Debug)]
pub struct Membership {
    config: DetectorConfig,
    members: BTreeMap<NodeId, Member>,
    by_conn: HashMap<ConnId, NodeId>,
    /// Ids that have registered: every member, and others up to
    /// [`REMEMBERED_IDS`] ids in all.
    ever_seen: HashMap<NodeId, Seen>,
    /// The ids of `ever_seen` that are not current members, by
    /// `Seen::registered`: the ones that may be forgotten, oldest first.
    forgettable: BTreeMap<u64, NodeId>,
    registrations: u64,
    /// Rounds in a row in which no host answered while every heartbeat did.
    unanswered_rounds: u32,
    /// Set by [`Event::IcmpUnanswered`], cleared by [`Event::IcmpAnswering`].
    icmp_unanswered: bool,
    /// The nodes the cluster is made of, live or not.
    set: MemberSet,
}

impl Membership {
    /// An empty cluster, whose absent members leave the member set after
    /// `remove_after` (while a majority is live).
    pub fn new(config: DetectorConfig, remove_after: Duration) -> Self {
        Membership {
            set: MemberSet::new(remove_after),
            config,
            members: BTreeMap::new(),
            by_conn: HashMap::new(),
            ever_seen: HashMap::new(),
            forgettable: BTreeMap::new(),
            registrations: 0,
            unanswered_rounds: 0,
            icmp_unanswered: false,
        }
    }

    /// The data directory (store id) last registered under `node`, if it
    /// named one and is remembered.
    pub fn known_store(&self, node: &NodeId) -> Option<u64> {
        self.ever_seen.get(node)?.store
    }

    /// A node asks to join.
    ///
    /// Incarnations are ordered within one data directory: one lower than
    /// the highest registered under this id from the same directory (or
    /// one of them names none) is an older process and is refused, whether
    /// the newer one is still a member or not. Another directory is a
    /// replaced one (a new disk): it supersedes the old, whose process is
    /// refused from then on. The same incarnation is the same process on a
    /// new connection: the old connection is stale and replaced. A higher
    /// incarnation replaces the old member only if that one has stopped
    /// answering (a restart racing its own eviction); while it is alive, the
    /// id is in use and the newcomer is refused. A node that registers
    /// joins the member set.
    pub fn register(&mut self, info: MemberInfo, now: Instant) -> Result<Vec<Event>, Refusal> {
        if let Some(seen) = self.ever_seen.get(&info.node) {
            if let Some(store) = info.store
                && seen.superseded.contains(&store)
            {
                return Err(Refusal::SupersededStore {
                    incarnation: info.incarnation,
                    store,
                    by: seen.store.unwrap_or_default(),
                    node: info.node,
                });
            }
            let same_store = match (info.store, seen.store) {
                (Some(store), Some(known)) => store == known,
                _ => true,
            };
            if same_store && seen.incarnation > info.incarnation {
                return Err(Refusal::StaleIncarnation {
                    incarnation: info.incarnation,
                    newer: seen.incarnation,
                    node: info.node,
                });
            }
        }
        let mut events = Vec::new();
        if let Some(existing) = self.members.get(&info.node) {
            let same_process = existing.info.incarnation == info.incarnation;
            let silent = matches!(
                existing.health,
                Health::Suspect | Health::Confirming | Health::Leaving
            );
            if !same_process && !silent {
                return Err(Refusal::IdInUse(info.node));
            }
            let old_conn = existing.info.conn;
            events.extend(self.evict(
                old_conn,
                EvictReason::Replaced {
                    by_incarnation: info.incarnation,
                },
                now,
            ));
            // Replacing is not the cluster running dry.
            events.retain(|e| *e != Event::NoneLeft);
        }
        let rejoined = self.remember(&info);
        if !info.legacy {
            self.set.live(&info.node);
        }
        self.by_conn.insert(info.conn, info.node.clone());
        self.members.insert(
            info.node.clone(),
            Member {
                info: info.clone(),
                health: Health::Alive,
                last_heartbeat: now,
                icmp_misses: 0,
            },
        );
        events.push(Event::Joined {
            member: info,
            rejoined,
        });
        Ok(events)
    }

    /// A member answered an application heartbeat (or anything else that
    /// proves its process is working).
    pub fn heartbeat(&mut self, conn: ConnId, now: Instant) -> Vec<Event> {
        let Some(member) = self.member_mut(conn) else {
            return Vec::new();
        };
        member.last_heartbeat = now;
        match member.health {
            Health::Suspect | Health::Confirming => {
                member.health = Health::Alive;
                vec![Event::Recovered {
                    member: member.info.clone(),
                }]
            }
            Health::Alive | Health::Leaving => Vec::new(),
        }
    }

    /// Results of one periodic ICMP round: one outcome per member probed.
    ///
    /// A miss counts against a member unless no host answered the round
    /// while every probed member's heartbeat answers (see the module docs);
    /// results about connections that are no longer members are ignored.
    pub fn round_result(&mut self, results: &[(ConnId, ProbeOutcome)], now: Instant) -> Vec<Event> {
        let probed: Vec<(ConnId, ProbeOutcome)> = results
            .iter()
            .filter(|(conn, _)| self.is_member(*conn))
            .copied()
            .collect();
        let answered = probed
            .iter()
            .any(|(_, outcome)| matches!(outcome, ProbeOutcome::Reply(_)));
        let missed = probed
            .iter()
            .any(|(_, outcome)| *outcome == ProbeOutcome::NoReply);
        let mut events = Vec::new();
        if answered {
            self.unanswered_rounds = 0;
            if self.icmp_unanswered {
                self.icmp_unanswered = false;
                // Misses before the outage and after it are not "in a row".
                for member in self.members.values_mut() {
                    member.icmp_misses = 0;
                }
                events.push(Event::IcmpAnswering);
            }
        } else if missed {
            if self.icmp_unanswered {
                return events;
            }
            let suspect_after = self.config.suspect_after;
            let every_heartbeat_answers = probed.iter().all(|(conn, _)| {
                self.member(*conn)
                    .is_some_and(|m| m.heartbeat_answers(now, suspect_after))
            });
            if every_heartbeat_answers {
                // Says nothing about any member; only about ICMP.
                self.unanswered_rounds += 1;
                if self.unanswered_rounds >= self.misses_allowed() {
                    self.icmp_unanswered = true;
                    events.push(Event::IcmpUnanswered {
                        rounds: self.unanswered_rounds,
                    });
                }
                return events;
            }
            self.unanswered_rounds = 0;
        }
        for (conn, outcome) in probed {
            events.extend(self.member_round_result(conn, outcome, now));
        }
        events
    }

    fn member_round_result(
        &mut self,
        conn: ConnId,
        outcome: ProbeOutcome,
        now: Instant,
    ) -> Vec<Event> {
        let misses_allowed = self.misses_allowed();
        let suspect_after = self.config.suspect_after;
        let Some(member) = self.member_mut(conn) else {
            return Vec::new();
        };
        match outcome {
            ProbeOutcome::Reply(rtt) => {
                member.icmp_misses = 0;
                vec![Event::Available {
                    member: member.info.clone(),
                    rtt,
                }]
            }
            ProbeOutcome::Unavailable => Vec::new(),
            ProbeOutcome::NoReply => {
                member.icmp_misses += 1;
                let heartbeat_answers = member.heartbeat_answers(now, suspect_after);
                // Legacy members have no heartbeat to agree or disagree.
                let heartbeat_agrees = !member.info.legacy && !heartbeat_answers;
                if member.icmp_misses >= misses_allowed || heartbeat_agrees {
                    self.evict(conn, EvictReason::Unreachable, now)
                } else {
                    vec![Event::Missed {
                        member: member.info.clone(),
                        misses: member.icmp_misses,
                        heartbeat_answers,
                    }]
                }
            }
        }
    }

    /// Result of the probe asked for by [`Event::ProbeNow`].
    pub fn confirm_result(
        &mut self,
        conn: ConnId,
        outcome: ProbeOutcome,
        now: Instant,
    ) -> Vec<Event> {
        let Some(member) = self.member_mut(conn) else {
            return Vec::new();
        };
        if member.health != Health::Confirming {
            // It answered the heartbeat meanwhile.
            return Vec::new();
        }
        let silent_for = now.saturating_duration_since(member.last_heartbeat);
        let reason = match outcome {
            ProbeOutcome::Reply(_) => EvictReason::Hung { silent_for },
            // While no host answers ICMP, a missing reply says nothing of this one.
            ProbeOutcome::NoReply if self.icmp_unanswered => EvictReason::Silent { silent_for },
            ProbeOutcome::NoReply => EvictReason::Unreachable,
            ProbeOutcome::Unavailable => EvictReason::Silent { silent_for },
        };
        self.evict(conn, reason, now)
    }

    /// An original-system member did not acknowledge a message in time.
    pub fn ack_timeout(&mut self, conn: ConnId, now: Instant) -> Vec<Event> {
        self.evict(conn, EvictReason::AckTimeout, now)
    }

    /// A member's connection dropped or failed at `now`.
    pub fn connection_lost(
        &mut self,
        conn: ConnId,
        why: impl Into<String>,
        now: Instant,
    ) -> Vec<Event> {
        self.evict(conn, EvictReason::ConnectionLost(why.into()), now)
    }

    /// A member said it is leaving.
    pub fn leaving(&mut self, conn: ConnId) -> Vec<Event> {
        let Some(member) = self.member_mut(conn) else {
            return Vec::new();
        };
        member.health = Health::Leaving;
        vec![Event::Leaving {
            member: member.info.clone(),
        }]
    }

    /// A leaving member has been drained at `now`: it leaves the member
    /// set too.
    pub fn left(&mut self, conn: ConnId, now: Instant) -> Vec<Event> {
        self.evict(conn, EvictReason::Left, now)
    }

    /// Evicts every member (head node shutdown, at `now`).
    pub fn evict_all(&mut self, now: Instant) -> Vec<Event> {
        let conns: Vec<ConnId> = self.members.values().map(|m| m.info.conn).collect();
        let mut events = Vec::new();
        for conn in conns {
            events.extend(self.evict(conn, EvictReason::Shutdown, now));
        }
        events.retain(|e| *e != Event::NoneLeft);
        events
    }

    /// Advances the application-heartbeat detector to `now`, and removes
    /// from the member set one member absent long enough, if a majority is
    /// live.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        let suspect_after = self.config.suspect_after;
        let evict_after = suspect_after + self.config.hung_grace;
        for member in self.members.values_mut() {
            if member.info.legacy {
                continue;
            }
            let silent_for = now.saturating_duration_since(member.last_heartbeat);
            match member.health {
                Health::Alive if silent_for >= suspect_after => {
                    member.health = Health::Suspect;
                    events.push(Event::Suspected {
                        member: member.info.clone(),
                        silent_for,
                    });
                }
                Health::Suspect if silent_for >= evict_after => {
                    member.health = Health::Confirming;
                    events.push(Event::ProbeNow {
                        member: member.info.clone(),
                    });
                }
                _ => {}
            }
        }
        if let Some((node, absent_for)) = self.set.remove_due(now, self.legacy_live()) {
            events.push(Event::Removed { node, absent_for });
        }
        events
    }

    /// A registering node reported the member set it keeps, at `now`:
    /// until [`Membership::recovered`], its members join the set (absent
    /// until they register).
    pub fn reported(&mut self, set: &[NodeId], now: Instant) {
        self.set.reported(set, now);
    }

    /// Recovery is done at `now`: reported sets no longer change the
    /// member set, and a member absent now is absent from now on (it leaves
    /// the set only `remove_after` later).
    pub fn recovered(&mut self, now: Instant) {
        self.set.learned(now);
    }

    /// Live members against the member set.
    pub fn quorum(&self) -> Quorum {
        self.set.quorum(self.legacy_live())
    }

    /// The member set (original-system nodes, which no data node keeps,
    /// left out), in node order.
    pub fn member_set(&self) -> Vec<NodeId> {
        self.set.names()
    }

    /// Differs after every change of [`Membership::member_set`].
    pub fn member_set_version(&self) -> u64 {
        self.set.version()
    }

    /// Original-system members connected now: members while connected.
    fn legacy_live(&self) -> usize {
        self.members.values().filter(|m| m.info.legacy).count()
    }

    /// Members that may be sent new messages.
    pub fn routable(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members
            .values()
            .filter(|m| m.health == Health::Alive)
            .map(|m| &m.info)
    }

    /// Every member, for ICMP rounds.
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values().map(|m| &m.info)
    }

    /// Nodes that came back with a new data directory (this store id)
    /// while this head node ran, not yet given their share by a repair
    /// pass: a read counts them as missing (see `reads::Coverage`). A head
    /// node started after the change cannot tell.
    pub fn rebuilding(&self) -> Vec<(NodeId, u64)> {
        let mut nodes: Vec<(NodeId, u64)> = self
            .ever_seen
            .iter()
            .filter(|(_, seen)| seen.rebuilding)
            .filter_map(|(node, seen)| Some((node.clone(), seen.store?)))
            .collect();
        nodes.sort();
        nodes
    }

    /// A repair pass that began after these nodes came back with these
    /// data directories has ended: they hold their share. A node that has
    /// come back with yet another directory since stays rebuilding. True
    /// if any changed.
    pub fn repaired(&mut self, nodes: &[(NodeId, u64)]) -> bool {
        let mut changed = false;
        for (node, store) in nodes {
            if let Some(seen) = self.ever_seen.get_mut(node)
                && seen.rebuilding
                && seen.store == Some(*store)
            {
                seen.rebuilding = false;
                changed = true;
            }
        }
        changed
    }

    /// Whether `conn` is a current member's connection.
    pub fn is_member(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    fn member(&self, conn: ConnId) -> Option<&Member> {
        let node = self.by_conn.get(&conn)?;
        self.members.get(node)
    }

    fn member_mut(&mut self, conn: ConnId) -> Option<&mut Member> {
        let node = self.by_conn.get(&conn)?;
        self.members.get_mut(node)
    }

    fn misses_allowed(&self) -> u32 {
        self.config.ping_misses.max(1)
    }

    /// Records a registration; whether the id had registered before.
    fn remember(&mut self, info: &MemberInfo) -> bool {
        self.registrations += 1;
        let registered = self.registrations;
        let rejoined = match self.ever_seen.get_mut(&info.node) {
            Some(seen) => {
                self.forgettable.remove(&seen.registered);
                match (info.store, seen.store) {
                    (Some(store), Some(known)) if store != known => {
                        // A replaced directory: its processes are refused
                        // from now on, and the new one's count afresh.
                        seen.superseded.push(known);
                        if seen.superseded.len() > SUPERSEDED_STORES {
                            seen.superseded.remove(0);
                        }
                        seen.store = Some(store);
                        seen.incarnation = info.incarnation;
                        seen.rebuilding = true;
                    }
                    _ => {
                        seen.store = seen.store.or(info.store);
                        seen.incarnation = seen.incarnation.max(info.incarnation);
                    }
                }
                seen.registered = registered;
                true
            }
            None => {
                self.ever_seen.insert(
                    info.node.clone(),
                    Seen {
                        incarnation: info.incarnation,
                        store: info.store,
                        superseded: Vec::new(),
                        registered,
                        rebuilding: false,
                    },
                );
                false
            }
        };
        self.forget_beyond_limit();
        rejoined
    }

    /// Forgets the least recently registered non-members beyond [`REMEMBERED_IDS`].
    fn forget_beyond_limit(&mut self) {
        while self.ever_seen.len() > REMEMBERED_IDS {
            let Some((_, node)) = self.forgettable.pop_first() else {
                // Every id remembered is a member.
                return;
            };
            self.ever_seen.remove(&node);
        }
    }

    fn evict(&mut self, conn: ConnId, reason: EvictReason, now: Instant) -> Vec<Event> {
        let Some(node) = self.by_conn.remove(&conn) else {
            return Vec::new();
        };
        let Some(member) = self.members.remove(&node) else {
            return Vec::new();
        };
        if !member.info.legacy {
            match reason {
                EvictReason::Left => self.set.left(&node),
                // The new registration keeps it live.
                EvictReason::Replaced { .. } => {}
                _ => self.set.absent(&node, now),
            }
        }
        if let Some(seen) = self.ever_seen.get(&node) {
            // Forgotten at the next registration, if it is then the oldest.
            self.forgettable.insert(seen.registered, node);
        }
        let mut events = vec![Event::Evicted {
            member: member.info,
            reason,
        }];
        if self.members.is_empty() {
            events.push(Event::NoneLeft);
        }
        events
    }
}

#[cfg(test)]
mod tests;
