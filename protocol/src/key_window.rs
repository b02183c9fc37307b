//! A bounded window of recent client keys (`<client-id>/<seq>`), each with
//! a value: the head node's key table and the data nodes' key index are
//! both built on it.
//!
//! It is laid out for the way clients number their messages: each client's
//! keys are one run of consecutive sequence numbers, so a new key is
//! appended at the end of its client's run and a lookup is a range check
//! and an index, without hashing the key itself or touching a random
//! place in a large table. Keys out of order (a resend, a gap wider than
//! [`MAX_GAP`]) go to a small map beside the run.
//!
//! Bounds: two generations, each at most half of `max_keys` slots (a slot
//! is a key, or a gap of at most [`MAX_GAP`] inside a run; each client's
//! run costs [`SLOTS_PER_CLIENT`] more). A new key goes
//! to the current generation; when it is full, or `window` old, the
//! previous one is dropped whole and the current one takes its place. So a
//! key is kept at least `window` after it was added, unless `max_keys`
//! newer keys push it out sooner, and at most about twice that. The clock
//! is the caller's, in milliseconds: the head node's is monotonic, a data
//! node's is the time its records were written.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// The widest gap kept inside a run: a key further ahead than this from
/// the end of its client's run goes to the map beside it.
pub const MAX_GAP: u64 = 16;

/// Slots a client's run costs by itself (its entry and allocations), so the
/// bound holds in memory too when every client sends a single key.
pub const SLOTS_PER_CLIENT: usize = 4;

/// Recent client keys and a value for each; see the module documentation.
#[derive(Debug)]
pub struct KeyWindow<V> {
    current: Generation<V>,
    previous: Generation<V>,
    /// When the current generation began, on the caller's clock (ms).
    current_since_ms: Option<u64>,
    max_per_generation: usize,
    window_ms: u64,
}

#[derive(Debug)]
struct Generation<V> {
    clients: HashMap<Arc<str>, Run<V>>,
    /// Slots used by every run: keys and the gaps between them.
    slots: usize,
    keys: usize,
}

impl<V> Default for Generation<V> {
    fn default() -> Self {
        Generation {
            clients: HashMap::new(),
            slots: 0,
            keys: 0,
        }
    }
}

/// One client's keys in one generation.
#[derive(Debug)]
struct Run<V> {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<V>>,
    /// Keys outside the run; most clients have none. Boxed: an empty map
    /// inline would cost every client 48 bytes.
    #[allow(clippy::box_collection)]
    scattered: Option<Box<HashMap<u64, V>>>,
}

impl<V> Run<V> {
    fn new() -> Self {
        Run {
            base: 0,
            // Many clients send one key: room for one at first.
            slots: VecDeque::with_capacity(1),
            scattered: None,
        }
    }

