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
//! Bounds: at most `max_keys` keys. A key is remembered at least `window`
//! after it was first seen (unless the key bound forces the oldest out
//! sooner) and at most about twice that: each shard keeps two generations,
//! and the older one is dropped whole when the newer one is `window` old or
//! half the shard's share of `max_keys`. A resend of a forgotten key is
//! stored as a new message (the data nodes, which keep their own window,
//! still refuse to write it twice under one id). Cost: about
//! [`BYTES_PER_KEY`] bytes per key, measured by `head_bytes_per_key_*`
//! below.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use protocol::message::{MessageId, MessageKey, NodeId};
use tokio::time::Instant;
use tracing::warn;

use crate::forward::Envelope;

/// Memory of one remembered key: a map entry of 64 bytes (key, id,
/// holders, envelope pointer), one control byte and the hash table's spare
/// room (up to half its buckets). Client ids and sets of holders are
/// shared, not copied; a client id costs about 40 bytes more, once per
/// client. Measured by `head_bytes_per_key_*` below; the start-up line
/// reports `dedup-keys` times this.
pub(crate) const BYTES_PER_KEY: usize = 136;

/// Independent parts of the table, each with its own lock, so client tasks
/// on different threads rarely wait for each other.
const SHARDS: usize = 16;

/// Distinct sets of holders a shard shares between its keys; beyond this
/// the sharing starts over (keys keep the sets they have).
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
    Settled { id: MessageId, holders: Vec<NodeId> },
}

struct Shard {
    /// Keys first seen since `current_since`.
    current: HashMap<MessageKey, KeyEntry>,
    /// The generation before; dropped whole at the next turn.
    previous: HashMap<MessageKey, KeyEntry>,
    current_since: Instant,
    /// Sets of holders shared by the entries.
    holder_sets: HashSet<Arc<[NodeId]>>,
}

impl Shard {
    fn get(&self, key: &MessageKey) -> Option<&KeyEntry> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    fn get_mut(&mut self, key: &MessageKey) -> Option<&mut KeyEntry> {
        match self.current.get_mut(key) {
            Some(entry) => Some(entry),
            None => self.previous.get_mut(key),
        }
    }

    /// The shared copy of `holders`.
    fn share(&mut self, holders: &[NodeId]) -> Arc<[NodeId]> {
        if let Some(shared) = self.holder_sets.get(holders) {
            return shared.clone();
        }
        if self.holder_sets.len() >= MAX_SHARED_HOLDER_SETS {
            self.holder_sets.clear();
        }
        let shared: Arc<[NodeId]> = holders.into();
        self.holder_sets.insert(shared.clone());
        shared
    }
}

/// The table, shared by every client session, data-node registration and
/// envelope.
pub(crate) struct KeyTable {
    shards: Vec<Mutex<Shard>>,
    hasher: std::hash::RandomState,
    /// Keys per generation of one shard.
    max_per_generation: usize,
    window: Duration,
}

