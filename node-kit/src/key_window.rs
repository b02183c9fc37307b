//! A bounded window of recent client keys (`<client-id>/<seq>`), each with
//! a value: the head node's key table and the data nodes' key index are
//! both built on it.
//!
//! It is laid out for the way clients number their messages: each client's
//! keys are runs of consecutive sequence numbers, so a new key is appended
//! at the end of its client's last run and a lookup is a range check and
//! an index, without hashing the key itself or touching a random place in
//! a large table. A data node that gets every third key of a client keeps
//! the gaps inside the run (up to [`MAX_GAP`]) or starts a new run; keys
//! that come out of order (a resend, a report) go to a small map beside
//! the runs.
//!
//! Bounds: two generations, each at most half of `max_keys` slots (a slot
//! is a key, or a gap of at most [`MAX_GAP`] inside a run; each client
//! costs [`SLOTS_PER_CLIENT`] more, each run after its first
//! [`SLOTS_PER_RUN`], a key out of order [`SLOTS_PER_SCATTERED_KEY`]). A new key goes
//! to the current generation; when it is full, or `window` old, the
//! previous one is dropped whole and the current one takes its place. So a
//! key is kept at least `window` after it was added, unless `max_keys`
//! newer keys push it out sooner, and at most about twice that. The clock
//! is the caller's, in milliseconds: the head node's is monotonic, a data
//! node's is the time its records were written.
//!
//! Client names are hashed with foldhash, seeded at random per process:
//! several times faster than the standard SipHash on short names, on the
//! path of every message, and a client that does not know the seed cannot
//! choose names that collide. Both generations share the seed, so an
//! operation hashes its client's name once, whichever generations it
//! looks in.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::time::Duration;

/// The widest gap kept inside a run: a key further ahead than this from
/// the end of its client's last run starts a new run.
pub const MAX_GAP: u64 = 16;

/// Slots a client costs by itself (its entry and allocations), so the
/// bound holds in memory too when every client sends a single key.
pub const SLOTS_PER_CLIENT: usize = 4;

/// Slots a run beyond a client's first costs by itself.
pub const SLOTS_PER_RUN: usize = 2;

/// Slots a key out of order costs: an entry of the hashed map beside the
/// runs takes about twice a slot of a run.
pub const SLOTS_PER_SCATTERED_KEY: usize = 2;

/// A client's name and its hash by one [`KeyWindow`]: a lookup followed by
/// an insert hashes the name once.
#[derive(Debug, Clone, Copy)]
pub struct HashedClient<'a> {
    name: &'a str,
    hash: u64,
}

/// Recent client keys and a value for each; see the module documentation.
#[derive(Debug)]
pub struct KeyWindow<V> {
    /// Hashes client names for both generations.
    hasher: RandomState,
    current: Generation<V>,
    previous: Generation<V>,
    /// When the current generation began, on the caller's clock (ms).
    current_since_ms: Option<u64>,
    max_per_generation: usize,
    window_ms: u64,
    /// Generations dropped so far (see [`KeyWindow::turns`]).
    turns: u64,
    /// No generation is dropped while held (see [`KeyWindow::hold`]).
    held: bool,
}

#[derive(Debug)]
struct Generation<V> {
    /// Each client's name and keys, by the window's hash of the name.
    clients: HashTable<(Arc<str>, ClientKeys<V>)>,
    /// Slots used by every client: keys, the gaps between them, and each
    /// client's and run's own cost.
    slots: usize,
    keys: usize,
}

impl<V> Default for Generation<V> {
    fn default() -> Self {
        Generation {
            clients: HashTable::new(),
            slots: 0,
            keys: 0,
        }
    }
}

impl<V> Generation<V> {
    /// `client`'s name and keys here, if it has any; `hash` is the
    /// window's hash of the name.
    fn find(&self, hash: u64, client: &str) -> Option<&(Arc<str>, ClientKeys<V>)> {
        self.clients.find(hash, |(name, _)| **name == *client)
    }

    fn find_mut(&mut self, hash: u64, client: &str) -> Option<&mut ClientKeys<V>> {
        self.clients
            .find_mut(hash, |(name, _)| **name == *client)
            .map(|(_, keys)| keys)
    }
}

/// Consecutive sequence numbers of one client, from `base`.
#[derive(Debug)]
struct Run<V> {
    base: u64,
    slots: Vec<Option<V>>,
}

