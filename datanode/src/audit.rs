//! A cluster-wide audit after the fact, in the manner of Jepsen's checkers:
//! every acknowledgement any client logged is compared with every data
//! node's `data.txt`, message by message (by key, or by id for a message
//! sent without a key), against the number of copies each should have (R).
//!
//! - **lost**: acknowledged, and in no data file (must be zero);
//! - **misplaced**: acknowledged as stored by a node whose file is among
//!   those audited but does not hold it (must be zero);
//! - **conflicting ids**: one key under two ids, in the data files or in the
//!   answers clients got (must be zero);
//! - **under-replicated**: acknowledged, with fewer than R copies (a failure
//!   under `strict`); **under-replicated, dir lost** when a node that held
//!   it is among the data directories given as lost (a wiped disk);
//! - **over-replicated**: more than R copies (a copy moved after a slow
//!   acknowledgement): allowed;
//! - **duplicated**: the same message twice in one data file: allowed (a
//!   resend without a key, or one past the data node's key window);
//! - **unacknowledged**: stored but acknowledged to no client (a message
//!   whose answer was lost, or answered `outcome unknown`): allowed.
//!
//! Client logs are the `registro_cliente.txt` files of `client store`,
//! whose lines end in `Servidor recibio: <answer>` or `Servidor recibio:
//! <answer> key=<client-id>/<seq>`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
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
    /// Acknowledged messages stored nowhere.
    pub lost: Vec<Identity>,
    /// Acknowledged messages missing from the file of a node the ack named.
    pub misplaced: Vec<(Identity, String)>,
    /// Acknowledged messages with fewer than `replicas` copies, with their copies.
    pub under_replicated: Vec<(Identity, usize)>,
    /// The same, where a node the ack named is among the lost directories.
    pub under_replicated_dir_lost: Vec<(Identity, usize)>,
    /// Stored messages with more than `replicas` copies, with their copies.
    pub over_replicated: Vec<(Identity, usize)>,
    /// Messages stored more than once in one file: (message, node, times).
    pub duplicated: Vec<(Identity, String, usize)>,
    /// Keys stored or acknowledged under more than one id, with the ids.
    pub conflicting_ids: Vec<(MessageKey, Vec<MessageId>)>,
    /// Stored messages no client was told about.
    pub unacknowledged: usize,
    /// Error answers clients logged, by reason (ids and numbers stripped).
    pub client_errors: BTreeMap<String, usize>,
    /// Records read in all, copies included.
    pub stored_copies: usize,
}

