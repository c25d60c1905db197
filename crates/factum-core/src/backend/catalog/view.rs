//! What a write is planned against: the committed catalog, and that plus what the same group
//! commit planned before.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Catalog, Change, PlannedRecord, StreamState, StreamSummary, View, changes_of};
use crate::{StoreError, StreamName};

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
                debug_assert_eq!(
                    record.revision, entry.0.next_revision,
                    "a planned record continues its stream"
                );
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