impl<V> Run<V> {
    /// The index of `seq` in this run, if it falls in it.
    fn index(&self, seq: u64) -> Option<usize> {
        let offset = seq.checked_sub(self.base)?;
        usize::try_from(offset)
            .ok()
            .filter(|&i| i < self.slots.len())
    }

    fn end(&self) -> u64 {
        self.base.saturating_add(self.slots.len() as u64)
    }
}

/// One client's keys in one generation: runs in increasing order, and
/// the keys that fit none (sent out of order).
#[derive(Debug)]
struct ClientKeys<V> {
    runs: Vec<Run<V>>,
    /// Keys outside every run, below the last one's start; most clients
    /// have none. Boxed: an empty map inline would cost every client 48
    /// bytes.
    #[allow(clippy::box_collection)]
    scattered: Option<Box<HashMap<u64, V, RandomState>>>,
}

impl<V> ClientKeys<V> {
    fn new() -> Self {
        ClientKeys {
            runs: Vec::with_capacity(1),
            scattered: None,
        }
    }

    /// The run `seq` falls in, if any: the last one first (where new keys
    /// go), then a binary search.
    fn run_of(&self, seq: u64) -> Option<(usize, usize)> {
        let last = self.runs.len().checked_sub(1)?;
        if seq >= self.runs[last].base {
            return self.runs[last].index(seq).map(|i| (last, i));
        }
        let after = self.runs.partition_point(|run| run.base <= seq);
        let at = after.checked_sub(1)?;
        self.runs[at].index(seq).map(|i| (at, i))
    }

    fn get(&self, seq: u64) -> Option<&V> {
        match self.run_of(seq) {
            Some((run, i)) => self.runs[run].slots[i].as_ref(),
            None => self.scattered_below_last(seq)?.get(&seq),
        }
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut V> {
        match self.run_of(seq) {
            Some((run, i)) => self.runs[run].slots[i].as_mut(),
            None => {
                self.scattered_below_last(seq)?;
                self.scattered.as_mut()?.get_mut(&seq)
            }
        }
    }

    fn remove(&mut self, seq: u64) -> Option<V> {
        match self.run_of(seq) {
            Some((run, i)) => self.runs[run].slots[i].take(),
            None => self.scattered.as_mut()?.remove(&seq),
        }
    }

    /// The map of scattered keys, when `seq` could be in it: scattered
    /// keys all lie below the last run's start.
    fn scattered_below_last(&self, seq: u64) -> Option<&HashMap<u64, V, RandomState>> {
        let scattered = self.scattered.as_deref()?;
        (seq < self.runs.last()?.base).then_some(scattered)
    }

    /// Adds `seq` (known to be absent); the slots it took.
    fn insert(&mut self, seq: u64, value: V) -> usize {
        if let Some((run, i)) = self.run_of(seq) {
            // A gap inside a run, filled now: its slot was counted.
            self.runs[run].slots[i] = Some(value);
            return 0;
        }
        let Some(last) = self.runs.last_mut() else {
            self.runs.push(Run {
                base: seq,
                slots: vec![Some(value)],
            });
            return 1;
        };
        if seq < last.base {
            self.scattered.get_or_insert_default().insert(seq, value);
            return SLOTS_PER_SCATTERED_KEY;
        }
        match seq.checked_sub(last.end()) {
            Some(gap) if gap <= MAX_GAP => {
                for _ in 0..gap {
                    last.slots.push(None);
                }
                last.slots.push(Some(value));
                gap as usize + 1
            }
            _ => {
                self.runs.push(Run {
                    base: seq,
                    slots: vec![Some(value)],
                });
                SLOTS_PER_RUN + 1
            }
        }
    }

    /// Every key's value, to change.
    fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        let in_runs = self
            .runs
            .iter_mut()
            .flat_map(|run| run.slots.iter_mut().filter_map(Option::as_mut));
        let scattered = self.scattered.iter_mut().flat_map(|map| map.values_mut());
        in_runs.chain(scattered)
    }

    /// Every key, with its sequence number.
    fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        let in_runs = self.runs.iter().flat_map(|run| {
            // A run never reaches past `u64::MAX`.
            run.slots.iter().enumerate().filter_map(move |(i, slot)| {
                Some((run.base.wrapping_add(i as u64), slot.as_ref()?))
            })
        });
        let scattered = self
            .scattered
            .iter()
            .flat_map(|map| map.iter())
            .map(|(&seq, v)| (seq, v));
        in_runs.chain(scattered)
    }
}

