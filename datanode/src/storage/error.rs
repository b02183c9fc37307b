//! Why a data directory or its files cannot be used.

use std::io;
use std::path::PathBuf;

/// Why a data directory or its `data.txt` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another claim ([`DirLock`](super::DirLock)) on the directory is held: another node,
    /// in this process or another.
    #[error(
        "data directory {} is in use by another process{}",
        dir.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's process id, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The directory, the lock file or `data.txt` could not be created or opened.
    #[error("cannot open {}: {error}", path.display())]
    Open {
        /// What could not be opened.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A torn record at the end of `data.txt` could not be cut off.
    #[error("cannot repair the end of {}: {error}", path.display())]
    Repair {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Appending a batch failed (a full disk, a short write).
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// Forcing a batch to disk failed: what the disk holds is unknown.
    #[error("cannot sync {} to disk: {error}", path.display())]
    Sync {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// An earlier commit failed; nothing more is written to the file.
    #[error("{} is not written after a failed commit", path.display())]
    Failed {
        /// The file.
        path: PathBuf,
    },
    /// The epoch file holds something other than an epoch and a head-id.
    #[error("{} does not hold an epoch: {content:?}", path.display())]
    BadEpoch {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 80 characters of it).
        content: String,
    },
    /// The incarnation file holds something other than one number.
    #[error("{} does not hold an incarnation: {content:?}", path.display())]
    BadIncarnation {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 80 characters of it).
        content: String,
    },
    /// The members file holds something other than one line of node ids.
    #[error("{} does not hold a member set: {content:?}", path.display())]
    BadMembers {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 80 characters of it).
        content: String,
    },
    /// The store-id file holds something other than 16 hex digits.
    #[error("{} does not hold a store id: {content:?}", path.display())]
    BadStoreId {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 80 characters of it).
        content: String,
    },
    /// Rolling `data.txt` into a segment failed at some step: the node
    /// stops, and its next start recovers from whatever step was reached.
    #[error("cannot roll {} into {}: {error}", path.display(), segment.display())]
    Roll {
        /// The active file.
        path: PathBuf,
        /// The segment it was becoming.
        segment: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A segment could not be removed by retention.
    #[error("cannot remove {}: {error}", path.display())]
    Remove {
        /// The segment.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
}
