//! The data directory: `data.txt`, its segments, and the small files
//! beside them. Blocking file I/O: it runs on the data node's data-path
//! thread (and reads on its read thread), never on an async runtime's
//! worker.
//!
//! - the record format, `<timestamp> - [<message-id>]
//!   crc32c=<checksum> mensaje: <text>`, written by [`format_record`] and
//!   read by [`parse_line`] (`record`);
//! - [`DataFile`]: the open `data.txt`. Records are staged, then
//!   [`DataFile::commit`] appends everything staged with one `write` and,
//!   under [`FsyncPolicy::Batch`], makes it durable with one `fdatasync`
//!   before any of it is acknowledged (group commit). A failed commit cuts
//!   the file back to where the batch began (`data_file`);
//! - [`store`]: the directory as a whole: `data.txt` rolled into numbered
//!   [`segments`], old segments removed by [`retention`] (each one's ids
//!   kept in a file of its own, [`removed`]), and the message
//!   [`index`] over all of them, rebuilt at start;
//! - [`StorageError`]: why the directory or a file of it cannot be used;
//! - [`DirLock`]: one process per data directory;
//! - [`EpochFile`]: the newest head node accepted, so an older one is
//!   refused; [`load_or_create_store_id`]: the name of this directory;
//!   [`raise_incarnation`]: the process counter; [`MembersFile`]: the
//!   member set the head node last sent;
//! - [`verify`]: checks a whole file or directory without taking the lock;
//!   [`stored_messages`] reads a file back whole, for tests and tools;
//! - [`StorageFile`]: what a commit writes through, so tests can inject
//!   faults ([`FaultyFile`]).

mod data_file;
mod epoch;
mod error;
mod file;
mod fs;
mod incarnation;
pub mod index;
mod lock;
mod members;
mod read_back;
mod record;
pub mod removed;
pub mod retention;
pub mod segments;
mod shared;
pub mod store;
mod store_id;
mod verify;

pub use data_file::{Backend, CACHED_TAIL, CommitStats, DataFile, FsyncPolicy};
pub use epoch::{EPOCH_FILE, EpochFile};
pub use error::StorageError;
pub use file::{Faults, FaultyFile, RollStep, StorageFile};
pub(crate) use fs::{each_line, replace_durably, sync_dir};
pub use incarnation::{INCARNATION_FILE, raise_incarnation};
pub use lock::{DirLock, LOCK_FILE};
pub use members::{MEMBERS_FILE, MembersFile};
pub use read_back::{StoredMessage, stored_ids, stored_messages};
pub use record::{Checksum, LineError, Record, format_record, parse_line};
pub(crate) use shared::{read_lock, write_lock};
pub use store::{Store, StoreConfig};
pub use store_id::{STORE_ID_FILE, load_or_create_store_id};
pub use verify::{
    CorruptRecord, DuplicateId, DuplicateKey, Torn, TornRecord, VerifyReport, verify, verify_dir,
};

/// Name of the data file inside a data directory.
pub const DATA_FILE: &str = "data.txt";