impl<V> KeyWindow<V> {
    /// A window of at most `max_keys` keys (at least two), each kept at
    /// least `window` while the bound allows.
    pub fn new(max_keys: usize, window: Duration) -> Self {
        KeyWindow {
            hasher: RandomState::default(),
            current: Generation::default(),
            previous: Generation::default(),
            current_since_ms: None,
            max_per_generation: (max_keys / 2).max(1),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            turns: 0,
            held: false,
        }
    }

    /// Generations dropped since the window was made: a caller that keeps
    /// something per generation (the newest value in each, say) learns
    /// from a change of this count that the previous generation went (by
    /// one: the previous; by two or more: both).
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// While `held`, no generation is dropped, by the bound or by the
    /// clock: every key added is kept, past `max_keys`. On release, a
    /// window over its bound drops its previous generation at once, and
    /// the keys added while it was held go with the next one (once
    /// `window` old, or once as many new keys fill the bound): the bound
    /// holds again within one generation. For a caller that must not lose
    /// a key during a bounded phase (a head node's recovery); it pays the
    /// memory of every key added meanwhile.
    pub fn hold(&mut self, held: bool, now_ms: u64) {
        let released = self.held && !held;
        self.held = held;
        if released && self.current.slots > self.max_per_generation {
            self.turn(now_ms);
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.current.keys + self.previous.keys
    }

    /// Slots in use, of the `max_keys` bound.
    pub fn slots(&self) -> usize {
        self.current.slots + self.previous.slots
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `client`'s key `seq`, if it is held.
    pub fn get(&self, client: &str, seq: u64) -> Option<&V> {
        self.get_hashed(self.hash(client), seq)
    }

    /// `client`'s name hashed once, for a lookup and then an insert of one
    /// of its keys ([`KeyWindow::get_hashed`], [`KeyWindow::insert_new_hashed`]).
    pub fn hash<'a>(&self, client: &'a str) -> HashedClient<'a> {
        HashedClient {
            name: client,
            hash: self.hasher.hash_one(client),
        }
    }

    /// [`KeyWindow::get`] with the name hashed already.
    pub fn get_hashed(&self, client: HashedClient<'_>, seq: u64) -> Option<&V> {
        [&self.current, &self.previous]
            .into_iter()
            .find_map(|generation| generation.find(client.hash, client.name)?.1.get(seq))
    }

    /// The value of `client`'s key `seq`, to change, if it is held.
    pub fn get_mut(&mut self, client: &str, seq: u64) -> Option<&mut V> {
        let hash = self.hasher.hash_one(client);
        // A key is mostly found in the current generation; the previous one
        // is looked at only after a miss.
        if let Some(keys) = self.current.find_mut(hash, client)
            && keys.get(seq).is_some()
        {
            return keys.get_mut(seq);
        }
        self.previous.find_mut(hash, client)?.get_mut(seq)
    }

    /// Adds `client`'s key `seq` with `value` at `now_ms`, unless it is
    /// held already (then the first value stays and `value` is dropped).
    /// True if it was added.
    pub fn insert(&mut self, client: &str, seq: u64, value: V, now_ms: u64) -> bool {
        if self.get(client, seq).is_some() {
            return false;
        }
        self.insert_new(client, seq, value, now_ms);
        true
    }

    /// Adds `client`'s key `seq` with `value` at `now_ms`; the caller has
    /// just found it is not held (with [`KeyWindow::get`]), which spares
    /// hashing the name again.
    pub fn insert_new(&mut self, client: &str, seq: u64, value: V, now_ms: u64) {
        self.insert_new_hashed(self.hash(client), seq, value, now_ms);
    }

    /// [`KeyWindow::insert_new`] with the name hashed already (by this
    /// window: every window has its own seed).
    pub fn insert_new_hashed(&mut self, client: HashedClient<'_>, seq: u64, value: V, now_ms: u64) {
        self.turn_if_due(now_ms);
        let HashedClient { name: client, hash } = client;
        let KeyWindow {
            hasher,
            current,
            previous,
            ..
        } = self;
        let entry = current.clients.entry(
            hash,
            |(name, _)| **name == *client,
            |(name, _)| hasher.hash_one(&**name),
        );
        let keys = match entry {
            hashbrown::hash_table::Entry::Occupied(found) => &mut found.into_mut().1,
            hashbrown::hash_table::Entry::Vacant(room) => {
                // The name is shared with the previous generation.
                let name = match previous.find(hash, client) {
                    Some((name, _)) => name.clone(),
                    None => Arc::from(client),
                };
                current.slots += SLOTS_PER_CLIENT;
                &mut room.insert((name, ClientKeys::new())).into_mut().1
            }
        };
        current.slots += keys.insert(seq, value);
        current.keys += 1;
    }

