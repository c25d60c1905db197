use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::backend::catalog::{WriteKind, WriteRequest};

use crate::{
    Claim, CurrentRevision, DcbAppend, ExpectedState, NewEvent, Query, QueryRead, RecordedEvent,
    StoreError, StreamMetadata, StreamName, Subscription, SubscriptionFilter,
};

/// What a successful append returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendResult {
    /// Revision of the first event this append recorded.
    pub first_revision: u64,
    /// Revision of the last event: the expected revision for the next append.
    pub last_revision: u64,
    /// Position in `$all` of the last event this append recorded.
    pub position: u64,
}

/// A consumer's checkpoint, stored atomically with the events of an append. It may only move
/// forward: a consumer that reads `$all` and appends its own events this way processes each
/// event exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Who the checkpoint belongs to.
    pub consumer: String,
    /// The last position the consumer has processed.
    pub position: u64,
}

/// Extra options of an append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// A checkpoint to store in the same atomic write as the events.
    pub checkpoint: Option<Checkpoint>,
}

/// Reading direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forwards,
    /// Newest first.
    Backwards,
}

/// One stream in a listing.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamInfo {
    /// The stream's name.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub name: StreamName,
    /// Its last revision (counting soft-deleted events).
    pub last_revision: u64,
    /// Position of its last event.
    pub last_position: u64,
    /// Soft-deleted and not written since.
    pub deleted: bool,
    /// Tombstoned.
    pub tombstoned: bool,
}

/// An event store. Every backend (embedded engine, in-memory, PostgreSQL) implements it and
/// passes the same conformance suite (`factum::backend::testkit`).
///
/// Reads of `$all` and of streams take a start that is *inclusive*; `u64::MAX` read backwards
/// means "from the end". Positions increase with every record: 0, 1, 2, … A position whose
/// event a scavenge removed stays taken and is never given again, so a read of `$all` skips it
/// (pages are still full while more events follow); see [`EventStore::scavenge`].
///
/// A backend implements the reads, [`EventStore::write`] (through which every append,
/// metadata, delete, tombstone and checkpoint reaches it, planned by the rules of
/// [`catalog`](crate::backend::catalog)), and [`EventStore::claim`]; the other methods are
/// the same for every backend.
#[async_trait]
pub trait EventStore: Send + Sync + Shared {
    /// Carries out one write: plans it against the stream's state by the catalog's rules
    /// (`catalog::plan`) and makes it durable, or answers an idempotent retry with the first
    /// result. Every write method below comes here; applications call those.
    async fn write(&self, request: WriteRequest) -> Result<AppendResult, StoreError>;

    /// Appends events to a stream, atomically, if the stream is in the expected state, and
    /// returns only once they are durable. An empty list is rejected as invalid input.
    async fn append_with(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
        options: AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        validate_append(stream, &events, &options)?;
        self.write(WriteRequest {
            stream: stream.clone(),
            expected,
            kind: WriteKind::Append(events),
            checkpoint: options.checkpoint,
        })
        .await
    }

