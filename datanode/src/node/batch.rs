//! The batch a session gathers between two commits: its staged messages,
//! its answers in the order their lines came, and its reads.

use protocol::datanode::FromDataNode;
use protocol::ids::{KeyRef, MessageId};

use super::{ReadJob, Staging};
use crate::keys::KeyIndex;

/// One message staged in the current batch: written at its commit unless
/// withdrawn first. Its key, if any, is in the node's key index from its
/// staging on.
#[derive(Debug)]
struct Staged {
    id: Option<MessageId>,
    /// Its place in [`Batch::answers`].
    answer: usize,
}

/// What a session has read since its last commit. Bounded by what the head
/// node may have unacknowledged at this node (its per-node window).
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// One answer per message and ping, in the order they came.
    pub(super) answers: Vec<FromDataNode>,
    /// The messages to write, in the order they were staged (the same
    /// index as in the [`Staging`]).
    staged: Vec<Staged>,
    /// The lowest and highest id in `staged`, if any: most ids a key is
    /// held under are older, and need no search of `staged`.
    staged_ids: Option<(MessageId, MessageId)>,
    /// Reads admitted in this batch, handed over once the batch is
    /// committed (so a read sees the writes before it). At most
    /// [`super::MAX_READS_IN_FLIGHT`].
    pub(super) reads: Vec<ReadJob>,
}

impl Batch {
    /// Stages message `id` (answered `recibido` once it is written).
    pub(super) fn stage(&mut self, id: Option<MessageId>) {
        if let Some(id) = id {
            let (low, high) = self.staged_ids.get_or_insert((id, id));
            *low = (*low).min(id);
            *high = (*high).max(id);
        }
        self.staged.push(Staged {
            id,
            answer: self.answers.len(),
        });
        self.answers.push(FromDataNode::Stored(id));
    }

    /// Whether message `id` is staged in this batch, not yet written.
    pub(super) fn has_staged(&self, id: MessageId) -> bool {
        self.staged_ids
            .is_some_and(|(low, high)| (low..=high).contains(&id))
            && self.staged.iter().any(|s| s.id == Some(id))
    }

    /// The staged messages are written: forgets them.
    pub(super) fn written(&mut self) {
        self.staged.clear();
        self.staged_ids = None;
    }

    /// The session ends before this batch's commit: its records are never
    /// written (nor acknowledged), and their keys leave the index.
    pub(super) fn abandon(&mut self, staging: &mut impl Staging, keys: &mut KeyIndex) {
        staging.discard_staged_records(|id, key| forget_key(id, key, keys));
        self.written();
        self.answers.clear();
    }

    /// `withdraw <id>`: drops the latest staged message with this id (only
    /// lines read before the withdraw are searched, so a later line that
    /// reuses the id is never cancelled) and answers `withdrawn` in its
    /// place. False if none is staged: it was written already (its
    /// `recibido` stands) or never came.
    pub(super) fn withdraw(
        &mut self,
        id: MessageId,
        staging: &mut impl Staging,
        keys: &mut KeyIndex,
    ) -> bool {
        let Some(at) = self.staged.iter().rposition(|s| s.id == Some(id)) else {
            return false;
        };
        if !staging.unstage_record(at, |id, key| forget_key(id, key, keys)) {
            return false;
        }
        let staged = self.staged.remove(at);
        self.answers[staged.answer] = FromDataNode::Withdrawn(id);
        true
    }
}

/// Takes the key of a staged record that will not be written out of the
/// index (it went in when the record was staged).
fn forget_key(id: Option<MessageId>, key: Option<KeyRef<'_>>, keys: &mut KeyIndex) {
    if let (Some(key), Some(id)) = (key, id)
        && keys.get(key) == Some(id)
    {
        keys.remove(key);
    }
}
