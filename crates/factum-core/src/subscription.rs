use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Direction, EventStore, Query, RecordedEvent, StoreError, StreamName};

/// Which events of `$all` a subscription delivers. Empty lists mean "all".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionFilter {
    /// Deliver events whose stream starts with one of these.
    pub stream_prefixes: Vec<String>,
    /// Deliver events of one of these types.
    pub event_types: Vec<String>,
    /// Leave out events of system streams (`$…`).
    pub exclude_system: bool,
}

impl SubscriptionFilter {
    /// Whether an event passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        if self.exclude_system && event.stream.is_system() {
            return false;
        }
        let stream_ok = self.stream_prefixes.is_empty()
            || self
                .stream_prefixes
                .iter()
                .any(|prefix| event.stream.as_str().starts_with(prefix.as_str()));
        let type_ok = self.event_types.is_empty() || self.event_types.contains(&event.event_type);
        stream_ok && type_ok
    }
}

enum Source {
    All {
        next_position: u64,
        filter: SubscriptionFilter,
    },
    Stream {
        stream: StreamName,
        next_revision: u64,
    },
    Query {
        query: Query,
        next_position: u64,
    },
}

/// A catch-up subscription: it reads stored events from its start, then waits for new ones,
/// with no gap and no duplicate at the switch because it always reads the log by position and
/// only up to the durable head.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    head: watch::Receiver<u64>,
    source: Source,
    buffer: VecDeque<RecordedEvent>,
    batch_size: usize,
    retry_delay: Duration,
}

/// First and longest wait before reading again when the database is unavailable.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Subscription {
    /// How many events one catch-up read takes.
    pub const BATCH_EVENTS_DEFAULT: usize = 512;

    /// A subscription to `$all` from a position (inclusive).
    pub fn all(store: Arc<dyn EventStore>, from_position: u64, filter: SubscriptionFilter) -> Self {
        Self::of(
            store,
            Source::All {
                next_position: from_position,
                filter,
            },
        )
    }

    /// A subscription to one stream from a revision (inclusive). It may start before the
    /// stream exists.
    pub fn stream(store: Arc<dyn EventStore>, stream: StreamName, from_revision: u64) -> Self {
        Self::of(
            store,
            Source::Stream {
                stream,
                next_revision: from_revision,
            },
        )
    }

    /// A subscription to the events matching a DCB query after a position (from the start
    /// without one), read through [`EventStore::read_query`].
    pub fn query(store: Arc<dyn EventStore>, query: Query, after: Option<u64>) -> Self {
        Self::of(
            store,
            Source::Query {
                query,
                next_position: after.map_or(0, |a| a.saturating_add(1)),
            },
        )
    }

    fn of(store: Arc<dyn EventStore>, source: Source) -> Self {
        let head = store.watch_head();
        Subscription {
            store,
            head,
            source,
            buffer: VecDeque::new(),
            batch_size: Self::BATCH_EVENTS_DEFAULT,
            retry_delay: Duration::ZERO,
        }
    }

    /// Reads up to `events` at a time from the store (default [`Self::BATCH_EVENTS_DEFAULT`]):
    /// a consumer that takes batches with [`Self::next_buffered`] gets batches up to this size.
    pub fn with_batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// For `$all` and queries: the position the subscription will look at next. Every event before it
    /// was delivered or filtered out, so a consumer may store `position() - 1` as its
    /// checkpoint even when the filter skips many events.
    pub fn position(&self) -> Option<u64> {
        match &self.source {
            Source::All { next_position, .. } | Source::Query { next_position, .. } => {
                Some(self.buffer.front().map_or(*next_position, |e| e.position))
            }
            Source::Stream { .. } => None,
        }
    }

    /// The next event if one is already read and waiting, without reading or waiting: lets a
    /// consumer take what one read brought in as a batch.
    pub fn next_buffered(&mut self) -> Option<RecordedEvent> {
        self.buffer.pop_front()
    }

    /// The next event: stored ones first, then live ones as they become durable.
    /// Fails with [`StoreError::Closed`] when the store is closed. While the database behind
    /// the store is unavailable it keeps trying, and resumes where it was.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            let head = *self.head.borrow_and_update();
            match self.fill(head).await {
                Ok(true) => {
                    self.retry_delay = Duration::ZERO;
                    continue;
                }
                Ok(false) => self.retry_delay = Duration::ZERO,
                // The database behind the store is away (restarting, say): try again, more
                // slowly each time, from the same place.
                Err(StoreError::Unavailable(_)) => {
                    self.retry_delay = (self.retry_delay * 2).clamp(RETRY_FIRST, RETRY_MAX);
                    tokio::time::sleep(self.retry_delay).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if self.head.changed().await.is_err() {
                // The store is gone; deliver what is left, then report it closed.
                if self.fill(u64::MAX).await? {
                    continue;
                }
                return Err(StoreError::Closed);
            }
        }
    }

    /// Reads the next batch below `head`; returns whether anything was read.
    async fn fill(&mut self, head: u64) -> Result<bool, StoreError> {
        match &mut self.source {
            Source::All {
                next_position,
                filter,
            } => {
                if *next_position >= head {
                    return Ok(false);
                }
                let events = self
                    .store
                    .read_all(*next_position, Direction::Forwards, self.batch_size)
                    .await?;
                let Some(last) = events.last() else {
                    // Nothing below the head but removed events (a scavenge took them): the
                    // subscription is past them.
                    if head != u64::MAX {
                        *next_position = head;
                    }
                    return Ok(false);
                };
                *next_position = last.position + 1;
                self.buffer
                    .extend(events.into_iter().filter(|e| filter.matches(e)));
                Ok(true)
            }
            Source::Query {
                query,
                next_position,
            } => {
                if *next_position >= head {
                    return Ok(false);
                }
                let read = self
                    .store
                    .read_query(
                        query,
                        next_position.checked_sub(1),
                        Direction::Forwards,
                        self.batch_size,
                    )
                    .await?;
                let before = *next_position;
                *next_position = match read.events.last() {
                    Some(last) if read.events.len() == self.batch_size => last.position + 1,
                    // Every match up to the head of the read is here.
                    _ => read.head.map_or(0, |h| h + 1).max(*next_position),
                };
                self.buffer.extend(read.events);
                Ok(*next_position > before)
            }
            Source::Stream {
                stream,
                next_revision,
            } => {
                let events = match self
                    .store
                    .read_stream(stream, *next_revision, Direction::Forwards, self.batch_size)
                    .await
                {
                    Ok(events) => events,
                    Err(StoreError::NotFound(_)) => Vec::new(),
                    Err(e) => return Err(e),
                };
                let Some(last) = events.last() else {
                    return Ok(false);
                };
                *next_revision = last.revision + 1;
                self.buffer.extend(events);
                Ok(true)
            }
        }
    }

    /// The subscription as a `futures` stream.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<RecordedEvent, StoreError>> + Send {
        futures::stream::unfold(Some(self), |state| async move {
            let mut subscription = state?;
            match subscription.next().await {
                Ok(event) => Some((Ok(event), Some(subscription))),
                Err(StoreError::Closed) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}
