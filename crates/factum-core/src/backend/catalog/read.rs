//! Which revisions a read of a stream returns.

use crate::{Direction, StoreError, StreamMetadata, StreamName};

/// The revisions a stream read may return, before the limit and the max-age filter: `len`
/// revisions were written, those below `deleted_before` were soft-deleted, and the metadata may
/// hide more (truncate before, max count). Read backwards, the range is walked from its end.
/// A stream with no visible revision left by a soft delete is [`StoreError::NotFound`].
pub fn read_range(
    stream: &StreamName,
    len: u64,
    deleted_before: u64,
    metadata: Option<&StreamMetadata>,
    from_revision: u64,
    direction: Direction,
) -> Result<std::ops::Range<u64>, StoreError> {
    if len <= deleted_before {
        return Err(StoreError::NotFound(stream.to_string()));
    }
    let mut first_visible = deleted_before;
    if let Some(metadata) = metadata {
        if let Some(before) = metadata.truncate_before {
            first_visible = first_visible.max(before);
        }
        if let Some(max_count) = metadata.max_count {
            first_visible = first_visible.max(len.saturating_sub(max_count));
        }
    }
    Ok(match direction {
        Direction::Forwards => from_revision.max(first_visible).min(len)..len,
        Direction::Backwards => {
            let end = from_revision.min(len - 1) + 1;
            first_visible.min(end)..end
        }
    })
}

/// Where a forwards read of a stream with a maximum age goes on, or `None` when it is done.
/// The age hides a stream's oldest events, so a page of `planned` events (of `asked`) can come
/// back with fewer visible ones while later events are visible: the read goes on after `last`
/// (the last revision read) until `limit` events are visible or the stream ends. Backwards,
/// a hidden event means every older one is hidden too.
pub fn read_on_after_age(
    direction: Direction,
    planned: usize,
    asked: usize,
    visible: usize,
    limit: usize,
    last: Option<u64>,
) -> Option<u64> {
    if direction == Direction::Backwards || visible >= limit || planned < asked {
        return None;
    }
    last.map(|revision| revision + 1)
}

/// Whether an event recorded at `recorded_at_us` is young enough for a stream's max age.
pub fn visible_by_age(max_age_secs: Option<u64>, recorded_at_us: u64, now_us: u64) -> bool {
    match max_age_secs {
        None => true,
        Some(max_age) => now_us.saturating_sub(recorded_at_us) <= max_age.saturating_mul(1_000_000),
    }
}
