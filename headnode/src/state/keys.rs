//! The deduplication window: which message each recent client key became.
//!
//! A client that sends a key (`<client-id>/<seq>`) may send it again: after
//! an acknowledgement timeout, on a new connection after a lost one, or to
//! a new head node after a restart. Every resend must come back with the
//! original message id and must not make a second copy anywhere. This
//! table maps each recent key to its id and, while the message is still on
//! its way, to its [`Envelope`], so a resend waits for the same answer.
//!
//! After a restart the table is empty; each data node's report (`held`
//! lines, sent when it registers) fills it back with the keys it holds, and
//! the head node serves no client until the data nodes it expects have
//! reported (see `recovery`).
//!
//! Bounds: at most `max_keys` keys, each kept at least `window` while the
//! bound allows and at most about twice that (a [`KeyWindow`]: runs of
//! consecutive sequence numbers per client, in two generations). Cost:
//! about [`BYTES_PER_KEY`] bytes per key, measured by `head_bytes_per_key_*`
//! below. During recovery the bound is held off: every key a data node
//! reports is kept until recovery ends, whatever their number (the peak
//! is every reported key); then the table drops back within its bound in
//! one generation ([`KeyTable::recovered`]).
//!
//! One window for the head node and the data nodes: the *horizon* is the
//! newest id of every key this table has forgotten (the newest id of each
//! generation it dropped). The node sessions send it to their data nodes
//! (`horizon <id>`, before the next copies) and a data node forgets the
//! keys it holds under ids up to it, so no data node remembers a key the
//! head node has forgotten: a resend past the window is a new message,
//! stored under a new id with real copies, and within the window every
//! answer and every node agree on the key's one id. A data node may
//! forget earlier (its own bound): the head node still answers from here.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use node_kit::key_window::KeyWindow;
use protocol::ids::{ClientId, MessageId, MessageKey, NodeId};
use tokio::time::Instant;
use tracing::warn;

use crate::state::forward::{Envelope, Holders, SettleKey};

/// Memory of one slot of the bound, at most: a key's 40 bytes (id,
/// holders, envelope pointer) in its client's run and the run's spare
/// room; a client, and each run after its first, are counted as a few
/// slots more (see [`KeyWindow`]). Sets of holders are shared, not copied.
/// Measured by `head_bytes_per_key_*` below; the start-up line reports
/// `dedup-keys` times this.
pub(crate) const BYTES_PER_KEY: usize = 64;

/// Distinct sets of holders shared between the keys; beyond this the
/// sharing starts over (keys keep the sets they have).
const MAX_SHARED_HOLDER_SETS: usize = 4096;

/// What a key became.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    /// The message id every copy of it carries.
    pub(crate) id: MessageId,
    /// The data nodes known to hold it (written and synced).
    holders: Arc<[NodeId]>,
    /// The message while it is still on its way.
    live: Weak<Envelope>,
}

/// What a lookup of a key found.
pub(crate) enum Found {
    /// Nothing: a new message. It has been remembered under the id of the
    /// envelope `make` built.
    New(Arc<Envelope>),
    /// The message is still on its way: wait for its answer.
    InFlight(Arc<Envelope>),
    /// The message was seen before and is no longer on its way: its id and
    /// who holds it. It may have fewer copies than needed.
    Settled { id: MessageId, holders: Holders },
}

struct Keys {
    window: KeyWindow<KeyEntry>,
    holder_sets: HolderSets,
    /// The newest id of every key forgotten so far (see the module
    /// documentation).
    horizon: Option<MessageId>,
    /// The newest id of the keys of each generation, current and
    /// previous: at least that (an id changed in place raises both).
    newest: [Option<MessageId>; 2],
    /// The window's [`KeyWindow::turns`] when `newest` was last brought
    /// up to date.
    turns_seen: u64,
}

