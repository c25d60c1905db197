//! What a backend knows about its streams without reading events, and the rules every backend
//! applies to a write: expected-state checks, idempotent re-appends, deletes, tombstones,
//! metadata and checkpoints. The embedded engine and the in-memory store both use it, so the
//! rules live in one place.
//!
//! A write is *planned* against a [`View`] (what is committed plus what is already planned in the
//! same group commit), which yields the records to store; once they are durable each record's
//! [`Change`]s are applied to the [`Catalog`].

use std::collections::HashMap;

use bytes::Bytes;
use uuid::Uuid;

use crate::{
    AppendResult, Checkpoint, ContentType, CurrentRevision, Direction, ExpectedState, NewEvent,
    StoreError, StreamInfo, StreamMetadata, StreamName,
};

/// Event type of a metadata record in `$$name`.
pub const METADATA_TYPE: &str = "$metadata";
/// Event type of a soft-delete record in `$$name`.
pub const DELETED_TYPE: &str = "$deleted";
/// Event type of a tombstone record in `$$name`.
pub const TOMBSTONE_TYPE: &str = "$tombstone";
/// Event type of a checkpoint record in `$checkpoint-consumer`.
pub const CHECKPOINT_TYPE: &str = "$checkpoint";

/// The summary of a stream that write rules need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// The revision the next event gets (number of events ever written).
    pub next_revision: u64,
    /// Revisions below this were soft-deleted.
    pub deleted_before: u64,
    /// Tombstoned: never written again.
    pub tombstoned: bool,
    /// Id of the last event written.
    pub last_id: Option<Uuid>,
}

impl StreamSummary {
    /// The current revision: `None` when the stream does not exist (never written, or
    /// soft-deleted and not written since).
    pub fn current(&self) -> CurrentRevision {
        if self.next_revision > self.deleted_before {
            CurrentRevision(Some(self.next_revision - 1))
        } else {
            CurrentRevision(None)
        }
    }
}

/// Everything a backend knows of one stream.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// `positions[r]` is the position of revision `r`.
    pub positions: Vec<u64>,
    /// Revisions below this were soft-deleted.
    pub deleted_before: u64,
    /// Tombstoned.
    pub tombstoned: bool,
    /// Id of the last event written.
    pub last_id: Option<Uuid>,
    /// The latest metadata.
    pub metadata: Option<Box<StreamMetadata>>,
}

impl StreamState {
    /// Records the stream's next event; revisions must arrive in order.
    fn record(&mut self, revision: u64, position: u64, id: Uuid) -> Result<(), StoreError> {
        if revision != self.positions.len() as u64 {
            return Err(StoreError::invalid(format!(
                "record at position {position} has revision {revision}, expected {}",
                self.positions.len()
            )));
        }
        self.positions.push(position);
        self.last_id = Some(id);
        Ok(())
    }

    /// The summary the write rules need.
    pub fn summary(&self) -> StreamSummary {
        StreamSummary {
            next_revision: self.positions.len() as u64,
            deleted_before: self.deleted_before,
            tombstoned: self.tombstoned,
            last_id: self.last_id,
        }
    }
}

/// A write to plan.
#[derive(Clone, Debug)]
pub enum WriteKind {
    /// Append user events.
    Append(Vec<NewEvent>),
    /// Soft-delete.
    Delete,
    /// Tombstone.
    Tombstone,
    /// Record new metadata.
    SetMetadata(StreamMetadata),
    /// Only the request's checkpoint (its stream is the checkpoint stream).
    CheckpointOnly,
}

/// A write request: a kind, the stream it guards and the expected state of that stream.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    /// The stream the expected state is about.
    pub stream: StreamName,
    /// The expected state.
    pub expected: ExpectedState,
    /// What to write.
    pub kind: WriteKind,
    /// A checkpoint to store atomically with it.
    pub checkpoint: Option<Checkpoint>,
}

impl WriteRequest {
    /// Bytes this request takes, roughly, for the size limit of a group commit.
    pub fn size_bytes(&self) -> usize {
        match &self.kind {
            WriteKind::Append(events) => events.iter().map(NewEvent::size_bytes).sum(),
            _ => 256,
        }
    }