impl KeyTable {
    /// A table of at most `max_keys` keys, each kept at least `window`
    /// while the bound allows.
    pub(crate) fn new(max_keys: usize, window: Duration) -> Self {
        let now = Instant::now();
        KeyTable {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                        current_since: now,
                        holder_sets: HashSet::new(),
                    })
                })
                .collect(),
            hasher: std::hash::RandomState::new(),
            max_per_generation: (max_keys.div_ceil(SHARDS) / 2).max(1),
            window,
        }
    }

    fn shard(&self, key: &MessageKey) -> std::sync::MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        // A panic while holding a shard leaves it consistent (every change
        // is one insert or remove), so a poisoned lock is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks `key` up; if it is unknown, remembers it as the envelope
    /// `make` builds (one lock: two resends racing see one message).
    pub(crate) fn lookup_or_insert(
        &self,
        key: &MessageKey,
        now: Instant,
        make: impl FnOnce() -> Arc<Envelope>,
    ) -> Found {
        let mut shard = self.shard(key);
        if let Some(entry) = shard.get(key) {
            if let Some(envelope) = entry.live.upgrade()
                && !envelope.has_failed()
            {
                return Found::InFlight(envelope);
            }
            return Found::Settled {
                id: entry.id,
                holders: entry.holders.to_vec(),
            };
        }
        let envelope = make();
        let entry = KeyEntry {
            id: envelope.id,
            holders: shard.share(&[]),
            live: Arc::downgrade(&envelope),
        };
        self.insert(&mut shard, key.clone(), entry, now);
        Found::New(envelope)
    }

    /// A message for a key seen before is on its way again (more copies
    /// are being made): resends wait for it.
    pub(crate) fn track(&self, key: &MessageKey, envelope: &Arc<Envelope>) {
        let mut shard = self.shard(key);
        if let Some(entry) = shard.get_mut(key) {
            entry.live = Arc::downgrade(envelope);
        }
    }

    /// The message of `key` ended with these holders.
    pub(crate) fn settle(&self, key: &MessageKey, id: MessageId, holders: &[NodeId]) {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|entry| entry.id == id) {
            let shared = shard.share(holders);
            if let Some(entry) = shard.get_mut(key) {
                entry.holders = shared;
            }
        }
    }

    /// A data node reports that it holds `key` under `id`.
    pub(crate) fn holds(&self, key: MessageKey, id: MessageId, node: &NodeId, now: Instant) {
        let mut shard = self.shard(&key);
        match shard.get(&key) {
            Some(entry) if entry.id == id => {
                if !entry.holders.contains(node) {
                    let mut holders = entry.holders.to_vec();
                    holders.push(node.clone());
                    let shared = shard.share(&holders);
                    if let Some(entry) = shard.get_mut(&key) {
                        entry.holders = shared;
                    }
                }
            }
            Some(entry) => {
                warn!(
                    %key, %node, held = %id, known = %entry.id,
                    "a data node holds this key under another id (stored under two ids before this head node started); keeping the first"
                );
            }
            None => {
                let entry = KeyEntry {
                    id,
                    holders: shard.share(std::slice::from_ref(node)),
                    live: Weak::new(),
                };
                self.insert(&mut shard, key, entry, now);
            }
        }
    }

    fn insert(&self, shard: &mut Shard, key: MessageKey, entry: KeyEntry, now: Instant) {
        let full = shard.current.len() >= self.max_per_generation;
        let old = now.saturating_duration_since(shard.current_since) >= self.window;
        if full || old {
            // The older generation is forgotten whole; its map keeps its
            // room for the new one.
            std::mem::swap(&mut shard.current, &mut shard.previous);
            shard.current.clear();
            shard.current_since = now;
        }
        shard.current.insert(key, entry);
    }

    /// Keys remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|s| s.current.len() + s.previous.len())
                    .unwrap_or_default()
            })
            .sum()
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("max_per_generation", &self.max_per_generation)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::tests::envelope;

    fn key(seq: u64) -> MessageKey {
        format!("c1/{seq}").parse().unwrap()
    }

    #[test]
    fn a_new_key_is_remembered_and_a_resend_finds_its_message() {
        let table = KeyTable::new(100, Duration::from_secs(60));
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
        table.settle(&key(1), first.id, std::slice::from_ref(&dn1));
        drop((made, again, first));
        let Found::Settled { id, holders } =
            table.lookup_or_insert(&key(1), now, || unreachable!())
        else {
            panic!("expected a settled key");
        };
        assert_eq!((id.seq, holders), (1, vec![dn1]));
    }

    #[test]
    fn reports_fill_the_table_and_add_holders() {
        let table = KeyTable::new(100, Duration::from_secs(60));
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
        assert_eq!(holders, vec![dn1, dn2]);
    }

    #[test]
    fn the_oldest_keys_are_forgotten_beyond_the_bound_or_the_window() {
        let table = KeyTable::new(SHARDS * 2, Duration::from_secs(60));
        let t0 = Instant::now();
        let dn1: NodeId = "dn1".parse().unwrap();
        for seq in 0..1000 {
            table.holds(key(seq), MessageId { epoch: 1, seq }, &dn1, t0);
        }
        assert!(table.len() <= SHARDS * 2, "{}", table.len());
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
        let table = KeyTable::new(100_000, Duration::from_secs(60));
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

    /// Remembers 1M keys from `clients` clients, each held by two nodes;
    /// prints the resident bytes they added per key. Run alone, in release:
    /// `cargo test --release -p headnode --lib head_bytes_per_key --
    /// --ignored --nocapture`.
    fn measure_bytes_per_key(clients: u64) {
        const KEYS: u64 = 1_000_000;
        let nodes: [NodeId; 2] = ["datanode1".parse().unwrap(), "datanode2".parse().unwrap()];
        let t0 = Instant::now();
        let before = protocol::telemetry::resident_bytes().expect("Linux /proc/self/status");
        // One id per client, shared by its keys, as a client session or a
        // data node's report line shares it.
        let names: Vec<protocol::message::ClientId> = (0..clients)
            .map(|c| format!("c-{c:012x}").parse().unwrap())
            .collect();
        // Room to spare: each shard holds a sixteenth of the bound, and keys
        // do not spread exactly evenly.
        let table = KeyTable::new(2 * KEYS as usize, Duration::from_secs(3600));
        for n in 0..KEYS {
            let client = &names[(n % clients) as usize];
            let key = MessageKey {
                client: client.clone(),
                seq: n / clients + 1,
            };
            let id = MessageId {
                epoch: 1_795_000_000_000,
                seq: n,
            };
            table.holds(key.clone(), id, &nodes[0], t0);
            table.holds(key, id, &nodes[1], t0);
        }
        drop(names);
        let after = protocol::telemetry::resident_bytes().expect("Linux /proc/self/status");
        assert_eq!(table.len() as u64, KEYS);
        println!(
            "head node, {clients} clients: {} bytes per key (estimate {BYTES_PER_KEY})",
            (after - before) / KEYS
        );
    }

    #[test]
    #[ignore = "a measurement, not a check: run it alone, in release"]
    fn head_bytes_per_key_1k_clients() {
        measure_bytes_per_key(1_000);
    }

    #[test]
    #[ignore = "a measurement, not a check: run it alone, in release"]
    fn head_bytes_per_key_1m_clients() {
        measure_bytes_per_key(1_000_000);
    }
}