impl Keys {
    /// The window may have dropped a generation, and `id` (if any) was
    /// just put in it (or given to a key in place): the horizon takes in
    /// what the window dropped, and `id` counts in the newest of its
    /// generation. True if the horizon moved.
    fn note(&mut self, id: Option<MessageId>, in_place: bool) -> bool {
        let turns = self.window.turns();
        let dropped = turns.saturating_sub(self.turns_seen);
        self.turns_seen = turns;
        let before = self.horizon;
        for _ in 0..dropped.min(2) {
            self.horizon = self.horizon.max(self.newest[1]);
            self.newest = [None, self.newest[0]];
        }
        self.newest[0] = self.newest[0].max(id);
        if in_place {
            self.newest[1] = self.newest[1].max(id);
        }
        self.horizon != before
    }
}

/// Keys one report may carry at most: the most a data node keeps
/// (`--dedup-keys` of a data node is at most this). A report beyond it is
/// refused: it cannot come from a data node.
pub(crate) const MAX_REPORTED_KEYS: usize = 100_000_000;

/// The keys one data node reported after `welcome` (its `held` lines, as
/// they came: about 24 bytes a key), held until the membership accepts
/// the node: the keys of a registration that is refused are discarded.
/// At most [`MAX_REPORTED_KEYS`].
#[derive(Debug, Default)]
pub(crate) struct ReportedKeys {
    lines: Vec<(ClientId, Vec<(u64, MessageId)>)>,
    keys: usize,
}

impl ReportedKeys {
    /// One `held` line.
    pub(crate) fn add(&mut self, client: ClientId, keys: Vec<(u64, MessageId)>) {
        self.keys += keys.len();
        self.lines.push((client, keys));
    }

    /// Keys reported.
    pub(crate) fn len(&self) -> usize {
        self.keys
    }
}

/// The table, shared by every client session, data-node registration and
/// envelope. One lock: every operation is a few memory accesses (a
/// lookup of the client, then an index into its run).
pub(crate) struct KeyTable {
    keys: Mutex<Keys>,
    /// The origin of the window's clock.
    started: Instant,
    /// Bumped each time the horizon moves: a node session compares it
    /// with the last it sent before it locks the table to read it.
    horizon_moves: AtomicU64,
}

impl KeyTable {
    /// A table of at most `max_keys` keys, each kept at least `window`
    /// while the bound allows; its clock starts at `started`.
    pub(crate) fn new(max_keys: usize, window: Duration, started: Instant) -> Self {
        KeyTable {
            keys: Mutex::new(Keys {
                window: KeyWindow::new(max_keys, window),
                holder_sets: HolderSets::default(),
                horizon: None,
                newest: [None; 2],
                turns_seen: 0,
            }),
            started,
            horizon_moves: AtomicU64::new(0),
        }
    }

    /// Holds the bound off until [`KeyTable::recovered`]: every key
    /// reported meanwhile is kept.
    pub(crate) fn recovering(&self) {
        let now_ms = self.millis(Instant::now());
        self.lock().window.hold(true, now_ms);
    }

    /// Recovery is over: the bound holds again, within one generation.
    pub(crate) fn recovered(&self, now: Instant) {
        let now_ms = self.millis(now);
        let mut keys = self.lock();
        keys.window.hold(false, now_ms);
        if keys.note(None, false) {
            self.horizon_moves.fetch_add(1, Ordering::Release);
        }
    }

    /// How many times the horizon has moved: cheap, for a session to tell
    /// whether to read [`KeyTable::horizon`] again.
    pub(crate) fn horizon_moves(&self) -> u64 {
        self.horizon_moves.load(Ordering::Acquire)
    }

    /// The newest id of every key forgotten so far; `None` while none is.
    pub(crate) fn horizon(&self) -> Option<MessageId> {
        self.lock().horizon
    }

