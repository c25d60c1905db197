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

use crate::backend::catalog::StreamState;
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

/// Which events of one stream a scavenge may remove: those below revision `newest` (the
/// stream's newest record stays) that are below `below_revision` or, when `recorded_before_us`
/// is set, were recorded before it (older than the maximum age).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HiddenRule {
    /// The stream's newest revision: it and what follows stay.
    pub newest: u64,
    /// Revisions below this are hidden (soft delete, truncate before, max count, tombstone).
    pub below_revision: u64,
    /// Events recorded before this time (microseconds since the epoch) are hidden.
    pub recorded_before_us: Option<u64>,
}

/// What a scavenge at `now_us` may remove of `stream`, which has `len` revisions, is
/// soft-deleted below `deleted_before`, maybe tombstoned, and has `metadata`; `None` when
/// nothing (a metadata stream, or a stream whose metadata hides nothing).
pub fn hidden_rule(
    stream: &str,
    len: u64,
    deleted_before: u64,
    tombstoned: bool,
    metadata: Option<&crate::StreamMetadata>,
    now_us: u64,
) -> Option<HiddenRule> {
    let newest = len.checked_sub(1)?;
    if stream.starts_with("$$") || newest == 0 {
        return None;
    }
    if stream.starts_with(CHECKPOINT_PREFIX) || tombstoned {
        return Some(HiddenRule {
            newest,
            below_revision: newest,
            recorded_before_us: None,
        });
    }
    let mut below_revision = deleted_before;
    let mut recorded_before_us = None;
    if let Some(metadata) = metadata {
        if let Some(before) = metadata.truncate_before {
            below_revision = below_revision.max(before);
        }
        if let Some(max_count) = metadata.max_count {
            below_revision = below_revision.max(len.saturating_sub(max_count));
        }
        recorded_before_us = metadata
            .max_age_secs
            .map(|age| now_us.saturating_sub(age.saturating_mul(1_000_000)));
    }
    let below_revision = below_revision.min(newest);
    (below_revision > 0 || recorded_before_us.is_some()).then_some(HiddenRule {
        newest,
        below_revision,
        recorded_before_us,
    })
}

impl HiddenRule {
    /// Whether the event at `revision`, recorded at `recorded_at_us`, goes.
    pub fn hides(&self, revision: u64, recorded_at_us: u64) -> bool {
        revision < self.newest
            && (revision < self.below_revision
                || self
                    .recorded_before_us
                    .is_some_and(|before| recorded_at_us < before))
    }
}

/// Whether the record at `revision` of `stream`, recorded at `recorded_at_us`, is hidden for
/// good by the stream's state `state` at `now_us`: a scavenge may remove it.
pub fn hidden_for_good(
    stream: &str,
    state: &StreamState,
    revision: u64,
    recorded_at_us: u64,
    now_us: u64,
) -> bool {
    hidden_rule(
        stream,
        state.positions.len() as u64,
        state.deleted_before,
        state.tombstoned,
        state.metadata.as_deref(),
        now_us,
    )
    .is_some_and(|rule| rule.hides(revision, recorded_at_us))
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
