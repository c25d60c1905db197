//! Planning a write or an import against a [`View`]: the rules every backend applies.

use std::collections::HashMap;

use bytes::Bytes;
use uuid::Uuid;

use super::{
    CHECKPOINT_TYPE, Change, DELETED_TYPE, METADATA_TYPE, Plan, PlannedRecord, StreamSummary,
    TOMBSTONE_TYPE, View, WriteKind, WriteRequest,
};
use crate::{
    AppendResult, ContentType, ExpectedState, NewEvent, StoreError, StreamMetadata, StreamName,
};

/// Decodes the changes a record makes. System records whose data does not parse are an error:
/// they are written only by the store itself.
pub fn changes_of(
    stream: &StreamName,
    revision: u64,
    position: u64,
    id: Uuid,
    event_type: &str,
    data: &[u8],
) -> Result<Vec<Change>, StoreError> {
    let mut changes = Vec::with_capacity(2);
    push_changes(
        &mut changes,
        stream,
        revision,
        position,
        id,
        event_type,
        data,
    )?;
    Ok(changes)
}

/// [`changes_of`], added to `changes`.
pub fn push_changes(
    changes: &mut Vec<Change>,
    stream: &StreamName,
    revision: u64,
    position: u64,
    id: Uuid,
    event_type: &str,
    data: &[u8],
) -> Result<(), StoreError> {
    changes.push(Change::Appended {
        stream: stream.clone(),
        revision,
        position,
        id,
    });
    if !stream.is_system() {
        return Ok(());
    }
    let bad = |what: &str| {
        StoreError::invalid(format!(
            "system record '{event_type}' at position {position} has bad data: {what}"
        ))
    };
    if let Some(target) = stream.described_stream() {
        match event_type {
            METADATA_TYPE => {
                let metadata: StreamMetadata =
                    serde_json::from_slice(data).map_err(|e| bad(&e.to_string()))?;
                changes.push(Change::Metadata {
                    stream: target,
                    metadata,
                });
            }
            DELETED_TYPE => {
                let value: serde_json::Value =
                    serde_json::from_slice(data).map_err(|e| bad(&e.to_string()))?;
                let before = value
                    .get("deleted_before")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| bad("no deleted_before"))?;
                changes.push(Change::Deleted {
                    stream: target,
                    before,
                });
            }
            TOMBSTONE_TYPE => changes.push(Change::Tombstoned { stream: target }),
            _ => {}
        }
    } else if let (Some(consumer), CHECKPOINT_TYPE) = (stream.checkpoint_consumer(), event_type) {
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|e| bad(&e.to_string()))?;
        let position = value
            .get("position")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("no position"))?;
        changes.push(Change::Checkpoint {
            consumer: consumer.to_owned(),
            position,
        });
    }
    Ok(())
}

fn system_event(event_type: &str, data: serde_json::Value) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        content_type: ContentType::Json,
        data: Bytes::from(data.to_string()),
        metadata: Bytes::new(),
        tags: Vec::new(),
    }
}

/// Plans a write: checks the expected state, recognises an idempotent re-append, and lays out
/// the records to store (moving the request's events into them). Nothing is planned when it
/// fails.
pub fn plan(view: &impl View, request: &mut WriteRequest) -> Result<Plan, StoreError> {
    if let WriteKind::Dcb(append) = &mut request.kind {
        return plan_dcb(view, append);
    }
    let stream = &request.stream;
    let summary = view.summary(stream);
    if summary.tombstoned {
        return Err(StoreError::StreamDeleted(stream.to_string()));
    }
    if matches!(request.kind, WriteKind::CheckpointOnly) && request.checkpoint.is_none() {
        return Err(StoreError::invalid("a checkpoint write needs a checkpoint"));
    }
    let current = summary.current();
    let wrong = || StoreError::WrongExpectedRevision {
        stream: stream.to_string(),
        expected: request.expected,
        actual: current,
    };
    if let WriteKind::Append(events) = &request.kind
        && let Some(done) = idempotent(view, stream, &summary, request.expected, events)?
    {
        return Ok(done);
    }
    if !request.expected.holds(current) {
        return Err(wrong());
    }
    if let WriteKind::SetMetadataExpecting {
        metadata_stream, ..
    } = &request.kind
    {
        let metadata = stream.metadata_stream();
        let actual = view.summary(&metadata).current();
        if !metadata_stream.holds(actual) {
            return Err(StoreError::WrongExpectedRevision {
                stream: metadata.to_string(),
                expected: *metadata_stream,
                actual,
            });
        }
    }
    if let Some(checkpoint) = &request.checkpoint
        && let Some(stored) = view.checkpoint(&checkpoint.consumer)
        && checkpoint.position <= stored
    {
        return Err(StoreError::CheckpointBehind {
            consumer: checkpoint.consumer.clone(),
            stored,
            given: checkpoint.position,
        });
    }
    let mut records = Vec::new();
    match &mut request.kind {
        WriteKind::Append(events) => {
            records.reserve(events.len() + 1);
            for (offset, event) in std::mem::take(events).into_iter().enumerate() {
                records.push(PlannedRecord {
                    stream: stream.clone(),
                    revision: summary.next_revision + offset as u64,
                    event,
                });
            }
        }
        WriteKind::Delete => {
            if current.0.is_none() {
                return Err(StoreError::NotFound(stream.to_string()));
            }
            records.push(system_record(
                view,
                stream.metadata_stream(),
                DELETED_TYPE,
                serde_json::json!({ "deleted_before": summary.next_revision }),
            ));
        }
        WriteKind::Tombstone => records.push(system_record(
            view,
            stream.metadata_stream(),
            TOMBSTONE_TYPE,
            serde_json::json!({ "revision": current.0 }),
        )),
        WriteKind::CheckpointOnly => {}
        WriteKind::Dcb(_) => {
            return Err(StoreError::invalid("a DCB append is planned on its own"));
        }
        WriteKind::SetMetadata(metadata) | WriteKind::SetMetadataExpecting { metadata, .. } => {
            let data = serde_json::to_value(metadata)
                .map_err(|e| StoreError::invalid(format!("metadata does not serialise: {e}")))?;
            records.push(system_record(
                view,
                stream.metadata_stream(),
                METADATA_TYPE,
                data,
            ));
        }
    }
    debug_assert!(
        records
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.stream != b.stream || b.revision == a.revision + 1)),
        "a write's planned revisions of a stream are consecutive"
    );
    let primary = records.len();
    if let Some(checkpoint) = &request.checkpoint {
        records.push(system_record(
            view,
            StreamName::checkpoint_stream(&checkpoint.consumer)?,
            CHECKPOINT_TYPE,
            serde_json::json!({ "position": checkpoint.position }),
        ));
    }
    Ok(Plan::Write { records, primary })
}

