//! The one writer. Appenders send requests over a channel; the writer takes every request that
//! is waiting, plans each against the committed catalog plus what the group already planned,
//! writes one frame per request, calls `fdatasync` once, and only then makes the group visible
//! (index, head) and answers (group commit). Nothing is acknowledged before it is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use factum_core::backend::catalog::{
    self, Change, CommittedLog, GONE, Overlay, Plan, PlannedRecord, WriteKind,
};
use factum_core::backend::{Job, Reply, group};
use factum_core::{AppendResult, StoreError, now_micros};
use tracing::{error, info, warn};

use crate::Shared;
use crate::index::{Index, IndexError, IndexedUpTo};
use crate::log::format::{
    FRAME_HEADER_BYTES, FrameBuilder, RECORD_FIXED_BYTES, RecordRef, SEGMENT_HEADER_BYTES,
};
use crate::log::{SegmentWriter, pack};

/// Most requests committed in one group.
pub const GROUP_REQUESTS_MAX: usize = 4096;
/// Most bytes committed in one group (a single larger append still goes alone).
pub const GROUP_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Why a group was not written, and where. After one the store refuses writes until it has
/// recovered: a failed `fdatasync` may have dropped pages the kernel still shows, so the
/// writer never syncs again and carries on; it cuts the log back to the end of what was
/// acknowledged, reads that back from disk and checks it, and tries the disk with a probe —
/// again and again, with backoff, until all of it succeeds (see [`Writer::try_recover`]).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Writing the group's frames to the segment failed.
    #[error("writing to segment {segment}: {source}")]
    Write {
        /// The segment written to.
        segment: u32,
        /// What the system said.
        source: std::io::Error,
    },
    /// `fdatasync` of the segment failed.
    #[error("fdatasync of segment {segment}: {source}")]
    Sync {
        /// The segment synced.
        segment: u32,
        /// What the system said.
        source: std::io::Error,
    },
    /// Starting the next segment failed.
    #[error("starting segment {segment}: {source}")]
    Roll {
        /// The segment started.
        segment: u32,
        /// What went wrong.
        source: StoreError,
    },
    /// The group's records did not apply to the catalog.
    #[error(transparent)]
    Catalog(#[from] StoreError),
}

/// What a request in a group comes to.
enum Outcome {
    /// Refused; nothing of it is written.
    Failed(StoreError),
    /// Written as this frame of the group.
    Frame(usize),
    /// Already stored by an earlier identical append.
    Done(AppendResult),
}

/// One frame to write: its records, with their recorded times when they are imported (otherwise
/// the time of the group).
struct FramePlan {
    records: Vec<PlannedRecord>,
    imported_times: Option<Vec<u64>>,
    primary: usize,
}

pub struct Writer {
    pub shared: Arc<Shared>,
    pub segment: SegmentWriter,
    pub next_position: u64,
    pub segment_bytes_limit: u64,
    pub index_save_interval_events: u64,
    pub saved_at_position: u64,
    /// The size of the largest group written so far, so the buffer is allocated once.
    pub group_bytes_hint: usize,
    /// After a failed write: where the acknowledged log ends, and when to try to recover.
    pub recovery: Option<Recovery>,
}

/// Where the log ended when a write failed (everything before it was acknowledged, so
/// durable), and the next attempt to take writes again.
pub struct Recovery {
    segment: u32,
    len: u64,
    attempts: u32,
    next_attempt: Instant,
}

/// The first wait before a recovery is tried, doubled after each failed try up to
/// [`RECOVERY_BACKOFF_MAX`].
const RECOVERY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two tries to recover.
pub const RECOVERY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bytes written and synced past the end of the log to find out whether the disk takes writes
/// again, then cut off.
const PROBE_BYTES: usize = 64 * 1024;

/// Faults a test injects below the writer: the next `writes` segment writes, and the next
/// `syncs` `fdatasync`s, fail with an I/O error.
#[derive(Default)]
pub struct Faults {
    pub writes: AtomicU32,
    pub syncs: AtomicU32,
}

impl Faults {
    /// Takes one injected fault of `counter`, if any is left.
    fn take(counter: &AtomicU32, what: &str) -> std::io::Result<()> {
        match counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)) {
            Ok(_) => Err(std::io::Error::other(format!("injected {what} fault"))),
            Err(_) => Ok(()),
        }
    }
}

