//! A store shared by the integration tests: another writer appends just before some of ours.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use factum_core::backend::catalog::WriteRequest;
use factum_core::{
    AppendOptions, AppendResult, CurrentRevision, Direction, RecordedEvent, Shared, StreamInfo,
    StreamMetadata,
};
use factum_core::{EventStore, ExpectedState, MemoryStore, NewEvent, StoreError, StreamName};

/// What the other writer appends before one of ours: given the stream, our events and how many
/// foreign writes were made so far, its events (appended with `ExpectedState::Any`), or `None`.
type Foreign = Box<dyn Fn(&StreamName, &[NewEvent], u64) -> Option<Vec<NewEvent>> + Send + Sync>;

/// A store in memory where another writer appends to a stream just before some of our appends.
pub struct Interfering {
    pub inner: MemoryStore,
    /// Foreign writes made so far.
    pub foreign_writes: AtomicU64,
    foreign: Foreign,
}

impl Interfering {
    pub fn new(
        foreign: impl Fn(&StreamName, &[NewEvent], u64) -> Option<Vec<NewEvent>> + Send + Sync + 'static,
    ) -> Self {
        Interfering {
            inner: MemoryStore::new(),
            foreign_writes: AtomicU64::new(0),
            foreign: Box::new(foreign),
        }
    }
}

/// Subscriptions read the inner store: the other writer only appends.
impl Shared for Interfering {
    fn shared(&self) -> std::sync::Arc<dyn EventStore> {
        self.inner.shared()
    }
}

#[async_trait]
impl EventStore for Interfering {
    async fn write(&self, request: WriteRequest) -> Result<AppendResult, StoreError> {
        self.inner.write(request).await
    }
    async fn append_with(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
        options: AppendOptions,
    ) -> Result<AppendResult, StoreError> {
        let made = self.foreign_writes.load(Ordering::SeqCst);
        if let Some(foreign) = (self.foreign)(stream, &events, made) {
            self.foreign_writes.fetch_add(1, Ordering::SeqCst);
            self.inner
                .append(stream, ExpectedState::Any, foreign)
                .await?;
        }
        self.inner
            .append_with(stream, expected, events, options)
            .await
    }
    async fn read_stream(
        &self,
        s: &StreamName,
        f: u64,
        d: Direction,
        l: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(s, f, d, l).await
    }
    async fn read_all(
        &self,
        f: u64,
        d: Direction,
        l: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(f, d, l).await
    }
    fn head(&self) -> u64 {
        self.inner.head()
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
    async fn stream_revision(&self, s: &StreamName) -> Result<CurrentRevision, StoreError> {
        self.inner.stream_revision(s).await
    }
    async fn get_metadata(&self, s: &StreamName) -> Result<Option<StreamMetadata>, StoreError> {
        self.inner.get_metadata(s).await
    }
    async fn list_streams(
        &self,
        p: &str,
        a: Option<&StreamName>,
        l: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.list_streams(p, a, l).await
    }
    async fn read_checkpoint(&self, c: &str) -> Result<Option<u64>, StoreError> {
        self.inner.read_checkpoint(c).await
    }
    async fn claim(&self, name: &str) -> Result<Option<factum_core::Claim>, StoreError> {
        self.inner.claim(name).await
    }
}
