//! A cluster-wide audit after the fact, in the manner of Jepsen's checkers:
//! every acknowledgement any client logged is compared with every data
//! node's data files *by message id*: an answer `dnA+dnB , mensaje:
//! recibido <id>` promises that `<id>` is stored, under the answer's key,
//! on dnA and on dnB. Against the number of copies each should have (R):
//!
//! - **lost**: acknowledged, and its id in no data file (must be zero);
//! - **phantom holders**: a node an answer names, whose files are among
//!   those audited, that does not hold the answered id under the answer's
//!   key (counted per answer and node; must be zero);
//! - **keys with two ids**: one key under two ids, in the data files or in
//!   the answers clients got (must be zero);
//! - **mismatched copies**: one id whose copies differ in key or text
//!   (must be zero);
//! - **under-replicated**: an answered id on fewer than R nodes (a failure
//!   under `strict`); **under-replicated, dir lost** when a node the answer
//!   named is among the data directories given as lost (a wiped disk);
//! - **over-replicated**: an id on more than R nodes (a copy moved after a
//!   slow acknowledgement): allowed;
//! - **duplicated**: one id twice in one node's files: allowed;
//! - **unacknowledged**: an id stored and in no answer (a message whose
//!   answer was lost, or answered `outcome unknown`): allowed.
//!
//! Client logs are the `registro_cliente.txt` files of `client store`,
//! whose lines end in `Servidor recibio: <answer>` or `Servidor recibio:
//! <answer> key=<client-id>/<seq>`. They do not log the text, so an
//! answer is checked by id and key; the copies of one id are compared
//! with each other by text too.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use protocol::client::StoreReply;
use protocol::ids::{MessageId, MessageKey};

use crate::storage::{self, DATA_FILE, StorageError};

/// What a message is known by: its key, or its id when it came without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// Sent with a key.
    Key(MessageKey),
    /// Sent without a key.
    Id(MessageId),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Key(key) => write!(f, "key {key}"),
            Identity::Id(id) => write!(f, "id {id}"),
        }
    }
}

/// What to audit.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Client logs (`registro_cliente.txt`).
    pub client_logs: Vec<PathBuf>,
    /// Data directories; each directory's name is its node's id.
    pub data_dirs: Vec<PathBuf>,
    /// Data directories whose contents were lost (a wiped disk): copies
    /// missing because of them are told apart. They need not be in
    /// `data_dirs`, nor exist.
    pub lost_dirs: Vec<PathBuf>,
    /// Copies every message should have (R).
    pub replicas: usize,
}

/// What the audit found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Copies every message should have.
    pub replicas: usize,
    /// Distinct messages acknowledged to clients.
    pub acknowledged: usize,
    /// Acknowledged messages whose id is stored nowhere.
    pub lost: Vec<Identity>,
    /// Answers naming a node that does not hold the answered id under the
    /// answer's key: (message, answered id, node).
    pub phantom_holders: Vec<(Identity, MessageId, String)>,
    /// Acknowledged ids with fewer than `replicas` copies, with their copies.
    pub under_replicated: Vec<(Identity, usize)>,
    /// The same, where a node the ack named is among the lost directories.
    pub under_replicated_dir_lost: Vec<(Identity, usize)>,
    /// Stored ids with more than `replicas` copies, with their copies.
    pub over_replicated: Vec<(Identity, usize)>,
    /// Ids stored more than once on one node: (message, node, times).
    pub duplicated: Vec<(Identity, String, usize)>,
    /// Keys stored or acknowledged under more than one id, with the ids.
    pub keys_with_two_ids: Vec<(MessageKey, Vec<MessageId>)>,
    /// Ids whose copies differ in key or text.
    pub mismatched_copies: Vec<MessageId>,
    /// Stored ids no client was told about.
    pub unacknowledged: usize,
    /// Error answers clients logged, by reason (ids and numbers stripped).
    pub client_errors: BTreeMap<String, usize>,
    /// Records read in all, copies included.
    pub stored_copies: usize,
}

