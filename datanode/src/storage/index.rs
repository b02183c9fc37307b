//! The message index: message id -> (segment, byte offset) of its record,
//! for every intact record with an id in the data directory.
//!
//! Cost: 16 bytes per message. Each entry packs its id and its location in
//! two `u64`s:
//!
//! - key: the rank of the id's epoch among the epochs seen (16 bits), then
//!   its sequence number (48 bits). Ranks follow the epochs' order, so
//!   sorting keys sorts ids ([`MessageId`]'s order: epoch, then sequence
//!   number);
//! - location: the segment number (24 bits), then the offset (40 bits).
//!
//! Entries live in one sorted `Vec` (`main`). Ids mostly arrive in order
//! (they grow within a head node's run, and a new head node's epoch is
//! greater), so an append is usually a push. An id that arrives out of
//! order (a copy from an older epoch, a resend) goes to a small sorted side
//! map, merged into `main` when it holds [`SIDE_LIMIT`] entries (one pass
//! over `main`). An epoch older than the newest one seen renumbers the
//! ranks above it (one pass too); both are rare.
//!
//! Bounds: at most [`MAX_EPOCHS`] distinct epochs, sequence numbers below
//! 2^48, segment numbers below 2^24 - 1 and offsets below 2^40 (1 TiB); a record
//! outside them is not indexed (counted in [`MessageIndex::unindexed`]) and
//! cannot be read by id, which `verify` still checks.

use std::collections::{BTreeMap, HashMap};

use protocol::ids::MessageId;

/// Most distinct epochs (head-node runs) the index can tell apart.
pub const MAX_EPOCHS: usize = 1 << 16;
/// Out-of-order entries held apart before they are merged into the sorted
/// main table.
pub const SIDE_LIMIT: usize = 64 * 1024;

const SEQ_BITS: u32 = 48;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;
const OFFSET_BITS: u32 = 40;
const OFFSET_MAX: u64 = (1 << OFFSET_BITS) - 1;
const SEGMENT_MAX: u32 = (1 << 24) - 1;

/// Where a record is: its file (segment number; the active file has the
/// number it will get when rolled) and the offset of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The segment number.
    pub segment: u32,
    /// Offset of the record's first byte in that file.
    pub offset: u64,
}

/// The location of an entry whose record was found damaged where it
/// pointed ([`MessageIndex::mark_damaged`]): no record packs to it, since
/// segment [`SEGMENT_MAX`] is never used.
const DAMAGED: u64 = u64::MAX;

impl Location {
    fn pack(self) -> Option<u64> {
        (self.segment < SEGMENT_MAX && self.offset <= OFFSET_MAX)
            .then(|| (u64::from(self.segment) << OFFSET_BITS) | self.offset)
    }

