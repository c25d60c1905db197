//! Scavenging the embedded store: each sealed segment that holds events hidden for good
//! (`factum_core::hidden_for_good`) is written again without them, to a new file that is
//! synced and then renamed into place, so a crash at any moment leaves the old segment or the
//! new one, never half of either.
//!
//! Kept records are copied byte for byte (their checksums stay); the removed ones become gap
//! frames, which keep their positions taken, so positions never move and nothing else in the
//! log changes. The rename, the new segment's record locations and the catalog's removed
//! revisions are put in place under the index's write lock, all at once: a read sees the old
//! segment with its locations or the new one with its own. The saved index, which points into
//! the old file, is removed before each rename (it is saved again later, or rebuilt from the
//! log on the next open). The segment being written is never touched, so appends go on.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use factum_core::backend::catalog::GONE;
use factum_core::{ScavengeOptions, ScavengeReport, StoreError, hidden_for_good};

use crate::Shared;
use crate::index::INDEX_FILE;
use crate::log::format::{FrameBuilder, SEGMENT_HEADER_BYTES, encode_gap};
use crate::log::{FrameReader, SCAVENGE_SUFFIX, Segment, pack, segment_path, sync_dir};

/// What one segment's rewrite changes in the index.
struct Rewrite {
    /// (position, new location) of every kept record.
    kept: Vec<(u64, u64)>,
    /// Positions removed now, in order, with the stream and revision they held.
    removed: Vec<(u64, String, u64)>,
}

/// A run of positions to write as one gap frame.
struct Gap {
    first: u64,
    count: u32,
}

pub(crate) fn scavenge(
    shared: &Shared,
    options: &ScavengeOptions,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<ScavengeReport, StoreError> {
    let Some(_running) = shared.scavenging.try_lock() else {
        return Err(StoreError::Busy(
            "a scavenge or a verification of this store is already running".into(),
        ));
    };
    let now = factum_core::now_micros();
    let bound = options.below.unwrap_or(u64::MAX);
    let segments = shared.segments.all();
    let mut lengths = Vec::with_capacity(segments.len());
    for segment in &segments {
        lengths.push(std::fs::metadata(&segment.path)?.len());
    }
    let mut report = ScavengeReport {
        below: options.below,
        bytes_before: lengths.iter().sum(),
        ..ScavengeReport::default()
    };
    // Every segment but the last is sealed: the writer only appends to the last.
    let sealed = segments.len().saturating_sub(1);
    let total: u64 = lengths.iter().take(sealed).sum();
    let mut done = 0u64;
    let mut removed_positions: Vec<u64> = Vec::new();
    progress(0, total);
    let mut rewrite_all = || -> Result<(), StoreError> {
        for (segment, len) in segments.iter().zip(&lengths).take(sealed) {
            if segment.first_position >= bound {
                break;
            }
            let tmp = shared
                .segments
                .log_dir
                .join(format!("{:010}{SCAVENGE_SUFFIX}", segment.number));
            let rewrite = rewrite_segment(shared, segment, *len, &tmp, bound, now, &mut report)?;
            done += len;
            progress(done, total);
            let Some(rewrite) = rewrite else {
                continue;
            };
            install(shared, segment, &tmp, &rewrite)?;
            report.segments_rewritten += 1;
            report.events_removed += rewrite.removed.len() as u64;
            removed_positions.extend(rewrite.removed.iter().map(|(p, _, _)| *p));
        }
        Ok(())
    };
    let rewritten = rewrite_all();
    // DCB reads and conditions no longer see the removed events: also those of the segments
    // put in place before a failure.
    shared.index.write().tags.remove(&removed_positions);
    rewritten?;
    report.bytes_after = shared
        .segments
        .all()
        .iter()
        .map(|s| std::fs::metadata(&s.path).map(|m| m.len()))
        .sum::<Result<u64, _>>()?;
    progress(total, total);
    Ok(report)
}

/// Writes `segment` again to `tmp` without the events hidden for good below `bound`, and
/// syncs it. `None` (and no file) when it holds none that are not removed already.
fn rewrite_segment(
    shared: &Shared,
    segment: &Arc<Segment>,
    len: u64,
    tmp: &std::path::Path,
    bound: u64,
    now: u64,
    report: &mut ScavengeReport,
) -> Result<Option<Rewrite>, StoreError> {
    // Decide first: most segments of a long-lived store have nothing new to remove.
    let mut decisions: Vec<bool> = Vec::new();
    let mut any = false;
    let mut reader = FrameReader::new(segment, len, SEGMENT_HEADER_BYTES as u64);
    while let Some(frame) = reader.next_whole()? {
        let index = shared.index.read();
        frame.visit_records(segment, |_, position, record| {
            report.events_examined += 1;
            let gone = position < bound
                && index
                    .catalog
                    .stream_named(record.stream)
                    .is_some_and(|state| {
                        hidden_for_good(
                            record.stream,
                            state,
                            record.revision,
                            record.recorded_at_us,
                            now,
                        )
                    });
            any |= gone;
            decisions.push(gone);
            Ok(())
        })?;
    }
    if !any {
        return Ok(None);
    }

    let mut sink = Sink {
        out: BufWriter::with_capacity(1 << 20, File::create(tmp)?),
        written: 0,
        segment: segment.number,
    };
    let header = segment.read(0, SEGMENT_HEADER_BYTES)?;
    sink.out.write_all(&header)?;
    sink.written = header.len() as u64;
    let mut rewrite = Rewrite {
        kept: Vec::new(),
        removed: Vec::new(),
    };
    let mut gap: Option<Gap> = None;
    let mut decided = decisions.into_iter();
    let mut frame_buf: Vec<u8> = Vec::new();
    let mut reader = FrameReader::new(segment, len, SEGMENT_HEADER_BYTES as u64);
    while let Some(frame) = reader.next_whole()? {
        if frame.header.is_gap() {
            sink.extend_gap(&mut gap, frame.header.first_position, frame.header.count)?;
            continue;
        }
        // Kept records of one frame stay together, in one frame of their own.
        let mut kept: Option<FrameBuilder> = None;
        let mut kept_at: Vec<(u64, usize)> = Vec::new();
        frame.visit_records(segment, |offset, position, record| {
            if decided.next().unwrap_or(false) {
                sink.finish_frame(&mut kept, &mut frame_buf, &mut kept_at, &mut rewrite)?;
                sink.extend_gap(&mut gap, position, 1)?;
                rewrite
                    .removed
                    .push((position, record.stream.to_owned(), record.revision));
                return Ok(());
            }
            sink.flush_gap(&mut gap)?;
            let builder = kept.get_or_insert_with(|| FrameBuilder::begin(&mut frame_buf, position));
            let from = (offset - frame.offset) as usize;
            let bytes = frame
                .bytes
                .get(from..from + record.len)
                .ok_or_else(|| segment.corrupted(offset, "record runs past its frame"))?;
            let at = builder.push_raw(&mut frame_buf, bytes);
            kept_at.push((position, at));
            Ok(())
        })?;
        sink.finish_frame(&mut kept, &mut frame_buf, &mut kept_at, &mut rewrite)?;
    }
    sink.flush_gap(&mut gap)?;
    let file = sink.out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Some(rewrite))
}

