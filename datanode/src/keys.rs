//! The keys this data node holds: which message id each recent client key
//! (`<client-id>/<seq>`) was stored under, so that a resend is answered
//! with the original id and never written twice.
//!
//! - [`KeyIndex`]: the index, rebuilt from `data.txt` when the node starts
//!   ([`KeyIndex::load`]) and reported to every head node that welcomes it
//!   ([`KeyIndex::for_each_held_line`]). A key enters it when its record is
//!   staged: a repeat of it in the same batch is then told apart by its
//!   held id being one of the batch's (see [`commit_decision`]);
//! - [`commit_decision`]: what to do with one keyed message, as a pure
//!   function.
//!
//! Bounds: at most `max_keys` keys (`--dedup-keys`), each kept at least
//! `window` (`--dedup-window`) after its record was written while the bound
//! allows, and at most about twice that (see [`KeyWindow`]). A client id
//! is stored once however many keys it has. Cost: see `docs/limits.md`
//! (measured by the ignored tests `bytes_per_key_*`).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use node_kit::key_window::{HashedClient, KeyWindow};
use node_kit::timefmt::parse_timestamp_millis;
use protocol::datanode::{FromDataNode, HELD_PER_LINE};
use protocol::ids::{ClientId, KeyRef, MessageId};

use crate::storage::{self, StorageError, parse_line};

/// Default of `--dedup-keys`: the same as the head node's.
pub const DEFAULT_DEDUP_KEYS: usize = 1_000_000;
/// Default of `--dedup-window`: the same as the head node's.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// What to do with one message from the head node, given what is known of
/// its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write it, and answer `recibido <id>` once synced.
    Write,
    /// Its key is held under this same id: answer `recibido <id>`, write nothing.
    AlreadyStored,
    /// Its key is held under another id: answer `recibido <id> <held>`,
    /// write nothing.
    HeldAs(MessageId),
    /// Its key was staged earlier in this batch and is not synced yet:
    /// commit the batch first, then decide again (it is then written).
    AfterCommit,
}

/// Decides what to do with message `id`, whose key is held in the index
/// under `held` (if at all); `staged` if that is a message staged in the
/// current, uncommitted batch (the index holds a key from its staging on).
/// An unkeyed message is always written.
pub fn commit_decision(id: Option<MessageId>, held: Option<MessageId>, staged: bool) -> Decision {
    match held {
        Some(_) if staged => Decision::AfterCommit,
        Some(held) if Some(held) == id => Decision::AlreadyStored,
        Some(held) => Decision::HeldAs(held),
        None => Decision::Write,
    }
}

/// A key looked up in a [`KeyIndex`], with its client's name hashed.
#[derive(Debug, Clone, Copy)]
pub struct LookedUp<'a> {
    /// The id it is held under, if it is.
    pub held: Option<MessageId>,
    client: HashedClient<'a>,
    seq: u64,
}

/// Client key -> message id, for the keys written and synced here within
/// the window, and those of the batch being gathered (staged, to be
/// written at its commit): a [`KeyWindow`] whose clock is the time of each
/// record.
#[derive(Debug)]
pub struct KeyIndex {
    keys: KeyWindow<MessageId>,
}

impl KeyIndex {
    /// An empty index of at most `max_keys` keys (at least two), each kept
    /// at least `window` after its record was written while the bound
    /// allows, and at most about twice that.
    pub fn new(max_keys: usize, window: Duration) -> Self {
        KeyIndex {
            keys: KeyWindow::new(max_keys.max(2), window),
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id `key` is held under, if it is.
    pub fn get(&self, key: KeyRef<'_>) -> Option<MessageId> {
        self.keys.get(key.client, key.seq).copied()
    }

    /// Remembers that `key` was written under `id` at `at_ms` (Unix ms),
    /// unless it is already held (the first id stays) or is already out of
    /// the window at `now_ms`. True if it was added.
    pub fn insert(&mut self, key: KeyRef<'_>, id: MessageId, at_ms: u64, now_ms: u64) -> bool {
        if at_ms.saturating_add(self.keys.window_ms()) < now_ms {
            return false;
        }
        self.keys.insert(key.client, key.seq, id, at_ms)
    }

    /// Looks `key` up, for [`KeyIndex::insert_looked_up`] if it is not
    /// held: the data path looks up every keyed message and adds most,
    /// hashing the client's name once for both.
    pub fn look_up<'a>(&self, key: KeyRef<'a>) -> LookedUp<'a> {
        let client = self.keys.hash(key.client);
        LookedUp {
            held: self.keys.get_hashed(client, key.seq).copied(),
            client,
            seq: key.seq,
        }
    }

    /// Remembers a key [`KeyIndex::look_up`] found not held, under `id`
    /// from `at_ms` (Unix ms). The data path adds a key when its record is
    /// staged, and takes it out again if the record is not written after
    /// all.
    pub fn insert_looked_up(&mut self, key: LookedUp<'_>, id: MessageId, at_ms: u64) {
        debug_assert!(key.held.is_none(), "only a key not held is added");
        self.keys.insert_new_hashed(key.client, key.seq, id, at_ms);
    }