impl AuditReport {
    /// Whether every answer's id is stored, under its key, on every node it
    /// names, each key has one id, and the copies of each id agree.
    pub fn is_sound(&self) -> bool {
        self.lost.is_empty()
            && self.phantom_holders.is_empty()
            && self.keys_with_two_ids.is_empty()
            && self.mismatched_copies.is_empty()
    }

    /// [`is_sound`](Self::is_sound), and under `strict` also no message
    /// under-replicated for any reason other than a lost directory.
    pub fn passes(&self, strict: bool) -> bool {
        self.is_sound() && (!strict || self.under_replicated.is_empty())
    }

    /// Error answers in all.
    pub fn client_error_count(&self) -> usize {
        self.client_errors.values().sum()
    }

    /// Copies beyond `replicas` across nodes, plus repeats on one node.
    pub fn extra_copies(&self) -> usize {
        let over: usize = self
            .over_replicated
            .iter()
            .map(|(_, n)| n - self.replicas)
            .sum();
        let repeats: usize = self.duplicated.iter().map(|(_, _, n)| n - 1).sum();
        over + repeats
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acknowledged={} lost={} phantom_holders={} keys_with_two_ids={} mismatched_copies={} under_replicated={} under_replicated_dir_lost={} over_replicated={} duplicated={} extra_copies={} unacknowledged={} client_errors={} stored_copies={} replicas={}",
            self.acknowledged,
            self.lost.len(),
            self.phantom_holders.len(),
            self.keys_with_two_ids.len(),
            self.mismatched_copies.len(),
            self.under_replicated.len(),
            self.under_replicated_dir_lost.len(),
            self.over_replicated.len(),
            self.duplicated.len(),
            self.extra_copies(),
            self.unacknowledged,
            self.client_error_count(),
            self.stored_copies,
            self.replicas
        )
    }
}

/// One answer a client logged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Ack {
    id: MessageId,
    /// The key it was logged with, if any.
    key: Option<MessageKey>,
    holders: Vec<String>,
}

impl Ack {
    fn identity(&self) -> Identity {
        match &self.key {
            Some(key) => Identity::Key(key.clone()),
            None => Identity::Id(self.id),
        }
    }
}

/// The copies of one id on one node.
struct Held {
    times: usize,
    key: Option<MessageKey>,
    text: u64,
    /// Copies on this node that differ from the first in key or text.
    differ: bool,
}

/// Compares the acknowledgements in the client logs with the data files.
pub fn audit(config: &AuditConfig) -> Result<AuditReport, StorageError> {
    let mut report = AuditReport {
        replicas: config.replicas,
        ..AuditReport::default()
    };
    let acks = read_acks(config, &mut report)?;
    let stores = read_stores(config, &mut report)?;
    check_acks(config, &acks, &stores, &mut report);
    check_copies(config, &acks, &stores, &mut report);
    report.lost.sort();
    report.lost.dedup();
    report.phantom_holders.sort();
    report.phantom_holders.dedup();
    report.under_replicated.sort();
    report.under_replicated.dedup();
    report.under_replicated_dir_lost.sort();
    report.under_replicated_dir_lost.dedup();
    report.over_replicated.sort();
    report.duplicated.sort();
    report.mismatched_copies.sort();
    Ok(report)
}

/// What the client logs say was acknowledged.
#[derive(Default)]
struct Acks {
    /// Every distinct answer.
    answers: HashSet<Ack>,
    /// The ids each key was acknowledged with.
    acked_ids: HashMap<MessageKey, BTreeSet<MessageId>>,
}

