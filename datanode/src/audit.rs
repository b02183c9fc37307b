//! A cluster-wide audit after the fact, in the manner of Jepsen's checkers:
//! every acknowledgement any client logged is compared with every data
//! node's `data.txt`.
//!
//! - **lost**: acknowledged, and in no data file (must be zero);
//! - **misplaced**: acknowledged as stored by a node whose file is among
//!   those audited but does not hold it (must be zero);
//! - **duplicated**: stored more than once in all (after a resend);
//! - **unacknowledged**: stored but acknowledged to no client (a message
//!   whose answer was lost, or answered `outcome unknown`): allowed.
//!
//! Client logs are the `registro_cliente.txt` files of `client store`,
//! whose lines end in `Servidor recibio: <answer>`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use protocol::message::{MessageId, StoreReply};

use crate::storage::{self, DATA_FILE, StorageError};

/// What the audit found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Distinct message ids acknowledged to clients.
    pub acknowledged: usize,
    /// Acknowledged ids stored nowhere.
    pub lost: Vec<MessageId>,
    /// Acknowledged ids missing from the file of the node the ack named.
    pub misplaced: Vec<(MessageId, String)>,
    /// Ids stored more than once, with their number of copies.
    pub duplicated: Vec<(MessageId, usize)>,
    /// Stored ids no client was told about.
    pub unacknowledged: usize,
    /// Error answers clients logged, by reason (ids and numbers stripped).
    pub client_errors: BTreeMap<String, usize>,
    /// Messages stored in all, copies included.
    pub stored_copies: usize,
}

impl AuditReport {
    /// Whether every acknowledged message is where its ack says.
    pub fn is_sound(&self) -> bool {
        self.lost.is_empty() && self.misplaced.is_empty()
    }

    /// Error answers in all.
    pub fn client_error_count(&self) -> usize {
        self.client_errors.values().sum()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: usize = self.duplicated.iter().map(|(_, n)| n - 1).sum();
        write!(
            f,
            "acknowledged={} lost={} misplaced={} duplicated={} extra_copies={} unacknowledged={} client_errors={} stored_copies={}",
            self.acknowledged,
            self.lost.len(),
            self.misplaced.len(),
            self.duplicated.len(),
            extra,
            self.unacknowledged,
            self.client_error_count(),
            self.stored_copies
        )
    }
}

/// Compares the acknowledgements in `client_logs` with the data files in
/// `data_dirs` (each a data directory; its name is taken as the node id).
pub fn audit(client_logs: &[PathBuf], data_dirs: &[PathBuf]) -> Result<AuditReport, StorageError> {
    let mut report = AuditReport::default();
    let mut acked: HashMap<MessageId, String> = HashMap::new();
    for path in client_logs {
        let text = std::fs::read_to_string(path).map_err(|error| StorageError::Read {
            path: path.clone(),
            error,
        })?;
        for line in text.lines() {
            let Some((_, answer)) = line.split_once("Servidor recibio: ") else {
                continue;
            };
            match StoreReply::parse(answer) {
                Ok(StoreReply::Stored { node, id }) => {
                    acked.insert(id, node);
                }
                Ok(StoreReply::Error(reason)) => {
                    *report.client_errors.entry(error_kind(&reason)).or_default() += 1;
                }
                Err(_) => {}
            }
        }
    }
    report.acknowledged = acked.len();

    let mut copies: HashMap<MessageId, usize> = HashMap::new();
    let mut held_by: HashMap<String, std::collections::HashSet<MessageId>> = HashMap::new();
    for dir in data_dirs {
        let node = node_name(dir);
        let path = dir.join(DATA_FILE);
        let messages = match storage::stored_messages(&path) {
            Ok(messages) => messages,
            // A node that never stored anything has no file.
            Err(StorageError::Read { error, .. })
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let held = held_by.entry(node).or_default();
        for id in messages.into_iter().filter_map(|m| m.id) {
            report.stored_copies += 1;
            *copies.entry(id).or_default() += 1;
            held.insert(id);
        }
    }
    for (id, node) in &acked {
        if !copies.contains_key(id) {
            report.lost.push(*id);
        } else if held_by.get(node).is_some_and(|held| !held.contains(id)) {
            report.misplaced.push((*id, node.clone()));
        }
    }
    report.lost.sort();
    report.misplaced.sort();
    report.duplicated = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    report.duplicated.sort();
    report.unacknowledged = copies.keys().filter(|id| !acked.contains_key(id)).count();
    Ok(report)
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

    fn write_data(dir: &Path, ids: &[u64]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut buf = Vec::new();
        for seq in ids {
            format_record(
                &mut buf,
                "2026-01-01 00:00:00,000",
                Some(MessageId {
                    epoch: 1,
                    seq: *seq,
                }),
                b"x",
            );
        }
        std::fs::write(dir.join(DATA_FILE), buf).unwrap();
    }

    #[test]
    fn lost_misplaced_duplicated_and_unacknowledged_are_told_apart() {
        let root = tempfile::tempdir().unwrap();
        let (dn1, dn2) = (root.path().join("dn1"), root.path().join("dn2"));
        write_data(&dn1, &[1, 2, 5]);
        write_data(&dn2, &[3, 5, 6]);
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
        let report = audit(&[log], &[dn1, dn2]).unwrap();
        assert_eq!(report.acknowledged, 4);
        assert_eq!(report.lost, [MessageId { epoch: 1, seq: 4 }]);
        assert_eq!(
            report.misplaced,
            [(MessageId { epoch: 1, seq: 2 }, "dn2".to_owned())]
        );
        assert_eq!(report.duplicated, [(MessageId { epoch: 1, seq: 5 }, 2)]);
        assert_eq!(report.unacknowledged, 2, "5 and 6");
        assert_eq!(report.client_errors["outcome unknown"], 1);
        assert_eq!(report.client_errors["no data nodes available"], 2);
        assert!(!report.is_sound());
        assert!(
            report
                .to_string()
                .starts_with("acknowledged=4 lost=1 misplaced=1")
        );
    }
}