    fn get(&self, seq: u64) -> Option<&V> {
        if let Some(slot) = seq.checked_sub(self.base).and_then(|i| self.index(i)) {
            return self.slots[slot].as_ref();
        }
        self.scattered.as_ref()?.get(&seq)
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut V> {
        if let Some(slot) = seq.checked_sub(self.base).and_then(|i| self.index(i)) {
            return self.slots[slot].as_mut();
        }
        self.scattered.as_mut()?.get_mut(&seq)
    }

    fn remove(&mut self, seq: u64) -> Option<V> {
        if let Some(slot) = seq.checked_sub(self.base).and_then(|i| self.index(i)) {
            return self.slots[slot].take();
        }
        self.scattered.as_mut()?.remove(&seq)
    }

    fn index(&self, offset: u64) -> Option<usize> {
        usize::try_from(offset)
            .ok()
            .filter(|&i| i < self.slots.len())
    }

    /// Adds `seq` (known to be absent); the slots it took.
    fn insert(&mut self, seq: u64, value: V) -> usize {
        if self.slots.is_empty() {
            self.base = seq;
            self.slots.push_back(Some(value));
            return 1;
        }
        let end = self.base.saturating_add(self.slots.len() as u64);
        if let Some(slot) = seq.checked_sub(self.base).and_then(|i| self.index(i)) {
            // A gap inside the run, filled now: its slot was counted.
            self.slots[slot] = Some(value);
            return 0;
        }
        match seq.checked_sub(end) {
            Some(gap) if gap <= MAX_GAP => {
                for _ in 0..gap {
                    self.slots.push_back(None);
                }
                self.slots.push_back(Some(value));
                gap as usize + 1
            }
            _ => {
                self.scattered.get_or_insert_default().insert(seq, value);
                1
            }
        }
    }
}

impl<V> KeyWindow<V> {
    /// A window of at most `max_keys` keys (at least two), each kept at
    /// least `window` while the bound allows.
    pub fn new(max_keys: usize, window: Duration) -> Self {
        KeyWindow {
            current: Generation::default(),
            previous: Generation::default(),
            current_since_ms: None,
            max_per_generation: (max_keys / 2).max(1),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.current.keys + self.previous.keys
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `client`'s key `seq`, if it is held.
    pub fn get(&self, client: &str, seq: u64) -> Option<&V> {
        for generation in [&self.current, &self.previous] {
            if let Some(value) = generation.clients.get(client).and_then(|run| run.get(seq)) {
                return Some(value);
            }
        }
        None
    }

    /// The value of `client`'s key `seq`, to change, if it is held.
    pub fn get_mut(&mut self, client: &str, seq: u64) -> Option<&mut V> {
        let in_current = self
            .current
            .clients
            .get(client)
            .is_some_and(|run| run.get(seq).is_some());
        let generation = if in_current {
            &mut self.current
        } else {
            &mut self.previous
        };
        generation.clients.get_mut(client)?.get_mut(seq)
    }

    /// Adds `client`'s key `seq` with `value` at `now_ms`, unless it is
    /// held already (then the first value stays and `value` is dropped).
    /// True if it was added.
    pub fn insert(&mut self, client: &str, seq: u64, value: V, now_ms: u64) -> bool {
        if self.get(client, seq).is_some() {
            return false;
        }
        self.turn_if_due(now_ms);
        let run = match self.current.clients.get_mut(client) {
            Some(run) => run,
            None => {
                // The name is shared with the previous generation's run.
                let name = match self.previous.clients.get_key_value(client) {
                    Some((name, _)) => name.clone(),
                    None => Arc::from(client),
                };
                self.current.slots += SLOTS_PER_CLIENT;
                match self.current.clients.entry(name) {
                    Entry::Vacant(vacant) => vacant.insert(Run::new()),
                    Entry::Occupied(occupied) => occupied.into_mut(),
                }
            }
        };
        self.current.slots += run.insert(seq, value);
        self.current.keys += 1;
        true
    }

    /// Forgets `client`'s key `seq`; its value, if it was held. Its slot
    /// stays counted until its generation is dropped.
    pub fn remove(&mut self, client: &str, seq: u64) -> Option<V> {
        for generation in [&mut self.current, &mut self.previous] {
            if let Some(run) = generation.clients.get_mut(client)
                && let Some(value) = run.remove(seq)
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
    }

    /// The shared name of `client`, if it has keys here: keys kept
    /// elsewhere can point to it instead of a copy.
    pub fn client_name(&self, client: &str) -> Option<&Arc<str>> {
        [&self.current, &self.previous]
            .into_iter()
            .find_map(|generation| generation.clients.get_key_value(client))
            .map(|(name, _)| name)
    }

    /// Drops what is past the window at `now_ms`: the previous generation
    /// once the current one is `window` old, both once it is twice that.
    pub fn expire(&mut self, now_ms: u64) {
        let Some(since) = self.current_since_ms else {
            return;
        };
        let age = now_ms.saturating_sub(since);
        if age >= self.window_ms.saturating_mul(2) {
            self.previous = Generation::default();
            self.current = Generation::default();
            self.current_since_ms = None;
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
            .flat_map(|(client, run)| {
                // A run never reaches past `u64::MAX`.
                let in_run = run.slots.iter().enumerate().filter_map(move |(i, slot)| {
                    slot.as_ref()
                        .map(|v| (client, run.base.wrapping_add(i as u64), v))
                });
                let scattered = run
                    .scattered
                    .iter()
                    .flat_map(|map| map.iter())
                    .map(move |(&seq, v)| (client, seq, v));
                in_run.chain(scattered)
            })
    }

    fn turn_if_due(&mut self, now_ms: u64) {
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
    fn clients_share_their_name_across_generations() {
        let mut window = KeyWindow::new(2, MINUTE);
        window.insert("c", 1, (), 0);
        window.insert("c", 2, (), 0);
        let names: Vec<&Arc<str>> = window.iter().map(|(name, _, _)| name).collect();
        assert_eq!(names.len(), 2);
        assert!(Arc::ptr_eq(names[0], names[1]));
    }
}