/// Plans a DCB append: the expected states of its streams, then its condition, then lays out
/// its events in order. An idempotent retry (its events already written, as the last of the
/// first event's stream or as the first events that fail its condition) answers the original
/// result. Nothing is planned when it fails.
fn plan_dcb(view: &impl View, append: &mut crate::DcbAppend) -> Result<Plan, StoreError> {
    if let Some(done) = dcb_already_written(view, append)? {
        return Ok(Plan::AlreadyWritten(done));
    }
    for (stream, expected) in &append.expected {
        let summary = view.summary(stream);
        if summary.tombstoned {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        let actual = summary.current();
        if !expected.holds(actual) {
            return Err(StoreError::WrongExpectedRevision {
                stream: stream.to_string(),
                expected: *expected,
                actual,
            });
        }
    }
    // A position at or past the store's last event: no event is after it yet (but events
    // planned before this one in the same group at positions after it are).
    if let Some(condition) = &append.condition
        && let Some(position) =
            view.first_match(&condition.fail_if_events_match, condition.after)?
    {
        return Err(StoreError::ConditionFailed {
            after: condition.after,
            position,
        });
    }
    let mut next: HashMap<StreamName, u64> = HashMap::new();
    let mut records = Vec::with_capacity(append.events.len());
    for crate::DcbEvent { stream, event } in std::mem::take(&mut append.events) {
        let revision = match next.get_mut(&stream) {
            Some(next) => next,
            None => {
                let summary = view.summary(&stream);
                if summary.tombstoned {
                    return Err(StoreError::StreamDeleted(stream.to_string()));
                }
                next.entry(stream.clone()).or_insert(summary.next_revision)
            }
        };
        records.push(PlannedRecord {
            stream,
            revision: *revision,
            event,
        });
        *revision += 1;
    }
    let primary = records.len();
    Ok(Plan::Write { records, primary })
}

/// The original result of a DCB append whose events are already written, one after another:
/// found as the last events of its last event's stream, or where its condition first fails.
fn dcb_already_written(
    view: &impl View,
    append: &crate::DcbAppend,
) -> Result<Option<AppendResult>, StoreError> {
    let (Some(first), Some(last)) = (append.events.first(), append.events.last()) else {
        return Ok(None);
    };
    let count = append.events.len() as u64;
    let tail = view
        .last_position(&last.stream)
        .map(|end| (view.summary(&last.stream).last_id, end));
    let found = match &append.condition {
        Some(condition) => view.first_match(&condition.fail_if_events_match, condition.after)?,
        None => None,
    };
    'start: for start in dcb_retry_starts(append, tail, found) {
        if view.id_at_position(start)? != Some(first.event.id) {
            continue;
        }
        for (offset, event) in append.events.iter().enumerate().skip(1) {
            if view.id_at_position(start + offset as u64)? != Some(event.event.id) {
                continue 'start;
            }
        }
        return Ok(Some(AppendResult {
            first_revision: 0,
            last_revision: 0,
            position: start + count - 1,
        }));
    }
    Ok(None)
}

