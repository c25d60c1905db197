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
    mut from: u64,
    mut visit: impl FnMut(&RecordedEvent) -> Result<(), E>,
) -> Result<(), E> {
    loop {
        let page = match store
            .read_stream(stream, from, Direction::Forwards, PAGE_EVENTS)
            .await
        {
            Ok(page) => page,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let Some(last) = page.last() else {
            return Ok(());
        };
        from = last.revision + 1;
        for event in &page {
            visit(event)?;
        }
        // A short page is the end: no need to ask again.
        if page.len() < PAGE_EVENTS {
            return Ok(());
        }
    }
}
