//! Scavenging: reclaiming the space of events that their stream's metadata hides for good
//! (SPEC R1.10). What goes is decided here, the same way for every backend; each backend
//! removes it in its own way and keeps every position, revision and guarantee.
//!
//! An event goes when, at the time of the scavenge, it is hidden by its stream's state: below
//! a soft delete's cut, of a tombstoned stream, below truncate-before, beyond max-count, or
//! older than max-age. A stream's newest record always stays (its revision and id answer
//! expected revisions and idempotent retries), and so do all records of metadata streams
//! (`$$…`); of a consumer's checkpoint stream (`$checkpoint-…`) only the newest, which is in
//! force, stays. Nothing at or past the scavenge's bound goes: by default the lowest checkpoint
//! stored in the store, so that no consumer misses an event it has not read yet.

use serde::{Deserialize, Serialize};

use crate::backend::catalog::{StreamState, visible_by_age};
use crate::{EventStore, StoreError, StreamName};

/// What a scavenge is asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScavengeOptions {
    /// Only events below this position may go (`None`: up to the end of what the backend
    /// can rewrite). [`checkpoint_bound`] gives the default.
    pub below: Option<u64>,
}

/// What a scavenge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScavengeReport {
    /// The bound it stopped at (`None`: none was given).
    pub below: Option<u64>,
    /// Events looked at.
    pub events_examined: u64,
    /// Events removed (their positions and revisions stay taken).
    pub events_removed: u64,
    /// Segment files rewritten (the embedded store) or batches deleted (PostgreSQL).
    pub segments_rewritten: u64,
    /// Bytes the log took before.
    pub bytes_before: u64,
    /// Bytes it takes after.
    pub bytes_after: u64,
}

impl ScavengeReport {
    /// Bytes given back.
    pub fn bytes_reclaimed(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
    }
}

/// The prefix of the streams that hold consumers' checkpoints.
pub const CHECKPOINT_PREFIX: &str = "$checkpoint-";

/// Whether the record at `revision` of `stream`, recorded at `recorded_at_us`, is hidden for
/// good by the stream's state `state` at `now_us`: a scavenge may remove it.
pub fn hidden_for_good(
    stream: &str,
    state: &StreamState,
    revision: u64,
    recorded_at_us: u64,
    now_us: u64,
) -> bool {
    let len = state.positions.len() as u64;
    if revision.saturating_add(1) >= len || stream.starts_with("$$") {
        return false;
    }
    if stream.starts_with(CHECKPOINT_PREFIX) || state.tombstoned {
        return true;
    }
    let mut first_visible = state.deleted_before;
    if let Some(metadata) = state.metadata.as_deref() {
        if let Some(before) = metadata.truncate_before {
            first_visible = first_visible.max(before);
        }
        if let Some(max_count) = metadata.max_count {
            first_visible = first_visible.max(len.saturating_sub(max_count));
        }
        if revision >= first_visible
            && !visible_by_age(metadata.max_age_secs, recorded_at_us, now_us)
        {
            return true;
        }
    }
    revision < first_visible
}

/// The lowest checkpoint stored in `store` (the `$checkpoint-…` streams of relays, processors,
/// sagas and consumers): a scavenge bounded by it removes nothing a consumer has not read.
/// `None` when no checkpoint is stored.
pub async fn checkpoint_bound(store: &dyn EventStore) -> Result<Option<u64>, StoreError> {
    let mut lowest: Option<u64> = None;
    let mut after: Option<StreamName> = None;
    loop {
        let page = store
            .list_streams(CHECKPOINT_PREFIX, after.as_ref(), 1000)
            .await?;
        for info in &page {
            let consumer = info
                .name
                .as_str()
                .strip_prefix(CHECKPOINT_PREFIX)
                .unwrap_or_default();
            if let Some(position) = store.read_checkpoint(consumer).await? {
                lowest = Some(lowest.map_or(position, |l| l.min(position)));
            }
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.name.clone()),
            _ => return Ok(lowest),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::StreamMetadata;

    fn state(len: u64) -> StreamState {
        StreamState {
            positions: (0..len).collect(),
            ..StreamState::default()
        }
    }

    #[test]
    fn what_metadata_hides_goes_and_the_newest_record_stays() {
        let now = 10_000_000_000;
        let plain = state(5);
        assert!((0..5).all(|r| !hidden_for_good("s", &plain, r, 0, now)));
        let mut counted = state(5);
        counted.metadata = Some(Box::new(StreamMetadata {
            max_count: Some(2),
            ..StreamMetadata::default()
        }));
        let gone: Vec<_> = (0..5)
            .filter(|r| hidden_for_good("s", &counted, *r, 0, now))
            .collect();
        assert_eq!(gone, [0, 1, 2]);
        let mut tombstoned = state(3);
        tombstoned.tombstoned = true;
        assert!(hidden_for_good("s", &tombstoned, 1, 0, now));
        assert!(!hidden_for_good("s", &tombstoned, 2, 0, now));
        let mut deleted = state(4);
        deleted.deleted_before = 4;
        assert!(hidden_for_good("s", &deleted, 2, 0, now));
        assert!(!hidden_for_good("s", &deleted, 3, 0, now));
        let mut aged = state(3);
        aged.metadata = Some(Box::new(StreamMetadata {
            max_age_secs: Some(60),
            ..StreamMetadata::default()
        }));
        assert!(hidden_for_good("s", &aged, 0, now - 61_000_000, now));
        assert!(!hidden_for_good("s", &aged, 1, now - 59_000_000, now));
        assert!(!hidden_for_good("s", &aged, 2, 0, now));
        assert!(hidden_for_good("$checkpoint-relay", &state(3), 1, 0, now));
        assert!(!hidden_for_good("$checkpoint-relay", &state(3), 2, 0, now));
        assert!(!hidden_for_good("$$s", &tombstoned, 0, 0, now));
    }
}
