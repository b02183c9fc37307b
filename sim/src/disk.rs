//! A data node's simulated disk: writes land in a volatile part, and only
//! an fsync makes them durable. It lives outside the simulated host, so it
//! survives the host's crash, minus what was never synced.
//!
//! - [`Disk`]: the records, the newest head node accepted and the member
//!   set last sent (what a data directory's epoch and members files hold),
//!   and the name of the store (its store-id file); for the checks, also
//!   every head node it accepted and when ([`FenceChange`]), and what its
//!   retention removed;
//! - [`DiskRecords`]: reads served from the durable records, as the real
//!   node's read thread serves them from its files.
//!
//! Retention, when a seed gives a node some ([`Disk::set_retention`]),
//! keeps at most that many records: after a sync it removes the oldest
//! ones, a chunk at a time (as the real node removes whole segments), and
//! remembers their exact ids, so a `get` of one answers `notfound removed`
//! and the node's key index forgets their keys.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeSet;

use datanode::node::Kept;
use datanode::reads::{Got, ReadFault, Records, Scanned};
use protocol::datanode::{Fence, IdRange, MAX_SCAN_RECORDS, ReadRecord};
use protocol::ids::{MessageId, MessageKey, NodeId};

use crate::heads::HeadRun;

/// Records retention removes at once, oldest first: a segment's worth.
pub const RETENTION_CHUNK: usize = 16;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The head node's id for it.
    pub id: Option<MessageId>,
    /// The client's key, if it sent one.
    pub key: Option<MessageKey>,
    /// Its text.
    pub text: String,
    /// When its batch was staged, in Unix ms of the node's wall clock (a
    /// repair's copy: the time of the copy it was made from).
    pub stored_ms: u64,
    /// The head node whose session wrote it (its fence then).
    pub written_for: Fence,
    /// Its place in the order of writes on this disk (from 1; a crash
    /// leaves gaps where unsynced writes were).
    pub serial: u64,
}

/// The data node accepted a newer head node (its `epoch` file changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceChange {
    /// When, in simulated time.
    pub at: Duration,
    /// Records written before it have serials below this.
    pub before_serial: u64,
    /// The head node accepted.
    pub fence: Fence,
    /// The head-node process it came from.
    pub head: HeadRun,
}

/// A record retention removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The record as it was.
    pub record: Record,
    /// Writes after the removal have serials from this.
    pub from_serial: u64,
}

#[derive(Default)]
struct State {
    durable: Vec<Record>,
    volatile: Vec<Record>,
    fsync_delay: Duration,
    lost_on_crash: usize,
    /// The newest head node accepted (the `epoch` file).
    newest: Fence,
    /// The member set a head node last sent (the `members` file).
    members: Option<Vec<NodeId>>,
    /// The name of this store, sent in the hello.
    store_id: u64,
    /// The serial of the next write.
    next_serial: u64,
    /// Every newer head node accepted, in order: at most one per
    /// registration or epoch raise in a seed.
    fences: Vec<FenceChange>,
    /// Records kept at most, if retention is on.
    retention: Option<usize>,
    /// What retention removed (at most the records written in a seed).
    removed: Vec<Removed>,
    removed_ids: BTreeSet<MessageId>,
}

/// A shared handle to one node's disk.
#[derive(Clone, Default)]
pub struct Disk(Arc<Mutex<State>>);

impl Disk {
    /// A disk named `store_id`, whose fsync takes `fsync_delay`.
    pub fn new(fsync_delay: Duration, store_id: u64) -> Self {
        let disk = Disk::default();
        disk.set_fsync_delay(fsync_delay);
        disk.lock().store_id = store_id;
        disk
    }

    /// Appends a record to the volatile part, with its serial.
    pub fn write(&self, mut record: Record) {
        let mut state = self.lock();
        state.next_serial += 1;
        record.serial = state.next_serial;
        state.volatile.push(record);
    }

    /// Turns retention on: at most `records` durable records are kept.
    pub fn set_retention(&self, records: usize) {
        self.lock().retention = Some(records.max(RETENTION_CHUNK));
    }

    /// Removes the oldest records, a chunk at a time, while more than
    /// the retention keeps are durable; the ids removed now.
    pub fn apply_retention(&self) -> BTreeSet<MessageId> {
        let mut state = self.lock();
        let mut gone = BTreeSet::new();
        let Some(keep) = state.retention else {
            return gone;
        };
        while state.durable.len() > keep {
            let chunk = RETENTION_CHUNK.min(state.durable.len());
            let from_serial = state.next_serial + 1;
            let removed: Vec<Record> = state.durable.drain(..chunk).collect();
            for record in removed {
                if let Some(id) = record.id {
                    gone.insert(id);
                    state.removed_ids.insert(id);
                }
                state.removed.push(Removed {
                    record,
                    from_serial,
                });
            }
        }
        gone
    }

    /// The ids retention removed so far, as ranges of consecutive ids.
    pub fn removed_ranges(&self) -> Vec<IdRange> {
        id_ranges(&self.lock().removed_ids)
    }