    /// [`EventStore::append_with`] without options.
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.append_with(stream, expected, events, AppendOptions::default())
            .await
    }

    /// Appends the events of a DCB append atomically — each to its stream — if no event
    /// matching its condition's query was written after the condition's position and every
    /// stream it names is in its expected state; returns the position of its last event once
    /// they are durable. A failed condition is [`StoreError::ConditionFailed`] and writes
    /// nothing. Appending the same events again (the same ids) after a success returns the
    /// original position, when they are still the last events of the last one's stream or
    /// when they are where the condition now fails.
    async fn append_conditional(&self, append: DcbAppend) -> Result<u64, StoreError> {
        append.validate()?;
        let stream = match append.events.first() {
            Some(first) => first.stream.clone(),
            None => return Err(StoreError::invalid("an append needs at least one event")),
        };
        let result = self
            .write(WriteRequest {
                stream,
                expected: ExpectedState::Any,
                kind: WriteKind::Dcb(Box::new(append)),
                checkpoint: None,
            })
            .await?;
        Ok(result.position)
    }

    /// Reads up to `limit` events matching `query` after the position `after` (from the start
    /// without it), oldest first or newest first, with the store's head at the time of the
    /// read: the `after` of a condition for a decision made on what was read. Backends answer
    /// from an index; this default reads `$all`.
    async fn read_query(
        &self,
        query: &Query,
        after: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<QueryRead, StoreError> {
        query.validate()?;
        let end = self.head();
        let head = end.checked_sub(1);
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut events = Vec::new();
        if from >= end || limit == 0 {
            return Ok(QueryRead { events, head });
        }
        let page = 512;
        match direction {
            Direction::Forwards => {
                let mut next = from;
                while next < end && events.len() < limit {
                    let read = self.read_all(next, Direction::Forwards, page).await?;
                    let Some(last) = read.last() else { break };
                    next = last.position + 1;
                    events.extend(
                        read.into_iter()
                            .filter(|e| e.position < end && query.matches_event(e)),
                    );
                }
            }
            Direction::Backwards => {
                let mut next = Some(end - 1);
                while let Some(at) = next
                    && at >= from
                    && events.len() < limit
                {
                    let read = self.read_all(at, Direction::Backwards, page).await?;
                    let Some(last) = read.last() else { break };
                    next = last.position.checked_sub(1);
                    events.extend(
                        read.into_iter()
                            .filter(|e| e.position >= from && query.matches_event(e)),
                    );
                }
            }
        }
        events.truncate(limit);
        Ok(QueryRead { events, head })
    }

    /// Catch-up then live subscription to the events matching `query` after `after`.
    fn subscribe_query(&self, query: Query, after: Option<u64>) -> Subscription {
        Subscription::query(self.shared(), query, after)
    }

    /// Reads up to `limit` events of a stream from a revision (inclusive). Events hidden by
    /// the stream's metadata (max count, max age, truncate before) or by a soft delete are
    /// skipped. A stream that does not exist is [`StoreError::NotFound`]; a tombstoned one is
    /// [`StoreError::StreamDeleted`].
    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Reads up to `limit` events of the whole log from a position (inclusive), in log order.
    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The position the next event will get: every position below it is durable and readable.
    fn head(&self) -> u64;

    /// Follows [`EventStore::head`] as it moves.
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// Catch-up then live subscription to `$all` from a position (inclusive).
    fn subscribe_all(&self, from_position: u64, filter: SubscriptionFilter) -> Subscription {
        Subscription::all(self.shared(), from_position, filter)
    }

    /// Catch-up then live subscription to one stream from a revision (inclusive).
    fn subscribe_stream(&self, stream: StreamName, from_revision: u64) -> Subscription {
        Subscription::stream(self.shared(), stream, from_revision)
    }

    /// The stream's current revision (`None` when it does not exist).
    async fn stream_revision(&self, stream: &StreamName) -> Result<CurrentRevision, StoreError>;

    /// The stream's metadata, if any was set.
    async fn get_metadata(&self, stream: &StreamName)
    -> Result<Option<StreamMetadata>, StoreError>;

    /// Records new metadata for a stream; returns the position of the record.
    async fn set_metadata(
        &self,
        stream: &StreamName,
        metadata: StreamMetadata,
    ) -> Result<u64, StoreError> {
        let request =
            WriteRequest::admin(stream, ExpectedState::Any, WriteKind::SetMetadata(metadata))?;
        Ok(self.write(request).await?.position)
    }

    /// Soft-deletes a stream: it reads as not found until written again, and its revisions
    /// then continue. Returns the position of the deletion record.
    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
    ) -> Result<u64, StoreError> {
        let request = WriteRequest::admin(stream, expected, WriteKind::Delete)?;
        Ok(self.write(request).await?.position)
    }

    /// Tombstones a stream: it can never be written again. Returns the position of the record.
    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
    ) -> Result<u64, StoreError> {
        let request = WriteRequest::admin(stream, expected, WriteKind::Tombstone)?;
        Ok(self.write(request).await?.position)
    }

    /// Streams whose names start with `prefix`, in name order, after `after`, at most `limit`.
    /// System streams (`$…`) are listed only when the prefix starts with `$`.
    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError>;

    /// Stores a consumer's checkpoint on its own (without events); it may only move forward.
    /// Returns the position of the record.
    async fn save_checkpoint(&self, consumer: &str, position: u64) -> Result<u64, StoreError> {
        let request = WriteRequest::checkpoint(consumer, position)?;
        Ok(self.write(request).await?.position)
    }

    /// The last checkpoint stored for a consumer.
    async fn read_checkpoint(&self, consumer: &str) -> Result<Option<u64>, StoreError>;

    /// Claims `name` for as long as the returned [`Claim`] is kept, or returns `None` when
    /// another runner holds it: across every process that shares the store (PostgreSQL), or
    /// within this process (the embedded store, which one process opens at a time, and the
    /// in-memory store). Processors, relays and saga managers claim their checkpoint's name
    /// before they work, so that a second copy waits instead of doing the work twice.
    async fn claim(&self, name: &str) -> Result<Option<Claim>, StoreError>;

    /// The store's keys for personal data (see [`KeyStore`](crate::KeyStore)), kept apart from
    /// its log; `None` when it has none.
    fn keys(&self) -> Option<std::sync::Arc<dyn crate::KeyStore>> {
        None
    }

    /// Removes the events hidden for good (see [`hidden_for_good`](crate::hidden_for_good))
    /// below `options.below`, while reads and appends go on. Positions and revisions stay what
    /// they are; a read never returns a removed event again, whatever the metadata says later.
    /// `progress` gets (work done, work in all), in the backend's units. Stores that cannot
    /// scavenge answer [`StoreError::Unsupported`] and change nothing.
    async fn scavenge(
        &self,
        options: crate::ScavengeOptions,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<crate::ScavengeReport, StoreError> {
        let _ = (options, progress);
        Err(StoreError::Unsupported("scavenging".into()))
    }

    /// Why the store refuses writes now (a failed write it has not recovered from, a database
    /// it cannot reach), or `None` while it takes them. Reads may go on meanwhile.
    fn write_refusal(&self) -> Option<String> {
        None
    }

    /// What kind of store this is, as a person would name it: `"embedded"`, `"postgresql"`,
    /// `"memory"` (the server's dashboard shows it).
    fn kind(&self) -> &'static str {
        "other"
    }

    /// The bytes the store takes on disk (its files, or its tables and their indexes); `None`
    /// when it keeps nothing on disk or cannot tell.
    async fn disk_usage(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

/// A shared handle to the store: what a subscription keeps, and what the toolkit's runners
/// hold. Every [`EventStore`] that is `Clone` has it (every backend is: clones share one
/// store).
pub trait Shared {
    /// Another handle to the same store.
    fn shared(&self) -> Arc<dyn EventStore>;
}

impl<S: EventStore + Clone + 'static> Shared for S {
    fn shared(&self) -> Arc<dyn EventStore> {
        Arc::new(self.clone())
    }
}

