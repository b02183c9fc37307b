//! Reads served to the head node: `get`, `getkey` and `scan`.
//!
//! - [`StoreReader`]: finds a record through the message index and reads
//!   it back from its file with `pread`, checking that the line read is
//!   the record asked for (a roll may have renamed `data.txt` under it:
//!   then the segment is tried);
//! - [`ReadServer`]: one *read thread* per head-node connection, apart from
//!   the data-path thread, so a read never delays a write or its
//!   acknowledgement. The data path hands it at most
//!   [`MAX_READS_IN_FLIGHT`] requests at a time; one more is answered
//!   `readerror <req> too many reads in flight` at once. It writes its
//!   answers to the connection through the [`SharedWriter`] the data path
//!   writes through, one whole piece of lines at a time.
//!
//! A record that no longer reads back where the index points (a line
//! damaged on disk since the node indexed it) costs one read: it is marked
//! damaged in the index ([`MessageIndex::mark_damaged`]), logged and
//! counted, and left out of the answer (a `get` answers `notfound`, a
//! scan goes on past it), so a repair pass sees this node without it and
//! gives the message its copies; the node reads the file anew at its next
//! start. A page that failed on it would fail every pass that crossed it.
//!
//! Bounds: a scan returns at most [`MAX_SCAN_RECORDS`] records and stops
//! after [`MAX_SCAN_REPLY_BYTES`] of answer lines (at least one record); a
//! record read back is at most the longest line the node accepts.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::BytesMut;
use node_kit::timefmt::parse_timestamp_millis;
use protocol::datanode::{FromDataNode, MAX_SCAN_RECORDS, ReadRecord};
use protocol::ids::MessageId;
use tracing::{debug, warn};

use crate::metrics::NodeMetrics;
use crate::node::ReadSlots;
use crate::storage::index::{Location, MessageIndex};
use crate::storage::removed::SetCache;
use crate::storage::retention::RemovedIds;
use crate::storage::segments::segment_name;
use crate::storage::{DATA_FILE, parse_line};
use crate::storage::{read_lock, write_lock};

pub use crate::node::{MAX_READS_IN_FLIGHT, ReadJob};

/// A scan's answer stops once its `found` lines reach this many bytes (it
/// always carries at least one record); `scanned ... more` says to go on.
pub const MAX_SCAN_REPLY_BYTES: usize = 1 << 20;
/// Answer bytes written to the connection in one go, so that
/// acknowledgements are never held behind a whole scan.
const WRITE_PIECE: usize = 64 * 1024;

/// Why a read failed (answered `readerror`).
#[derive(Debug, thiserror::Error)]
pub enum ReadFault {
    /// A file that should hold the record could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
}

/// The outcome of a `get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// The record.
    Found(ReadRecord),
    /// Not here; `removed` if retention removed it.
    NotFound {
        /// Whether retention removed it ([`RemovedIds::lookup`]).
        removed: bool,
    },
    /// Its record no longer reads back where the index pointed: it is
    /// marked damaged, and answered `notfound` (no intact copy is here).
    Damaged,
}

/// The outcome of a `scan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The records, in id order.
    pub records: Vec<ReadRecord>,
    /// Whether records with greater ids may follow.
    pub more: bool,
    /// Records left out because they no longer read back where the index
    /// pointed (now marked damaged).
    pub damaged: u32,
}

/// Where reads are served from: the data directory ([`StoreReader`]), or
/// a simulated disk.
pub trait Records {
    /// The record of `id`.
    fn get(&self, id: MessageId) -> Result<Got, ReadFault>;
    /// At most `limit` records (capped at [`MAX_SCAN_RECORDS`]) with ids
    /// greater than `after`, in id order, stopping early past `max_bytes`
    /// of text.
    fn scan(
        &self,
        after: Option<MessageId>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Scanned, ReadFault>;
}

impl Records for StoreReader {
    fn get(&self, id: MessageId) -> Result<Got, ReadFault> {
        StoreReader::get(self, id)
    }

