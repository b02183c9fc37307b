//! The invariants a seed must keep, as functions of what it recorded: the
//! answers clients got, what each data node's disk holds and held, the
//! head nodes each accepted, and what readers printed. They take plain
//! histories, not a running simulation, so each one's test feeds it a
//! history that breaks it (`check/tests.rs`) and sees it complain.
//!
//! Every check goes by message id:
//!
//! - [`acks_are_durable`]: every id answered `recibido` is durable, under
//!   the text of the client that got the answer, on every node the answer
//!   names (or was there until that node's retention removed it);
//! - [`one_id_per_key`]: a client key is stored under one id on every node;
//! - [`no_writes_for_older_heads`]: once a data node has accepted a newer
//!   head node, it writes nothing more for an older one, so no answer from
//!   an older head node names it as the holder of a copy written after;
//! - [`old_heads_stop_answering`]: once a majority of the data nodes have
//!   accepted a newer head node, an older one answers no client with
//!   `recibido` past the fencing time;
//! - [`retention_is_not_undone`]: a node never holds again a message its
//!   retention removed (repair trusts `notfound removed`);
//! - [`tails_print_every_ack_once`]: a tail prints ids in increasing order,
//!   each once, and every acknowledged id among them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use protocol::ids::{MessageId, MessageKey};

use crate::disk::{FenceChange, Record, Removed};
use crate::heads::HeadRun;

/// Problems of one kind reported at most; the rest are counted.
const MAX_REPORTED: usize = 8;

/// One `recibido` a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The text of the message it answers.
    pub text: String,
    /// The data nodes it names.
    pub holders: Vec<String>,
    /// The id it gives.
    pub id: MessageId,
    /// When the client read it, in simulated time.
    pub at: Duration,
    /// The head-node process that answered.
    pub head: HeadRun,
}

/// What one data node's disk holds and held at the end of a seed.
#[derive(Debug, Clone, Default)]
pub struct NodeHistory {
    /// Its name (`dn1`, ...).
    pub name: String,
    /// The durable records.
    pub records: Vec<Record>,
    /// What its retention removed.
    pub removed: Vec<Removed>,
    /// Every newer head node it accepted, in order.
    pub fences: Vec<FenceChange>,
}

/// Collects problems, at most [`MAX_REPORTED`] of each kind, and how many
/// more there were.
struct Report<'a> {
    kind: &'static str,
    problems: &'a mut Vec<String>,
    found: usize,
}

impl<'a> Report<'a> {
    fn new(kind: &'static str, problems: &'a mut Vec<String>) -> Self {
        Report {
            kind,
            problems,
            found: 0,
        }
    }

    fn add(&mut self, problem: String) {
        self.found += 1;
        if self.found <= MAX_REPORTED {
            self.problems.push(format!("{}: {problem}", self.kind));
        }
    }
}

impl Drop for Report<'_> {
    fn drop(&mut self) {
        if self.found > MAX_REPORTED {
            self.problems.push(format!(
                "{}: {} more like these",
                self.kind,
                self.found - MAX_REPORTED
            ));
        }
    }
}

/// Every answered id is durable under the answered client's text on every
/// node the answer names, or was until that node's retention removed it.
pub fn acks_are_durable(answers: &[Answer], nodes: &[NodeHistory], problems: &mut Vec<String>) {
    let mut report = Report::new("ack not stored", problems);
    for answer in answers {
        let (id, text) = (answer.id, &answer.text);
        for holder in &answer.holders {
            let Some(node) = nodes.iter().find(|n| n.name == *holder) else {
                report.add(format!("{text}: acknowledged by unknown node {holder:?}"));
                continue;
            };
            let stored: Vec<&str> = node
                .records
                .iter()
                .chain(node.removed.iter().map(|r| &r.record))
                .filter(|r| r.id == Some(id))
                .map(|r| r.text.as_str())
                .collect();
            if stored.is_empty() {
                let elsewhere = nodes
                    .iter()
                    .any(|n| n.records.iter().any(|r| r.id == Some(id)));
                report.add(format!(
                    "{text}: acknowledged as {id} by {holder} ({}), but not durable there (elsewhere: {elsewhere})",
                    answer.head
                ));
            } else if stored.iter().any(|s| s != text) {
                report.add(format!(
                    "{text}: acknowledged as {id} by {holder}, which stored {stored:?} under that id"
                ));
            }
        }
    }
}

/// Every client key is stored under one id, on every node that holds it
/// (a seed runs within the deduplication window).
pub fn one_id_per_key(nodes: &[NodeHistory], problems: &mut Vec<String>) {
    let mut report = Report::new("key with two ids", problems);
    let mut ids: BTreeMap<&MessageKey, BTreeMap<MessageId, Vec<&str>>> = BTreeMap::new();
    for node in nodes {
        for record in &node.records {
            if let (Some(key), Some(id)) = (&record.key, record.id) {
                ids.entry(key)
                    .or_default()
                    .entry(id)
                    .or_default()
                    .push(&node.name);
            }
        }
    }
    for (key, held) in ids {
        if held.len() > 1 {
            report.add(format!(
                "key {key} is stored under more than one id: {held:?}"
            ));
        }
    }
}

