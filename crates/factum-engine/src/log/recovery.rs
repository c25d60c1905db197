//! Opening the log after any kind of stop: find the segments, replay frames from a starting
//! point, cut a torn tail, and refuse to go on past corruption.
//!
//! A frame that cannot be read is a *torn tail* only when it is in the last segment and no valid
//! frame follows it: that is what a crash in the middle of an unsynced write leaves, and nothing
//! in it was acknowledged. Anything else is corruption and is reported with file and offset.

use std::path::Path;

use factum_core::StoreError;
use tracing::warn;

use super::format::{FRAME_HEADER_BYTES, FRAME_MAGIC, FrameHeader, SEGMENT_HEADER_BYTES};
use super::{FrameReader, Segment, segment_path};

/// Where a replay starts.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    pub segment: u32,
    pub offset: u64,
    pub next_position: u64,
}

/// Where the log ends after a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    pub segment: u32,
    pub len: u64,
    pub next_position: u64,
    /// Bytes of a torn tail that were cut off.
    pub cut_bytes: u64,
}

/// Opens every segment of the log, in order. A last segment left shorter than its header by a
/// crash while it was being created is removed. Returns the segments with their lengths, and
/// how many were removed (reported like a torn tail: without a saved index that vouches for the
/// segment, a segment cut to less than its header looks the same).
pub fn open_segments(log_dir: &Path) -> Result<(Vec<(Segment, u64)>, u64), StoreError> {
    open_segments_as(log_dir, true)
}

/// [`open_segments`], removing what it finds unfinished only when `repair` (a store opened
/// read-only leaves it and reads past it).
pub fn open_segments_as(
    log_dir: &Path,
    repair: bool,
) -> Result<(Vec<(Segment, u64)>, u64), StoreError> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(log_dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(super::SCAVENGE_SUFFIX) {
            // A segment a scavenge was writing when it stopped: the original is still in place.
            if repair {
                warn!(file = name, "removing an unfinished scavenge's segment");
                std::fs::remove_file(log_dir.join(name))?;
            }
            continue;
        }
        if let Some(number) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    let mut segments = Vec::with_capacity(numbers.len());
    let mut removed = 0;
    for (i, &number) in numbers.iter().enumerate() {
        let path = segment_path(log_dir, number);
        let is_last = i + 1 == numbers.len();
        if let Some((previous, _)) = segments.last() {
            let previous: &Segment = previous;
            if previous.number + 1 != number {
                return Err(StoreError::Corrupted {
                    file: path,
                    offset: 0,
                    reason: format!("segment {} is missing", previous.number + 1),
                });
            }
        }
        let len = std::fs::metadata(&path)?.len();
        if is_last && len <= SEGMENT_HEADER_BYTES as u64 {
            // A header is written and synced before anything else, so a segment this short
            // with a bad header never held an acknowledged event.
            if let Err(StoreError::Corrupted { .. }) = Segment::open(path.clone()) {
                if !repair {
                    removed += 1;
                    continue;
                }
                warn!(
                    file = %path.display(),
                    bytes = len,
                    "removing a last segment shorter than its header (an interrupted creation)"
                );
                std::fs::remove_file(&path)?;
                removed += 1;
                super::sync_dir(log_dir)?;
                continue;
            }
        }
        let (segment, len) = Segment::open(path)?;
        if segment.number != number {
            return Err(segment.corrupted(0, format!("header says segment {}", segment.number)));
        }
        segments.push((segment, len));
    }
    Ok((segments, removed))
}