    fn scan(
        &self,
        after: Option<MessageId>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Scanned, ReadFault> {
        StoreReader::scan(self, after, limit, max_bytes)
    }
}

/// Reads records through the message index; cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreReader {
    dir: PathBuf,
    index: Arc<RwLock<MessageIndex>>,
    active: Arc<AtomicU32>,
    removed: Arc<RwLock<RemovedIds>>,
    sets: Arc<Mutex<SetCache>>,
    max_record: usize,
}

/// Open files of one request, so a scan opens each file once. At most
/// [`OpenFiles::LIMIT`] are kept.
#[derive(Default)]
struct OpenFiles(Vec<(PathBuf, File)>);

impl OpenFiles {
    const LIMIT: usize = 8;

    fn get(&mut self, path: &Path) -> io::Result<&File> {
        if let Some(at) = self.0.iter().position(|(p, _)| p == path) {
            return Ok(&self.0[at].1);
        }
        let file = File::open(path)?;
        if self.0.len() >= Self::LIMIT {
            self.0.remove(0);
        }
        self.0.push((path.to_owned(), file));
        Ok(&self.0[self.0.len() - 1].1)
    }
}

impl StoreReader {
    pub(crate) fn new(
        dir: PathBuf,
        index: Arc<RwLock<MessageIndex>>,
        active: Arc<AtomicU32>,
        removed: Arc<RwLock<RemovedIds>>,
        sets: Arc<Mutex<SetCache>>,
        max_record: usize,
    ) -> Self {
        StoreReader {
            dir,
            index,
            active,
            removed,
            sets,
            max_record: max_record.max(256),
        }
    }

    /// Whether retention removed `id` here (it held it).
    pub fn retention_removed(&self, id: MessageId) -> bool {
        crate::storage::store::retention_removed(&self.dir, &self.removed, &self.sets, id)
    }

    /// The record of `id`.
    pub fn get(&self, id: MessageId) -> Result<Got, ReadFault> {
        let location = read_lock(&self.index).get(id);
        let mut files = OpenFiles::default();
        let found = match location {
            Some(location) => self.read(id, location, &mut files)?,
            None => Read::Gone,
        };
        Ok(match found {
            Read::Found(record) => Got::Found(record),
            Read::Damaged => Got::Damaged,
            Read::Gone => Got::NotFound {
                removed: self.retention_removed(id),
            },
        })
    }

