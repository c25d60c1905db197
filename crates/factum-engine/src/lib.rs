//! Factum's embedded storage engine: no server, one directory, nothing acknowledged before it is
//! on disk.
//!
//! The log is the truth: numbered segment files of CRC32C-checksummed frames, one frame per
//! append, so an append of many events is atomic on disk. One writer thread takes every waiting
//! append, writes them, calls `fdatasync` once and only then answers (group commit). The index
//! (streams, positions, record locations) is derived from the log, kept in memory, saved with the
//! position it covers, and brought up to date from the log on open. A torn tail left by a crash
//! is cut off on open; a bad checksum anywhere else is an error naming the file and offset.
//!
//! ```
//! # mod factum { pub use factum_core::*; pub use factum_engine::*; }
//! use factum::{Direction, EventStore, ExpectedState, NewEvent, StreamName};
//! use factum::{Engine, EngineOptions};
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
//! let cart = StreamName::user("cart-42").unwrap();
//! let added = NewEvent::json("ItemAdded", &serde_json::json!({"sku": "pear"})).unwrap();
//! store.append(&cart, ExpectedState::NoStream, vec![added]).await.unwrap();
//! store.close().unwrap();
//!
//! let store = Engine::open(dir.path(), EngineOptions::default()).unwrap();
//! let events = store.read_stream(&cart, 0, Direction::Forwards, 10).await.unwrap();
//! assert_eq!(events[0].event_type, "ItemAdded");
//! # });
//! ```

// A storage engine does not panic on what it reads or is given: errors are typed, slices are
// taken with `get`. Tests may.
#![cfg_attr(
    not(test),
    warn(clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

mod index;
mod log;
mod scavenge;
mod verify;
mod writer;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use async_trait::async_trait;
use factum_core::backend::catalog::{self, GONE, WriteRequest};
use factum_core::backend::{Job, LocalClaims, Reply, read_visible, validate_import};
use factum_core::{
    AppendResult, Claim, CurrentRevision, Direction, EventStore, RecordedEvent, ScavengeOptions,
    ScavengeReport, StoreError, StreamInfo, StreamMetadata, StreamName,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use index::{Index, IndexedUpTo};
use log::recovery::{self, Start};
use log::{SegmentWriter, Segments, Snapshot, format::SEGMENT_HEADER_BYTES, pack};
pub use verify::VerifyReport;
use writer::Writer;

/// How the engine is set up.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// A segment is closed and a new one started past this size.
    pub segment_bytes_limit: u64,
    /// The index is saved after this many new events (and on close), which bounds the log
    /// tail replayed on open after a crash.
    pub index_save_interval_events: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            segment_bytes_limit: 256 * 1024 * 1024,
            index_save_interval_events: 4 * 1024 * 1024,
        }
    }
}

/// What the writer and readers share.
pub(crate) struct Shared {
    dir: PathBuf,
    index: RwLock<Index>,
    segments: Segments,
    head: watch::Sender<u64>,
    poisoned: Mutex<Option<String>>,
    /// Held by a scavenge, and by a verification, which must not see a segment replaced.
    scavenging: Mutex<()>,
    /// Faults a test injects below the writer.
    faults: writer::Faults,
}

struct WriterHandle {
    requests: Sender<writer::Request>,
    thread: JoinHandle<Result<(), StoreError>>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<WriterHandle>>,
    /// Opened with [`Engine::open_read_only`]: it has no writer.
    read_only: bool,
    // The exclusive lock on the data directory, held until the store is closed.
    lock: Mutex<Option<DirLock>>,
    // Claims: the directory lock makes this process the only one that can hold any.
    claims: LocalClaims,
    // Keys for personal data, in `keys/` beside the log.
    keys: Arc<factum_core::FileKeyStore>,
}

/// The exclusive lock on a data directory (`LOCK`), and this process's note that it holds it:
/// a lock of the file (`flock`) is per open file, so a second open in the same process would
/// otherwise be refused as if another process held it.
struct DirLock {
    _file: File,
    dir: PathBuf,
}