impl AuditReport {
    /// Whether every acknowledged message is where its ack says, under one id.
    pub fn is_sound(&self) -> bool {
        self.lost.is_empty() && self.misplaced.is_empty() && self.conflicting_ids.is_empty()
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

    /// Copies beyond `replicas` across nodes, plus repeats within one file.
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
            "acknowledged={} lost={} misplaced={} conflicting_ids={} under_replicated={} under_replicated_dir_lost={} over_replicated={} duplicated={} extra_copies={} unacknowledged={} client_errors={} stored_copies={} replicas={}",
            self.acknowledged,
            self.lost.len(),
            self.misplaced.len(),
            self.conflicting_ids.len(),
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

/// One acknowledgement a client logged.
struct Ack {
    id: MessageId,
    holders: Vec<String>,
}

/// Where one message is stored.
#[derive(Default)]
struct Copies {
    /// Times per node.
    per_node: BTreeMap<String, usize>,
    ids: BTreeSet<MessageId>,
}

/// Compares the acknowledgements in the client logs with the data files.
pub fn audit(config: &AuditConfig) -> Result<AuditReport, StorageError> {
    let mut report = AuditReport {
        replicas: config.replicas,
        ..AuditReport::default()
    };
    let mut acked: HashMap<Identity, Ack> = HashMap::new();
    let mut acked_ids: HashMap<MessageKey, BTreeSet<MessageId>> = HashMap::new();
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
                    let identity = match key {
                        Some(key) => {
                            acked_ids.entry(key.clone()).or_default().insert(id);
                            Identity::Key(key)
                        }
                        None => Identity::Id(id),
                    };
                    acked.insert(identity, Ack { id, holders });
                }
                Ok(StoreReply::Error(reason)) => {
                    *report.client_errors.entry(error_kind(&reason)).or_default() += 1;
                }
                Err(_) => {}
            }
        }
    }
    report.acknowledged = acked.len();

    let mut stored: HashMap<Identity, Copies> = HashMap::new();
    // Keyed messages by id too, for acks logged without their key.
    let mut key_of_id: HashMap<MessageId, MessageKey> = HashMap::new();
    for dir in &config.data_dirs {
        let node = node_name(dir);
        // Every segment, then data.txt: one store.
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
        let records = contents
            .split_inclusive(|&b| b == b'\n')
            .filter(|line| line.ends_with(b"\n"))
            .filter_map(|line| storage::parse_line(line).ok())
            .filter(|record| record.is_intact());
        for record in records {
            let identity = match (record.key, record.id) {
                (Some(key), id) => {
                    let key = key.to_key();
                    if let Some(id) = id {
                        key_of_id.insert(id, key.clone());
                    }
                    Identity::Key(key)
                }
                (None, Some(id)) => Identity::Id(id),
                // The original system's records have neither.
                (None, None) => continue,
            };
            report.stored_copies += 1;
            let copies = stored.entry(identity).or_default();
            *copies.per_node.entry(node.clone()).or_default() += 1;
            copies.ids.extend(record.id);
        }
    }

    let lost_nodes: HashSet<String> = config.lost_dirs.iter().map(|d| node_name(d)).collect();
    let audited: HashSet<String> = config.data_dirs.iter().map(|d| node_name(d)).collect();
    for (identity, ack) in &acked {
        let found = stored.get(identity).or_else(|| match identity {
            Identity::Id(id) => key_of_id
                .get(id)
                .and_then(|key| stored.get(&Identity::Key(key.clone()))),
            Identity::Key(_) => None,
        });
        let Some(copies) = found else {
            report.lost.push(identity.clone());
            continue;
        };
        for holder in &ack.holders {
            if audited.contains(holder)
                && !lost_nodes.contains(holder)
                && !copies.per_node.contains_key(holder)
            {
                report.misplaced.push((identity.clone(), holder.clone()));
            }
        }
        let n = copies.per_node.len();
        if n < config.replicas {
            if ack.holders.iter().any(|h| lost_nodes.contains(h)) {
                report.under_replicated_dir_lost.push((identity.clone(), n));
            } else {
                report.under_replicated.push((identity.clone(), n));
            }
        }
    }
    let acked_by_id: HashSet<MessageId> = acked.values().map(|ack| ack.id).collect();
    let mut conflicts: BTreeMap<MessageKey, BTreeSet<MessageId>> = BTreeMap::new();
    for (identity, copies) in &stored {
        if copies.per_node.len() > config.replicas {
            report
                .over_replicated
                .push((identity.clone(), copies.per_node.len()));
        }
        for (node, times) in &copies.per_node {
            if *times > 1 {
                report
                    .duplicated
                    .push((identity.clone(), node.clone(), *times));
            }
        }
        if !acked.contains_key(identity) && !copies.ids.iter().any(|id| acked_by_id.contains(id)) {
            report.unacknowledged += 1;
        }
        if let Identity::Key(key) = identity {
            let mut ids = copies.ids.clone();
            ids.extend(acked_ids.get(key).into_iter().flatten().copied());
            if ids.len() > 1 {
                conflicts.insert(key.clone(), ids);
            }
        }
    }
    for (key, ids) in acked_ids {
        if ids.len() > 1 {
            conflicts.entry(key).or_default().extend(ids);
        }
    }
    report.conflicting_ids = conflicts
        .into_iter()
        .map(|(key, ids)| (key, ids.into_iter().collect()))
        .collect();
    report.lost.sort();
    report.misplaced.sort();
    report.under_replicated.sort();
    report.under_replicated_dir_lost.sort();
    report.over_replicated.sort();
    report.duplicated.sort();
    Ok(report)
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
        assert_eq!(report.misplaced, [(Identity::Id(id(2)), "dn2".to_owned())]);
        assert_eq!(
            report.duplicated,
            [(Identity::Id(id(5)), "dn1".to_owned(), 2)]
        );
        assert_eq!(report.extra_copies(), 1);
        assert_eq!(report.unacknowledged, 2, "5 and 6");
        assert_eq!(report.client_errors["outcome unknown"], 1);
        assert_eq!(report.client_errors["no data nodes available"], 2);
        assert!(!report.is_sound());
        assert!(
            report
                .to_string()
                .starts_with("acknowledged=4 lost=1 misplaced=1 conflicting_ids=0")
        );
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
            report.lost.is_empty() && report.misplaced.is_empty(),
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
        assert_eq!(report.misplaced, [(k(2), "dn2".to_owned())]);
        assert_eq!(report.under_replicated, [(k(2), 1)]);
        assert_eq!(report.under_replicated_dir_lost, [(k(3), 1)]);
        assert_eq!(report.over_replicated, [(k(4), 3)]);
        assert_eq!(report.duplicated, [(k(5), "dn1".to_owned(), 2)]);
        assert_eq!(report.conflicting_ids, [(key(6), vec![id(6), id(9)])]);
        assert_eq!(report.unacknowledged, 1, "c/8");
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
        assert_eq!(report.conflicting_ids, [(key(1), vec![id(1), id(2)])]);
        assert!(!report.passes(false));
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