/// Where a DCB append's events may already be written, by an earlier try of it: its first
/// event's position in each case. `tail` is the last id and position of its last event's
/// stream (its events may be the last of that stream); `first_match` the first event after the
/// condition's position that matches its query (its events may be where the condition now
/// fails). A backend that loads ids for the comparison ([`plan`]) loads those from these
/// positions on, as many as the append has events.
pub fn dcb_retry_starts(
    append: &crate::DcbAppend,
    tail: Option<(Option<Uuid>, u64)>,
    first_match: Option<u64>,
) -> Vec<u64> {
    let count = append.events.len() as u64;
    let mut starts = Vec::new();
    if let (Some(last), Some((last_id, end))) = (append.events.last(), tail)
        && last_id == Some(last.event.id)
        && end + 1 >= count
    {
        starts.push(end + 1 - count);
    }
    if let (Some(condition), Some(found)) = (&append.condition, first_match)
        // The first of its events that matches the query is at `found`.
        && let Some(offset) = append.events.iter().position(|e| {
            condition
                .fail_if_events_match
                .matches(&e.stream, &e.event.event_type, &e.event.tags)
        })
        && found >= offset as u64
    {
        starts.push(found - offset as u64);
    }
    starts
}

fn system_record(
    view: &impl View,
    stream: StreamName,
    event_type: &str,
    data: serde_json::Value,
) -> PlannedRecord {
    let revision = view.summary(&stream).next_revision;
    PlannedRecord {
        stream,
        revision,
        event: system_event(event_type, data),
    }
}

/// The revisions whose ids an idempotent re-append of `count` events with `expected` compares
/// in a stream in the state `summary`: for an exact revision the ones right after it, for "no
/// stream" the first ones after the latest soft delete (or ever), for "any" and "exists" the
/// stream's last ones. The window may reach past the stream's end (then the events cannot be
/// there yet); a backend that loads ids for the comparison ([`plan`]) loads those of this window.
pub fn idempotency_window(
    summary: &StreamSummary,
    expected: ExpectedState,
    count: u64,
) -> std::ops::Range<u64> {
    let first = match expected {
        ExpectedState::Exact(revision) => revision.saturating_add(1),
        ExpectedState::NoStream => summary.deleted_before,
        ExpectedState::Any | ExpectedState::StreamExists => {
            summary.next_revision.saturating_sub(count)
        }
    };
    first..first.saturating_add(count)
}

/// Whether `events` were already appended by an earlier call with the same expected state:
/// the stream holds them, with their ids, in [`idempotency_window`] — and for "no stream" the
/// stream exists, for "any" and "exists" it ends with the last of them.
fn idempotent(
    view: &impl View,
    stream: &StreamName,
    summary: &StreamSummary,
    expected: ExpectedState,
    events: &[NewEvent],
) -> Result<Option<Plan>, StoreError> {
    let count = events.len() as u64;
    let Some(last) = events.last() else {
        return Ok(None);
    };
    let window = idempotency_window(summary, expected, count);
    let whole = window.end - window.start == count && window.end <= summary.next_revision;
    let holds = match expected {
        ExpectedState::Exact(_) => true,
        ExpectedState::NoStream => summary.current().0.is_some(),
        ExpectedState::Any | ExpectedState::StreamExists => summary.last_id == Some(last.id),
    };
    if !whole || !holds {
        return Ok(None);
    }
    for (revision, event) in window.clone().zip(events) {
        if view.id_at(stream, revision)? != Some(event.id) {
            return Ok(None);
        }
    }
    Ok(Some(Plan::AlreadyAppended {
        first_revision: window.start,
        last_revision: window.end - 1,
    }))
}

/// Checks that imported events continue their streams exactly (same revisions, no tombstoned
/// stream) and lays them out as records, with their recorded times beside them.
pub fn import_plan(
    view: &impl View,
    events: Vec<crate::RecordedEvent>,
) -> Result<(Vec<PlannedRecord>, Vec<u64>), StoreError> {
    let mut next: HashMap<StreamName, u64> = HashMap::new();
    let mut records = Vec::with_capacity(events.len());
    let mut times = Vec::with_capacity(events.len());
    for event in events {
        let expected = *next
            .entry(event.stream.clone())
            .or_insert_with(|| view.summary(&event.stream).next_revision);
        if view.summary(&event.stream).tombstoned {
            return Err(StoreError::StreamDeleted(event.stream.to_string()));
        }
        if event.revision != expected {
            return Err(StoreError::invalid(format!(
                "imported event {} of stream '{}' has revision {}, the stream's next revision is {expected}",
                event.id, event.stream, event.revision
            )));
        }
        next.insert(event.stream.clone(), expected + 1);
        times.push(event.recorded_at_us);
        records.push(PlannedRecord {
            stream: event.stream.clone(),
            revision: event.revision,
            event: event.to_new_event(),
        });
    }
    Ok((records, times))
}

/// The result of a planned write once its records have positions.
pub fn append_result(plan: &[PlannedRecord], primary: usize, first_position: u64) -> AppendResult {
    let first_revision = plan.first().map(|r| r.revision).unwrap_or(0);
    let last_revision = plan
        .get(primary.saturating_sub(1))
        .map(|r| r.revision)
        .unwrap_or(0);
    AppendResult {
        first_revision,
        last_revision,
        position: first_position + primary.saturating_sub(1) as u64,
    }
}
