//! A data node's simulated disk: writes land in a volatile part, and only
//! an fsync makes them durable. It lives outside the simulated host, so it
//! survives the host's crash, minus what was never synced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::ids::{MessageId, MessageKey};

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The head node's id for it.
    pub id: MessageId,
    /// The client's key, if it sent one.
    pub key: Option<MessageKey>,
    /// Its text.
    pub text: String,
}

#[derive(Default)]
struct State {
    durable: Vec<Record>,
    volatile: Vec<Record>,
    fsync_delay: Duration,
    lost_on_crash: usize,
    /// The newest head-node epoch seen (the `epoch` file).
    epoch: u64,
}

/// A shared handle to one node's disk.
#[derive(Clone, Default)]
pub struct Disk(Arc<Mutex<State>>);

impl Disk {
    /// A disk whose fsync takes `fsync_delay`.
    pub fn new(fsync_delay: Duration) -> Self {
        let disk = Disk::default();
        disk.set_fsync_delay(fsync_delay);
        disk
    }

    /// Appends a record to the volatile part.
    pub fn write(&self, id: MessageId, key: Option<MessageKey>, text: &str) {
        self.lock().volatile.push(Record {
            id,
            key,
            text: text.to_owned(),
        });
    }

    /// The newest head-node epoch written down.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Writes down a newer epoch, durably (the real node syncs its file).
    pub fn raise_epoch(&self, epoch: u64) {
        let mut state = self.lock();
        state.epoch = state.epoch.max(epoch);
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
