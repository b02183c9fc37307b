//! A data node's simulated disk: writes land in a volatile part, and only
//! an fsync makes them durable. It lives outside the simulated host, so it
//! survives the host's crash, minus what was never synced.
//!
//! - [`Disk`]: the records, the newest head node accepted and the member
//!   set last sent (what a data directory's epoch and members files hold),
//!   and the name of the store (its store-id file);
//! - [`DiskRecords`]: reads served from the durable records, as the real
//!   node's read thread serves them from its files.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datanode::node::Kept;
use datanode::reads::{Got, ReadFault, Records, Scanned};
use protocol::datanode::{Fence, MAX_SCAN_RECORDS, ReadRecord};
use protocol::ids::{MessageId, MessageKey, NodeId};

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The head node's id for it.
    pub id: Option<MessageId>,
    /// The client's key, if it sent one.
    pub key: Option<MessageKey>,
    /// Its text.
    pub text: String,
    /// When its batch was staged, in Unix ms of the simulated clock.
    pub stored_ms: u64,
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

    /// Appends a record to the volatile part.
    pub fn write(&self, record: Record) {
        self.lock().volatile.push(record);
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

    /// Writes down a newer fence, durably (the real node syncs its file);
    /// one the newest does not admit is ignored, as the real file does.
    pub fn record_fence(&self, fence: Fence) {
        let mut state = self.lock();
        if state.newest.admits(&fence) {
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

/// The durable records of a disk, as the message index sees them: by id,
/// the first copy of an id wins (a second copy is the same message).
pub struct DiskRecords(BTreeMap<MessageId, Record>);

impl DiskRecords {
    /// What `disk` holds durably now.
    pub fn of(disk: &Disk) -> Self {
        let mut by_id = BTreeMap::new();
        for record in disk.durable() {
            if let Some(id) = record.id {
                by_id.entry(id).or_insert(record);
            }
        }
        DiskRecords(by_id)
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
        Ok(match self.0.get(&id) {
            Some(record) => Got::Found(read_record(id, record)),
            // Nothing is removed by retention here.
            None => Got::NotFound { removed: false },
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
            .0
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
