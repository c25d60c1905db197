//! What a write is planned against: the committed catalog, and that plus what the same group
//! commit planned before.

use std::collections::HashMap;

use uuid::Uuid;

use super::{Catalog, Change, PlannedRecord, StreamState, StreamSummary, View, changes_of};
use crate::{Query, StoreError, StreamName};

/// What a [`CatalogView`] needs of the committed log besides the catalog.
pub trait CommittedLog {
    /// The id of the committed event at a position; `None` when scavenging removed it.
    fn id_at(&self, position: u64) -> Result<Option<Uuid>, StoreError>;
    /// The position after the last committed record.
    fn next_position(&self) -> u64;
    /// The first committed position after `after` of an event matching `query`.
    fn first_match(&self, query: &Query, after: Option<u64>) -> Result<Option<u64>, StoreError>;
}

/// The committed state of a [`Catalog`] as a [`View`], with the log it indexes.
pub struct CatalogView<'a, L> {
    catalog: &'a Catalog,
    log: L,
}

impl<L: CommittedLog> View for CatalogView<'_, L> {
    fn summary(&self, stream: &StreamName) -> StreamSummary {
        self.catalog
            .stream(stream)
            .map(StreamState::summary)
            .unwrap_or_default()
    }

    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Option<Uuid>, StoreError> {
        let position = self
            .catalog
            .stream(stream)
            .and_then(|s| s.positions.get(revision as usize))
            .copied()
            .ok_or_else(|| StoreError::NotFound(stream.to_string()))?;
        if position == super::GONE {
            return Ok(None);
        }
        self.log.id_at(position)
    }

    fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.catalog.checkpoint(consumer)
    }

    fn next_position(&self) -> u64 {
        self.log.next_position()
    }

    fn last_position(&self, stream: &StreamName) -> Option<u64> {
        self.catalog.stream(stream)?.positions.last().copied()
    }

    fn id_at_position(&self, position: u64) -> Result<Option<Uuid>, StoreError> {
        if position >= self.log.next_position() {
            return Ok(None);
        }
        self.log.id_at(position)
    }

    fn first_match(&self, query: &Query, after: Option<u64>) -> Result<Option<u64>, StoreError> {
        self.log.first_match(query, after)
    }
}

/// What an [`Overlay`] keeps of a planned record for DCB conditions.
struct PlannedMatch {
    stream: StreamName,
    event_type: String,
    tags: Vec<String>,
}

/// A [`View`] over committed state (`base`) plus the records planned so far in one group commit.
pub struct Overlay<B> {
    base: B,
    streams: HashMap<StreamName, (StreamSummary, Vec<Uuid>, u64)>,
    checkpoints: HashMap<String, u64>,
    /// Ids of the planned records, in position order (from the base's next position).
    planned: Vec<Uuid>,
    /// Types and tags of the planned records, kept when DCB conditions are planned
    /// ([`Overlay::with_matching`]).
    matches: Option<Vec<PlannedMatch>>,
}

impl<'a, L: CommittedLog> Overlay<CatalogView<'a, L>> {
    /// An overlay over a committed catalog and the log it indexes, with nothing planned.
    pub fn new(catalog: &'a Catalog, log: L) -> Self {
        Overlay::over(CatalogView { catalog, log })
    }
}

impl<B: View> Overlay<B> {
    /// An overlay over any committed state, with nothing planned.
    pub fn over(base: B) -> Self {
        Overlay {
            base,
            streams: HashMap::new(),
            checkpoints: HashMap::new(),
            planned: Vec::new(),
            matches: None,
        }
    }

    /// Keeps the types and tags of planned records, so that a DCB condition planned after
    /// them sees them (a writer turns it on when its group holds a DCB append; it costs a
    /// copy of each planned record's type and tags).
    pub fn with_matching(mut self, on: bool) -> Self {
        if on {
            self.matches = Some(Vec::new());
        }
        self
    }

    /// Takes planned records into account, as if they were committed. Every planned record
    /// comes here, in position order.
    pub fn record(&mut self, records: &[PlannedRecord]) -> Result<(), StoreError> {
        for record in records {
            let position = self.base.next_position() + self.planned.len() as u64;
            self.planned.push(record.event.id);
            if let Some(matches) = &mut self.matches {
                matches.push(PlannedMatch {
                    stream: record.stream.clone(),
                    event_type: record.event.event_type.clone(),
                    tags: record.event.tags.clone(),
                });
            }
            if !record.stream.is_system() {
                let entry = self.entry(&record.stream);
                debug_assert_eq!(
                    record.revision, entry.0.next_revision,
                    "a planned record continues its stream"
                );
                entry.0.next_revision += 1;
                entry.0.last_id = Some(record.event.id);
                entry.1.push(record.event.id);
                entry.2 = position;
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
                        entry.2 = position;
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

    fn entry(&mut self, stream: &StreamName) -> &mut (StreamSummary, Vec<Uuid>, u64) {
        let base = &self.base;
        self.streams
            .entry(stream.clone())
            .or_insert_with(|| (base.summary(stream), Vec::new(), u64::MAX))
    }
}

impl<B: View> View for Overlay<B> {
    fn summary(&self, stream: &StreamName) -> StreamSummary {
        match self.streams.get(stream) {
            Some((summary, ..)) => *summary,
            None => self.base.summary(stream),
        }
    }

    fn id_at(&self, stream: &StreamName, revision: u64) -> Result<Option<Uuid>, StoreError> {
        let committed_len = self.base.summary(stream).next_revision;
        if revision < committed_len {
            return self.base.id_at(stream, revision);
        }
        self.streams
            .get(stream)
            .and_then(|(_, pending, _)| pending.get((revision - committed_len) as usize))
            .copied()
            .map(Some)
            .ok_or_else(|| StoreError::NotFound(stream.to_string()))
    }

    fn checkpoint(&self, consumer: &str) -> Option<u64> {
        self.checkpoints
            .get(consumer)
            .copied()
            .or_else(|| self.base.checkpoint(consumer))
    }

    fn next_position(&self) -> u64 {
        self.base.next_position() + self.planned.len() as u64
    }

    fn last_position(&self, stream: &StreamName) -> Option<u64> {
        match self.streams.get(stream) {
            Some((.., last)) if *last != u64::MAX => Some(*last),
            _ => self.base.last_position(stream),
        }
    }

    fn id_at_position(&self, position: u64) -> Result<Option<Uuid>, StoreError> {
        let base_next = self.base.next_position();
        if position < base_next {
            return self.base.id_at_position(position);
        }
        Ok(self.planned.get((position - base_next) as usize).copied())
    }

    fn first_match(&self, query: &Query, after: Option<u64>) -> Result<Option<u64>, StoreError> {
        if let Some(found) = self.base.first_match(query, after)? {
            return Ok(Some(found));
        }
        if self.planned.is_empty() {
            return Ok(None);
        }
        let Some(matches) = &self.matches else {
            return Err(StoreError::invalid(
                "a DCB condition was planned without the planned records' tags (the writer did not turn matching on)",
            ));
        };
        let base_next = self.base.next_position();
        Ok(matches
            .iter()
            .enumerate()
            .map(|(i, m)| (base_next + i as u64, m))
            .find(|(position, m)| {
                after.is_none_or(|a| *position > a)
                    && query.matches(&m.stream, &m.event_type, &m.tags)
            })
            .map(|(position, _)| position))
    }
}
