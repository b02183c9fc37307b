//! `epoch`, beside `data.txt`: the newest head node this data node has
//! accepted, as its fence (epoch and head-id; see
//! `protocol::datanode::Fence`). A head node it does not admit is refused
//! before it can store anything, and so is every message of a session with
//! one. The file holds `<epoch> <head-id>` and a newline; a file of an
//! older version holds the epoch alone, read as head-id 0.

use std::io;
use std::path::{Path, PathBuf};

use protocol::datanode::{Fence, HeadId};

use super::{StorageError, replace_durably};

/// Name of the epoch file inside a data directory.
pub const EPOCH_FILE: &str = "epoch";

/// The epoch file of one data directory and the fence it holds.
#[derive(Debug)]
pub struct EpochFile {
    path: PathBuf,
    dir: PathBuf,
    newest: Fence,
}

impl EpochFile {
    /// Reads `dir/epoch`; a missing file means no head node has welcomed
    /// this node yet (epoch 0).
    pub fn load(dir: &Path) -> Result<EpochFile, StorageError> {
        let path = dir.join(EPOCH_FILE);
        let newest = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).ok_or_else(|| StorageError::BadEpoch {
                path: path.clone(),
                content: protocol::error::truncate_for_log(&text).to_owned(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Fence::default(),
            Err(error) => return Err(StorageError::Read { path, error }),
        };
        Ok(EpochFile {
            path,
            dir: dir.to_owned(),
            newest,
        })
    }

    /// The newest fence accepted.
    pub fn newest(&self) -> Fence {
        self.newest
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `fence` the newest accepted, durably: a temporary file,
    /// synced, renamed over the old one, and the directory synced. Does
    /// nothing for the fence it holds, or one it does not admit (it never
    /// goes back).
    pub fn record(&mut self, fence: Fence) -> Result<(), StorageError> {
        if fence == self.newest || !self.newest.admits(&fence) {
            return Ok(());
        }
        let line = format!("{} {}\n", fence.epoch, fence.head);
        replace_durably(&self.dir, EPOCH_FILE, line.as_bytes())?;
        self.newest = fence;
        Ok(())
    }
}

/// `<epoch> <head-id>` or, from an older version, `<epoch>`.
fn parse(text: &str) -> Option<Fence> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let (epoch, head) = match line.split_once(' ') {
        Some((epoch, head)) => (epoch, head.parse().ok()?),
        None => (line, HeadId::default()),
    };
    Some(Fence {
        epoch: epoch.parse().ok()?,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(epoch: u64, head: u64) -> Fence {
        Fence {
            epoch,
            head: HeadId(head),
        }
    }

    #[test]
    fn the_fence_survives_a_reload_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut epoch = EpochFile::load(dir.path()).unwrap();
        assert_eq!(epoch.newest(), Fence::default());
        epoch.record(fence(7, 0xab)).unwrap();
        epoch.record(fence(6, 0xab)).unwrap();
        epoch.record(fence(7, 0xcd)).unwrap();
        assert_eq!(
            EpochFile::load(dir.path()).unwrap().newest(),
            fence(7, 0xab)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(EPOCH_FILE)).unwrap(),
            "7 00000000000000ab\n"
        );
        assert!(!dir.path().join("epoch.tmp").exists());
    }

    #[test]
    fn an_epoch_file_of_an_older_version_reads_as_head_id_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EPOCH_FILE), "1795413330851\n").unwrap();
        let mut epoch = EpochFile::load(dir.path()).unwrap();
        assert_eq!(epoch.newest(), fence(1_795_413_330_851, 0));
        // A clock-based epoch stays the newest until a head node goes above.
        epoch.record(fence(1_795_413_330_852, 9)).unwrap();
        assert_eq!(
            EpochFile::load(dir.path()).unwrap().newest(),
            fence(1_795_413_330_852, 9)
        );
    }

    #[test]
    fn a_damaged_epoch_file_is_an_error_not_a_zero() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["12x\n", "12 xyz\n", "\n", "12 00000000000000ab extra\n"] {
            std::fs::write(dir.path().join(EPOCH_FILE), bad).unwrap();
            let e = EpochFile::load(dir.path()).unwrap_err();
            assert!(matches!(e, StorageError::BadEpoch { .. }), "{bad:?}: {e:?}");
        }
    }
}
