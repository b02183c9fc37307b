//! Whole-file helpers: reading a file line by line, and making changes to
//! a directory durable.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StorageError;

/// Calls `each` with every line of the file at `path` (its newline
/// included; the last one may have none), reading only as far as the
/// file's length when it was opened, so that a running node's appends do
/// not keep it reading. Stops early when `each` says so.
pub(crate) fn each_line(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> std::ops::ControlFlow<()>,
) -> Result<(), StorageError> {
    use std::io::{BufRead, BufReader, Read};
    let read_error = |error| StorageError::Read {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file.take(len));
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
            return Ok(());
        }
        if each(&line).is_break() {
            return Ok(());
        }
    }
}

/// Makes the entries of `dir` (files created, renamed or removed in it)
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `contents` durably: written to `name.tmp`,
/// synced, renamed over it, and the directory synced, so a crash leaves
/// the old contents or the new, never a mix.
pub(crate) fn replace_durably(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StorageError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    let write_error = |error| StorageError::Write {
        path: path.clone(),
        error,
    };
    let sync_error = |error| StorageError::Sync {
        path: path.clone(),
        error,
    };
    let mut file = File::create(&temp).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(sync_error)?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(write_error)?;
    sync_dir(dir).map_err(sync_error)
}

/// The files of `dir` whose names are UTF-8, as (name, path), in no order;
/// a directory that does not exist has none.
pub(crate) fn named_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, StorageError> {
    let read_error = |error| StorageError::Read {
        path: dir.to_owned(),
        error,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(e)),
    };
    let mut named = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error)?;
        if let Ok(name) = entry.file_name().into_string() {
            named.push((name, entry.path()));
        }
    }
    Ok(named)
}