/// Where the rewritten segment's bytes go, and how many were written.
struct Sink<W> {
    out: W,
    written: u64,
    segment: u32,
}

impl<W: Write> Sink<W> {
    /// Adds `count` positions from `first` to the gap being collected (writing the gap first
    /// when they do not follow it or its count would overflow).
    fn extend_gap(
        &mut self,
        gap: &mut Option<Gap>,
        first: u64,
        count: u32,
    ) -> Result<(), StoreError> {
        if let Some(open) = gap
            && (open.first + u64::from(open.count) != first
                || open.count.checked_add(count).is_none())
        {
            self.flush_gap(gap)?;
        }
        match gap {
            Some(open) => open.count += count,
            None => *gap = Some(Gap { first, count }),
        }
        Ok(())
    }

    fn flush_gap(&mut self, gap: &mut Option<Gap>) -> Result<(), StoreError> {
        if let Some(open) = gap.take() {
            let mut buf = Vec::with_capacity(24);
            encode_gap(&mut buf, open.first, open.count);
            self.out.write_all(&buf)?;
            self.written += buf.len() as u64;
        }
        Ok(())
    }

    /// Writes the frame of kept records being built, noting where each record now is.
    fn finish_frame(
        &mut self,
        kept: &mut Option<FrameBuilder>,
        frame_buf: &mut Vec<u8>,
        kept_at: &mut Vec<(u64, usize)>,
        rewrite: &mut Rewrite,
    ) -> Result<(), StoreError> {
        let Some(builder) = kept.take() else {
            return Ok(());
        };
        builder.finish(frame_buf);
        for (position, at) in kept_at.drain(..) {
            rewrite
                .kept
                .push((position, pack(self.segment, self.written + at as u64)));
        }
        self.out.write_all(frame_buf)?;
        self.written += frame_buf.len() as u64;
        frame_buf.clear();
        Ok(())
    }
}

/// Puts the rewritten segment in place: under the index's write lock, the saved index goes,
/// the new file is renamed over the old one, and the locations and catalog follow it.
fn install(
    shared: &Shared,
    segment: &Segment,
    tmp: &std::path::Path,
    rewrite: &Rewrite,
) -> Result<(), StoreError> {
    let log_dir = &shared.segments.log_dir;
    let path = segment_path(log_dir, segment.number);
    let mut index = shared.index.write();
    match std::fs::remove_file(shared.dir.join(INDEX_FILE)) {
        Ok(()) => sync_dir(&shared.dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::rename(tmp, &path)?;
    // From here the file on disk is the new one: if it cannot be taken in, the index in memory
    // (which points into the old one) must never be saved, so the store stops taking writes
    // until it is reopened (and rebuilds its index from the log).
    let taken_in = sync_dir(log_dir)
        .map_err(StoreError::from)
        .and_then(|()| Segment::open(path.clone()))
        .and_then(|(rewritten, _)| {
            if rewritten.first_position != segment.first_position
                || rewritten.number != segment.number
            {
                return Err(rewritten.corrupted(0, "the rewritten segment's header changed"));
            }
            Ok(rewritten)
        });
    let rewritten = match taken_in {
        Ok(rewritten) => rewritten,
        Err(e) => {
            let reason = format!("a scavenge could not take in {}: {e}", path.display());
            tracing::error!(%reason, "the store refuses writes until reopened");
            *shared.poisoned.lock() = Some(reason);
            return Err(e);
        }
    };
    shared.segments.replace(rewritten);
    for (position, location) in &rewrite.kept {
        if let Some(slot) = index.locations.get_mut(*position as usize) {
            *slot = *location;
        }
    }
    for (position, stream, revision) in &rewrite.removed {
        if let Some(slot) = index.locations.get_mut(*position as usize) {
            *slot = GONE;
        }
        index.catalog.mark_gone(stream, *revision);
    }
    Ok(())
}