    /// A checkpoint stored on its own.
    pub fn checkpoint(consumer: &str, position: u64) -> Result<Self, StoreError> {
        Ok(WriteRequest {
            stream: StreamName::checkpoint_stream(consumer)?,
            expected: ExpectedState::Any,
            kind: WriteKind::CheckpointOnly,
            checkpoint: Some(Checkpoint {
                consumer: consumer.to_owned(),
                position,
            }),
        })
    }

    /// A soft delete, tombstone or metadata change of a user stream.
    pub fn admin(
        stream: &StreamName,
        expected: ExpectedState,
        kind: WriteKind,
    ) -> Result<Self, StoreError> {
        Ok(WriteRequest {
            stream: StreamName::user(stream.as_str())?,
            expected,
            kind,
            checkpoint: None,
        })
    }
}

/// One record to store: an event with its stream and revision. Its position is the next free
/// one at the time it is stored, in the order of the plan.
#[derive(Clone, Debug)]
pub struct PlannedRecord {
    /// The stream.
    pub stream: StreamName,
    /// Its revision in the stream.
    pub revision: u64,
    /// The event.
    pub event: NewEvent,
}

/// The outcome of planning a write.
#[derive(Debug)]
pub enum Plan {
    /// Store these records; the first `primary` of them are the request's own events.
    Write {
        /// The records, in position order.
        records: Vec<PlannedRecord>,
        /// How many leading records belong to the request itself (the rest are checkpoints).
        primary: usize,
    },
    /// The same events were already appended: nothing to write, the original result stands.
    AlreadyAppended {
        /// Revision of the first of them.
        first_revision: u64,
        /// Revision of the last of them.
        last_revision: u64,
    },
}

/// The effect of one stored record on the catalog.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// An event was recorded in a stream.
    Appended {
        /// The stream.
        stream: StreamName,
        /// Its revision.
        revision: u64,
        /// Its position.
        position: u64,
        /// Its id.
        id: Uuid,
    },
    /// A stream was soft-deleted below this revision.
    Deleted {
        /// The deleted stream.
        stream: StreamName,
        /// Revisions below this are gone.
        before: u64,
    },
    /// A stream was tombstoned.
    Tombstoned {
        /// The tombstoned stream.
        stream: StreamName,
    },
    /// A stream's metadata changed.
    Metadata {
        /// The stream.
        stream: StreamName,
        /// The new metadata.
        metadata: StreamMetadata,
    },
    /// A consumer's checkpoint moved.
    Checkpoint {
        /// The consumer.
        consumer: String,
        /// Its new checkpoint.
        position: u64,
    },
}

/// What a planner sees: committed state plus what the same group commit already planned.
pub trait View {
    /// The summary of a stream (default when it was never written).
    fn summary(&self, stream: &StreamName) -> StreamSummary;
    /// The id of the event at a revision of a stream.
    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Uuid, StoreError>;
    /// A consumer's last checkpoint.
    fn checkpoint(&self, consumer: &str) -> Option<u64>;
}

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
                let before = value["deleted_before"]
                    .as_u64()
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
        let position = value["position"]
            .as_u64()
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
    }
}

