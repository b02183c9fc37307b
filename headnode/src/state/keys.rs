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
//! consecutive sequence numbers per client, in two generations). A resend of a
//! forgotten key is stored as a new message (the data nodes, which keep
//! their own window, still refuse to write it twice under one id). Cost:
//! about [`BYTES_PER_KEY`] bytes per key, measured by `head_bytes_per_key_*`
//! below.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use node_kit::key_window::KeyWindow;
use protocol::ids::{MessageId, MessageKey, NodeId};
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
}

/// The table, shared by every client session, data-node registration and
/// envelope. One lock: every operation is a few memory accesses (a
/// lookup of the client, then an index into its run).
pub(crate) struct KeyTable {
    keys: Mutex<Keys>,
    /// The origin of the window's clock.
    started: Instant,
}

impl KeyTable {
    /// A table of at most `max_keys` keys, each kept at least `window`
    /// while the bound allows; its clock starts at `started`.
    pub(crate) fn new(max_keys: usize, window: Duration, started: Instant) -> Self {
        KeyTable {
            keys: Mutex::new(Keys {
                window: KeyWindow::new(max_keys, window),
                holder_sets: HolderSets::default(),
            }),
            started,
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
        keys.window
            .insert_new(key.client.as_str(), key.seq, entry, now_ms);
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
    pub(crate) fn holds(&self, key: MessageKey, id: MessageId, node: &NodeId, now: Instant) {
        let now_ms = self.millis(now);
        let mut keys = self.lock();
        let keys = &mut *keys;
        match keys.window.get_mut(key.client.as_str(), key.seq) {
            Some(entry) if entry.id == id => {
                if !entry.holders.contains(node) {
                    let mut holders = entry.holders.to_vec();
                    holders.push(node.clone());
                    entry.holders = keys.holder_sets.share(&holders);
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
                    holders: keys.holder_sets.share(std::slice::from_ref(node)),
                    live: Weak::new(),
                };
                keys.window
                    .insert(key.client.as_str(), key.seq, entry, now_ms);
            }
        }
    }

    /// Keys remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().window.len()
    }
}

impl SettleKey for KeyTable {
    /// The message of `key`, `ended`, ended with these holders.
    ///
    /// The entry lets go of its pointer to `ended`: a `Weak` keeps the
    /// envelope's allocation alive (about 300 bytes) as long as it exists.
    fn settle(&self, key: &MessageKey, ended: *const Envelope, id: MessageId, holders: &[NodeId]) {
        let mut keys = self.lock();
        let keys = &mut *keys;
        if let Some(entry) = keys.window.get_mut(key.client.as_str(), key.seq)
            && entry.id == id
        {
            if *entry.holders != *holders {
                entry.holders = keys.holder_sets.share(holders);
            }
            if std::ptr::eq(entry.live.as_ptr(), ended) {
                entry.live = Weak::new();
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