/// The data directories this process holds, by canonical path.
static HELD_HERE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl DirLock {
    fn take(dir: &Path, read_only: bool) -> Result<Self, StoreError> {
        let canonical = dir.canonicalize()?;
        let locked = |by_this_process| StoreError::Locked {
            dir: dir.to_path_buf(),
            by_this_process,
        };
        let mut held = HELD_HERE.lock();
        if held.contains(&canonical) {
            return Err(locked(true));
        }
        let file = if read_only {
            File::open(dir.join("LOCK"))?
        } else {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("LOCK"))?
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(locked(false)),
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::Io(e)),
        }
        held.push(canonical.clone());
        Ok(DirLock {
            _file: file,
            dir: canonical,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        HELD_HERE.lock().retain(|held| *held != self.dir);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(handle) = self.writer.lock().take() {
            drop(handle.requests);
            match handle.thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "closing the store failed"),
                Err(_) => tracing::error!("the writer thread panicked"),
            }
        }
    }
}

/// What opening found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// Events in the log.
    pub events: u64,
    /// Events replayed from the log because the saved index did not cover them.
    pub replayed_events: u64,
    /// Bytes of a torn tail that were cut off.
    pub cut_bytes: u64,
    /// Last segments removed because they were shorter than a segment header (an interrupted
    /// creation, or a segment cut that short with no saved index to say otherwise).
    pub removed_segments: u64,
}

/// The embedded event store. Cheap to clone: clones share one store.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    report: OpenReport,
}

/// Adds a user event's record, met on replay, to the tag index.
fn index_tags(
    tags: &mut factum_core::backend::tag_index::TagIndex,
    position: u64,
    record: &log::format::RecordView<'_>,
) -> Result<(), StoreError> {
    let decoded = log::format::decode_tags(record.tags)
        .map_err(|e| StoreError::invalid(format!("tags: {e}")))?;
    tags.add(position, false, record.event_type, &decoded)
}

impl Engine {
    /// Opens (or creates) a store in `dir`. Only one process may have a directory open.
    pub fn open(dir: impl AsRef<Path>, options: EngineOptions) -> Result<Self, StoreError> {
        Self::open_as(dir.as_ref(), options, false)
    }