/// What every constructor of the toolkit, the projections, the relays and the server takes as
/// its store: a backend itself (`Engine`, `PgStore`, `MemoryStore`), an `Arc` of one, or an
/// `Arc<dyn EventStore>`.
pub trait IntoStore {
    /// The store as a shared handle.
    fn into_store(self) -> Arc<dyn EventStore>;
}

impl<S: EventStore + 'static> IntoStore for S {
    fn into_store(self) -> Arc<dyn EventStore> {
        Arc::new(self)
    }
}

impl<S: EventStore + 'static> IntoStore for Arc<S> {
    fn into_store(self) -> Arc<dyn EventStore> {
        self
    }
}

impl IntoStore for Arc<dyn EventStore> {
    fn into_store(self) -> Arc<dyn EventStore> {
        self
    }
}

/// Checks what every backend checks before an import reaches storage: every event as it would
/// be appended again, system types allowed (exports hold the store's own records).
pub fn validate_import(events: &[crate::RecordedEvent]) -> Result<(), StoreError> {
    for event in events {
        event.to_new_event().validate(true)?;
    }
    Ok(())
}

/// Checks what every backend checks before an append reaches storage.
pub fn validate_append(
    stream: &StreamName,
    events: &[NewEvent],
    options: &AppendOptions,
) -> Result<(), StoreError> {
    if stream.is_system() && !stream.is_toolkit_stream() {
        return Err(StoreError::invalid(format!(
            "stream '{stream}' is reserved for the system"
        )));
    }
    validate_events(events.iter().map(|event| (event, ())), |_, ()| Ok(0))?;
    if let Some(checkpoint) = &options.checkpoint {
        StreamName::checkpoint_stream(&checkpoint.consumer)?;
    }
    Ok(())
}

/// The checks every append makes of its events, stream appends and DCB appends alike: at least
/// one, at most [`crate::limits::APPEND_EVENTS_MAX`], each valid, no id twice, and at most
/// [`crate::limits::APPEND_BYTES_MAX`] bytes together. `each` checks what goes with an event
/// (its index and `T`) before the event itself, and says how many bytes that adds.
pub(crate) fn validate_events<'a, T>(
    events: impl ExactSizeIterator<Item = (&'a NewEvent, T)>,
    mut each: impl FnMut(usize, T) -> Result<usize, StoreError>,
) -> Result<(), StoreError> {
    let count = events.len();
    if count == 0 {
        return Err(StoreError::invalid("an append needs at least one event"));
    }
    if count > crate::limits::APPEND_EVENTS_MAX {
        return Err(StoreError::invalid(format!(
            "an append of {count} events is over the limit of {}",
            crate::limits::APPEND_EVENTS_MAX
        )));
    }
    let mut bytes = 0usize;
    let mut ids = std::collections::HashSet::with_capacity(count);
    for (index, (event, with)) in events.enumerate() {
        bytes += each(index, with)?;
        event.validate(false).map_err(|e| match e {
            StoreError::InvalidInput(why) => StoreError::invalid(format!("event {index}: {why}")),
            other => other,
        })?;
        if !ids.insert(event.id) {
            return Err(StoreError::invalid(format!(
                "event {index}: id {} appears twice in one append",
                event.id
            )));
        }
        bytes += event.size_bytes();
    }
    if bytes > crate::limits::APPEND_BYTES_MAX {
        return Err(StoreError::invalid(format!(
            "an append of {bytes} bytes is over the limit of {}",
            crate::limits::APPEND_BYTES_MAX
        )));
    }
    Ok(())
}