    /// Forgets `key`; the id it was held under.
    pub fn remove(&mut self, key: KeyRef<'_>) -> Option<MessageId> {
        self.keys.remove(key.client, key.seq)
    }

    /// Forgets every key held under an id for which `gone` is true (its
    /// record was removed by retention); how many.
    pub fn forget_ids(&mut self, gone: impl Fn(MessageId) -> bool) -> usize {
        let doomed: Vec<(Arc<str>, u64)> = self
            .keys
            .iter()
            .filter(|&(_, _, &id)| gone(id))
            .map(|(client, seq, _)| (client.clone(), seq))
            .collect();
        for (client, seq) in &doomed {
            self.keys.remove(client, *seq);
        }
        doomed.len()
    }

    /// Forgets what is past the window at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        self.keys.expire(now_ms);
    }

    /// Calls `f` with the report of every key held: `held` lines, grouped
    /// by client, at most [`HELD_PER_LINE`] keys each, in order of client
    /// and sequence number; stops at `f`'s first error. Sorts a copy of the
    /// keys (32 bytes each) first.
    pub fn for_each_held_line<E>(
        &self,
        mut f: impl FnMut(FromDataNode) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut keys: Vec<(&Arc<str>, u64, MessageId)> = self
            .keys
            .iter()
            .map(|(client, seq, &id)| (client, seq, id))
            .collect();
        keys.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for group in keys.chunk_by(|a, b| a.0 == b.0) {
            // Names were validated when they were first read.
            let Ok(client) = group[0].0.parse::<ClientId>() else {
                continue;
            };
            for chunk in group.chunks(HELD_PER_LINE) {
                f(FromDataNode::Held {
                    client: client.clone(),
                    keys: chunk.iter().map(|&(_, seq, id)| (seq, id)).collect(),
                })?;
            }
        }
        Ok(())
    }

    /// Adds the keyed records of the `data.txt` at `path` whose time is
    /// within the window at `now_ms`, in file order (the first record of a
    /// key wins). Damaged and torn records are skipped. How many keys were
    /// added.
    pub fn load(&mut self, path: &Path, now_ms: u64) -> Result<usize, StorageError> {
        let mut added = 0;
        storage::each_line(path, |line| {
            if let Ok(record) = parse_line(line)
                && let (Some(key), Some(id), true) = (record.key, record.id, record.is_intact())
                && let Some(at_ms) = parse_timestamp_millis(record.timestamp)
                && self.insert(key, id, at_ms, now_ms)
            {
                added += 1;
            }
            ControlFlow::Continue(())
        })?;
        Ok(added)
    }
}