/// Plans a write: checks the expected state, recognises an idempotent re-append, and lays out
/// the records to store (moving the request's events into them). Nothing is planned when it
/// fails.
pub fn plan(view: &impl View, request: &mut WriteRequest) -> Result<Plan, StoreError> {
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
    let matches = match request.expected {
        ExpectedState::Any => true,
        ExpectedState::NoStream => current.0.is_none(),
        ExpectedState::StreamExists => current.0.is_some(),
        ExpectedState::Exact(revision) => current.0 == Some(revision),
    };
    if !matches {
        return Err(wrong());
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
        WriteKind::SetMetadata(metadata) => {
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
        if view.id_at(stream, revision)? != event.id {
            return Ok(None);
        }
    }
    Ok(Some(Plan::AlreadyAppended {
        first_revision: window.start,
        last_revision: window.end - 1,
    }))
}

/// The committed state of all streams and checkpoints.
///
/// Streams live in a dense vector and the map holds only their slot: a hash table rounds its
/// size up to a power of two, so keeping the large per-stream state out of it saves about half
/// of the catalog's memory with a million streams.
#[derive(Debug, Default)]
pub struct Catalog {
    slots: HashMap<StreamName, u32>,
    streams: Vec<(StreamName, StreamState)>,
    checkpoints: HashMap<String, u64>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty catalog with room for `streams` streams.
    pub fn with_capacity(streams: usize) -> Self {
        Catalog {
            slots: HashMap::with_capacity(streams),
            streams: Vec::with_capacity(streams),
            checkpoints: HashMap::new(),
        }
    }

    fn state_mut(&mut self, stream: StreamName) -> &mut StreamState {
        let slot = match self.slots.get(&stream) {
            Some(slot) => *slot as usize,
            None => {
                let slot = self.streams.len();
                self.slots.insert(stream.clone(), slot as u32);
                self.streams.push((stream, StreamState::default()));
                slot
            }
        };
        &mut self.streams[slot].1
    }

    fn state(&self, stream: &str) -> Option<&StreamState> {
        let slot = *self.slots.get(stream)? as usize;
        self.streams.get(slot).map(|(_, state)| state)
    }

    /// Applies a change of a durable record. Revisions must arrive in order.
    pub fn apply(&mut self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::Appended {
                stream,
                revision,
                position,
                id,
            } => self.state_mut(stream).record(revision, position, id)?,
            Change::Deleted { stream, before } => {
                let state = self.state_mut(stream);
                state.deleted_before = state.deleted_before.max(before);
            }
            Change::Tombstoned { stream } => {
                self.state_mut(stream).tombstoned = true;
            }
            Change::Metadata { stream, metadata } => {
                self.state_mut(stream).metadata = Some(Box::new(metadata));
            }
            Change::Checkpoint { consumer, position } => {
                self.checkpoints.insert(consumer, position);
            }
        }
        Ok(())
    }

    /// Records an event of a user stream (no system effects), found by name without
    /// allocating unless the stream is new. Revisions must arrive in order.
    pub fn append_user_event(
        &mut self,
        stream: &str,
        revision: u64,
        position: u64,
        id: Uuid,
    ) -> Result<(), StoreError> {
        let state = match self.slots.get(stream) {
            Some(slot) => match self.streams.get_mut(*slot as usize) {
                Some((_, state)) => state,
                None => return Err(StoreError::invalid("stream slot out of range")),
            },
            None => self.state_mut(StreamName::new(stream)?),
        };
        state.record(revision, position, id)
    }

    /// A stream's state, if anything was ever recorded about it.
    pub fn stream(&self, stream: &StreamName) -> Option<&StreamState> {
        self.state(stream.as_str())
    }

    /// A consumer's checkpoint.
    pub fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.checkpoints.get(consumer).copied()
    }

    /// Number of streams known.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Iterates over all streams.
    pub fn streams(&self) -> impl Iterator<Item = (&StreamName, &StreamState)> {
        self.streams.iter().map(|(name, state)| (name, state))
    }

    /// All checkpoints.
    pub fn checkpoints(&self) -> impl Iterator<Item = (&String, &u64)> {
        self.checkpoints.iter()
    }

    /// Restores a stream's state wholesale (used when loading a persisted index).
    pub fn restore_stream(&mut self, stream: StreamName, state: StreamState) {
        *self.state_mut(stream) = state;
    }

    /// Gives back memory held in spare capacity (after a replay built the catalog by pushing).
    pub fn shrink_to_fit(&mut self) {
        for (_, state) in &mut self.streams {
            state.positions.shrink_to_fit();
        }
        self.streams.shrink_to_fit();
        self.slots.shrink_to_fit();
    }

    /// Restores a checkpoint wholesale (used when loading a persisted index).
    pub fn restore_checkpoint(&mut self, consumer: String, position: u64) {
        self.checkpoints.insert(consumer, position);
    }

    /// The positions a stream read should return, in order, before the max-age filter (which
    /// needs each event's time and is applied by [`visible_by_age`]).
    pub fn read_plan(
        &self,
        stream: &StreamName,
        from_revision: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let state = self
            .stream(stream)
            .ok_or_else(|| StoreError::NotFound(stream.to_string()))?;
        if state.tombstoned {
            return Err(StoreError::StreamDeleted(stream.to_string()));
        }
        let len = state.positions.len() as u64;
        let range = read_range(
            stream,
            len,
            state.deleted_before,
            state.metadata.as_deref(),
            from_revision,
            direction,
        )?;
        let revisions: Box<dyn Iterator<Item = u64>> = match direction {
            Direction::Forwards => Box::new(range),
            Direction::Backwards => Box::new(range.rev()),
        };
        Ok(revisions
            .take(limit)
            .map(|revision| state.positions[revision as usize])
            .collect())
    }

    /// The current revision of a stream.
    pub fn current(&self, stream: &StreamName) -> Result<CurrentRevision, StoreError> {
        match self.stream(stream) {
            None => Ok(CurrentRevision(None)),
            Some(state) if state.tombstoned => Err(StoreError::StreamDeleted(stream.to_string())),
            Some(state) => Ok(state.summary().current()),
        }
    }

    /// A stream's metadata.
    pub fn metadata(&self, stream: &StreamName) -> Result<Option<StreamMetadata>, StoreError> {
        match self.stream(stream) {
            Some(state) if state.tombstoned => Err(StoreError::StreamDeleted(stream.to_string())),
            Some(state) => Ok(state.metadata.as_deref().cloned()),
            None => Ok(None),
        }
    }

    /// Lists streams (see [`crate::EventStore::list_streams`]).
    pub fn list(&self, prefix: &str, after: Option<&StreamName>, limit: usize) -> Vec<StreamInfo> {
        let include_system = prefix.starts_with('$');
        let mut listed: Vec<&(StreamName, StreamState)> = self
            .streams
            .iter()
            .filter(|(name, state)| {
                !state.positions.is_empty()
                    && name.as_str().starts_with(prefix)
                    && (include_system || !name.is_system())
                    && after.is_none_or(|after| name > after)
            })
            .collect();
        listed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        listed
            .into_iter()
            .take(limit)
            .filter_map(|(name, state)| {
                let last_position = *state.positions.last()?;
                Some(StreamInfo {
                    name: name.clone(),
                    last_revision: state.positions.len() as u64 - 1,
                    last_position,
                    deleted: state.summary().current().0.is_none(),
                    tombstoned: state.tombstoned,
                })
            })
            .collect()
    }

    /// The max age of a stream, for [`visible_by_age`].
    pub fn max_age_secs(&self, stream: &StreamName) -> Option<u64> {
        self.stream(stream)
            .and_then(|state| state.metadata.as_ref())
            .and_then(|metadata| metadata.max_age_secs)
    }
}