    /// At most `limit` records (capped at [`MAX_SCAN_RECORDS`]) with ids
    /// greater than `after`, in id order, stopping early past
    /// `max_bytes` of text. A record removed by retention meanwhile is
    /// skipped; so is one that no longer reads back (marked damaged).
    pub fn scan(
        &self,
        after: Option<MessageId>,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Scanned, ReadFault> {
        let limit = limit.clamp(1, MAX_SCAN_RECORDS) as usize;
        let found = read_lock(&self.index).scan(after, limit);
        let mut records = Vec::with_capacity(found.len());
        let mut bytes = 0;
        let mut more = found.len() == limit;
        let mut files = OpenFiles::default();
        let mut damaged = 0;
        for &(id, location) in &found {
            if bytes >= max_bytes {
                // Stopped short of what the index had.
                more = true;
                break;
            }
            match self.read(id, location, &mut files)? {
                Read::Found(record) => {
                    bytes += record.text.len() + 100;
                    records.push(record);
                }
                Read::Damaged => damaged += 1,
                Read::Gone => {}
            }
        }
        Ok(Scanned {
            records,
            more,
            damaged,
        })
    }

    /// Reads the record of `id` at `location`: [`Read::Gone`] if its file
    /// is gone (removed by retention since the index was read),
    /// [`Read::Damaged`] (and marked so in the index) if the line there is
    /// not its intact record.
    fn read(
        &self,
        id: MessageId,
        location: Location,
        files: &mut OpenFiles,
    ) -> Result<Read, ReadFault> {
        let segment = self.dir.join(segment_name(location.segment));
        // The active file may be rolled into its segment at any moment:
        // data.txt first while it is (or was) active, then the segment.
        let mut candidates = Vec::with_capacity(2);
        if location.segment >= self.active.load(Ordering::Acquire) {
            candidates.push(self.dir.join(DATA_FILE));
        }
        candidates.push(segment);
        let mut last = None;
        for path in candidates {
            let file = match files.get(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    last = Some(path);
                    continue;
                }
                Err(error) => return Err(ReadFault::Io { path, error }),
            };
            let line = read_line_at(file, location.offset, self.max_record).map_err(|error| {
                ReadFault::Io {
                    path: path.clone(),
                    error,
                }
            })?;
            if let Some(record) = line.as_deref().and_then(|line| to_read_record(line, id)) {
                return Ok(Read::Found(record));
            }
            last = Some(path);
        }
        match last {
            // Every candidate is gone: removed by retention meanwhile.
            Some(path) if !path.exists() => Ok(Read::Gone),
            Some(path) => {
                // The file is there and the line is not the record: it
                // changed on disk after the node indexed it.
                write_lock(&self.index).mark_damaged(id);
                warn!(
                    %id, file = %path.display(), offset = location.offset,
                    "the record of {id} no longer reads back where the index points ({}, offset {}): \
                     marked damaged and left out of reads; a repair pass gives it its copies, \
                     and `datanode verify` shows the line",
                    path.display(),
                    location.offset
                );
                Ok(Read::Damaged)
            }
            None => Ok(Read::Gone),
        }
    }
}

/// What [`StoreReader::read`] found.
enum Read {
    Found(ReadRecord),
    /// Removed by retention since the index was read.
    Gone,
    /// Not the intact record where the index pointed; now marked damaged.
    Damaged,
}

/// The record in `line` if it is the intact record of `id`.
fn to_read_record(line: &[u8], id: MessageId) -> Option<ReadRecord> {
    let record = parse_line(line).ok()?;
    if record.id != Some(id) || !record.is_intact() {
        return None;
    }
    Some(ReadRecord {
        id,
        key: record.key.map(|k| k.to_key()),
        stored_ms: parse_timestamp_millis(record.timestamp).unwrap_or(0),
        text: record.text_lossy().into_owned(),
    })
}

/// The line that starts at `offset` (without its newline); `None` if the
/// file ends before a newline or the line is longer than `max`.
fn read_line_at(file: &File, offset: u64, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = 4096usize;
    loop {
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let n = read_at_most(file, &mut buf[start..], offset + start as u64)?;
        buf.truncate(start + n);
        if let Some(end) = buf[start..].iter().position(|&b| b == b'\n') {
            buf.truncate(start + end);
            return Ok(Some(buf));
        }
        if n == 0 || buf.len() > max {
            return Ok(None);
        }
        chunk = (chunk * 2).min(max + 1);
    }
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The connection's write half, shared by the data-path thread and the
/// read thread: each writes whole lines under the lock, so lines never
/// interleave.
#[derive(Debug, Clone)]
pub struct SharedWriter(Arc<Mutex<std::net::TcpStream>>);

impl SharedWriter {
    /// Wraps a handle to the connection (a `try_clone` of it).
    pub fn new(stream: std::net::TcpStream) -> Self {
        SharedWriter(Arc::new(Mutex::new(stream)))
    }

    /// Writes all of `buf` (whole lines).
    pub fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        // A panic while writing leaves at worst a partial line, which the
        // head node treats as a broken connection anyway.
        let mut stream = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        stream.write_all(buf)
    }
}

/// The read thread of one connection; see the module documentation.
/// Dropping it closes its queue: the thread answers what it holds and ends.
#[derive(Debug)]
pub struct ReadServer {
    jobs: SyncSender<ReadJob>,
    slots: ReadSlots,
}

impl ReadServer {
    /// Starts the read thread, which answers through `writer` and counts
    /// what it answers in `metrics`.
    pub fn start(
        reader: StoreReader,
        writer: SharedWriter,
        metrics: Arc<NodeMetrics>,
    ) -> io::Result<ReadServer> {
        let (jobs, queue) = std::sync::mpsc::sync_channel(MAX_READS_IN_FLIGHT);
        let slots = ReadSlots::default();
        let answered = slots.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("reads".into())
            .spawn(move || {
                let _span = span.enter();
                serve_reads(&reader, &writer, &queue, &answered, &metrics);
            })?;
        Ok(ReadServer { jobs, slots })
    }