/// The time now in Unix milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 7, seq }
    }

    fn key(client: &str, seq: u64) -> KeyRef<'_> {
        KeyRef { client, seq }
    }

    #[test]
    fn an_unkeyed_or_unknown_key_is_written() {
        assert_eq!(commit_decision(Some(id(1)), None, false), Decision::Write);
        assert_eq!(commit_decision(None, None, false), Decision::Write);
    }

    #[test]
    fn a_key_held_under_the_same_id_is_answered_without_a_write() {
        assert_eq!(
            commit_decision(Some(id(1)), Some(id(1)), false),
            Decision::AlreadyStored
        );
    }

    #[test]
    fn a_key_held_under_another_id_is_answered_with_that_id() {
        assert_eq!(
            commit_decision(Some(id(2)), Some(id(1)), false),
            Decision::HeldAs(id(1))
        );
    }

    #[test]
    fn a_key_staged_in_this_batch_waits_for_the_commit() {
        for held in [id(1), id(2)] {
            assert_eq!(
                commit_decision(Some(id(2)), Some(held), true),
                Decision::AfterCommit,
                "held as {held} in this batch"
            );
        }
    }

    #[test]
    fn keys_are_found_under_their_first_id() {
        let mut index = KeyIndex::new(10, Duration::from_secs(60));
        assert!(index.insert(key("c1", 1), id(1), 1000, 1000));
        assert!(!index.insert(key("c1", 1), id(9), 1000, 1000));
        assert!(index.insert(key("c2", 1), id(2), 1000, 1000));
        assert_eq!(index.get(key("c1", 1)), Some(id(1)));
        assert_eq!(index.get(key("c2", 1)), Some(id(2)));
        assert_eq!(index.get(key("c1", 2)), None);
        assert_eq!(index.get(key("c3", 1)), None);
    }

    #[test]
    fn the_oldest_keys_are_forgotten_past_the_bound() {
        // Room for the client's run and two keys per generation.
        let bound = 2 * (node_kit::key_window::SLOTS_PER_CLIENT + 2);
        let mut index = KeyIndex::new(bound, Duration::from_secs(60));
        for seq in 1..=5 {
            index.insert(key("c1", seq), id(seq), 1000, 1000);
        }
        assert_eq!(index.len(), 3);
        assert_eq!(index.get(key("c1", 1)), None);
        assert_eq!(index.get(key("c1", 2)), None);
        assert_eq!(index.get(key("c1", 5)), Some(id(5)));
    }

    #[test]
    fn keys_are_kept_at_least_the_window_after_their_record() {
        let mut index = KeyIndex::new(1000, Duration::from_secs(1));
        index.insert(key("old", 1), id(1), 1000, 1000);
        index.insert(key("new", 1), id(2), 2100, 2100);
        index.expire(2500);
        assert_eq!(index.get(key("old", 1)), Some(id(1)), "a window old");
        index.expire(3200);
        assert_eq!(index.get(key("old", 1)), None, "two windows old");
        assert_eq!(index.get(key("new", 1)), Some(id(2)));
        assert!(
            !index.insert(key("late", 1), id(3), 100, 3200),
            "a record already out of the window is not added"
        );
    }

    #[test]
    fn the_report_groups_keys_by_client_at_most_64_per_line() {
        let mut index = KeyIndex::new(1000, Duration::from_secs(60));
        for seq in 1..=70 {
            index.insert(key("a", seq), id(seq), 1000, 1000);
        }
        index.insert(key("b", 5), id(100), 1000, 1000);
        let mut lines = Vec::new();
        index
            .for_each_held_line(|line| {
                lines.push(line);
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let mut seen = 0;
        for line in &lines {
            let FromDataNode::Held { client, keys } = line else {
                panic!("{line:?}");
            };
            assert!(keys.len() <= HELD_PER_LINE);
            for &(seq, held) in keys {
                assert_eq!(index.get(key(client.as_str(), seq)), Some(held));
                seen += 1;
            }
        }
        assert_eq!(seen, 71);
    }

    #[test]
    fn load_reads_keyed_intact_records_within_the_window() {
        use crate::storage::format_record;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.txt");
        let mut contents = Vec::new();
        let stamp = "2026-11-23 05:55:31,793";
        let at = parse_timestamp_millis(stamp).unwrap();
        format_record(&mut contents, stamp, Some(id(1)), Some(key("c", 1)), b"a");
        format_record(&mut contents, stamp, Some(id(2)), None, b"unkeyed");
        format_record(
            &mut contents,
            stamp,
            Some(id(3)),
            Some(key("c", 1)),
            b"again",
        );
        let old = "2026-11-23 05:50:00,000";
        format_record(&mut contents, old, Some(id(4)), Some(key("c", 2)), b"old");
        let mut damaged = Vec::new();
        format_record(&mut damaged, stamp, Some(id(5)), Some(key("c", 3)), b"x");
        let last = damaged.len() - 2;
        damaged[last] = b'y';
        contents.extend(damaged);
        contents.extend(b"2026-11-23 05:55:31,793 - [7-6] key=c/4 torn");
        std::fs::write(&path, contents).unwrap();
        let mut index = KeyIndex::new(10, Duration::from_secs(120));
        assert_eq!(index.load(&path, at + 1000).unwrap(), 1);
        assert_eq!(index.get(key("c", 1)), Some(id(1)));
        assert_eq!(index.get(key("c", 2)), None, "out of the window");
        assert_eq!(index.get(key("c", 3)), None, "damaged");
    }

    fn resident_bytes() -> u64 {
        node_kit::telemetry::resident_bytes().expect("Linux /proc/self/status")
    }

    /// Inserts 1M keys from `clients` clients; prints the resident bytes
    /// they added per key. Run each case alone (its own process), in
    /// release: `cargo test --release -p datanode --lib bytes_per_key_1k --
    /// --ignored --nocapture` (and `bytes_per_key_1m`).
    fn measure_bytes_per_key(clients: u64) {
        const KEYS: u64 = 1_000_000;
        let names: Vec<String> = (0..clients).map(|c| format!("c-{c:012x}")).collect();
        let before = resident_bytes();
        // Room for every key: the bound counts both generations, and a
        // client's run as a few slots more.
        let room = 2 * KEYS as usize * (1 + node_kit::key_window::SLOTS_PER_CLIENT);
        let mut index = KeyIndex::new(room, Duration::from_secs(3600));
        for n in 0..KEYS {
            let client = &names[(n % clients) as usize];
            index.insert(key(client, n / clients + 1), id(n), 1000, 1000);
        }
        let after = resident_bytes();
        assert_eq!(index.len() as u64, KEYS);
        println!(
            "{clients} clients: {} bytes per key",
            (after - before) / KEYS
        );
    }

    #[test]
    #[ignore = "a measurement, not a check: run it alone, in release"]
    fn bytes_per_key_1k_clients() {
        measure_bytes_per_key(1_000);
    }

    #[test]
    #[ignore = "a measurement, not a check: run it alone, in release"]
    fn bytes_per_key_1m_clients() {
        measure_bytes_per_key(1_000_000);
    }
}