/// Replays every frame from `start` to the end of the log, handing each record (with the file
/// offset where it starts and its position) to `apply`, and each gap frame's first position
/// and count (positions a scavenge removed) to `gap`. Cuts a torn tail off the last segment.
pub fn replay(
    segments: &[(Segment, u64)],
    start: Start,
    mut apply: impl FnMut(&Segment, u64, u64, super::format::RecordView<'_>) -> Result<(), StoreError>,
    mut gap: impl FnMut(u64, u32),
    mut progress: impl FnMut(u64),
) -> Result<End, StoreError> {
    let mut next_position = start.next_position;
    let mut end = End {
        segment: start.segment,
        len: start.offset,
        next_position,
        cut_bytes: 0,
    };
    let first = segments.iter().position(|(s, _)| s.number == start.segment);
    let Some(first) = first else {
        if segments.is_empty() && start.next_position == 0 {
            return Ok(end);
        }
        return Err(StoreError::Corrupted {
            file: segments
                .first()
                .map(|(s, _)| s.path.clone())
                .unwrap_or_default(),
            offset: start.offset,
            reason: format!(
                "segment {} that the index points to is missing",
                start.segment
            ),
        });
    };
    for (i, (segment, len)) in segments.iter().enumerate().skip(first) {
        let is_last = i + 1 == segments.len();
        let offset = if i == first {
            start.offset
        } else {
            SEGMENT_HEADER_BYTES as u64
        };
        if offset > *len {
            return Err(segment.corrupted(
                *len,
                format!("the log ends at {len} but the index says it reaches {offset}"),
            ));
        }
        if offset == SEGMENT_HEADER_BYTES as u64 {
            segment.expect_first_position(next_position)?;
        }
        let mut reader = FrameReader::new(segment, *len, offset);
        loop {
            let at = reader.offset;
            match reader.next()? {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    frame.expect_first_position(segment, next_position)?;
                    if frame.header.is_gap() {
                        gap(next_position, frame.header.count);
                    }
                    frame.visit_records(segment, |offset, position, record| {
                        apply(segment, offset, position, record)
                    })?;
                    next_position += u64::from(frame.header.count);
                    progress(frame.bytes.len() as u64);
                }
                Err(reason) => {
                    if !is_last {
                        return Err(segment.corrupted(at, reason));
                    }
                    if let Some(valid) = valid_frame_after(segment, *len, at + 1)? {
                        return Err(segment.corrupted(
                            at,
                            format!("{reason}; a valid frame follows at offset {valid}"),
                        ));
                    }
                    warn!(
                        file = %segment.path.display(),
                        offset = at,
                        bytes = len - at,
                        %reason,
                        "cutting off a torn tail left by an interrupted write (never acknowledged)"
                    );
                    end.cut_bytes = len - at;
                    end.segment = segment.number;
                    end.len = at;
                    end.next_position = next_position;
                    return Ok(end);
                }
            }
        }
        end.segment = segment.number;
        end.len = reader.offset;
    }
    end.next_position = next_position;
    Ok(end)
}

/// The offset of a complete frame with a good checksum at or after `from`, if there is one.
pub fn valid_frame_after(
    segment: &Segment,
    len: u64,
    from: u64,
) -> Result<Option<u64>, StoreError> {
    const WINDOW_BYTES: usize = 4 * 1024 * 1024;
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut window_start = from;
    while window_start + FRAME_HEADER_BYTES as u64 <= len {
        let window = segment.read(window_start, WINDOW_BYTES + FRAME_HEADER_BYTES)?;
        let scan_to = window.len().saturating_sub(FRAME_HEADER_BYTES) + 1;
        for i in 0..scan_to.min(WINDOW_BYTES) {
            if window.get(i..i + 4) != Some(magic.as_slice()) {
                continue;
            }
            let candidate = window_start + i as u64;
            let Ok(header) = FrameHeader::decode(window.get(i..).unwrap_or_default()) else {
                continue;
            };
            if candidate + header.total_len() as u64 > len {
                continue;
            }
            let bytes = segment.read(candidate, header.total_len())?;
            if header.check(&bytes).is_ok() {
                return Ok(Some(candidate));
            }
        }
        window_start += WINDOW_BYTES as u64;
    }
    Ok(None)
}
