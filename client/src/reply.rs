//! The head node's answers, as `client store` and `client bench` read them:
//! one [`classify`] for both, and a [`KeyLedger`] that checks the ids given
//! to keys.

use std::collections::{HashMap, VecDeque};

use protocol::ParseError;
use protocol::client::{NO_DATA_NODES, NO_MAJORITY, NOT_ENOUGH_NODES, OUTCOME_UNKNOWN, StoreReply};
use protocol::ids::{ClientId, MessageId};
use rand::RngExt;

/// What an answer means for the message it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Stored (and synced) by these data nodes under this id.
    Stored {
        /// The data nodes that hold it.
        holders: Vec<String>,
        /// Its message id.
        id: MessageId,
    },
    /// Not stored, or perhaps stored: sending it again with the same key is
    /// safe and may succeed (`no data nodes available`, `not enough data
    /// nodes ...`, `no majority ...`, `outcome unknown ...`).
    Retry(String),
    /// Refused for good (too long, control characters, ...): sending it
    /// again would get the same answer.
    Refused(String),
}

/// Reads one answer line of the head node.
pub fn classify(line: &str) -> Result<Answer, ParseError> {
    Ok(match StoreReply::parse(line)? {
        StoreReply::Stored { holders, id } => Answer::Stored { holders, id },
        StoreReply::Error(reason) if is_retryable(&reason) => Answer::Retry(reason),
        StoreReply::Error(reason) => Answer::Refused(reason),
    })
}

/// Errors after which the same message may be sent again with its key.
fn is_retryable(reason: &str) -> bool {
    reason == NO_DATA_NODES
        || reason.starts_with(NOT_ENOUGH_NODES)
        || reason.starts_with(NO_MAJORITY)
        || reason.starts_with(OUTCOME_UNKNOWN)
}

/// A random client id for this process: `c-` and 12 hex digits.
pub fn random_client_id() -> ClientId {
    let n: u64 = rand::rng().random_range(0..1u64 << 48);
    format!("c-{n:012x}")
        .parse()
        // `c-` and hex digits are always a valid name.
        .expect("c-<hex> is a valid client id")
}

/// What the ledger makes of one stored answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first answer for the key, with a new id.
    New,
    /// A resend answered with an id given before: the key's earlier send was
    /// stored, and its answer was lost (or this key was answered twice
    /// alike). Expected with keys; nothing is stored twice.
    EarlierId,
    /// The key was answered before with another id, or the id was given to
    /// another key: the head node (or the pairing of answers with messages)
    /// is wrong.
    Conflict,
}

/// Keys answered on this client id, with their ids, to catch a key answered
/// with two ids.
///
/// Remembers the last [`KeyLedger::WINDOW`] answered keys (about 4 MiB at
/// most); older ones are forgotten, oldest first.
#[derive(Debug, Default)]
pub struct KeyLedger {
    by_seq: HashMap<u64, MessageId>,
    by_id: HashMap<MessageId, u64>,
    order: VecDeque<u64>,
    newest: Option<MessageId>,
}

impl KeyLedger {
    /// Answered keys remembered.
    pub const WINDOW: usize = 65_536;

    /// Records that key `seq` (sent `sends` times) was answered with `id`.
    ///
    /// Ids only grow (a head node's epoch, then its counter), so an id older
    /// than the newest this client has been given was assigned before this
    /// send: it is the id of an earlier send of the same key.
    pub fn record(&mut self, seq: u64, id: MessageId, sends: u32) -> Verdict {
        if let Some(&earlier) = self.by_seq.get(&seq) {
            return if earlier == id {
                Verdict::EarlierId
            } else {
                Verdict::Conflict
            };
        }
        if self.by_id.get(&id).is_some_and(|&other| other != seq) {
            return Verdict::Conflict;
        }
        let verdict = if sends > 1 && self.newest.is_some_and(|newest| id < newest) {
            Verdict::EarlierId
        } else {
            Verdict::New
        };
        self.newest = self.newest.max(Some(id));
        if self.order.len() == Self::WINDOW
            && let Some(old) = self.order.pop_front()
            && let Some(old_id) = self.by_seq.remove(&old)
        {
            self.by_id.remove(&old_id);
        }
        self.by_seq.insert(seq, id);
        self.by_id.insert(id, seq);
        self.order.push_back(seq);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(epoch: u64, seq: u64) -> MessageId {
        MessageId { epoch, seq }
    }

    #[test]
    fn answers_are_classified_once_for_store_and_bench() {
        assert_eq!(
            classify("dn1+dn3 , mensaje: recibido 5-7").unwrap(),
            Answer::Stored {
                holders: vec!["dn1".into(), "dn3".into()],
                id: id(5, 7)
            }
        );
        for retry in [
            "ERROR no data nodes available",
            "ERROR not enough data nodes (1 live, 2 required)",
            "ERROR no majority of the cluster's data nodes (1 of 3 members live, 2 needed): this head node may have been replaced; nothing was stored",
            "ERROR outcome unknown: dn1 failed; it may or may not be stored",
        ] {
            assert!(
                matches!(classify(retry).unwrap(), Answer::Retry(_)),
                "{retry}"
            );
        }
        assert_eq!(
            classify("ERROR empty message").unwrap(),
            Answer::Refused("empty message".into())
        );
        assert!(classify("numero random: 5").is_err());
    }

    #[test]
    fn random_client_ids_have_the_documented_form() {
        let a = random_client_id();
        assert_eq!(a.as_str().len(), 14);
        assert!(a.as_str().starts_with("c-"));
        assert!(a.as_str()[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_client_id());
    }

    #[test]
    fn the_ledger_tells_earlier_ids_from_conflicts() {
        let mut ledger = KeyLedger::default();
        assert_eq!(ledger.record(1, id(9, 1), 1), Verdict::New);
        assert_eq!(ledger.record(2, id(9, 5), 1), Verdict::New);
        // Key 3's first send was stored as 9-3; its answer was lost and the
        // resend got the original id, older than 9-5.
        assert_eq!(ledger.record(3, id(9, 3), 2), Verdict::EarlierId);
        // A resend given a new id is new.
        assert_eq!(ledger.record(4, id(10, 1), 2), Verdict::New);
        assert_eq!(ledger.record(4, id(10, 1), 3), Verdict::EarlierId);
        assert_eq!(ledger.record(1, id(10, 2), 2), Verdict::Conflict);
        assert_eq!(ledger.record(5, id(9, 5), 1), Verdict::Conflict);
    }

    #[test]
    fn the_ledger_forgets_the_oldest_keys_past_its_window() {
        let mut ledger = KeyLedger::default();
        for seq in 1..=KeyLedger::WINDOW as u64 + 10 {
            ledger.record(seq, id(1, seq), 1);
        }
        assert_eq!(ledger.by_seq.len(), KeyLedger::WINDOW);
        assert_eq!(ledger.by_id.len(), KeyLedger::WINDOW);
        assert!(!ledger.by_seq.contains_key(&1));
    }
}