/// The revisions a stream read may return, before the limit and the max-age filter: `len`
/// revisions were written, those below `deleted_before` were soft-deleted, and the metadata may
/// hide more (truncate before, max count). Read backwards, the range is walked from its end.
/// A stream with no visible revision left by a soft delete is [`StoreError::NotFound`].
pub fn read_range(
    stream: &StreamName,
    len: u64,
    deleted_before: u64,
    metadata: Option<&StreamMetadata>,
    from_revision: u64,
    direction: Direction,
) -> Result<std::ops::Range<u64>, StoreError> {
    if len <= deleted_before {
        return Err(StoreError::NotFound(stream.to_string()));
    }
    let mut first_visible = deleted_before;
    if let Some(metadata) = metadata {
        if let Some(before) = metadata.truncate_before {
            first_visible = first_visible.max(before);
        }
        if let Some(max_count) = metadata.max_count {
            first_visible = first_visible.max(len.saturating_sub(max_count));
        }
    }
    Ok(match direction {
        Direction::Forwards => from_revision.max(first_visible).min(len)..len,
        Direction::Backwards => {
            let end = from_revision.min(len - 1) + 1;
            first_visible.min(end)..end
        }
    })
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

/// Where a forwards read of a stream with a maximum age goes on, or `None` when it is done.
/// The age hides a stream's oldest events, so a page of `planned` events (of `asked`) can come
/// back with fewer visible ones while later events are visible: the read goes on after `last`
/// (the last revision read) until `limit` events are visible or the stream ends. Backwards,
/// a hidden event means every older one is hidden too.
pub fn read_on_after_age(
    direction: Direction,
    planned: usize,
    asked: usize,
    visible: usize,
    limit: usize,
    last: Option<u64>,
) -> Option<u64> {
    if direction == Direction::Backwards || visible >= limit || planned < asked {
        return None;
    }
    last.map(|revision| revision + 1)
}

/// Whether an event recorded at `recorded_at_us` is young enough for a stream's max age.
pub fn visible_by_age(max_age_secs: Option<u64>, recorded_at_us: u64, now_us: u64) -> bool {
    match max_age_secs {
        None => true,
        Some(max_age) => now_us.saturating_sub(recorded_at_us) <= max_age.saturating_mul(1_000_000),
    }
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

/// The committed state of a [`Catalog`] as a [`View`]; `committed_id_at` reads the id of the
/// event at a committed position.
pub struct CatalogView<'a, F> {
    catalog: &'a Catalog,
    committed_id_at: F,
}

impl<F> View for CatalogView<'_, F>
where
    F: Fn(u64) -> Result<Uuid, StoreError>,
{
    fn summary(&self, stream: &StreamName) -> StreamSummary {
        self.catalog
            .stream(stream)
            .map(StreamState::summary)
            .unwrap_or_default()
    }

    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Uuid, StoreError> {
        let position = self
            .catalog
            .stream(stream)
            .and_then(|s| s.positions.get(revision as usize))
            .copied()
            .ok_or_else(|| StoreError::NotFound(stream.to_string()))?;
        (self.committed_id_at)(position)
    }

    fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.catalog.checkpoint(consumer)
    }
}

