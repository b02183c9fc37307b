//! The file operations a [`DataFile`](super::DataFile) commits through: the
//! real [`File`], or a [`FaultyFile`] that fails on purpose, so that how the
//! node handles a full or failing disk can be tested.

use std::fs::File;
use std::io::{self, Write};

/// What committing to `data.txt` needs from a file opened for appending.
///
/// Implementations MUST append: `write_all` writes at the current end of
/// the file, also after `set_len` has cut it.
#[expect(
    clippy::len_without_is_empty,
    reason = "a commit needs the length only, to cut a failed batch off"
)]
pub trait StorageFile: Send + std::fmt::Debug {
    /// Appends all of `buf`. On error, any prefix of it may have been written.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Forces what was written to disk (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Lets the kernel drop `len` bytes from `offset` out of the page
    /// cache (written and synced bytes: they stay on disk).
    fn drop_cached(&self, offset: u64, len: u64);
}

impl StorageFile for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn drop_cached(&self, offset: u64, len: u64) {
        // Advice only: nothing is lost if the kernel does not follow it.
        let _ = rustix::fs::fadvise(
            self,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
}

/// Which faults a [`FaultyFile`] injects; the default injects none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Bytes that may be written. The write that goes past them writes what
    /// still fits, then fails with ENOSPC (no space left on device), as a
    /// full disk does; so does every write after it.
    pub write_budget: Option<u64>,
    /// `sync_data` calls that succeed; every one after them fails with EIO.
    pub syncs_before_eio: Option<u64>,
    /// A roll of `data.txt` into a segment stops after this step, as if
    /// the process had crashed there (the roll then reports an error).
    pub roll_stops_after: Option<RollStep>,
    /// The `fdatasync` of `data.txt` when it is opened fails with EIO
    /// (it does not count against `syncs_before_eio`).
    pub open_sync_fails: bool,
}

/// The steps of a roll of `data.txt` into a segment, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollStep {
    /// `data.txt` is synced; nothing renamed yet.
    Synced,
    /// `data.txt` is renamed to the segment and the directory synced; no
    /// new `data.txt` yet.
    Renamed,
    /// The new, empty `data.txt` is created and the directory synced.
    Created,
}

/// A [`StorageFile`] that writes through to a real file until the
/// [`Faults`] it was given say it should fail.
#[derive(Debug)]
pub struct FaultyFile {
    file: File,
    faults: Faults,
    written: u64,
    syncs: u64,
}

impl FaultyFile {
    /// Wraps `file` (opened for appending).
    pub fn new(file: File, faults: Faults) -> FaultyFile {
        FaultyFile {
            file,
            faults,
            written: 0,
            syncs: 0,
        }
    }
}

impl StorageFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let room = self
            .faults
            .write_budget
            .map_or(u64::MAX, |budget| budget.saturating_sub(self.written));
        let fits = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        Write::write_all(&mut self.file, &buf[..fits])?;
        self.written += fits as u64;
        if fits < buf.len() {
            return Err(rustix::io::Errno::NOSPC.into());
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self
            .faults
            .syncs_before_eio
            .is_some_and(|allowed| self.syncs >= allowed)
        {
            return Err(rustix::io::Errno::IO.into());
        }
        self.syncs += 1;
        self.file.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        StorageFile::len(&self.file)
    }
    fn drop_cached(&self, offset: u64, len: u64) {
        self.file.drop_cached(offset, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faulty(faults: Faults) -> (tempfile::TempDir, FaultyFile) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .create(true)
            .append(true)
            .read(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, FaultyFile::new(file, faults))
    }

    #[test]
    fn a_write_past_the_budget_writes_what_fits_then_fails_with_enospc() {
        let (_dir, mut file) = faulty(Faults {
            write_budget: Some(5),
            ..Faults::default()
        });
        file.write_all(b"abc").unwrap();
        let e = file.write_all(b"defg").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28), "{e}");
        assert_eq!(file.len().unwrap(), 5);
        assert!(file.write_all(b"h").is_err(), "the disk stays full");
    }

    #[test]
    fn syncs_past_the_allowed_number_fail_with_eio() {
        let (_dir, mut file) = faulty(Faults {
            syncs_before_eio: Some(1),
            ..Faults::default()
        });
        file.sync_data().unwrap();
        let e = file.sync_data().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5), "{e}");
    }
}
