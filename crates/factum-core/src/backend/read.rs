//! Reads every backend does the same way.

use std::future::Future;

use crate::backend::catalog;
use crate::{Direction, RecordedEvent, StoreError, now_micros};

/// A page of a stream as every backend reads it. `read(from, asked)` returns up to `asked`
/// of the events the stream's metadata and soft delete leave visible from revision `from` on,
/// in `direction`, and the stream's maximum age. Events older than the maximum age are
/// dropped; a forwards page that lost some to it reads on after the last revision read
/// (`catalog::read_on_after_age`), so the page is full whenever more visible events follow.
pub async fn read_visible<F, Fut>(
    from_revision: u64,
    direction: Direction,
    limit: usize,
    mut read: F,
) -> Result<Vec<RecordedEvent>, StoreError>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: Future<Output = Result<(Vec<RecordedEvent>, Option<u64>), StoreError>>,
{
    let mut from = from_revision;
    let mut visible: Vec<RecordedEvent> = Vec::new();
    loop {
        let asked = limit - visible.len();
        let (mut events, max_age) = read(from, asked).await?;
        if max_age.is_none() && visible.is_empty() {
            return Ok(events);
        }
        let planned = events.len();
        let last = events.last().map(|e| e.revision);
        let now = now_micros();
        events.retain(|e| catalog::visible_by_age(max_age, e.recorded_at_us, now));
        visible.append(&mut events);
        if max_age.is_none() {
            return Ok(visible);
        }
        match catalog::read_on_after_age(direction, planned, asked, visible.len(), limit, last) {
            Some(next) => from = next,
            None => return Ok(visible),
        }
    }
}