    fn unpack(packed: u64) -> Location {
        Location {
            segment: (packed >> OFFSET_BITS) as u32,
            offset: packed & OFFSET_MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    key: u64,
    loc: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct MessageIndex {
    /// Distinct epochs seen, ascending: an epoch's rank is its position.
    epochs: Vec<u64>,
    /// Sorted by key, no key twice.
    main: Vec<Entry>,
    /// Entries that came out of order since the last merge; no key of
    /// `main` here, and every key below `main`'s last.
    side: BTreeMap<u64, u64>,
    unindexed: u64,
}

impl MessageIndex {
    /// Messages indexed.
    pub fn len(&self) -> usize {
        self.main.len() + self.side.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that could not be indexed (see the module documentation).
    pub fn unindexed(&self) -> u64 {
        self.unindexed
    }

    /// Heap bytes the index holds (capacity, not only length).
    pub fn heap_bytes(&self) -> usize {
        self.main.capacity() * size_of::<Entry>()
            + self.side.len() * 40
            + self.epochs.capacity() * size_of::<u64>()
    }

    fn rank(&self, epoch: u64) -> Result<usize, usize> {
        self.epochs.binary_search(&epoch)
    }

    fn key_of(&self, id: MessageId) -> Option<u64> {
        let rank = self.rank(id.epoch).ok()?;
        (id.seq <= SEQ_MAX).then_some(((rank as u64) << SEQ_BITS) | id.seq)
    }

    fn id_of(&self, key: u64) -> MessageId {
        MessageId {
            epoch: self.epochs[(key >> SEQ_BITS) as usize],
            seq: key & SEQ_MAX,
        }
    }

    /// Where the record of `id` is, if it is indexed (and not marked
    /// damaged).
    pub fn get(&self, id: MessageId) -> Option<Location> {
        let loc = *self.loc_of(id)?;
        (loc != DAMAGED).then(|| Location::unpack(loc))
    }

    fn loc_of(&self, id: MessageId) -> Option<&u64> {
        let key = self.key_of(id)?;
        match self.main.binary_search_by_key(&key, |e| e.key) {
            Ok(at) => Some(&self.main[at].loc),
            Err(_) => self.side.get(&key),
        }
    }

    /// Marks `id` damaged: its record no longer reads back where the index
    /// points. It is neither found nor scanned from then on, until a new
    /// copy of it is written ([`MessageIndex::insert`]) or the node starts
    /// again (which reads the file anew and indexes the record if it is
    /// whole). No entry moves, so this is cheap under the lock. True if it
    /// was indexed.
    pub fn mark_damaged(&mut self, id: MessageId) -> bool {
        let Some(key) = self.key_of(id) else {
            return false;
        };
        let loc = match self.main.binary_search_by_key(&key, |e| e.key) {
            Ok(at) => &mut self.main[at].loc,
            Err(_) => match self.side.get_mut(&key) {
                Some(loc) => loc,
                None => return false,
            },
        };
        *loc = DAMAGED;
        true
    }

    /// Adds `id` at `location`. An id already indexed keeps its first
    /// location (a second copy of a message is the same message), unless
    /// that copy was marked damaged. False if it could not be indexed.
    pub fn insert(&mut self, id: MessageId, location: Location) -> bool {
        let (Some(loc), true) = (location.pack(), id.seq <= SEQ_MAX) else {
            self.unindexed += 1;
            return false;
        };
        let rank = match self.rank(id.epoch) {
            Ok(rank) => rank,
            Err(_) if self.epochs.len() >= MAX_EPOCHS => {
                self.unindexed += 1;
                return false;
            }
            Err(at) => {
                self.add_epoch(at, id.epoch);
                at
            }
        };
        let key = ((rank as u64) << SEQ_BITS) | id.seq;
        match self.main.last() {
            None => self.main.push(Entry { key, loc }),
            Some(last) if last.key < key => self.main.push(Entry { key, loc }),
            Some(_) => match self.main.binary_search_by_key(&key, |e| e.key) {
                Ok(at) if self.main[at].loc == DAMAGED => self.main[at].loc = loc,
                Ok(_) => {}
                Err(_) => {
                    let held = self.side.entry(key).or_insert(loc);
                    if *held == DAMAGED {
                        *held = loc;
                    }
                    if self.side.len() >= SIDE_LIMIT {
                        self.merge_side();
                    }
                }
            },
        }
        true
    }

    /// Inserts `epoch` at rank `at`; every rank from `at` up moves up one.
    fn add_epoch(&mut self, at: usize, epoch: u64) {
        self.epochs.insert(at, epoch);
        if at + 1 == self.epochs.len() {
            return;
        }
        let from = (at as u64) << SEQ_BITS;
        let step = 1u64 << SEQ_BITS;
        for entry in self.main.iter_mut().filter(|e| e.key >= from) {
            entry.key += step;
        }
        if self.side.range(from..).next().is_some() {
            self.side = std::mem::take(&mut self.side)
                .into_iter()
                .map(|(key, loc)| (if key >= from { key + step } else { key }, loc))
                .collect();
        }
    }

    fn merge_side(&mut self) {
        if self.side.is_empty() {
            return;
        }
        let side = std::mem::take(&mut self.side);
        let mut merged = Vec::with_capacity(self.main.len() + side.len());
        let mut main = self.main.drain(..).peekable();
        for (key, loc) in side {
            while let Some(entry) = main.next_if(|e| e.key < key) {
                merged.push(entry);
            }
            merged.push(Entry { key, loc });
        }
        merged.extend(main);
        self.main = merged;
    }

    /// Forgets every entry in segment `segment` (removed by retention).
    /// How many were forgotten.
    pub fn remove_segment(&mut self, segment: u32) -> usize {
        let before = self.len();
        let of_segment = |loc: u64| Location::unpack(loc).segment == segment;
        self.main.retain(|e| !of_segment(e.loc));
        self.side.retain(|_, loc| !of_segment(*loc));
        // Every side key must stay below main's last, which may have gone.
        self.merge_side();
        before - self.len()
    }

    /// The ids whose records are in segment `segment`, in id order.
    pub fn ids_in_segment(&self, segment: u32) -> Vec<MessageId> {
        let of_segment = |loc: u64| Location::unpack(loc).segment == segment;
        let mut keys: Vec<u64> = self
            .main
            .iter()
            .filter(|e| of_segment(e.loc))
            .map(|e| e.key)
            .chain(
                self.side
                    .iter()
                    .filter(|&(_, &loc)| of_segment(loc))
                    .map(|(&key, _)| key),
            )
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|key| self.id_of(key)).collect()
    }

    /// At most `limit` ids greater than `after` (all, from the smallest, if
    /// `None`), in id order, with their locations.
    pub fn scan(&self, after: Option<MessageId>, limit: usize) -> Vec<(MessageId, Location)> {
        let from = match after {
            None => 0,
            Some(id) => match self.rank(id.epoch) {
                Ok(rank) if id.seq >= SEQ_MAX => ((rank as u64) + 1) << SEQ_BITS,
                Ok(rank) => (((rank as u64) << SEQ_BITS) | id.seq) + 1,
                Err(at) => (at as u64) << SEQ_BITS,
            },
        };
        let start = self.main.partition_point(|e| e.key < from);
        let mut main = self.main[start..].iter().map(|e| (e.key, e.loc)).peekable();
        let mut side = self.side.range(from..).map(|(&k, &l)| (k, l)).peekable();
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let next = match (main.peek(), side.peek()) {
                (Some(m), Some(s)) if s.0 < m.0 => side.next(),
                (Some(_), _) => main.next(),
                (None, Some(_)) => side.next(),
                (None, None) => break,
            };
            let Some((key, loc)) = next else { break };
            if loc != DAMAGED {
                out.push((self.id_of(key), Location::unpack(loc)));
            }
        }
        out
    }

    /// An index builder for a rebuild: entries pushed in any order, sorted
    /// once at the end.
    pub fn builder() -> IndexBuilder {
        IndexBuilder::default()
    }
}

/// Collects entries in file order at 16 bytes each (epochs numbered as they
/// come), then sorts them once ([`IndexBuilder::finish`]).
#[derive(Debug, Default)]
pub struct IndexBuilder {
    epochs: Vec<u64>,
    rank_of: HashMap<u64, u16>,
    last_epoch: Option<(u64, u16)>,
    entries: Vec<Entry>,
    unindexed: u64,
}

impl IndexBuilder {
    /// Adds `id` at `location`.
    pub fn push(&mut self, id: MessageId, location: Location) {
        let (Some(loc), true) = (location.pack(), id.seq <= SEQ_MAX) else {
            self.unindexed += 1;
            return;
        };
        let rank = match self.last_epoch {
            Some((epoch, rank)) if epoch == id.epoch => rank,
            _ => {
                let rank = match self.rank_of.get(&id.epoch) {
                    Some(&rank) => rank,
                    None if self.epochs.len() >= MAX_EPOCHS => {
                        self.unindexed += 1;
                        return;
                    }
                    None => {
                        let rank = self.epochs.len() as u16;
                        self.epochs.push(id.epoch);
                        self.rank_of.insert(id.epoch, rank);
                        rank
                    }
                };
                self.last_epoch = Some((id.epoch, rank));
                rank
            }
        };
        self.entries.push(Entry {
            key: (u64::from(rank) << SEQ_BITS) | id.seq,
            loc,
        });
    }

    /// Entries pushed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Renumbers the epochs in order, sorts the entries by id and keeps the
    /// first location of an id stored twice.
    pub fn finish(self) -> MessageIndex {
        let IndexBuilder {
            epochs,
            mut entries,
            unindexed,
            ..
        } = self;
        let mut order: Vec<usize> = (0..epochs.len()).collect();
        order.sort_by_key(|&i| epochs[i]);
        let mut new_rank = vec![0u64; epochs.len()];
        for (rank, &old) in order.iter().enumerate() {
            new_rank[old] = rank as u64;
        }
        let sorted_epochs: Vec<u64> = order.iter().map(|&i| epochs[i]).collect();
        let in_order = order.iter().enumerate().all(|(rank, &old)| rank == old);
        if !in_order {
            for entry in &mut entries {
                let old = (entry.key >> SEQ_BITS) as usize;
                entry.key = (new_rank[old] << SEQ_BITS) | (entry.key & SEQ_MAX);
            }
        }
        // Locations grow in file order (segment, then offset), so sorting
        // by (key, location) keeps the first copy of an id first, without
        // the scratch memory of a stable sort.
        if !entries.is_sorted_by_key(|e| e.key) {
            entries.sort_unstable_by_key(|e| (e.key, e.loc));
        }
        entries.dedup_by_key(|e| e.key);
        entries.shrink_to_fit();
        MessageIndex {
            epochs: sorted_epochs,
            main: entries,
            side: BTreeMap::new(),
            unindexed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId { epoch, seq }
    }

    fn at(segment: u32, offset: u64) -> Location {
        Location { segment, offset }
    }

    #[test]
    fn an_entry_is_16_bytes() {
        assert_eq!(size_of::<Entry>(), 16);
    }

    #[test]
    fn interleaved_epochs_and_resends_are_found_and_scanned_in_id_order() {
        // File order: epoch 20 in order, a resend of epoch 10 in between,
        // then epoch 30, then an older epoch 5 arriving late.
        let file_order = [
            (id(20, 1), at(1, 0)),
            (id(20, 2), at(1, 100)),
            (id(10, 7), at(1, 200)),
            (id(20, 3), at(2, 0)),
            (id(30, 1), at(2, 100)),
            (id(20, 2), at(2, 200)),
            (id(5, 9), at(3, 0)),
        ];
        let mut builder = MessageIndex::builder();
        for &(id, loc) in &file_order[..5] {
            builder.push(id, loc);
        }
        let mut index = builder.finish();
        for &(id, loc) in &file_order[5..] {
            assert!(index.insert(id, loc));
        }
        assert_eq!(index.len(), 6, "one copy of 20-2");
        assert_eq!(
            index.get(id(20, 2)),
            Some(at(1, 100)),
            "the first copy stays"
        );
        assert_eq!(index.get(id(5, 9)), Some(at(3, 0)));
        assert_eq!(index.get(id(10, 7)), Some(at(1, 200)));
        assert_eq!(index.get(id(10, 8)), None);
        assert_eq!(index.get(id(11, 7)), None);
        let ids =
            |v: Vec<(MessageId, Location)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(
            ids(index.scan(None, 100)),
            [
                id(5, 9),
                id(10, 7),
                id(20, 1),
                id(20, 2),
                id(20, 3),
                id(30, 1)
            ]
        );
        assert_eq!(ids(index.scan(Some(id(10, 7)), 2)), [id(20, 1), id(20, 2)]);
        assert_eq!(
            ids(index.scan(Some(id(15, 0)), 1)),
            [id(20, 1)],
            "an unknown epoch"
        );
        assert_eq!(ids(index.scan(Some(id(30, 1)), 10)), []);
        assert_eq!(ids(index.scan(Some(id(20, u64::MAX)), 10)), [id(30, 1)]);
    }

    #[test]
    fn out_of_order_inserts_merge_into_the_main_table() {
        let mut index = MessageIndex::default();
        index.insert(id(1, 1_000_000), at(1, 0));
        for seq in (0..SIDE_LIMIT as u64 + 10).rev() {
            index.insert(id(1, seq), at(1, seq + 1));
        }
        assert!(index.side.len() < SIDE_LIMIT);
        assert_eq!(index.len(), SIDE_LIMIT + 11);
        let scanned = index.scan(None, usize::MAX);
        assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(index.get(id(1, 5)), Some(at(1, 6)));
    }

    #[test]
    fn removing_a_segment_forgets_its_entries_only() {
        let mut index = MessageIndex::default();
        index.insert(id(1, 1), at(1, 0));
        index.insert(id(1, 2), at(2, 0));
        index.insert(id(1, 0), at(2, 50));
        assert_eq!(index.ids_in_segment(2), [id(1, 0), id(1, 2)]);
        assert_eq!(index.remove_segment(2), 2);
        assert_eq!(index.get(id(1, 1)), Some(at(1, 0)));
        assert_eq!(index.get(id(1, 2)), None);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn out_of_order_entries_stay_consistent_when_their_segment_goes() {
        let mut index = MessageIndex::default();
        index.insert(id(1, 10), at(2, 0));
        index.insert(id(1, 5), at(3, 0));
        // Main loses its only entry; the side entry of 1-5 must not end
        // up above a new last entry.
        index.remove_segment(2);
        index.insert(id(1, 7), at(3, 100));
        index.insert(id(1, 5), at(4, 0));
        let scanned: Vec<MessageId> = index.scan(None, 10).into_iter().map(|(id, _)| id).collect();
        assert_eq!(scanned, [id(1, 5), id(1, 7)]);
        assert_eq!(index.get(id(1, 5)), Some(at(3, 0)));
    }

    #[test]
    fn a_damaged_entry_is_neither_found_nor_scanned_until_a_new_copy_comes() {
        let mut index = MessageIndex::default();
        for seq in 1..=3 {
            index.insert(id(1, seq), at(1, seq * 100));
        }
        index.insert(id(1, 0), at(2, 0));
        assert!(index.mark_damaged(id(1, 2)));
        assert!(
            index.mark_damaged(id(1, 0)),
            "out of order, in the side table"
        );
        assert!(!index.mark_damaged(id(1, 9)));
        assert_eq!(index.get(id(1, 2)), None);
        let ids = |index: &MessageIndex| -> Vec<MessageId> {
            index.scan(None, 10).into_iter().map(|(id, _)| id).collect()
        };
        assert_eq!(ids(&index), [id(1, 1), id(1, 3)]);
        assert_eq!(
            index.scan(Some(id(1, 1)), 1),
            [(id(1, 3), at(1, 300))],
            "a damaged entry does not count against the limit"
        );
        assert!(index.insert(id(1, 2), at(3, 0)));
        assert!(index.insert(id(1, 0), at(3, 50)));
        assert_eq!(index.get(id(1, 2)), Some(at(3, 0)), "the new copy");
        assert_eq!(index.get(id(1, 0)), Some(at(3, 50)));
        assert_eq!(ids(&index), [id(1, 0), id(1, 1), id(1, 2), id(1, 3)]);
    }

    #[test]
    fn what_does_not_fit_is_counted_not_indexed() {
        let mut index = MessageIndex::default();
        assert!(!index.insert(id(1, 1 << 48), at(1, 0)));
        assert!(!index.insert(id(1, 1), at(1 << 24, 0)));
        assert!(!index.insert(id(1, 1), at(1, 1 << 40)));
        assert_eq!((index.len(), index.unindexed()), (0, 3));
    }
}
