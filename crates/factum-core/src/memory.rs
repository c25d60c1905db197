use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::backend::LocalClaims;
use crate::backend::catalog::{self, Catalog, CommittedLog, Overlay, Plan, WriteRequest};
use crate::backend::read_visible;
use crate::backend::tag_index::TagIndex;
use crate::{
    AppendResult, Claim, CurrentRevision, Direction, EventStore, Query, QueryRead, RecordedEvent,
    StoreError, StreamInfo, StreamMetadata, StreamName, now_micros,
};

/// An event store in memory, with the same behaviour as the durable backends (it passes the same
/// conformance suite). For tests of applications: nothing survives the process.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    head: watch::Sender<u64>,
    claims: LocalClaims,
    keys: Arc<crate::MemoryKeyStore>,
}

#[derive(Default)]
struct State {
    catalog: Catalog,
    log: Vec<RecordedEvent>,
    tags: TagIndex,
}

/// The committed log as a write plan sees it.
struct Committed<'a> {
    log: &'a [RecordedEvent],
    tags: &'a TagIndex,
}

impl CommittedLog for Committed<'_> {
    fn id_at(&self, position: u64) -> Result<Option<uuid::Uuid>, StoreError> {
        self.log
            .get(position as usize)
            .map(|e| Some(e.id))
            .ok_or_else(|| StoreError::invalid(format!("no event at {position}")))
    }

    fn next_position(&self) -> u64 {
        self.log.len() as u64
    }

    fn first_match(&self, query: &Query, after: Option<u64>) -> Result<Option<u64>, StoreError> {
        Ok(self.tags.first_match(query, after, self.log.len() as u64))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                head: watch::channel(0).0,
                claims: LocalClaims::default(),
                keys: Arc::default(),
            }),
        }
    }

    fn write_now(&self, mut request: WriteRequest) -> Result<AppendResult, StoreError> {
        let mut state = self.inner.state.lock();
        let State { catalog, log, tags } = &mut *state;
        let plan = {
            let view = Overlay::new(catalog, Committed { log, tags });
            catalog::plan(&view, &mut request)?
        };
        let (records, primary) = match plan {
            Plan::AlreadyAppended {
                first_revision,
                last_revision,
            } => {
                let position = catalog
                    .stream(&request.stream)
                    .and_then(|s| s.positions.get(last_revision as usize))
                    .copied()
                    .unwrap_or_default();
                return Ok(AppendResult {
                    first_revision,
                    last_revision,
                    position,
                });
            }
            Plan::AlreadyWritten(result) => return Ok(result),
            Plan::Write { records, primary } => (records, primary),
        };
        let first_position = log.len() as u64;
        let recorded_at_us = now_micros();
        // Check every change before applying any, so a bad record leaves no trace.
        let mut changes = Vec::new();
        for (offset, record) in records.iter().enumerate() {
            changes.extend(catalog::changes_of(
                &record.stream,
                record.revision,
                first_position + offset as u64,
                record.event.id,
                &record.event.event_type,
                &record.event.data,
            )?);
        }
        for change in changes {
            catalog.apply(change)?;
        }
        for (offset, record) in records.iter().enumerate() {
            let position = first_position + offset as u64;
            tags.add(
                position,
                record.stream.is_system(),
                &record.event.event_type,
                &record.event.tags,
            )?;
            log.push(RecordedEvent {
                stream: record.stream.clone(),
                revision: record.revision,
                position,
                id: record.event.id,
                event_type: record.event.event_type.clone(),
                content_type: record.event.content_type,
                data: record.event.data.clone(),
                metadata: record.event.metadata.clone(),
                recorded_at_us,
                tags: record.event.tags.clone(),
            });
        }
        let head = log.len() as u64;
        drop(state);
        self.inner.head.send_replace(head);
        Ok(catalog::append_result(&records, primary, first_position))
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn write(&self, request: WriteRequest) -> Result<AppendResult, StoreError> {
        self.write_now(request)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_visible(from_revision, direction, limit, |from, asked| {
            let planned = {
                let state = self.inner.state.lock();
                state
                    .catalog
                    .read_plan(stream, from, direction, asked)
                    .map(|positions| {
                        let events: Vec<RecordedEvent> = positions
                            .into_iter()
                            .filter_map(|p| state.log.get(p as usize).cloned())
                            .collect();
                        (events, state.catalog.max_age_secs(stream))
                    })
            };
            std::future::ready(planned)
        })
        .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.inner.state.lock();
        let len = state.log.len() as u64;
        Ok(match direction {
            Direction::Forwards => state
                .log
                .iter()
                .skip(from_position.min(len) as usize)
                .take(limit)
                .cloned()
                .collect(),
            Direction::Backwards if len == 0 => Vec::new(),
            Direction::Backwards => state
                .log
                .get(..=from_position.min(len - 1) as usize)
                .unwrap_or_default()
                .iter()
                .rev()
                .take(limit)
                .cloned()
                .collect(),
        })
    }

    async fn read_query(
        &self,
        query: &Query,
        after: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<QueryRead, StoreError> {
        query.validate()?;
        let state = self.inner.state.lock();
        let end = state.log.len() as u64;
        let events = state
            .tags
            .query(query, after, end, direction, limit)
            .into_iter()
            .filter_map(|p| state.log.get(p as usize).cloned())
            .collect();
        Ok(QueryRead {
            events,
            head: end.checked_sub(1),
        })
    }

    fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn stream_revision(&self, stream: &StreamName) -> Result<CurrentRevision, StoreError> {
        self.inner.state.lock().catalog.current(stream)
    }

    async fn get_metadata(
        &self,
        stream: &StreamName,
    ) -> Result<Option<StreamMetadata>, StoreError> {
        self.inner.state.lock().catalog.metadata(stream)
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamName>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        Ok(self.inner.state.lock().catalog.list(prefix, after, limit))
    }

    async fn read_checkpoint(&self, consumer: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.state.lock().catalog.checkpoint(consumer))
    }

    async fn claim(&self, name: &str) -> Result<Option<Claim>, StoreError> {
        self.inner.claims.try_claim(name)
    }

    fn keys(&self) -> Option<Arc<dyn crate::KeyStore>> {
        Some(self.inner.keys.clone())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
