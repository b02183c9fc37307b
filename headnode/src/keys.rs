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
//! Bounds: at most `max_keys` keys, none older than `window`; the oldest
//! are forgotten first. A resend of a forgotten key is stored as a new
//! message (the data nodes, which keep their own window, still refuse to
//! write it twice under one id). Cost: about [`BYTES_PER_KEY`] bytes per key.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use protocol::message::{MessageId, MessageKey, NodeId};
use tokio::time::Instant;
use tracing::warn;

use crate::forward::Envelope;

/// Approximate memory of one remembered key: the map entry (key, id,
/// holders, envelope pointer, hash-table overhead) and its place in the
/// eviction queue. Holders' names are shared, not copied.
pub(crate) const BYTES_PER_KEY: usize = 160;

/// Independent parts of the table, each with its own lock, so client tasks
/// on different threads rarely wait for each other.
const SHARDS: usize = 16;

/// What a key became.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    /// The message id every copy of it carries.
    pub(crate) id: MessageId,
    /// The data nodes known to hold it (written and synced).
    pub(crate) holders: Vec<NodeId>,
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
    entries: HashMap<MessageKey, KeyEntry>,
    /// Keys in the order they were first remembered, with that time.
    order: VecDeque<(MessageKey, Instant)>,
}

/// The table, shared by every client session, data-node registration and
/// envelope.
pub(crate) struct KeyTable {
    shards: Vec<Mutex<Shard>>,
    hasher: std::hash::RandomState,
    max_per_shard: usize,
    window: Duration,
}

impl KeyTable {
    /// A table of at most `max_keys` keys, each kept at most `window`.
    pub(crate) fn new(max_keys: usize, window: Duration) -> Self {
        KeyTable {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            hasher: std::hash::RandomState::new(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
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
        if let Some(entry) = shard.entries.get(key) {
            if let Some(envelope) = entry.live.upgrade()
                && !envelope.has_failed()
            {
                return Found::InFlight(envelope);
            }
            return Found::Settled {
                id: entry.id,
                holders: entry.holders.clone(),
            };
        }
        let envelope = make();
        let entry = KeyEntry {
            id: envelope.id,
            holders: Vec::new(),
            live: Arc::downgrade(&envelope),
        };
        self.insert(&mut shard, key.clone(), entry, now);
        Found::New(envelope)
    }

    /// A message for a key seen before is on its way again (more copies
    /// are being made): resends wait for it.
    pub(crate) fn track(&self, key: &MessageKey, envelope: &Arc<Envelope>) {
        let mut shard = self.shard(key);
        if let Some(entry) = shard.entries.get_mut(key) {
            entry.live = Arc::downgrade(envelope);
        }
    }

    /// The message of `key` ended with these holders.
    pub(crate) fn settle(&self, key: &MessageKey, id: MessageId, holders: &[NodeId]) {
        let mut shard = self.shard(key);
        if let Some(entry) = shard.entries.get_mut(key)
            && entry.id == id
        {
            entry.holders = holders.to_vec();
        }
    }

    /// A data node reports that it holds `key` under `id`.
    pub(crate) fn holds(&self, key: MessageKey, id: MessageId, node: &NodeId, now: Instant) {
        let mut shard = self.shard(&key);
        match shard.entries.get_mut(&key) {
            Some(entry) if entry.id == id => {
                if !entry.holders.contains(node) {
                    entry.holders.push(node.clone());
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
                    holders: vec![node.clone()],
                    live: Weak::new(),
                };
                self.insert(&mut shard, key, entry, now);
            }
        }
    }

    fn insert(&self, shard: &mut Shard, key: MessageKey, entry: KeyEntry, now: Instant) {
        // Forget what is too old or beyond the bound, oldest first.
        while let Some((oldest, at)) = shard.order.front() {
            let too_old = now.saturating_duration_since(*at) > self.window;
            if !too_old && shard.order.len() < self.max_per_shard {
                break;
            }
            shard.entries.remove(oldest);
            shard.order.pop_front();
        }
        shard.order.push_back((key.clone(), now));
        shard.entries.insert(key, entry);
    }

    /// Keys remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.entries.len()).unwrap_or_default())
            .sum()
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTable")
            .field("max_per_shard", &self.max_per_shard)
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

        let table = KeyTable::new(1000, Duration::from_secs(60));
        table.holds(key(1), MessageId { epoch: 1, seq: 1 }, &dn1, t0);
        table.holds(
            key(2),
            MessageId { epoch: 1, seq: 2 },
            &dn1,
            t0 + Duration::from_secs(61),
        );
        // Inserting into key(1)'s shard after the window drops it; other
        // shards drop theirs on their next insert.
        for seq in 100..200 {
            table.holds(
                key(seq),
                MessageId { epoch: 1, seq },
                &dn1,
                t0 + Duration::from_secs(61),
            );
        }
        assert!(matches!(
            table.lookup_or_insert(&key(1), t0 + Duration::from_secs(61), || envelope(1).0),
            Found::New(_)
        ));
    }
}