    /// Forgets `client`'s key `seq`; its value, if it was held. Its slot
    /// stays counted until its generation is dropped.
    pub fn remove(&mut self, client: &str, seq: u64) -> Option<V> {
        let hash = self.hasher.hash_one(client);
        for generation in [&mut self.current, &mut self.previous] {
            if let Some(keys) = generation.find_mut(hash, client)
                && let Some(value) = keys.remove(seq)
            {
                generation.keys -= 1;
                return Some(value);
            }
        }
        None
    }

    /// Forgets every key, keeping the room the current generation had.
    pub fn clear(&mut self) {
        self.current.clients.clear();
        self.current.slots = 0;
        self.current.keys = 0;
        self.previous = Generation::default();
        self.current_since_ms = None;
        self.turns += 2;
    }

    /// The shared name of `client`, if it has keys here: keys kept
    /// elsewhere can point to it instead of a copy.
    pub fn client_name(&self, client: &str) -> Option<&Arc<str>> {
        let hash = self.hasher.hash_one(client);
        [&self.current, &self.previous]
            .into_iter()
            .find_map(|generation| generation.find(hash, client))
            .map(|(name, _)| name)
    }

    /// The window, in milliseconds of the caller's clock.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Drops what is past the window at `now_ms`: the previous generation
    /// once the current one is `window` old, both once it is twice that.
    pub fn expire(&mut self, now_ms: u64) {
        let Some(since) = self.current_since_ms else {
            return;
        };
        let age = now_ms.saturating_sub(since);
        if self.held {
            return;
        }
        if age >= self.window_ms.saturating_mul(2) {
            self.previous = Generation::default();
            self.current = Generation::default();
            self.current_since_ms = None;
            self.turns += 2;
        } else if age >= self.window_ms {
            self.turn(now_ms);
        }
    }