impl Writer {
    pub fn run(mut self, requests: Receiver<Request>) -> Result<(), StoreError> {
        loop {
            let first = match &self.recovery {
                None => match requests.recv() {
                    Ok(first) => first,
                    Err(_) => break,
                },
                Some(recovery) => {
                    let wait = recovery
                        .next_attempt
                        .saturating_duration_since(Instant::now());
                    match requests.recv_timeout(wait) {
                        Ok(first) => first,
                        Err(RecvTimeoutError::Timeout) => {
                            self.try_recover();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if self
                .recovery
                .as_ref()
                .is_some_and(|r| Instant::now() >= r.next_attempt)
            {
                self.try_recover();
            }
            let first = match first {
                Request::Job(job) => job,
                Request::Seal(reply) => {
                    let _ = reply.send(self.seal());
                    continue;
                }
            };
            // A seal asked for behind the jobs waiting ends the group and comes after it.
            let mut seal = None;
            let more = || match requests.try_recv().ok()? {
                Request::Job(job) => Some(job),
                Request::Seal(reply) => {
                    seal = Some(reply);
                    None
                }
            };
            let group = group(first, more, GROUP_REQUESTS_MAX, GROUP_BYTES_MAX);
            self.commit(group);
            if let Some(reply) = seal {
                let _ = reply.send(self.seal());
            }
            if self.shared.poisoned.lock().is_none()
                && self.next_position - self.saved_at_position >= self.index_save_interval_events
                && let Err(e) = self.save_index()
            {
                error!(error = %e, "saving the index failed; it will be rebuilt from the log");
            }
        }
        if self.shared.poisoned.lock().is_some() {
            // What is on disk is recovered on the next open; the in-memory index may be ahead.
            return Ok(());
        }
        Ok(self.save_index()?)
    }

    fn save_index(&mut self) -> Result<(), IndexError> {
        let up_to = IndexedUpTo {
            next_position: self.next_position,
            segment: self.segment.number,
            offset: self.segment.len,
        };
        self.shared.index.read().save(&self.shared.dir, up_to)?;
        self.saved_at_position = self.next_position;
        Ok(())
    }

    fn commit(&mut self, group: Vec<Job>) {
        if let Some(reason) = self.shared.poisoned.lock().clone() {
            for request in group {
                let reply = match request {
                    Job::Write(_, reply) | Job::Import(_, reply) => reply,
                };
                let _ = reply.send(Err(StoreError::Poisoned(reason.clone())));
            }
            return;
        }
        let now = now_micros();
        let mut replies: Vec<(Reply, Outcome)> = Vec::with_capacity(group.len());
        let mut frames: Vec<FramePlan> = Vec::new();
        {
            let index = self.shared.index.read();
            let segments = &self.shared.segments;
            let dcb = group
                .iter()
                .any(|job| matches!(job, Job::Write(r, _) if matches!(r.kind, WriteKind::Dcb(_))));
            let mut overlay = Overlay::new(
                &index.catalog,
                Committed {
                    index: &index,
                    segments,
                },
            )
            .with_matching(dcb);
            let mut planned_positions = self.next_position;
            for request in group {
                match request {
                    Job::Write(mut request, reply) => {
                        match catalog::plan(&overlay, &mut request) {
                            Err(e) => replies.push((reply, Outcome::Failed(e))),
                            Ok(Plan::AlreadyAppended {
                                first_revision,
                                last_revision,
                            }) => {
                                let committed = index
                                    .catalog
                                    .stream(&request.stream)
                                    .and_then(|s| s.positions.get(last_revision as usize).copied());
                                // Or its first write is earlier in this very group.
                                let position = committed.or_else(|| {
                                    planned_position(
                                        &frames,
                                        self.next_position,
                                        &request.stream,
                                        last_revision,
                                    )
                                });
                                let outcome = match position {
                                    Some(position) => Outcome::Done(AppendResult {
                                        first_revision,
                                        last_revision,
                                        position,
                                    }),
                                    None => Outcome::Failed(StoreError::invalid(
                                        "idempotent append lost its original",
                                    )),
                                };
                                replies.push((reply, outcome));
                            }
                            Ok(Plan::AlreadyWritten(result)) => {
                                replies.push((reply, Outcome::Done(result)));
                            }
                            Ok(Plan::Write { records, primary }) => {
                                if let Err(e) = overlay.record(&records) {
                                    replies.push((reply, Outcome::Failed(e)));
                                    continue;
                                }
                                let count = records.len() as u64;
                                frames.push(FramePlan {
                                    records,
                                    imported_times: None,
                                    primary,
                                });
                                planned_positions += count;
                                replies.push((reply, Outcome::Frame(frames.len() - 1)));
                            }
                        }
                    }
                    Job::Import(events, reply) => match catalog::import_plan(&overlay, events) {
                        Ok((records, times)) => {
                            if let Err(e) = overlay.record(&records) {
                                replies.push((reply, Outcome::Failed(e)));
                                continue;
                            }
                            let primary = records.len();
                            planned_positions += records.len() as u64;
                            frames.push(FramePlan {
                                records,
                                imported_times: Some(times),
                                primary,
                            });
                            replies.push((reply, Outcome::Frame(frames.len() - 1)));
                        }
                        Err(e) => replies.push((reply, Outcome::Failed(e))),
                    },
                }
            }
            debug_assert!(planned_positions >= self.next_position);
        }
        let acknowledged = (self.segment.number, self.segment.len);
        let written = if frames.is_empty() {
            Ok(Vec::new())
        } else {
            self.write_frames(&frames, now)
        };
        let results = match written {
            Ok(results) => results,
            Err(e) => {
                let reason = format!(
                    "{e}; none of the appends written with it was acknowledged, and the store \
                     refuses writes until it has recovered (it tries again by itself)"
                );
                self.refuse(reason.clone(), acknowledged);
                for (reply, outcome) in replies {
                    let answer = match outcome {
                        Outcome::Failed(e) => Err(e),
                        Outcome::Frame(_) | Outcome::Done(_) => {
                            Err(StoreError::Poisoned(reason.clone()))
                        }
                    };
                    let _ = reply.send(answer);
                }
                return;
            }
        };
        for (reply, outcome) in replies {
            let answer = match outcome {
                Outcome::Failed(e) => Err(e),
                Outcome::Frame(frame) => results
                    .get(frame)
                    .copied()
                    .ok_or_else(|| StoreError::invalid("frame result missing")),
                Outcome::Done(result) => Ok(result),
            };
            let _ = reply.send(answer);
        }
    }

    /// Writes the frames, syncs, then publishes them. Returns each frame's result.
    fn write_frames(
        &mut self,
        frames: &[FramePlan],
        now: u64,
    ) -> Result<Vec<AppendResult>, WriteError> {
        let records_total: usize = frames.iter().map(|f| f.records.len()).sum();
        let mut buf: Vec<u8> = Vec::with_capacity(self.group_bytes_hint);
        let mut locations: Vec<(u32, u64)> = Vec::with_capacity(records_total);
        let mut changes: Vec<Change> = Vec::with_capacity(records_total);
        let mut results = Vec::with_capacity(frames.len());
        let mut position = self.next_position;
        for frame in frames {
            let size = FRAME_HEADER_BYTES as u64
                + frame
                    .records
                    .iter()
                    .map(|r| {
                        (RECORD_FIXED_BYTES
                            + r.stream.as_str().len()
                            + r.event.event_type.len()
                            + r.event.data.len()
                            + r.event.metadata.len()) as u64
                    })
                    .sum::<u64>();
            let used = self.segment.len + buf.len() as u64;
            if used + size > self.segment_bytes_limit
                && used > crate::log::format::SEGMENT_HEADER_BYTES as u64
            {
                self.write_and_sync(&buf)?;
                buf.clear();
                self.roll(position)?;
            }
            let base = self.segment.len;
            let first_position = position;
            let mut builder = FrameBuilder::begin(&mut buf, first_position);
            for (i, record) in frame.records.iter().enumerate() {
                let recorded_at_us = frame
                    .imported_times
                    .as_ref()
                    .and_then(|times| times.get(i).copied())
                    .unwrap_or(now);
                let at = builder.push(
                    &mut buf,
                    &RecordRef {
                        stream: record.stream.as_str(),
                        revision: record.revision,
                        recorded_at_us,
                        id: record.event.id,
                        content_type: record.event.content_type,
                        event_type: &record.event.event_type,
                        data: &record.event.data,
                        metadata: &record.event.metadata,
                        tags: &record.event.tags,
                    },
                );
                locations.push((self.segment.number, base + at as u64));
                catalog::push_changes(
                    &mut changes,
                    &record.stream,
                    record.revision,
                    position,
                    record.event.id,
                    &record.event.event_type,
                    &record.event.data,
                )?;
                position += 1;
            }
            builder.finish(&mut buf);
            results.push(catalog::append_result(
                &frame.records,
                frame.primary,
                first_position,
            ));
        }
        self.group_bytes_hint = self
            .group_bytes_hint
            .max(buf.len().min(crate::writer::GROUP_BYTES_MAX));
        debug_assert!(
            locations.windows(2).all(|w| matches!(w, [a, b] if a < b)),
            "records are laid out in position order"
        );
        self.write_and_sync(&buf)?;
        // Durable: now make it visible.
        {
            let mut index = self.shared.index.write();
            for (segment, offset) in locations {
                index.locations.push(pack(segment, offset));
            }
            for change in changes {
                index.catalog.apply(change)?;
            }
            for (at, record) in (self.next_position..).zip(frames.iter().flat_map(|f| &f.records)) {
                index.tags.add(
                    at,
                    record.stream.is_system(),
                    &record.event.event_type,
                    &record.event.tags,
                )?;
            }
            debug_assert_eq!(index.locations.len() as u64, position);
        }
        debug_assert!(
            position >= self.next_position,
            "positions strictly increase"
        );
        self.next_position = position;
        self.shared.head.send_replace(position);
        Ok(results)
    }

    /// Writes `buf` at the end of the segment and makes it durable.
    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), WriteError> {
        let segment = self.segment.number;
        let faults = &self.shared.faults;
        Faults::take(&faults.writes, "write")
            .and_then(|()| self.segment.write(buf))
            .map_err(|source| WriteError::Write { segment, source })?;
        Faults::take(&faults.syncs, "fdatasync")
            .and_then(|()| self.segment.sync())
            .map_err(|source| WriteError::Sync { segment, source })
    }

    /// Refuses writes from now on, for `reason`, until a recovery to the acknowledged end of
    /// the log (`segment`, `len`) succeeds.
    fn refuse(&mut self, reason: String, (segment, len): (u32, u64)) {
        error!(%reason, "a write failed; the store refuses writes until it has recovered");
        *self.shared.poisoned.lock() = Some(reason);
        self.recovery = Some(Recovery {
            segment,
            len,
            attempts: 0,
            next_attempt: Instant::now() + RECOVERY_BACKOFF_MIN,
        });
    }

    /// Tries to take writes again after a failed one, as an open would, without trusting
    /// what the page cache holds: removes the segments started after the acknowledged end,
    /// cuts the last one back to it (durably), reads it back from disk and checks that it holds
    /// exactly the acknowledged events, and writes, syncs and cuts off a probe to find out
    /// whether the disk takes writes again. On success the store accepts writes; otherwise it
    /// tries again later, waiting twice as long each time (up to [`RECOVERY_BACKOFF_MAX`]).
    pub fn try_recover(&mut self) {
        let Some(mut recovery) = self.recovery.take() else {
            return;
        };
        match self.recover_to(recovery.segment, recovery.len) {
            Ok(()) => {
                *self.shared.poisoned.lock() = None;
                info!(
                    attempts = recovery.attempts + 1,
                    next_position = self.next_position,
                    "the store recovered from the failed write and accepts writes again"
                );
            }
            Err(e) => {
                if recovery.attempts == 0 {
                    warn!(error = %e, "the store cannot take writes yet; it keeps trying");
                } else {
                    tracing::debug!(error = %e, attempts = recovery.attempts, "not recovered yet");
                }
                recovery.attempts += 1;
                let backoff = RECOVERY_BACKOFF_MIN
                    .saturating_mul(1 << recovery.attempts.min(16))
                    .min(RECOVERY_BACKOFF_MAX);
                recovery.next_attempt = Instant::now() + backoff;
                self.recovery = Some(recovery);
            }
        }
    }

    fn recover_to(&mut self, number: u32, len: u64) -> Result<(), StoreError> {
        let log_dir = self.shared.segments.log_dir.clone();
        // Segments started after the acknowledged end hold nothing acknowledged.
        self.shared.segments.remove_after(number);
        let mut removed = false;
        for entry in std::fs::read_dir(&log_dir)? {
            let path = entry?.path();
            let later = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > number);
            if later {
                std::fs::remove_file(&path)?;
                removed = true;
            }
        }
        if removed {
            crate::log::sync_dir(&log_dir)?;
        }
        let path = crate::log::segment_path(&log_dir, number);
        let mut writer = SegmentWriter::open(&path, number, len)?;
        // Read back from disk: the segment must hold exactly what was acknowledged.
        let (segment, on_disk) = crate::log::Segment::open(path)?;
        if on_disk != len {
            return Err(StoreError::invalid(format!(
                "segment {number} is {on_disk} bytes after it was cut to {len}"
            )));
        }
        let first_position = segment.first_position;
        let end = crate::log::recovery::replay(
            &[(segment, on_disk)],
            crate::log::recovery::Start {
                segment: number,
                offset: SEGMENT_HEADER_BYTES as u64,
                next_position: first_position,
            },
            |_, _, _, _| Ok(()),
            |_, _| {},
            |_| {},
        )?;
        if end.next_position != self.next_position || end.len != len || end.cut_bytes != 0 {
            return Err(StoreError::invalid(format!(
                "segment {number} read back ends at position {} ({} bytes), not at the \
                 acknowledged {} ({len} bytes)",
                end.next_position, end.len, self.next_position
            )));
        }
        let faults = &self.shared.faults;
        Faults::take(&faults.writes, "write")
            .and_then(|()| Faults::take(&faults.syncs, "fdatasync"))
            .and_then(|()| writer.probe(PROBE_BYTES))?;
        self.segment = writer;
        Ok(())
    }

    /// Closes the segment being written, if it holds any frame, and starts the next one: what
    /// was written so far is in sealed segments, which a scavenge may rewrite.
    fn seal(&mut self) -> Result<(), StoreError> {
        if let Some(reason) = self.shared.poisoned.lock().as_ref() {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        if self.segment.len <= SEGMENT_HEADER_BYTES as u64 {
            return Ok(());
        }
        let acknowledged = (self.segment.number, self.segment.len);
        self.roll(self.next_position).map_err(|e| {
            let reason = format!(
                "{e}; the store refuses writes until it has recovered (it tries again by itself)"
            );
            self.refuse(reason.clone(), acknowledged);
            StoreError::Poisoned(reason)
        })
    }

    fn roll(&mut self, first_position: u64) -> Result<(), WriteError> {
        let number = self.segment.number + 1;
        let log_dir = self.shared.segments.log_dir.clone();
        let roll = |source| WriteError::Roll {
            segment: number,
            source,
        };
        self.segment = SegmentWriter::create(&log_dir, number, first_position).map_err(roll)?;
        let (segment, _) =
            crate::log::Segment::open(crate::log::segment_path(&log_dir, number)).map_err(roll)?;
        self.shared.segments.push(segment);
        Ok(())
    }
}

/// What the writer thread takes: jobs to commit, and requests to seal the segment.
pub enum Request {
    Job(Job),
    Seal(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
}

/// The position a record planned earlier in the group will get.
fn planned_position(
    frames: &[FramePlan],
    mut position: u64,
    stream: &factum_core::StreamName,
    revision: u64,
) -> Option<u64> {
    for frame in frames {
        for record in &frame.records {
            if record.stream == *stream && record.revision == revision {
                return Some(position);
            }
            position += 1;
        }
    }
    None
}

/// The committed log as the writer's plans see it: ids read from the segments, DCB matches
/// from the tag index.
struct Committed<'a> {
    index: &'a Index,
    segments: &'a crate::log::Segments,
}

impl CommittedLog for Committed<'_> {
    fn id_at(&self, position: u64) -> Result<Option<uuid::Uuid>, StoreError> {
        let location = self
            .index
            .locations
            .get(position as usize)
            .ok_or_else(|| StoreError::invalid(format!("no event at {position}")))?;
        if *location == GONE {
            return Ok(None);
        }
        self.segments.read_id(*location).map(Some)
    }

    fn next_position(&self) -> u64 {
        self.index.locations.len() as u64
    }

    fn first_match(
        &self,
        query: &factum_core::Query,
        after: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self
            .index
            .tags
            .first_match(query, after, self.index.locations.len() as u64))
    }
}
