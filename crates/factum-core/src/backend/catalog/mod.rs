//! What a backend knows about its streams without reading events, and the rules every backend
//! applies to a write: expected-state checks, idempotent re-appends, deletes, tombstones,
//! metadata and checkpoints. The embedded engine and the in-memory store both use it, so the
//! rules live in one place.
//!
//! A write is *planned* against a [`View`] (what is committed plus what is already planned in the
//! same group commit), which yields the records to store; once they are durable each record's
//! [`Change`]s are applied to the [`Catalog`].

//!
//! The module's files: `plan.rs` (planning a write or an import), `state.rs` (the committed
//! [`Catalog`]), `view.rs` (what a plan is made against) and `read.rs` (which revisions a read
//! returns).

mod plan;
mod read;
mod state;
mod view;

use uuid::Uuid;

use crate::{
    AppendResult, Checkpoint, CurrentRevision, DcbAppend, ExpectedState, NewEvent, Query,
    StoreError, StreamMetadata, StreamName,
};

pub use plan::{
    append_result, changes_of, dcb_retry_starts, idempotency_window, import_plan, plan,
    push_changes,
};
pub use read::{read_on_after_age, read_range, visible_by_age};
pub use state::Catalog;
pub use view::CommittedLog;
pub use view::{CatalogView, Overlay};

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

/// Where [`StreamState::positions`] (and the engine's record locations) hold the place of an
/// event that scavenging removed: its revision and position stay taken, its record is gone.
pub const GONE: u64 = u64::MAX;

/// The most revisions a replay fills in as removed before one record: a stream cannot have
/// more events than the log has positions, so a larger jump is damage, not scavenging.
const GAP_REVISIONS_MAX: u64 = 1 << 40;

/// Everything a backend knows of one stream.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// `positions[r]` is the position of revision `r`, or [`GONE`] when scavenging removed it.
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
    /// A revision past the next one follows revisions that scavenging removed (a replay of a
    /// scavenged log): their places are kept as [`GONE`].
    fn record(&mut self, revision: u64, position: u64, id: Uuid) -> Result<(), StoreError> {
        let len = self.positions.len() as u64;
        if revision > len && revision - len <= GAP_REVISIONS_MAX {
            self.positions.resize(revision as usize, GONE);
        }
        if revision != self.positions.len() as u64 {
            return Err(StoreError::invalid(format!(
                "record at position {position} has revision {revision}, expected {}",
                self.positions.len()
            )));
        }
        debug_assert!(
            self.positions
                .iter()
                .rev()
                .find(|p| **p != GONE)
                .is_none_or(|last| *last < position),
            "a stream's positions strictly increase: {position} after {:?}",
            self.positions.last()
        );
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
    /// Record new metadata if the stream's metadata stream (`$$name`, which also holds its
    /// deletes) is in the expected state: how KurrentDB's clients write metadata.
    SetMetadataExpecting {
        /// The new metadata.
        metadata: StreamMetadata,
        /// What the metadata stream must be.
        metadata_stream: ExpectedState,
    },
    /// Only the request's checkpoint (its stream is the checkpoint stream).
    CheckpointOnly,
    /// A DCB append: events in their streams, if its condition and expected states hold.
    /// The request's own stream and expected state are those of its first event and `Any`.
    /// Its result's position is that of its last event.
    Dcb(Box<DcbAppend>),
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
            WriteKind::Dcb(append) => append.events.iter().map(|e| e.event.size_bytes()).sum(),
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
    /// The same events of a DCB append were already written: the original result.
    AlreadyWritten(AppendResult),
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
    /// The id of the event at a revision of a stream; `None` when scavenging removed it.
    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Option<Uuid>, StoreError>;
    /// A consumer's last checkpoint.
    fn checkpoint(&self, consumer: &str) -> Option<u64>;
    /// The position the next record gets (committed ones and those planned before).
    fn next_position(&self) -> u64;
    /// The position of the stream's last record (none when it was never written).
    fn last_position(&self, stream: &StreamName) -> Option<u64>;
    /// The id of the record at a position (committed or planned before); none past the end.
    fn id_at_position(&self, position: u64) -> Result<Option<uuid::Uuid>, StoreError>;
    /// The first position after `after` (from the start without it), committed or planned
    /// before, of an event matching `query`.
    fn first_match(&self, query: &Query, after: Option<u64>) -> Result<Option<u64>, StoreError>;
}
