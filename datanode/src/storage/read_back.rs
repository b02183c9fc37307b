//! Reading a `data.txt` back whole, for tests and tools.

use std::path::Path;

use protocol::ids::MessageId;

use super::{Record, StorageError, parse_line};

/// One message read back from a `data.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its id, if it came with one.
    pub id: Option<MessageId>,
    /// Its text.
    pub text: String,
}

/// Every message in a `data.txt` whose record is whole and intact (or
/// written before records carried a checksum), in file order: for tests
/// and tools.
pub fn stored_messages(path: &Path) -> Result<Vec<StoredMessage>, StorageError> {
    let contents = std::fs::read(path).map_err(|error| StorageError::Read {
        path: path.to_owned(),
        error,
    })?;
    Ok(contents
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| line.ends_with(b"\n"))
        .filter_map(|line| parse_line(line).ok())
        .filter(Record::is_intact)
        .map(|record| StoredMessage {
            id: record.id,
            text: record.text_lossy().into_owned(),
        })
        .collect())
}

/// The ids of [`stored_messages`], in file order.
pub fn stored_ids(path: &Path) -> Result<Vec<MessageId>, StorageError> {
    Ok(stored_messages(path)?
        .into_iter()
        .filter_map(|message| message.id)
        .collect())
}