/// Reads the acknowledgements (and counts the error replies) in the
/// client logs.
fn read_acks(config: &AuditConfig, report: &mut AuditReport) -> Result<Acks, StorageError> {
    let mut acks = Acks::default();
    for path in &config.client_logs {
        let text = std::fs::read_to_string(path).map_err(|error| StorageError::Read {
            path: path.clone(),
            error,
        })?;
        for line in text.lines() {
            let Some((_, logged)) = line.split_once("Servidor recibio: ") else {
                continue;
            };
            let (answer, key) = split_key(logged);
            match StoreReply::parse(answer) {
                Ok(StoreReply::Stored { holders, id }) => {
                    if let Some(key) = &key {
                        acks.acked_ids.entry(key.clone()).or_default().insert(id);
                    }
                    acks.answers.insert(Ack { id, key, holders });
                }
                Ok(StoreReply::Error(reason)) => {
                    *report.client_errors.entry(error_kind(&reason)).or_default() += 1;
                }
                Err(_) => {}
            }
        }
    }
    let messages: HashSet<Identity> = acks.answers.iter().map(Ack::identity).collect();
    report.acknowledged = messages.len();
    Ok(acks)
}

/// What the data directories hold, by id.
#[derive(Default)]
struct Stores {
    /// Each id's copies, per node.
    by_id: HashMap<MessageId, BTreeMap<String, Held>>,
    /// The ids each key is stored under.
    ids_of_key: HashMap<MessageKey, BTreeSet<MessageId>>,
}

fn digest(text: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Reads every intact record of every data directory.
fn read_stores(config: &AuditConfig, report: &mut AuditReport) -> Result<Stores, StorageError> {
    let mut stores = Stores::default();
    for dir in &config.data_dirs {
        let node = node_name(dir);
        let contents = read_store(dir)?;
        let records = contents
            .split_inclusive(|&b| b == b'\n')
            .filter(|line| line.ends_with(b"\n"))
            .filter_map(|line| storage::parse_line(line).ok())
            .filter(|record| record.is_intact());
        for record in records {
            // The original system's records have no id.
            let Some(id) = record.id else { continue };
            report.stored_copies += 1;
            let key = record.key.map(|key| key.to_key());
            if let Some(key) = &key {
                stores.ids_of_key.entry(key.clone()).or_default().insert(id);
            }
            let text = digest(record.text);
            let copies = stores.by_id.entry(id).or_default();
            match copies.get_mut(&node) {
                Some(held) => {
                    held.times += 1;
                    held.differ |= held.key != key || held.text != text;
                }
                None => {
                    copies.insert(
                        node.clone(),
                        Held {
                            times: 1,
                            key,
                            text,
                            differ: false,
                        },
                    );
                }
            }
        }
    }
    Ok(stores)
}

/// Every segment of the data directory `dir`, then its `data.txt`: one
/// store, read whole.
fn read_store(dir: &Path) -> Result<Vec<u8>, StorageError> {
    let mut paths: Vec<_> = storage::segments::list_segments(dir)?
        .into_iter()
        .map(|segment| segment.path)
        .collect();
    paths.push(dir.join(DATA_FILE));
    let mut contents = Vec::new();
    let last = paths.len() - 1;
    for (n, path) in paths.into_iter().enumerate() {
        match std::fs::read(&path) {
            Ok(mut more) if n < last => {
                // A segment never ends torn; if one did, its last line
                // must not merge with the next file's first (its
                // checksum then fails, and it is skipped).
                if more.last().is_some_and(|&b| b != b'\n') {
                    more.push(b'\n');
                }
                contents.extend(more)
            }
            Ok(more) => contents.extend(more),
            // A node that never stored anything has no file.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::Read { path, error }),
        }
    }
    Ok(contents)
}

/// Each answer: its id stored at all, under its key on every node it
/// names, and on as many nodes as wanted.
fn check_acks(config: &AuditConfig, acks: &Acks, stores: &Stores, report: &mut AuditReport) {
    let lost_nodes: HashSet<String> = config.lost_dirs.iter().map(|d| node_name(d)).collect();
    let audited: HashSet<String> = config.data_dirs.iter().map(|d| node_name(d)).collect();
    let empty = BTreeMap::new();
    for ack in &acks.answers {
        let identity = ack.identity();
        let copies = stores.by_id.get(&ack.id).unwrap_or(&empty);
        let named_lost = ack.holders.iter().any(|h| lost_nodes.contains(h));
        if copies.is_empty() && !named_lost {
            report.lost.push(identity.clone());
        }
        for holder in &ack.holders {
            if !audited.contains(holder) || lost_nodes.contains(holder) {
                continue;
            }
            let holds = copies
                .get(holder)
                .is_some_and(|held| ack.key.is_none() || held.key == ack.key);
            if !holds {
                report
                    .phantom_holders
                    .push((identity.clone(), ack.id, holder.clone()));
            }
        }
        let n = copies.len();
        if n < config.replicas {
            if named_lost {
                report.under_replicated_dir_lost.push((identity, n));
            } else {
                report.under_replicated.push((identity, n));
            }
        }
    }
}

/// Each stored id: too many copies, twice on one node, copies that
/// disagree, never acknowledged; and each key under more than one id.
fn check_copies(config: &AuditConfig, acks: &Acks, stores: &Stores, report: &mut AuditReport) {
    let acked: HashSet<MessageId> = acks.answers.iter().map(|ack| ack.id).collect();
    for (id, copies) in &stores.by_id {
        let first = copies.values().next();
        let identity = match first.and_then(|held| held.key.clone()) {
            Some(key) => Identity::Key(key),
            None => Identity::Id(*id),
        };
        if copies.len() > config.replicas {
            report
                .over_replicated
                .push((identity.clone(), copies.len()));
        }
        for (node, held) in copies {
            if held.times > 1 {
                report
                    .duplicated
                    .push((identity.clone(), node.clone(), held.times));
            }
        }
        let agree = first.is_some_and(|first| {
            copies
                .values()
                .all(|held| !held.differ && held.key == first.key && held.text == first.text)
        });
        if !agree {
            report.mismatched_copies.push(*id);
        }
        if !acked.contains(id) {
            report.unacknowledged += 1;
        }
    }
    let mut two_ids: BTreeMap<MessageKey, BTreeSet<MessageId>> = BTreeMap::new();
    for (key, ids) in stores.ids_of_key.iter().chain(acks.acked_ids.iter()) {
        two_ids.entry(key.clone()).or_default().extend(ids);
    }
    report.keys_with_two_ids = two_ids
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(key, ids)| (key, ids.into_iter().collect()))
        .collect();
}