/// A [`View`] over committed state (`base`) plus the records planned so far in one group commit.
pub struct Overlay<B> {
    base: B,
    streams: HashMap<StreamName, (StreamSummary, Vec<Uuid>)>,
    checkpoints: HashMap<String, u64>,
}

impl<'a, F> Overlay<CatalogView<'a, F>>
where
    F: Fn(u64) -> Result<Uuid, StoreError>,
{
    /// An overlay over a committed catalog with nothing planned; `committed_id_at` reads the id
    /// of the event at a committed position.
    pub fn new(catalog: &'a Catalog, committed_id_at: F) -> Self {
        Overlay::over(CatalogView {
            catalog,
            committed_id_at,
        })
    }
}

impl<B: View> Overlay<B> {
    /// An overlay over any committed state, with nothing planned.
    pub fn over(base: B) -> Self {
        Overlay {
            base,
            streams: HashMap::new(),
            checkpoints: HashMap::new(),
        }
    }

    /// Takes planned records into account, as if they were committed.
    pub fn record(&mut self, records: &[PlannedRecord]) -> Result<(), StoreError> {
        for record in records {
            if !record.stream.is_system() {
                let entry = self.entry(&record.stream);
                entry.0.next_revision += 1;
                entry.0.last_id = Some(record.event.id);
                entry.1.push(record.event.id);
                continue;
            }
            // Positions do not matter to planning; the changes' other effects do.
            for change in changes_of(
                &record.stream,
                record.revision,
                0,
                record.event.id,
                &record.event.event_type,
                &record.event.data,
            )? {
                match change {
                    Change::Appended { stream, id, .. } => {
                        let entry = self.entry(&stream);
                        entry.0.next_revision += 1;
                        entry.0.last_id = Some(id);
                        entry.1.push(id);
                    }
                    Change::Deleted { stream, before } => {
                        let entry = self.entry(&stream);
                        entry.0.deleted_before = entry.0.deleted_before.max(before);
                    }
                    Change::Tombstoned { stream } => self.entry(&stream).0.tombstoned = true,
                    Change::Metadata { .. } => {}
                    Change::Checkpoint { consumer, position } => {
                        self.checkpoints.insert(consumer, position);
                    }
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, stream: &StreamName) -> &mut (StreamSummary, Vec<Uuid>) {
        let base = &self.base;
        self.streams
            .entry(stream.clone())
            .or_insert_with(|| (base.summary(stream), Vec::new()))
    }
}

impl<B: View> View for Overlay<B> {
    fn summary(&self, stream: &StreamName) -> StreamSummary {
        match self.streams.get(stream) {
            Some((summary, _)) => *summary,
            None => self.base.summary(stream),
        }
    }

    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Uuid, StoreError> {
        let committed_len = self.base.summary(stream).next_revision;
        if revision < committed_len {
            return self.base.id_at(stream, revision);
        }
        self.streams
            .get(stream)
            .and_then(|(_, pending)| pending.get((revision - committed_len) as usize))
            .copied()
            .ok_or_else(|| StoreError::NotFound(stream.to_string()))
    }

    fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.checkpoints
            .get(consumer)
            .copied()
            .or_else(|| self.base.checkpoint(consumer))
    }
}
