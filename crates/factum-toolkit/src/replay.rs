//! Reading a whole stream, page by page, as the repository, the inbox, sagas and the dead-letter
//! lists all do.

use factum_core::{Direction, EventStore, RecordedEvent, StoreError, StreamName};

/// Events read per page.
pub(crate) const PAGE_EVENTS: usize = 4096;

/// Hands every event of `stream` from revision `from` on to `visit`, oldest first, a page at a
/// time. A stream that does not exist has no events.
pub async fn replay_stream<E: From<StoreError>>(
    store: &dyn EventStore,
    stream: &StreamName,
    from: u64,
    mut visit: impl FnMut(&RecordedEvent) -> Result<(), E>,
) -> Result<(), E> {
    let mut pages = StreamPages::new(store, stream, from);
    while let Some(page) = pages.next().await? {
        for event in &page {
            visit(event)?;
        }
    }
    Ok(())
}

/// The pages of a stream from a revision on, oldest first.
pub(crate) struct StreamPages<'a> {
    store: &'a dyn EventStore,
    stream: &'a StreamName,
    from: u64,
    done: bool,
}

impl<'a> StreamPages<'a> {
    pub(crate) fn new(store: &'a dyn EventStore, stream: &'a StreamName, from: u64) -> Self {
        StreamPages {
            store,
            stream,
            from,
            done: false,
        }
    }

    /// The next page; `None` after the last (a stream that does not exist has none).
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = match self
            .store
            .read_stream(self.stream, self.from, Direction::Forwards, PAGE_EVENTS)
            .await
        {
            Ok(page) => page,
            Err(StoreError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        // A short page is the end: no need to ask again.
        self.done = page.len() < PAGE_EVENTS;
        let Some(last) = page.last() else {
            self.done = true;
            return Ok(None);
        };
        self.from = last.revision + 1;
        Ok(Some(page))
    }
}
