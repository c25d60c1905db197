//! Full verification: every frame and record of the log, every checksum, and the index's
//! agreement with the log (record locations, the streams' revisions, and the tag index, which
//! is rebuilt from the records read and compared).

use factum_core::StoreError;
use factum_core::backend::catalog::GONE;
use factum_core::backend::tag_index::TagIndex;

use crate::Shared;
use crate::log::format::SEGMENT_HEADER_BYTES;
use crate::log::{FrameReader, pack};

/// What a verification read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files read.
    pub segments: u64,
    /// Frames (appends) read.
    pub frames: u64,
    /// Events read.
    pub events: u64,
    /// Positions whose events a scavenge removed.
    pub removed: u64,
    /// Bytes read.
    pub bytes: u64,
}

pub(crate) fn verify(
    shared: &Shared,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, StoreError> {
    // A scavenge replaces segments: verification waits for it and keeps it out.
    let _scavenge = shared.scavenging.lock();
    // Only what was durable when verification began is checked; later appends are not.
    let head = *shared.head.borrow();
    let segments = shared.segments.all();
    let mut lengths = Vec::with_capacity(segments.len());
    for segment in &segments {
        lengths.push(std::fs::metadata(&segment.path)?.len());
    }
    let total: u64 = lengths.iter().sum();
    let mut report = VerifyReport::default();
    let mut next_position = 0u64;
    let mut tags = TagIndex::new();
    for (segment, len) in segments.iter().zip(lengths) {
        report.segments += 1;
        segment.expect_first_position(next_position)?;
        let mut reader = FrameReader::new(segment, len, SEGMENT_HEADER_BYTES as u64);
        report.bytes += SEGMENT_HEADER_BYTES as u64;
        while next_position < head {
            let Some(frame) = reader.next_whole()? else {
                break;
            };
            frame.expect_first_position(segment, next_position)?;
            let records = frame.records(segment)?;
            let index = shared.index.read();
            if frame.header.is_gap() {
                // Positions a scavenge removed: the index must know them as removed.
                let first = frame.header.first_position;
                for position in first..first + u64::from(frame.header.count) {
                    if index.locations.get(position as usize) != Some(&GONE) {
                        return Err(segment.corrupted(
                            frame.offset,
                            format!("the index has an event at position {position}, which the log removed"),
                        ));
                    }
                }
                tags.advance(first + u64::from(frame.header.count));
                report.removed += u64::from(frame.header.count);
            }
            for (offset, event) in records {
                let indexed = index.locations.get(event.position as usize).copied();
                if indexed != Some(pack(segment.number, offset)) {
                    return Err(segment.corrupted(
                        offset,
                        format!("the index does not point at position {}", event.position),
                    ));
                }
                let stream_position = index
                    .catalog
                    .stream(&event.stream)
                    .and_then(|s| s.positions.get(event.revision as usize).copied());
                if stream_position != Some(event.position) {
                    return Err(segment.corrupted(
                        offset,
                        format!(
                            "the index does not have revision {} of '{}' at position {}",
                            event.revision, event.stream, event.position
                        ),
                    ));
                }
                tags.add(
                    event.position,
                    event.stream.is_system(),
                    &event.event_type,
                    &event.tags,
                )?;
                report.events += 1;
            }
            drop(index);
            next_position += u64::from(frame.header.count);
            report.frames += 1;
            report.bytes += frame.bytes.len() as u64;
            progress(report.bytes, total);
        }
    }
    if next_position < head {
        return Err(StoreError::Corrupted {
            file: shared.segments.log_dir.clone(),
            offset: 0,
            reason: format!("the log holds {next_position} events, the index {head}"),
        });
    }
    let mut indexed = shared.index.read().tags.clone();
    indexed.truncate(head);
    if indexed != tags {
        return Err(StoreError::Corrupted {
            file: shared.dir.join(crate::index::INDEX_FILE),
            offset: 0,
            reason: "the tag index does not agree with the tags of the log's events".into(),
        });
    }
    progress(total, total);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use factum_core::{EventStore, ExpectedState, NewEvent, StoreError, StreamName};

    use crate::{Engine, EngineOptions};

    #[tokio::test]
    async fn a_tag_index_that_disagrees_with_the_log_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let events = (0..5)
            .map(|n| {
                NewEvent::json("Noted", &n)
                    .unwrap()
                    .with_tags([format!("n:{}", n % 2)])
            })
            .collect();
        engine
            .append(&StreamName::user("s").unwrap(), ExpectedState::Any, events)
            .await
            .unwrap();
        engine.verify(|_, _| {}).unwrap();
        // The index says one event has a tag it does not have.
        {
            let mut index = engine.inner.shared.index.write();
            let mut wrong = factum_core::backend::tag_index::TagIndex::new();
            for p in 0..5 {
                wrong.add(p, false, "Noted", &["n:0".to_owned()]).unwrap();
            }
            index.tags = wrong;
        }
        let error = engine.verify(|_, _| {}).unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupted { reason, .. } if reason.contains("tag index")),
            "{error}"
        );
    }
}
