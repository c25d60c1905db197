//! The committed state of every stream and checkpoint.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Change, StreamState, read_range};
use crate::{CurrentRevision, Direction, StoreError, StreamInfo, StreamMetadata, StreamName};

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
        #[allow(
            clippy::indexing_slicing,
            reason = "every slot indexes `streams`: both grow together"
        )]
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

    /// A stream's state by its name as a string (no allocation).
    pub fn stream_named(&self, stream: &str) -> Option<&StreamState> {
        self.state(stream)
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

    /// Marks revision `revision` of `stream` as removed by a scavenge ([`GONE`](super::GONE)):
    /// reads skip it, its revision stays taken.
    pub fn mark_gone(&mut self, stream: &str, revision: u64) {
        if let Some(slot) = self.slots.get(stream)
            && let Some((_, state)) = self.streams.get_mut(*slot as usize)
            && let Some(position) = state.positions.get_mut(revision as usize)
        {
            *position = super::GONE;
        }
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
    /// needs each event's time and is applied by [`visible_by_age`](super::visible_by_age)).
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
            .filter_map(|revision| state.positions.get(revision as usize).copied())
            .filter(|position| *position != super::GONE)
            .take(limit)
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

    /// The max age of a stream, for [`visible_by_age`](super::visible_by_age).
    pub fn max_age_secs(&self, stream: &StreamName) -> Option<u64> {
        self.stream(stream)
            .and_then(|state| state.metadata.as_ref())
            .and_then(|metadata| metadata.max_age_secs)
    }
}