    /// Opens the store in `dir` for reading only: nothing in the directory is created, cut,
    /// removed or saved (a torn tail is read past, not cut; the index is not saved on close),
    /// and every write answers [`StoreError::Unsupported`]. What `factum verify`, `read`,
    /// `export` and the other read-only commands use. A directory that holds no store reads
    /// as an empty one (and is not created); no other process may have a store open.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_as(dir.as_ref(), EngineOptions::default(), true)
    }

    fn open_as(dir: &Path, options: EngineOptions, read_only: bool) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        let log_dir = dir.join("log");
        // A read-only open of a directory without a store sees an empty one.
        let lock = if read_only && !log_dir.is_dir() {
            None
        } else {
            if !read_only {
                std::fs::create_dir_all(&log_dir)?;
            }
            Some(DirLock::take(&dir, read_only)?)
        };

        let (mut segments, removed_segments) = if lock.is_some() {
            recovery::open_segments_as(&log_dir, !read_only)?
        } else {
            (Vec::new(), 0)
        };
        if segments.is_empty() && !read_only {
            // A new store, or one whose only segment never got past creation.
            SegmentWriter::create(&log_dir, 0, 0)?;
            segments = recovery::open_segments(&log_dir)?.0;
        }
        let first_segment = segments.first().map_or(0, |(s, _)| s.number);
        let (mut index, start) = match Index::load(&dir)? {
            Some((index, up_to)) => (
                index,
                Start {
                    segment: up_to.segment,
                    offset: up_to.offset,
                    next_position: up_to.next_position,
                },
            ),
            None => (
                Index::default(),
                Start {
                    segment: first_segment,
                    offset: SEGMENT_HEADER_BYTES as u64,
                    next_position: 0,
                },
            ),
        };
        let loaded = start.next_position;
        // Reserve for the most events the log could hold (every record is at least its fixed
        // part): pages never written are never resident, and the vector never has to be
        // copied while it grows.
        let log_bytes: u64 = segments.iter().map(|(_, len)| *len).sum();
        let most_events = log_bytes / log::format::RECORD_FIXED_BYTES as u64;
        index
            .locations
            .reserve((most_events.saturating_sub(loaded)) as usize);
        // Both callbacks below write the index, one at a time.
        let replayed = std::cell::RefCell::new(&mut index);
        let end = recovery::replay(
            &segments,
            start,
            |segment, offset, position, record| {
                let index = &mut **replayed.borrow_mut();
                debug_assert_eq!(index.locations.len() as u64, position);
                index.locations.push(pack(segment.number, offset));
                let fits = |e: StoreError| {
                    segment.corrupted(offset, format!("record does not fit the index: {e}"))
                };
                if !record.stream.starts_with('$') {
                    index
                        .catalog
                        .append_user_event(record.stream, record.revision, position, record.id)
                        .map_err(fits)?;
                    return index_tags(&mut index.tags, position, &record).map_err(fits);
                }
                let stream = StreamName::new(record.stream).map_err(fits)?;
                index
                    .tags
                    .add(position, true, record.event_type, &[])
                    .map_err(fits)?;
                for change in catalog::changes_of(
                    &stream,
                    record.revision,
                    position,
                    record.id,
                    record.event_type,
                    record.data,
                )
                .map_err(fits)?
                {
                    index.catalog.apply(change).map_err(fits)?;
                }
                Ok(())
            },
            |first, count| {
                let index = &mut **replayed.borrow_mut();
                debug_assert_eq!(index.locations.len() as u64, first);
                index
                    .locations
                    .resize(index.locations.len() + count as usize, GONE);
                index.tags.advance(first + u64::from(count));
            },
            |_| {},
        )?;
        if end.next_position > loaded {
            index.catalog.shrink_to_fit();
            index.tags.shrink_to_fit();
        }
        let last = segments
            .last()
            .map(|(s, _)| s.number)
            .unwrap_or(first_segment);
        if end.segment != last {
            return Err(StoreError::invalid(
                "log replay did not reach the last segment",
            ));
        }
        let segment_writer = if read_only {
            None
        } else {
            Some(SegmentWriter::open(
                &log::segment_path(&log_dir, last),
                last,
                end.len,
            )?)
        };
        let report = OpenReport {
            events: end.next_position,
            replayed_events: end.next_position - loaded,
            cut_bytes: end.cut_bytes,
            removed_segments,
        };
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            index: RwLock::new(index),
            segments: Segments::new(
                log_dir,
                segments.into_iter().map(|(s, _)| Arc::new(s)).collect(),
            ),
            head: watch::channel(end.next_position).0,
            poisoned: Mutex::new(None),
            scavenging: Mutex::new(()),
            faults: writer::Faults::default(),
        });
        let keys = if read_only {
            factum_core::FileKeyStore::existing(dir.join("keys"))
        } else {
            factum_core::FileKeyStore::open(dir.join("keys"))?
        };
        let Some(segment_writer) = segment_writer else {
            return Ok(Engine {
                inner: Arc::new(Inner {
                    shared,
                    writer: Mutex::new(None),
                    read_only: true,
                    lock: Mutex::new(lock),
                    claims: LocalClaims::default(),
                    keys: Arc::new(keys),
                }),
                report,
            });
        };
        let mut writer = Writer {
            shared: shared.clone(),
            segment: segment_writer,
            next_position: end.next_position,
            segment_bytes_limit: options.segment_bytes_limit,
            index_save_interval_events: options.index_save_interval_events,
            saved_at_position: loaded,
            group_bytes_hint: 64 * 1024,
            recovery: None,
        };
        if report.replayed_events >= options.index_save_interval_events {
            shared.index.read().save(
                &dir,
                IndexedUpTo {
                    next_position: end.next_position,
                    segment: last,
                    offset: end.len,
                },
            )?;
            writer.saved_at_position = end.next_position;
        }
        let (requests, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("factum-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(WriterHandle { requests, thread })),
                read_only: false,
                lock: Mutex::new(lock),
                claims: LocalClaims::default(),
                keys: Arc::new(keys),
            }),
            report,
        })
    }

    /// What opening the store found.
    pub fn open_report(&self) -> OpenReport {
        self.report
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Stops the writer after the appends already sent and saves the index. Other handles to
    /// the same store get [`StoreError::Closed`] for writes afterwards.
    pub fn close(&self) -> Result<(), StoreError> {
        let Some(handle) = self.inner.writer.lock().take() else {
            return Ok(());
        };
        drop(handle.requests);
        let result = handle
            .thread
            .join()
            .map_err(|_| StoreError::invalid("the writer thread panicked"))?;
        self.inner.lock.lock().take();
        result
    }

    async fn send(&self, request: impl FnOnce(Reply) -> Job) -> Result<AppendResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send_request(writer::Request::Job(request(reply)))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn send_request(&self, request: writer::Request) -> Result<(), StoreError> {
        if self.inner.read_only {
            return Err(StoreError::Unsupported(
                "writing to a store opened read-only".into(),
            ));
        }
        let writer = self.inner.writer.lock();
        let handle = writer.as_ref().ok_or(StoreError::Closed)?;
        handle
            .requests
            .send(request)
            .map_err(|_| StoreError::Closed)
    }

    /// Closes the segment being written and starts a new one (appends go on in it), so that
    /// everything written so far can be scavenged.
    async fn seal(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send_request(writer::Request::Seal(reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores recorded events as they are — ids, revisions, types, data, metadata and recorded
    /// times — in one atomic write. Each event must continue its stream (its revision is the
    /// stream's next one). Used by `factum import`.
    pub async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        validate_import(&events)?;
        self.send(|reply| Job::Import(events, reply))
            .await
            .map(|_| ())
    }

    /// Reads every frame and record of the log, checks every checksum and that the index
    /// agrees with the log. `progress` gets (bytes done, bytes in all).
    pub fn verify(&self, progress: impl FnMut(u64, u64)) -> Result<VerifyReport, StoreError> {
        verify::verify(&self.inner.shared, progress)
    }

    /// The locations of the events of `$all` from `from` on in `direction` below `head`, at
    /// most `limit` of them, skipping positions whose events a scavenge removed; with the
    /// segments they are offsets in.
    fn all_locations(
        &self,
        from: u64,
        direction: Direction,
        limit: usize,
        head: u64,
    ) -> (Vec<(u64, u64)>, Snapshot) {
        let index = self.inner.shared.index.read();
        let head = head.min(index.locations.len() as u64);
        let located = |p: u64| {
            index
                .locations
                .get(p as usize)
                .filter(|l| **l != GONE)
                .map(|l| (p, *l))
        };
        let found: Vec<(u64, u64)> = match direction {
            Direction::Forwards => (from..head).filter_map(located).take(limit).collect(),
            Direction::Backwards => (0..head.min(from.saturating_add(1)))
                .rev()
                .filter_map(located)
                .take(limit)
                .collect(),
        };
        (found, self.inner.shared.segments.snapshot())
    }

    /// Reads the events at `locations` (found with `segments`): consecutive positions in large
    /// chunks, others `scattered_chunk` bytes at a time.
    async fn read_located(
        &self,
        (locations, segments): (Vec<(u64, u64)>, Snapshot),
        scattered_chunk: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let consecutive = locations
            .windows(2)
            .all(|w| matches!(w, [a, b] if b.0 == a.0 + 1));
        let chunk_bytes = if consecutive {
            log::SEQUENTIAL_CHUNK_BYTES
        } else {
            scattered_chunk
        };
        // Large reads must not stall the async workers: on a multi-threaded runtime the worker
        // hands its other tasks off while it reads (the events stay on the thread that
        // allocated them, which keeps the allocator fast); elsewhere they go to the blocking
        // pool.
        if locations.len() <= 256 {
            return segments.read_events(&locations, chunk_bytes);
        }
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| segments.read_events(&locations, chunk_bytes))
            }
            Ok(_) => {
                tokio::task::spawn_blocking(move || segments.read_events(&locations, chunk_bytes))
                    .await
                    .map_err(|e| StoreError::invalid(format!("read task failed: {e}")))?
            }
            Err(_) => segments.read_events(&locations, chunk_bytes),
        }
    }

    /// Reads `$all` without going through the async runtime (benchmarks, verification tools).
    pub fn read_all_blocking(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (locations, segments) =
            self.all_locations(from_position, Direction::Forwards, limit, u64::MAX);
        segments.read_events(&locations, log::SEQUENTIAL_CHUNK_BYTES)
    }

    /// For fault-injection tests: the next `writes` writes to the log and the next `syncs`
    /// `fdatasync`s of it fail with an I/O error, as a full or failing disk's would.
    #[doc(hidden)]
    pub fn inject_faults(&self, writes: u32, syncs: u32) {
        use std::sync::atomic::Ordering;
        let faults = &self.inner.shared.faults;
        faults.writes.store(writes, Ordering::Relaxed);
        faults.syncs.store(syncs, Ordering::Relaxed);
    }

    fn stop_if_poisoned(&self) -> Result<(), StoreError> {
        match self.inner.shared.poisoned.lock().as_ref() {
            Some(reason) => Err(StoreError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl EventStore for Engine {
    async fn write(&self, request: WriteRequest) -> Result<AppendResult, StoreError> {
        self.stop_if_poisoned()?;
        self.send(|reply| Job::Write(request, reply)).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_visible(from_revision, direction, limit, |from, asked| async move {
            let (locations, max_age) = {
                let index = self.inner.shared.index.read();
                let positions = index.catalog.read_plan(stream, from, direction, asked)?;
                let locations: Vec<(u64, u64)> = positions
                    .into_iter()
                    .filter_map(|p| index.locations.get(p as usize).map(|l| (p, *l)))
                    .collect();
                (
                    (locations, self.inner.shared.segments.snapshot()),
                    index.catalog.max_age_secs(stream),
                )
            };
            Ok((
                self.read_located(locations, log::SCATTERED_CHUNK_BYTES)
                    .await?,
                max_age,
            ))
        })
        .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let head = self.head();
        let (locations, segments) = self.all_locations(from_position, direction, limit, head);
        let mut events = if direction == Direction::Backwards {
            let mut forwards: Vec<_> = locations.into_iter().rev().collect();
            forwards.shrink_to_fit();
            let mut events = self
                .read_located((forwards, segments), log::SEQUENTIAL_CHUNK_BYTES)
                .await?;
            events.reverse();
            events
        } else {
            self.read_located((locations, segments), log::SEQUENTIAL_CHUNK_BYTES)
                .await?
        };
        events.truncate(limit);
        Ok(events)
    }

    async fn read_query(
        &self,
        query: &factum_core::Query,
        after: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<factum_core::QueryRead, StoreError> {
        query.validate()?;
        // The head first: every position below it is in the index.
        let end = self.head();
        let locations = {
            let index = self.inner.shared.index.read();
            let located: Vec<(u64, u64)> = index
                .tags
                .query(query, after, end, direction, limit)
                .into_iter()
                .filter_map(|p| index.locations.get(p as usize).map(|l| (p, *l)))
                .filter(|(_, l)| *l != GONE)
                .collect();
            (located, self.inner.shared.segments.snapshot())
        };
        Ok(factum_core::QueryRead {
            events: self
                .read_located(locations, log::SPARSE_CHUNK_BYTES)
                .await?,
            head: end.checked_sub(1),
        })
    }

    fn head(&self) -> u64 {
        *self.inner.shared.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.shared.head.subscribe()
    }

    async fn stream_revision(&self, stream: &StreamName) -> Result<CurrentRevision, StoreError> {
        self.inner.shared.index.read().catalog.current(stream)
    }

    async fn get_metadata(
        &self,
        stream: &StreamName,
    ) -> Result<Option<StreamMetadata>, StoreError> {
        self.inner.shared.index.read().catalog.metadata(stream)
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        Ok(self
            .inner
            .shared
            .index
            .read()
            .catalog
            .list(prefix, after, limit))
    }

    async fn read_checkpoint(&self, consumer: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.shared.index.read().catalog.checkpoint(consumer))
    }

    async fn claim(&self, name: &str) -> Result<Option<Claim>, StoreError> {
        self.inner.claims.try_claim(name)
    }

    fn keys(&self) -> Option<Arc<dyn factum_core::KeyStore>> {
        Some(self.inner.keys.clone())
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn write_refusal(&self) -> Option<String> {
        self.inner.shared.poisoned.lock().clone()
    }

    async fn disk_usage(&self) -> Result<Option<u64>, StoreError> {
        let dir = self.inner.shared.dir.clone();
        let size = tokio::task::spawn_blocking(move || directory_size(&dir))
            .await
            .map_err(|e| StoreError::invalid(format!("disk usage: {e}")))??;
        Ok(Some(size))
    }

    async fn scavenge(
        &self,
        options: ScavengeOptions,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<ScavengeReport, StoreError> {
        self.stop_if_poisoned()?;
        self.seal().await?;
        let shared = &self.inner.shared;
        // Long reads and writes of files: off the async workers where the runtime allows.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| scavenge::scavenge(shared, &options, progress))
            }
            _ => scavenge::scavenge(shared, &options, progress),
        }
    }
}

/// The bytes of the files under `dir` (a file removed while it is counted counts nothing).
fn directory_size(dir: &Path) -> Result<u64, StoreError> {
    let mut size = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => dirs.push(entry.path()),
                Ok(meta) => size += meta.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(size)
}