    /// What retention removed so far.
    pub fn removed(&self) -> Vec<Removed> {
        self.lock().removed.clone()
    }

    /// Every newer head node this disk's node accepted, in order.
    pub fn fences(&self) -> Vec<FenceChange> {
        self.lock().fences.clone()
    }

    /// What the node keeps beside its records: the newest head node it
    /// accepted and the member set last sent.
    pub fn kept(&self) -> Kept {
        let state = self.lock();
        Kept {
            newest: state.newest,
            members: state.members.clone(),
        }
    }

    /// Writes down a newer fence, durably (the real node syncs its file),
    /// given by head-node process `head` at `at`; one the newest does not
    /// admit is ignored, as the real file does. Recorded between batches,
    /// when nothing is unsynced.
    pub fn record_fence(&self, fence: Fence, head: HeadRun, at: Duration) {
        let mut state = self.lock();
        if state.newest.admits(&fence) {
            if state.newest != fence {
                let before_serial = state.next_serial + 1;
                state.fences.push(FenceChange {
                    at,
                    before_serial,
                    fence,
                    head,
                });
            }
            state.newest = fence;
        }
    }

    /// Writes down the member set, durably.
    pub fn record_members(&self, members: Vec<NodeId>) {
        self.lock().members = Some(members);
    }

    /// The name of this store.
    pub fn store_id(&self) -> u64 {
        self.lock().store_id
    }

    /// Waits for the (possibly slow) fsync, then makes every write so far durable.
    pub async fn fsync(&self) {
        let delay = self.lock().fsync_delay;
        tokio::time::sleep(delay).await;
        let mut state = self.lock();
        let written = std::mem::take(&mut state.volatile);
        state.durable.extend(written);
    }

    /// A slow disk (or a normal one again).
    pub fn set_fsync_delay(&self, delay: Duration) {
        self.lock().fsync_delay = delay;
    }

    /// The process died: unsynced writes are gone.
    pub fn crash(&self) {
        let mut state = self.lock();
        let lost = state.volatile.len();
        state.volatile.clear();
        state.lost_on_crash += lost;
    }

    /// The durable records.
    pub fn durable(&self) -> Vec<Record> {
        self.lock().durable.clone()
    }

    /// Unsynced records discarded by crashes so far.
    pub fn lost_on_crash(&self) -> usize {
        self.lock().lost_on_crash
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `ids` as ranges of consecutive sequence numbers within an epoch: exact,
/// naming no id that is not in `ids`.
pub fn id_ranges(ids: &BTreeSet<MessageId>) -> Vec<IdRange> {
    let mut ranges: Vec<IdRange> = Vec::new();
    for &id in ids {
        match ranges.last_mut() {
            Some(last) if last.last.epoch == id.epoch && last.last.seq + 1 == id.seq => {
                last.last = id;
            }
            _ => ranges.push(IdRange {
                first: id,
                last: id,
            }),
        }
    }
    ranges
}

/// The durable records of a disk, as the message index sees them: by id,
/// the first copy of an id wins (a second copy is the same message).
pub struct DiskRecords {
    by_id: BTreeMap<MessageId, Record>,
    removed: BTreeSet<MessageId>,
}

impl DiskRecords {
    /// What `disk` holds durably now, and what its retention removed.
    pub fn of(disk: &Disk) -> Self {
        let mut by_id = BTreeMap::new();
        let state = disk.lock();
        for record in &state.durable {
            if let Some(id) = record.id {
                by_id.entry(id).or_insert_with(|| record.clone());
            }
        }
        DiskRecords {
            by_id,
            removed: state.removed_ids.clone(),
        }
    }
}

fn read_record(id: MessageId, record: &Record) -> ReadRecord {
    ReadRecord {
        id,
        key: record.key.clone(),
        stored_ms: record.stored_ms,
        text: record.text.clone(),
    }
}

impl Records for DiskRecords {
    fn get(&self, id: MessageId) -> Result<Got, ReadFault> {
        Ok(match self.by_id.get(&id) {
            Some(record) => Got::Found(read_record(id, record)),
            None => Got::NotFound {
                removed: self.removed.contains(&id),
            },
        })
    }

    fn scan(
        &self,
        after: Option<MessageId>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Scanned, ReadFault> {
        // The bounds of the real node's scan (`StoreReader::scan`).
        let limit = limit.clamp(1, MAX_SCAN_RECORDS) as usize;
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let found: Vec<(&MessageId, &Record)> = self
            .by_id
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .collect();
        let mut more = found.len() == limit;
        let mut records = Vec::with_capacity(found.len());
        let mut bytes = 0;
        for (&id, record) in found {
            if bytes >= max_bytes {
                more = true;
                break;
            }
            bytes += record.text.len() + 100;
            records.push(read_record(id, record));
        }
        Ok(Scanned {
            records,
            more,
            damaged: 0,
        })
    }
}