/// Once a data node has accepted a newer head node, every record it writes
/// is for that head node or a newer one: none for a head node its newest
/// does not admit. An answer of an older head node can therefore not name
/// it as the holder of a copy written after that moment.
pub fn no_writes_for_older_heads(
    nodes: &[NodeHistory],
    answers: &[Answer],
    problems: &mut Vec<String>,
) {
    let mut report = Report::new("write for an older head node", problems);
    for node in nodes {
        let mut written: Vec<&Record> = node
            .records
            .iter()
            .chain(node.removed.iter().map(|r| &r.record))
            .collect();
        written.sort_by_key(|r| r.serial);
        for record in written {
            let newest = node
                .fences
                .iter()
                .take_while(|c| c.before_serial <= record.serial)
                .last();
            let Some(newest) = newest else { continue };
            if newest.fence.admits(&record.written_for) {
                continue;
            }
            let named = record.id.is_some_and(|id| {
                answers
                    .iter()
                    .any(|a| a.id == id && a.holders.contains(&node.name))
            });
            report.add(format!(
                "{} wrote {:?} ({:?}) for {} after accepting {} from {} at {:?}{}",
                node.name,
                record.text,
                record.id,
                record.written_for,
                newest.fence,
                newest.head,
                newest.at,
                if named {
                    "; an answer names it as a holder"
                } else {
                    ""
                }
            ));
        }
    }
}

/// Since when, as of `at`, `node` has had as its newest a head node that
/// started after `run` (which started at `born`); `None` if its newest is
/// not such a one.
fn away_since(
    node: &NodeHistory,
    born: Duration,
    started_at: &BTreeMap<HeadRun, Duration>,
    at: Duration,
) -> Option<Duration> {
    let mut since = None;
    for change in node.fences.iter().take_while(|c| c.at <= at) {
        let newer = started_at.get(&change.head).is_some_and(|&s| s > born);
        if newer {
            since.get_or_insert(change.at);
        } else {
            since = None;
        }
    }
    since
}

/// No head node answers `recibido` once a majority of the data nodes have
/// had, for longer than `fencing`, a head node started after it as the
/// newest they accepted: by then it has lost its majority and its failure
/// detector has noticed (the fencing time of docs/guarantees.md, plus the
/// answer's way to the client).
pub fn old_heads_stop_answering(
    answers: &[Answer],
    nodes: &[NodeHistory],
    started_at: &BTreeMap<HeadRun, Duration>,
    fencing: Duration,
    problems: &mut Vec<String>,
) {
    let mut report = Report::new("answer from a fenced head node", problems);
    let majority = nodes.len() / 2 + 1;
    for answer in answers {
        let Some(&born) = started_at.get(&answer.head) else {
            continue;
        };
        let away: Vec<(&str, Duration)> = nodes
            .iter()
            .filter_map(|node| {
                let since = away_since(node, born, started_at, answer.at)?;
                (since + fencing <= answer.at).then_some((node.name.as_str(), since))
            })
            .collect();
        if away.len() >= majority {
            report.add(format!(
                "{} answered {:?} recibido {} at {:?}, though {away:?} had accepted newer head nodes more than {fencing:?} before",
                answer.head, answer.text, answer.id, answer.at
            ));
        }
    }
}

/// A node never holds a message again after its retention removed it:
/// repair takes `notfound removed` as the node's answer, not as a copy to
/// make.
pub fn retention_is_not_undone(nodes: &[NodeHistory], problems: &mut Vec<String>) {
    let mut report = Report::new("retention undone", problems);
    for node in nodes {
        let mut removed_from: BTreeMap<MessageId, u64> = BTreeMap::new();
        for removed in &node.removed {
            if let Some(id) = removed.record.id {
                let from = removed_from.entry(id).or_insert(removed.from_serial);
                *from = (*from).min(removed.from_serial);
            }
        }
        for record in &node.records {
            if let Some(id) = record.id
                && removed_from
                    .get(&id)
                    .is_some_and(|&from| record.serial >= from)
            {
                report.add(format!(
                    "{} holds {id} ({:?}) again, written after its retention removed it",
                    node.name, record.text
                ));
            }
        }
    }
}

/// A tail printed `printed`, in that order: each id once and in increasing
/// order, and every answered id among them.
pub fn tails_print_every_ack_once(
    reader: &str,
    printed: &[MessageId],
    answers: &[Answer],
    problems: &mut Vec<String>,
) {
    let mut report = Report::new("tail", problems);
    for pair in printed.windows(2) {
        if pair[1] <= pair[0] {
            report.add(format!(
                "{reader} printed {} after {}: not in increasing order (or twice)",
                pair[1], pair[0]
            ));
        }
    }
    let seen: BTreeSet<MessageId> = printed.iter().copied().collect();
    for answer in answers {
        if !seen.contains(&answer.id) {
            report.add(format!(
                "{reader} never printed {} ({:?}, acknowledged by {} at {:?})",
                answer.id, answer.text, answer.head, answer.at
            ));
        }
    }
}

#[cfg(test)]
mod tests;