/// Splits `<answer> key=<client-id>/<seq>` into the answer and the key; a
/// line without a valid key at its end is all answer.
fn split_key(logged: &str) -> (&str, Option<MessageKey>) {
    match logged.rsplit_once(" key=") {
        Some((answer, key)) => match key.trim_end().parse() {
            Ok(key) => (answer, Some(key)),
            Err(_) => (logged, None),
        },
        None => (logged, None),
    }
}

fn node_name(dir: &Path) -> String {
    dir.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An error reason without the parts that differ per message, so errors
/// can be counted by kind.
fn error_kind(reason: &str) -> String {
    let kind = reason
        .split([':', '(', ';'])
        .next()
        .unwrap_or(reason)
        .trim();
    kind.chars()
        .filter(|c| !c.is_ascii_digit())
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format_record;
    use protocol::ids::KeyRef;

    fn id(seq: u64) -> MessageId {
        MessageId { epoch: 1, seq }
    }

    fn key(seq: u64) -> MessageKey {
        format!("c/{seq}").parse().unwrap()
    }

    /// Writes `dir/data.txt` with one record per (id, key seq).
    fn write_data(dir: &Path, records: &[(u64, Option<u64>)]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut buf = Vec::new();
        for (seq, key) in records {
            format_record(
                &mut buf,
                "2026-01-01 00:00:00,000",
                Some(id(*seq)),
                key.map(|seq| KeyRef { client: "c", seq }),
                b"x",
            );
        }
        std::fs::write(dir.join(DATA_FILE), buf).unwrap();
    }

    fn config(logs: &[&Path], dirs: &[&Path], lost: &[&Path], replicas: usize) -> AuditConfig {
        AuditConfig {
            client_logs: logs.iter().map(|p| p.to_path_buf()).collect(),
            data_dirs: dirs.iter().map(|p| p.to_path_buf()).collect(),
            lost_dirs: lost.iter().map(|p| p.to_path_buf()).collect(),
            replicas,
        }
    }

    #[test]
    fn unkeyed_lost_misplaced_duplicated_and_unacknowledged_are_told_apart() {
        let root = tempfile::tempdir().unwrap();
        let (dn1, dn2) = (root.path().join("dn1"), root.path().join("dn2"));
        write_data(&dn1, &[(1, None), (2, None), (5, None), (5, None)]);
        write_data(&dn2, &[(3, None), (6, None)]);
        let log = root.path().join("registro_cliente.txt");
        std::fs::write(
            &log,
            "t - Servidor recibio: dn1 , mensaje: recibido 1-1\n\
             t - Servidor recibio: dn2 , mensaje: recibido 1-2\n\
             t - Servidor recibio: dn2 , mensaje: recibido 1-3\n\
             t - Servidor recibio: dn1 , mensaje: recibido 1-4\n\
             t - Servidor recibio: ERROR outcome unknown: 5 data nodes failed; it may or may not be stored\n\
             t - Servidor recibio: ERROR no data nodes available\n\
             t - Servidor recibio: ERROR no data nodes available\n",
        )
        .unwrap();
        let report = audit(&config(&[&log], &[&dn1, &dn2], &[], 1)).unwrap();
        assert_eq!(report.acknowledged, 4);
        assert_eq!(report.lost, [Identity::Id(id(4))]);
        assert_eq!(
            report.phantom_holders,
            [
                (Identity::Id(id(2)), id(2), "dn2".to_owned()),
                (Identity::Id(id(4)), id(4), "dn1".to_owned())
            ]
        );
        assert_eq!(
            report.duplicated,
            [(Identity::Id(id(5)), "dn1".to_owned(), 2)]
        );
        assert_eq!(report.extra_copies(), 1);
        assert_eq!(report.unacknowledged, 2, "5 and 6");
        assert_eq!(report.client_errors["outcome unknown"], 1);
        assert_eq!(report.client_errors["no data nodes available"], 2);
        assert!(!report.is_sound());
        assert!(report.to_string().starts_with(
            "acknowledged=4 lost=1 phantom_holders=2 keys_with_two_ids=0 mismatched_copies=0"
        ));
    }

    #[test]
    fn a_node_s_segments_are_read_with_its_data_txt() {
        let root = tempfile::tempdir().unwrap();
        let dn1 = root.path().join("dn1");
        write_data(&dn1, &[(1, None), (2, None)]);
        std::fs::rename(dn1.join(DATA_FILE), dn1.join("data.000001.txt")).unwrap();
        write_data(&dn1, &[(3, None)]);
        let log = root.path().join("registro_cliente.txt");
        std::fs::write(
            &log,
            "t - Servidor recibio: dn1 , mensaje: recibido 1-1\n\
             t - Servidor recibio: dn1 , mensaje: recibido 1-3\n",
        )
        .unwrap();
        let report = audit(&config(&[&log], &[&dn1], &[], 1)).unwrap();
        assert!(
            report.lost.is_empty() && report.phantom_holders.is_empty(),
            "{report}"
        );
        assert_eq!(report.unacknowledged, 1, "1-2, in the segment");
    }

    #[test]
    fn keys_are_counted_against_the_replica_count() {
        let root = tempfile::tempdir().unwrap();
        let dir = |name: &str| root.path().join(name);
        let (dn1, dn2, dn3, dn4) = (dir("dn1"), dir("dn2"), dir("dn3"), dir("dn4"));
        // c/1 fine; c/2 one copy; c/3 one copy, the other on lost dn3;
        // c/4 three copies; c/5 twice in dn1; c/6 under two ids; c/7
        // nowhere; c/8 never acknowledged.
        write_data(
            &dn1,
            &[
                (1, Some(1)),
                (2, Some(2)),
                (3, Some(3)),
                (4, Some(4)),
                (5, Some(5)),
                (5, Some(5)),
                (6, Some(6)),
                (8, Some(8)),
            ],
        );
        write_data(
            &dn2,
            &[
                (1, Some(1)),
                (4, Some(4)),
                (5, Some(5)),
                (9, Some(6)),
                (8, Some(8)),
            ],
        );
        write_data(&dn4, &[(4, Some(4))]);
        let log = root.path().join("registro_cliente.txt");
        let mut text = String::new();
        for (seq, holders) in [
            (1, "dn1+dn2"),
            (1, "dn1+dn2"),
            (2, "dn1+dn2"),
            (3, "dn1+dn3"),
            (4, "dn1+dn2"),
            (5, "dn1+dn2"),
            (6, "dn1+dn2"),
            (7, "dn1+dn2"),
        ] {
            text.push_str(&format!(
                "t - Servidor recibio: {holders} , mensaje: recibido 1-{seq} key=c/{seq}\n"
            ));
        }
        std::fs::write(&log, text).unwrap();
        let report = audit(&config(&[&log], &[&dn1, &dn2, &dn4], &[&dn3], 2)).unwrap();
        let k = |seq| Identity::Key(key(seq));
        assert_eq!(report.acknowledged, 7);
        assert_eq!(report.lost, [k(7)]);
        let phantom = |seq, node: &str| (k(seq), id(seq), node.to_owned());
        assert_eq!(
            report.phantom_holders,
            [
                phantom(2, "dn2"),
                phantom(6, "dn2"),
                phantom(7, "dn1"),
                phantom(7, "dn2")
            ],
            "dn2 holds c/6, but under 1-9: no copy of the answered 1-6"
        );
        assert_eq!(report.under_replicated, [(k(2), 1), (k(6), 1), (k(7), 0)]);
        assert_eq!(report.under_replicated_dir_lost, [(k(3), 1)]);
        assert_eq!(report.over_replicated, [(k(4), 3)]);
        assert_eq!(report.duplicated, [(k(5), "dn1".to_owned(), 2)]);
        assert_eq!(report.keys_with_two_ids, [(key(6), vec![id(6), id(9)])]);
        assert_eq!(report.unacknowledged, 2, "c/8, and c/6 under 1-9");
        assert_eq!(report.extra_copies(), 2);
        assert!(!report.is_sound());
    }

    #[test]
    fn strict_fails_on_under_replication_but_not_on_a_lost_dir() {
        let root = tempfile::tempdir().unwrap();
        let (dn1, dn2) = (root.path().join("dn1"), root.path().join("dn2"));
        write_data(&dn1, &[(1, Some(1)), (2, Some(2))]);
        write_data(&dn2, &[(1, Some(1))]);
        let log = root.path().join("registro_cliente.txt");
        std::fs::write(
            &log,
            "t - Servidor recibio: dn1+dn2 , mensaje: recibido 1-1 key=c/1\n\
             t - Servidor recibio: dn1+dn3 , mensaje: recibido 1-2 key=c/2\n",
        )
        .unwrap();
        let lost = root.path().join("dn3");
        let with_lost_dir = audit(&config(&[&log], &[&dn1, &dn2], &[&lost], 2)).unwrap();
        assert_eq!(with_lost_dir.under_replicated_dir_lost.len(), 1);
        assert!(with_lost_dir.passes(true), "{with_lost_dir}");
        let without = audit(&config(&[&log], &[&dn1, &dn2], &[], 2)).unwrap();
        assert_eq!(without.under_replicated, [(Identity::Key(key(2)), 1)]);
        assert!(without.passes(false), "{without}");
        assert!(!without.passes(true), "{without}");
    }

    #[test]
    fn two_ids_acknowledged_for_one_key_conflict() {
        let root = tempfile::tempdir().unwrap();
        let dn1 = root.path().join("dn1");
        write_data(&dn1, &[(1, Some(1))]);
        let log = root.path().join("registro_cliente.txt");
        std::fs::write(
            &log,
            "t - Servidor recibio: dn1 , mensaje: recibido 1-1 key=c/1\n\
             t - Servidor recibio: dn1 , mensaje: recibido 1-2 key=c/1\n",
        )
        .unwrap();
        let report = audit(&config(&[&log], &[&dn1], &[], 1)).unwrap();
        assert_eq!(report.keys_with_two_ids, [(key(1), vec![id(1), id(2)])]);
        assert!(!report.passes(false));
    }

    #[test]
    fn an_answer_naming_a_node_that_holds_its_key_under_another_id_is_a_phantom_holder() {
        // The answer a head node gave when a data node said 'recibido 1-4
        // 1-1' (the key already held under 1-1, nothing written) and it
        // counted that as a copy of 1-4. By key and text it looked stored.
        let root = tempfile::tempdir().unwrap();
        let (dn1, dn2) = (root.path().join("dn1"), root.path().join("dn2"));
        write_data(&dn1, &[(1, Some(1))]);
        write_data(&dn2, &[(1, Some(1))]);
        let log = root.path().join("registro_cliente.txt");
        std::fs::write(
            &log,
            "t - Servidor recibio: dn1+dn2 , mensaje: recibido 1-1 key=c/1\n\
             t - Servidor recibio: dn1+dn2 , mensaje: recibido 1-4 key=c/1\n",
        )
        .unwrap();
        let report = audit(&config(&[&log], &[&dn1, &dn2], &[], 2)).unwrap();
        let k1 = Identity::Key(key(1));
        assert_eq!(report.lost, std::slice::from_ref(&k1), "1-4 is nowhere");
        assert_eq!(
            report.phantom_holders,
            [
                (k1.clone(), id(4), "dn1".to_owned()),
                (k1.clone(), id(4), "dn2".to_owned())
            ]
        );
        assert_eq!(report.keys_with_two_ids, [(key(1), vec![id(1), id(4)])]);
        assert!(!report.is_sound(), "{report}");
    }

    #[test]
    fn copies_of_one_id_that_differ_in_key_or_text_are_mismatched() {
        let root = tempfile::tempdir().unwrap();
        let (dn1, dn2) = (root.path().join("dn1"), root.path().join("dn2"));
        write_data(&dn1, &[(1, Some(1)), (2, None)]);
        std::fs::create_dir_all(&dn2).unwrap();
        let mut buf = Vec::new();
        let stamp = "2026-01-01 00:00:00,000";
        format_record(
            &mut buf,
            stamp,
            Some(id(1)),
            Some(KeyRef {
                client: "c",
                seq: 1,
            }),
            b"y",
        );
        format_record(&mut buf, stamp, Some(id(2)), None, b"x");
        std::fs::write(dn2.join(DATA_FILE), buf).unwrap();
        let log = root.path().join("registro_cliente.txt");
        std::fs::write(
            &log,
            "t - Servidor recibio: dn1+dn2 , mensaje: recibido 1-1 key=c/1\n\
             t - Servidor recibio: dn1+dn2 , mensaje: recibido 1-2\n",
        )
        .unwrap();
        let report = audit(&config(&[&log], &[&dn1, &dn2], &[], 2)).unwrap();
        assert_eq!(report.mismatched_copies, [id(1)], "{report}");
        assert!(report.phantom_holders.is_empty(), "{report}");
        assert!(!report.is_sound());
    }

    #[test]
    fn the_key_is_split_off_a_logged_answer() {
        assert_eq!(
            split_key("dn1 , mensaje: recibido 1-2 key=c-1/9"),
            ("dn1 , mensaje: recibido 1-2", Some(key_of("c-1/9")))
        );
        assert_eq!(
            split_key("dn1 , mensaje: recibido 1-2"),
            ("dn1 , mensaje: recibido 1-2", None)
        );
        assert_eq!(split_key("ERROR a key=b"), ("ERROR a key=b", None));
    }

    fn key_of(s: &str) -> MessageKey {
        s.parse().unwrap()
    }
}