    /// Notes `id` as put in the window, and counts a move of the horizon.
    fn noted(&self, keys: &mut Keys, id: MessageId, in_place: bool) {
        if keys.note(Some(id), in_place) {
            self.horizon_moves.fetch_add(1, Ordering::Release);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Keys> {
        // A panic while holding the lock leaves the table consistent
        // (every change is one insert or one field), so it stays usable.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// Looks `key` up; if it is unknown, remembers it as the envelope
    /// `make` builds (one lock: two resends racing see one message).
    pub(crate) fn lookup_or_insert(
        &self,
        key: &MessageKey,
        now: Instant,
        make: impl FnOnce() -> Arc<Envelope>,
    ) -> Found {
        let now_ms = self.millis(now);
        let mut keys = self.lock();
        if let Some(entry) = keys.window.get(key.client.as_str(), key.seq) {
            if let Some(envelope) = entry.live.upgrade()
                && !envelope.has_failed()
            {
                return Found::InFlight(envelope);
            }
            return Found::Settled {
                id: entry.id,
                holders: entry.holders.iter().cloned().collect(),
            };
        }
        let envelope = make();
        let entry = KeyEntry {
            id: envelope.id,
            holders: keys.holder_sets.share(&[]),
            live: Arc::downgrade(&envelope),
        };
        let id = entry.id;
        keys.window
            .insert_new(key.client.as_str(), key.seq, entry, now_ms);
        self.noted(&mut keys, id, false);
        Found::New(envelope)
    }

    /// A message for a key seen before is on its way again (more copies
    /// are being made): resends wait for it.
    pub(crate) fn track(&self, key: &MessageKey, envelope: &Arc<Envelope>) {
        let mut keys = self.lock();
        if let Some(entry) = keys.window.get_mut(key.client.as_str(), key.seq) {
            entry.live = Arc::downgrade(envelope);
        }
    }

    /// A data node reports that it holds `key` under `id`.
    #[cfg(test)]
    pub(crate) fn holds(&self, key: MessageKey, id: MessageId, node: &NodeId, now: Instant) {
        let now_ms = self.millis(now);
        let mut keys = self.lock();
        self.hold_one(&mut keys, key.client.as_str(), key.seq, id, node, now_ms);
    }

    /// The keys `node` reported, accepted (see [`ReportedKeys`]).
    pub(crate) fn holds_reported(&self, reported: ReportedKeys, node: &NodeId, now: Instant) {
        let now_ms = self.millis(now);
        for (client, held) in reported.lines {
            // One lock per line (at most 64 keys): a report does not keep
            // the clients waiting for long.
            let mut keys = self.lock();
            for (seq, id) in held {
                self.hold_one(&mut keys, client.as_str(), seq, id, node, now_ms);
            }
        }
    }

    fn hold_one(
        &self,
        keys: &mut Keys,
        client: &str,
        seq: u64,
        id: MessageId,
        node: &NodeId,
        now_ms: u64,
    ) {
        let Keys {
            window,
            holder_sets,
            ..
        } = &mut *keys;
        match window.get_mut(client, seq) {
            Some(entry) if entry.id == id => {
                if !entry.holders.contains(node) {
                    let mut holders = entry.holders.to_vec();
                    holders.push(node.clone());
                    entry.holders = holder_sets.share(&holders);
                }
            }
            Some(entry) => {
                warn!(
                    client, seq, %node, held = %id, known = %entry.id,
                    "a data node holds this key under another id (stored under two ids before this head node started); keeping the first"
                );
            }
            None => {
                let entry = KeyEntry {
                    id,
                    holders: holder_sets.share(std::slice::from_ref(node)),
                    live: Weak::new(),
                };
                window.insert_new(client, seq, entry, now_ms);
                self.noted(keys, id, false);
            }
        }
    }

    /// `node` holds none of the keys it was named a holder of (it came
    /// back with a new data directory): it leaves every entry's holders.
    /// A pass over the whole table; how many entries it left.
    pub(crate) fn forget_holder(&self, node: &NodeId) -> usize {
        let mut keys = self.lock();
        let Keys {
            window,
            holder_sets,
            ..
        } = &mut *keys;
        let mut left = 0;
        for entry in window.values_mut() {
            if entry.holders.contains(node) {
                let holders: Vec<NodeId> = entry
                    .holders
                    .iter()
                    .filter(|n| *n != node)
                    .cloned()
                    .collect();
                entry.holders = holder_sets.share(&holders);
                left += 1;
            }
        }
        left
    }

    /// Keys remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().window.len()
    }
}

impl SettleKey for KeyTable {
    /// The message of `key`, `ended`, ended under `id` with these holders:
    /// the entry takes `id` if the message adopted it in place of `given`.
    ///
    /// The entry lets go of its pointer to `ended`: a `Weak` keeps the
    /// envelope's allocation alive (about 300 bytes) as long as it exists.
    fn settle(
        &self,
        key: &MessageKey,
        ended: *const Envelope,
        given: MessageId,
        id: MessageId,
        holders: &[NodeId],
    ) {
        let mut keys = self.lock();
        let keys = &mut *keys;
        if let Some(entry) = keys.window.get_mut(key.client.as_str(), key.seq)
            && (entry.id == id || entry.id == given)
        {
            let adopted = entry.id != id;
            entry.id = id;
            if *entry.holders != *holders {
                entry.holders = keys.holder_sets.share(holders);
            }
            if std::ptr::eq(entry.live.as_ptr(), ended) {
                entry.live = Weak::new();
            }
            if adopted {
                self.noted(keys, id, true);
            }
        }
    }
}

/// Sets of holders shared by the entries, the last ones used first.
#[derive(Default)]
struct HolderSets {
    all: HashSet<Arc<[NodeId]>>,
    recent: VecDeque<Arc<[NodeId]>>,
}

/// Sets of holders looked at before the hash of all of them.
const RECENT_HOLDER_SETS: usize = 4;

impl HolderSets {
    /// The shared copy of `holders`.
    fn share(&mut self, holders: &[NodeId]) -> Arc<[NodeId]> {
        // Consecutive messages mostly have the same holders (sticky
        // routing), and node ids compare by pointer first: a look at the
        // last few sets spares a hash of the names.
        if let Some(shared) = self.recent.iter().find(|set| ***set == *holders) {
            return shared.clone();
        }
        let shared = match self.all.get(holders) {
            Some(shared) => shared.clone(),
            None => {
                if self.all.len() >= MAX_SHARED_HOLDER_SETS {
                    self.all.clear();
                }
                let shared: Arc<[NodeId]> = holders.into();
                self.all.insert(shared.clone());
                shared
            }
        };
        if self.recent.len() >= RECENT_HOLDER_SETS {
            self.recent.pop_back();
        }
        self.recent.push_front(shared.clone());
        shared
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("keys", &self.lock().window.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::forward::tests::envelope;

    fn key(seq: u64) -> MessageKey {
        format!("c1/{seq}").parse().unwrap()
    }

    #[test]
    fn a_new_key_is_remembered_and_a_resend_finds_its_message() {
        let table = KeyTable::new(100, Duration::from_secs(60), Instant::now());
        let now = Instant::now();
        let (first, _replies) = envelope(1);
        let Found::New(made) = table.lookup_or_insert(&key(1), now, || first.clone()) else {
            panic!("expected a new key");
        };
        assert!(Arc::ptr_eq(&made, &first));
        let Found::InFlight(again) = table.lookup_or_insert(&key(1), now, || unreachable!()) else {
            panic!("expected the message in flight");
        };
        assert!(Arc::ptr_eq(&again, &first));

        let dn1: NodeId = "dn1".parse().unwrap();
        assert_eq!(Arc::weak_count(&first), 1, "the table points to it");
        table.settle(
            &key(1),
            Arc::as_ptr(&first),
            first.id,
            first.id,
            std::slice::from_ref(&dn1),
        );
        assert_eq!(Arc::weak_count(&first), 0, "and lets go once it ended");
        drop((made, again, first));
        let Found::Settled { id, holders } =
            table.lookup_or_insert(&key(1), now, || unreachable!())
        else {
            panic!("expected a settled key");
        };
        assert_eq!((id.seq, holders), (1, smallvec::smallvec![dn1]));
    }

    #[test]
    fn reports_fill_the_table_and_add_holders() {
        let table = KeyTable::new(100, Duration::from_secs(60), Instant::now());
        let now = Instant::now();
        let id = MessageId { epoch: 5, seq: 9 };
        let (dn1, dn2): (NodeId, NodeId) = ("dn1".parse().unwrap(), "dn2".parse().unwrap());
        table.holds(key(3), id, &dn1, now);
        table.holds(key(3), id, &dn2, now);
        table.holds(key(3), id, &dn2, now);
        table.holds(key(3), MessageId { epoch: 5, seq: 10 }, &dn2, now);
        let Found::Settled { id: found, holders } =
            table.lookup_or_insert(&key(3), now, || unreachable!())
        else {
            panic!("expected a settled key");
        };
        assert_eq!(found, id);
        assert_eq!(holders.as_slice(), [dn1, dn2]);
    }

    #[test]
    fn the_oldest_keys_are_forgotten_beyond_the_bound_or_the_window() {
        let table = KeyTable::new(32, Duration::from_secs(60), Instant::now());
        let t0 = Instant::now();
        let dn1: NodeId = "dn1".parse().unwrap();
        for seq in 0..1000 {
            table.holds(key(seq), MessageId { epoch: 1, seq }, &dn1, t0);
        }
        assert!(table.len() <= 32, "{}", table.len());
        // The newest are the ones kept.
        let newest = (990..1000)
            .filter(|&seq| {
                matches!(
                    table.lookup_or_insert(&key(seq), t0, || envelope(seq).0),
                    Found::Settled { .. }
                )
            })
            .count();
        assert!(newest >= 5, "{newest}");

        // The window: a key is remembered at least the window, and
        // forgotten once two newer generations have begun.
        let table = KeyTable::new(100_000, Duration::from_secs(60), Instant::now());
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        table.holds(key(1), MessageId { epoch: 1, seq: 1 }, &dn1, at(0));
        let fill = |from: u64, when| {
            // Enough keys to reach every shard.
            for seq in from..from + 200 {
                table.holds(key(seq), MessageId { epoch: 1, seq }, &dn1, when);
            }
        };
        fill(1000, at(59));
        fill(2000, at(61));
        assert!(
            matches!(
                table.lookup_or_insert(&key(1), at(61), || envelope(1).0),
                Found::Settled { .. }
            ),
            "still remembered just after the window"
        );
        fill(3000, at(122));
        assert!(
            matches!(
                table.lookup_or_insert(&key(1), at(122), || envelope(1).0),
                Found::New(_)
            ),
            "forgotten after two windows"
        );
    }

    #[test]
    fn the_horizon_is_the_newest_id_of_every_key_forgotten() {
        // Room for the client and two keys per generation.
        let bound = 2 * (node_kit::key_window::SLOTS_PER_CLIENT + 2);
        let table = KeyTable::new(bound, Duration::from_secs(60), Instant::now());
        let t0 = Instant::now();
        let dn1: NodeId = "dn1".parse().unwrap();
        let id = |seq| MessageId { epoch: 1, seq };
        for seq in 1..=4 {
            table.holds(key(seq), id(seq), &dn1, t0);
        }
        assert_eq!(table.horizon(), None, "nothing forgotten yet");
        assert_eq!(table.horizon_moves(), 0);
        table.holds(key(5), id(5), &dn1, t0);
        assert_eq!(table.horizon(), Some(id(2)), "c1/1 and c1/2 forgotten");
        assert_eq!(table.horizon_moves(), 1);
        assert!(matches!(
            table.lookup_or_insert(&key(2), t0, || envelope(9).0),
            Found::New(_)
        ));
    }

    #[test]
    fn during_recovery_every_reported_key_is_kept_and_dropped_a_generation_after() {
        let bound = 2 * (node_kit::key_window::SLOTS_PER_CLIENT + 2);
        let table = KeyTable::new(bound, Duration::from_secs(60), Instant::now());
        table.recovering();
        let t0 = Instant::now();
        let dn1: NodeId = "dn1".parse().unwrap();
        let id = |seq| MessageId { epoch: 1, seq };
        let mut reported = ReportedKeys::default();
        reported.add(
            "c1".parse().unwrap(),
            (1..=100).map(|seq| (seq, id(seq))).collect(),
        );
        assert_eq!(reported.len(), 100);
        table.holds_reported(reported, &dn1, t0);
        assert_eq!(table.len(), 100, "past the bound while recovering");
        assert_eq!(table.horizon(), None);
        table.recovered(t0);
        assert!(
            matches!(
                table.lookup_or_insert(&key(1), t0, || unreachable!()),
                Found::Settled { .. }
            ),
            "kept a generation after recovery"
        );
        for seq in 101..=103 {
            table.holds(key(seq), id(seq), &dn1, t0);
        }
        assert_eq!(table.horizon(), Some(id(100)), "dropped with the next one");
        assert!(table.len() <= 3, "{}", table.len());
    }

    #[test]
    fn a_node_back_with_a_new_directory_leaves_every_entry() {
        let table = KeyTable::new(1000, Duration::from_secs(60), Instant::now());
        let t0 = Instant::now();
        let (dn1, dn2): (NodeId, NodeId) = ("dn1".parse().unwrap(), "dn2".parse().unwrap());
        let id = MessageId { epoch: 1, seq: 1 };
        table.holds(key(1), id, &dn1, t0);
        table.holds(key(1), id, &dn2, t0);
        table.holds(key(2), id, &dn2, t0);
        assert_eq!(table.forget_holder(&dn1), 1);
        let Found::Settled { holders, .. } = table.lookup_or_insert(&key(1), t0, || unreachable!())
        else {
            panic!("expected a settled key");
        };
        assert_eq!(holders.as_slice(), [dn2]);
    }

    /// Remembers 1M keys from `clients` clients, each held by two nodes,
    /// each client's in increasing order or (`backwards`) decreasing, so
    /// every key but the first is out of order; prints the resident bytes
    /// they added per key and per slot of the bound. Run alone, in release:
    /// `cargo test --release -p headnode --lib head_bytes_per_key --
    /// --ignored --nocapture`.
    fn measure_bytes_per_key(clients: u64, backwards: bool) {
        const KEYS: u64 = 1_000_000;
        let nodes: [NodeId; 2] = ["datanode1".parse().unwrap(), "datanode2".parse().unwrap()];
        let t0 = Instant::now();
        let before = node_kit::telemetry::resident_bytes().expect("Linux /proc/self/status");
        // One id per client, shared by its keys, as a client session or a
        // data node's report line shares it.
        let names: Vec<protocol::ids::ClientId> = (0..clients)
            .map(|c| format!("c-{c:012x}").parse().unwrap())
            .collect();
        // Room for every key: the bound counts both generations, and a
        // client's run as a few slots more.
        let room = 2 * KEYS as usize * (1 + node_kit::key_window::SLOTS_PER_CLIENT) * 2;
        let table = KeyTable::new(room, Duration::from_secs(3600), Instant::now());
        for n in 0..KEYS {
            let client = &names[(n % clients) as usize];
            let seq = n / clients + 1;
            let key = MessageKey {
                client: client.clone(),
                seq: if backwards { u64::MAX - seq } else { seq },
            };
            let id = MessageId {
                epoch: 1_795_000_000_000,
                seq: n,
            };
            table.holds(key.clone(), id, &nodes[0], t0);
            table.holds(key, id, &nodes[1], t0);
        }
        drop(names);
        let after = node_kit::telemetry::resident_bytes().expect("Linux /proc/self/status");
        assert_eq!(table.len() as u64, KEYS);
        let slots = table.lock().window.slots();
        println!(
            "head node, {clients} clients{}: {} bytes per key, {} per slot (bound {BYTES_PER_KEY})",
            if backwards { ", keys backwards" } else { "" },
            (after - before) / KEYS,
            (after - before) / slots as u64,
        );
    }

    #[test]
    #[ignore = "a measurement, not a check: run it alone, in release"]
    fn head_bytes_per_key_1k_clients() {
        measure_bytes_per_key(1_000, false);
    }

    #[test]
    #[ignore = "a measurement, not a check: run it alone, in release"]
    fn head_bytes_per_key_1k_clients_backwards() {
        measure_bytes_per_key(1_000, true);
    }

    #[test]
    #[ignore = "a measurement, not a check: run it alone, in release"]
    fn head_bytes_per_key_1m_clients() {
        measure_bytes_per_key(1_000_000, false);
    }
}