    /// The places for this connection's reads, which the data path takes
    /// as it admits reads and this thread gives back as it answers them.
    pub fn slots(&self) -> ReadSlots {
        self.slots.clone()
    }

    /// Takes a place for one more read: false if
    /// [`MAX_READS_IN_FLIGHT`] are outstanding (answer it `readerror`).
    pub fn admit(&self) -> bool {
        self.slots.admit()
    }

    /// Hands an admitted read to the thread; false if it has stopped (its
    /// connection failed).
    pub fn submit(&self, job: ReadJob) -> bool {
        match self.jobs.try_send(job) {
            Ok(()) => true,
            // Cannot be full: admitted reads never outnumber its room.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.slots.release();
                false
            }
        }
    }

    /// Reads outstanding.
    pub fn in_flight(&self) -> usize {
        self.slots.in_flight()
    }
}

fn serve_reads(
    reader: &StoreReader,
    writer: &SharedWriter,
    queue: &Receiver<ReadJob>,
    slots: &ReadSlots,
    metrics: &NodeMetrics,
) {
    let mut out = BytesMut::with_capacity(WRITE_PIECE * 2);
    while let Ok(job) = queue.recv() {
        let written = answer(reader, job, metrics, &mut out, |piece| {
            writer.write_all(piece)
        });
        slots.release();
        if let Err(e) = written {
            debug!("read thread stops: cannot write to the head node: {e}");
            return;
        }
    }
}

/// Answers one read from `reader`, counting it in `metrics`, and hands
/// the answer's lines to `write` in pieces of about 64 KiB
/// (`out` is the buffer they are encoded in): what the read thread does
/// with each read, and what the simulation's data node does with its own.
pub fn answer(
    reader: &impl Records,
    job: ReadJob,
    metrics: &NodeMetrics,
    out: &mut BytesMut,
    mut write: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    out.clear();
    let line = |frame: &FromDataNode, out: &mut BytesMut| frame.encode_line(out);
    match job {
        ReadJob::Get { req, id } => match reader.get(id) {
            Ok(Got::Found(record)) => {
                metrics.get_served();
                line(&FromDataNode::Found { req, record }, out)
            }
            Ok(Got::NotFound { removed }) => {
                metrics.get_served();
                line(&FromDataNode::NotFound { req, removed }, out)
            }
            Ok(Got::Damaged) => {
                metrics.get_served();
                metrics.found_damaged(1);
                line(
                    &FromDataNode::NotFound {
                        req,
                        removed: false,
                    },
                    out,
                )
            }
            Err(e) => {
                metrics.read_failed();
                warn!(req, %id, "read failed: {e}");
                line(
                    &FromDataNode::ReadError {
                        req,
                        reason: e.to_string(),
                    },
                    out,
                );
            }
        },
        ReadJob::Scan { req, after, limit } => {
            match reader.scan(after, limit, MAX_SCAN_REPLY_BYTES) {
                Ok(scanned) => {
                    metrics.scan_served(scanned.records.len());
                    metrics.found_damaged(scanned.damaged.into());
                    let count = scanned.records.len() as u32;
                    let last = scanned.records.last().map(|r| r.id);
                    for record in scanned.records {
                        line(&FromDataNode::Found { req, record }, out);
                        if out.len() >= WRITE_PIECE {
                            write(out)?;
                            out.clear();
                        }
                    }
                    let more = scanned.more;
                    line(
                        &FromDataNode::Scanned {
                            req,
                            count,
                            last,
                            more,
                        },
                        out,
                    );
                }
                Err(e) => {
                    metrics.read_failed();
                    warn!(req, after = ?after.map(|a| a.to_string()), "scan failed: {e}");
                    line(
                        &FromDataNode::ReadError {
                            req,
                            reason: e.to_string(),
                        },
                        out,
                    );
                }
            }
        }
    }
    if !out.is_empty() {
        write(out)?;
    }
    Ok(())
}