    /// Every key held, with its client and value: per generation, per
    /// client, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, u64, &V)> {
        [&self.previous, &self.current]
            .into_iter()
            .flat_map(|generation| generation.clients.iter())
            .flat_map(|(client, keys)| keys.iter().map(move |(seq, v)| (client, seq, v)))
    }

    /// Every key's value, to change: per generation, per client, in no
    /// particular order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        [&mut self.previous, &mut self.current]
            .into_iter()
            .flat_map(|generation| generation.clients.iter_mut())
            .flat_map(|(_, keys)| keys.values_mut())
    }

    fn turn_if_due(&mut self, now_ms: u64) {
        if self.held {
            return;
        }
        let old = self
            .current_since_ms
            .is_none_or(|since| now_ms.saturating_sub(since) >= self.window_ms);
        if old || self.current.slots >= self.max_per_generation {
            self.turn(now_ms);
        }
    }

    /// The previous generation is forgotten; the current one takes its
    /// place.
    fn turn(&mut self, now_ms: u64) {
        self.previous = std::mem::take(&mut self.current);
        self.current_since_ms = Some(now_ms);
        self.turns += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn keys_are_found_under_their_first_value() {
        let mut window = KeyWindow::new(100, MINUTE);
        assert!(window.insert("c1", 1, "a", 0));
        assert!(!window.insert("c1", 1, "b", 0), "the first value stays");
        assert!(window.insert("c2", 1, "c", 0));
        assert_eq!(window.get("c1", 1), Some(&"a"));
        assert_eq!(window.get("c2", 1), Some(&"c"));
        assert_eq!(window.get("c1", 2), None);
        assert_eq!(window.get("c1", 0), None);
        assert_eq!(window.get("c3", 1), None);
        assert_eq!(window.len(), 2);
    }

    #[test]
    fn keys_in_any_order_are_all_found() {
        let mut window = KeyWindow::new(10_000, MINUTE);
        // In order, small gaps, a gap too wide, backwards, far apart.
        let seqs: Vec<u64> = (1..50)
            .chain([55, 60, 1000, 40, 0, u64::MAX, 999, 1001])
            .chain((100..120).rev())
            .collect();
        let mut expected = Vec::new();
        for &seq in &seqs {
            let added = window.insert("c", seq, seq.wrapping_mul(10), 0);
            assert_eq!(added, !expected.contains(&seq), "seq {seq}");
            if added {
                expected.push(seq);
            }
        }
        for &seq in &expected {
            assert_eq!(
                window.get("c", seq),
                Some(&seq.wrapping_mul(10)),
                "seq {seq}"
            );
        }
        for seq in [50, 54, 56, 59, 61, 998, 1002, 120, 99] {
            assert_eq!(window.get("c", seq), None, "seq {seq}");
        }
        assert_eq!(window.len(), expected.len());
        let mut listed: Vec<u64> = window.iter().map(|(_, seq, _)| seq).collect();
        listed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed, expected);
    }

    #[test]
    fn a_share_of_a_clients_keys_stays_in_runs() {
        // What one data node of three sees: bursts of a client's keys with
        // wide gaps between them.
        let mut window = KeyWindow::new(1_000_000, MINUTE);
        let seqs: Vec<u64> = (0..100u64)
            .flat_map(|burst| (0..20).map(move |i| burst * 60 + i))
            .collect();
        for &seq in &seqs {
            assert!(window.insert("c", seq, seq, 0));
        }
        let hash = window.hasher.hash_one("c");
        let keys = &window.current.find(hash, "c").unwrap().1;
        assert!(keys.scattered.is_none(), "no key left the runs");
        assert_eq!(keys.runs.len(), 100);
        assert!(seqs.iter().all(|&seq| window.get("c", seq) == Some(&seq)));
        assert!(window.get("c", 30).is_none() && window.get("c", 6000).is_none());
    }

    #[test]
    fn matches_a_map_whatever_the_order() {
        // A small deterministic generator: sequential, bursty, backwards
        // and random keys, inserts, lookups and removals.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut window = KeyWindow::new(usize::MAX, Duration::MAX);
        let mut model = std::collections::HashMap::new();
        let mut cursor = 0u64;
        for step in 0..200_000u64 {
            let client = ["a", "b", "c"][(next() % 3) as usize];
            let seq = match next() % 10 {
                0..=5 => {
                    cursor += 1 + next() % 3;
                    cursor
                }
                6 => cursor + next() % 100,
                7 => cursor.saturating_sub(next() % 500),
                8 => next() % 1_000_000,
                _ => next(),
            };
            match next() % 4 {
                0 | 1 => {
                    let added = window.insert(client, seq, step, 0);
                    let fresh = !model.contains_key(&(client, seq));
                    assert_eq!(added, fresh, "insert {client}/{seq}");
                    model.entry((client, seq)).or_insert(step);
                }
                2 => assert_eq!(
                    window.get(client, seq),
                    model.get(&(client, seq)),
                    "get {client}/{seq}"
                ),
                _ => assert_eq!(
                    window.remove(client, seq),
                    model.remove(&(client, seq)),
                    "remove {client}/{seq}"
                ),
            }
        }
        assert_eq!(window.len(), model.len());
        for (&(client, seq), value) in &model {
            assert_eq!(window.get(client, seq), Some(value));
        }
        assert_eq!(window.iter().count(), model.len());
    }

    #[test]
    fn a_run_may_start_at_the_largest_sequence_number() {
        let mut window = KeyWindow::new(100, MINUTE);
        assert!(window.insert("c", u64::MAX, 1, 0));
        assert!(window.insert("c", u64::MAX - 1, 2, 0));
        assert_eq!(window.get("c", u64::MAX), Some(&1));
        assert_eq!(window.get("c", u64::MAX - 1), Some(&2));
        assert_eq!(window.iter().count(), 2);
    }

    #[test]
    fn values_can_be_changed_in_either_generation() {
        // Room for the client and two keys per generation.
        let mut window = KeyWindow::new(2 * (SLOTS_PER_CLIENT + 2), MINUTE);
        window.insert("c", 1, 1, 0);
        window.insert("c", 2, 2, 0);
        window.insert("c", 3, 3, 0);
        *window.get_mut("c", 1).unwrap() = 10;
        *window.get_mut("c", 3).unwrap() = 30;
        assert_eq!(window.get("c", 1), Some(&10));
        assert_eq!(window.get("c", 3), Some(&30));
        assert!(window.get_mut("c", 4).is_none());
        assert!(window.get("c", 1).is_some() && window.get("c", 3).is_some());
    }

    #[test]
    fn clients_count_against_the_bound() {
        let mut window = KeyWindow::new(1000, MINUTE);
        for n in 0..10_000 {
            window.insert(&format!("c{n}"), 1, (), 0);
        }
        let per_client = 1 + SLOTS_PER_CLIENT;
        assert!(window.len() <= 1000 / per_client + 1, "{}", window.len());
    }

    #[test]
    fn removed_keys_are_gone_and_clear_forgets_all() {
        let mut window = KeyWindow::new(100, MINUTE);
        for seq in [1, 2, 3, 500] {
            window.insert("c", seq, seq, 0);
        }
        assert_eq!(window.remove("c", 2), Some(2));
        assert_eq!(window.remove("c", 500), Some(500));
        assert_eq!(window.remove("c", 2), None);
        assert_eq!(window.get("c", 2), None);
        assert_eq!(window.len(), 2);
        assert!(window.insert("c", 2, 20, 0), "a removed key can come back");
        assert_eq!(window.get("c", 2), Some(&20));
        let name = window.client_name("c").unwrap().clone();
        assert_eq!(&*name, "c");
        window.clear();
        assert!(window.is_empty() && window.get("c", 1).is_none());
        assert!(window.client_name("c").is_none());
    }

    #[test]
    fn the_bound_forgets_the_oldest_generation() {
        let mut window = KeyWindow::new(100, MINUTE);
        for seq in 0..1000 {
            window.insert("c", seq, (), 0);
            assert!(window.len() <= 100, "{}", window.len());
        }
        // The newest half-bound at least is kept.
        assert!((955..1000).all(|seq| window.get("c", seq).is_some()));
        assert!(window.get("c", 0).is_none());
    }

    #[test]
    fn gaps_count_against_the_bound() {
        let mut window = KeyWindow::new(100, MINUTE);
        for n in 0..1000 {
            window.insert("c", n * (MAX_GAP + 1), (), 0);
        }
        let slots = window.current.slots + window.previous.slots;
        assert!(
            slots <= 100 + MAX_GAP as usize + 1 + SLOTS_PER_CLIENT,
            "{slots}"
        );
    }

    #[test]
    fn a_key_is_kept_at_least_the_window_and_at_most_twice_that() {
        let mut window = KeyWindow::new(1_000_000, MINUTE);
        window.insert("c", 1, (), 0);
        window.insert("c", 2, (), 59_000);
        window.insert("c", 3, (), 61_000);
        assert!(window.get("c", 1).is_some(), "just past the window");
        window.insert("c", 4, (), 121_000);
        assert!(window.get("c", 1).is_none(), "two windows later");
        assert!(window.get("c", 3).is_some());

        window.expire(150_000);
        assert!(window.get("c", 3).is_some(), "kept a window after it came");
        window.expire(181_000);
        assert!(window.get("c", 3).is_none());
        assert!(window.get("c", 4).is_some());
        window.expire(1_000_000);
        assert!(window.is_empty());
    }

    #[test]
    fn a_held_window_keeps_every_key_and_drops_them_a_generation_after_release() {
        // Room for the client and two keys per generation.
        let bound = 2 * (SLOTS_PER_CLIENT + 2);
        let mut window = KeyWindow::new(bound, MINUTE);
        window.hold(true, 0);
        for seq in 1..=100 {
            window.insert("c1", seq, seq, 0);
        }
        window.expire(10 * 60_000);
        assert_eq!(window.len(), 100, "nothing dropped while held");
        assert_eq!(window.turns(), 0);
        window.hold(false, 10 * 60_000);
        assert_eq!(window.turns(), 1, "over its bound: a turn at release");
        assert_eq!(window.get("c1", 1), Some(&1), "kept one generation more");
        for seq in 101..=103 {
            window.insert("c1", seq, seq, 10 * 60_000);
        }
        assert_eq!(window.get("c1", 1), None, "gone with the next generation");
        assert!(window.len() <= 3, "{}", window.len());
        assert_eq!(window.turns(), 2);
    }

    #[test]
    fn clients_share_their_name_across_generations() {
        let mut window = KeyWindow::new(2, MINUTE);
        window.insert("c", 1, (), 0);
        window.insert("c", 2, (), 0);
        let names: Vec<&Arc<str>> = window.iter().map(|(name, _, _)| name).collect();
        assert_eq!(names.len(), 2);
        assert!(Arc::ptr_eq(names[0], names[1]));
    }
}
