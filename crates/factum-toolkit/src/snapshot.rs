//! Snapshots of an aggregate's state, so that loading a long stream does not replay it whole.
//!
//! A snapshot is an event of type `Snapshot` in the stream `$snapshot-<stream>`, beside the
//! aggregate's stream, in the same store. Its data is the state as JSON; its metadata names the
//! state's schema version ([`Decider::state_version`](crate::Decider::state_version)), and the
//! revision and id of the last event folded into it. A snapshot is used only when all three
//! still hold: the version is today's, and the stream still has that event at that revision
//! (so a stream deleted and written again is replayed from its events). Anything else — a
//! changed version, a state that no longer decodes — is ignored and the stream is replayed.

use std::time::Duration;

use bytes::Bytes;
use factum_core::{ContentType, Direction, EventStore, NewEvent, StoreError, StreamName};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The event type of a stored snapshot.
pub const SNAPSHOT_EVENT_TYPE: &str = "Snapshot";

/// The snapshot stream beside `stream`: `$snapshot-<stream>`.
pub fn snapshot_stream(stream: &StreamName) -> Result<StreamName, StoreError> {
    crate::toolkit_stream("snapshot", stream.as_str())
}

/// What a snapshot's metadata records.
#[derive(Serialize, Deserialize)]
struct SnapshotMeta {
    #[serde(rename = "$stateVersion")]
    state_version: u32,
    #[serde(rename = "$revision")]
    revision: u64,
    #[serde(rename = "$eventId")]
    event_id: Uuid,
}

/// When a repository saves a snapshot: after a command, once enough events were folded since
/// the newest snapshot, or once the newest snapshot is old enough — whichever the policy names
/// comes first.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use std::time::Duration;
/// use factum::SnapshotPolicy;
/// // Every 500 events, and at least hourly for an aggregate that changed since.
/// let policy = SnapshotPolicy::every_events(500).or_every(Duration::from_secs(3600));
/// # let _ = policy;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    events: Option<u64>,
    interval: Option<Duration>,
}

impl SnapshotPolicy {
    /// Once `events` (at least 1) were folded since the newest snapshot, or since the start of
    /// the stream when it has none.
    pub fn every_events(events: u64) -> Self {
        SnapshotPolicy {
            events: Some(events.max(1)),
            interval: None,
        }
    }

    /// Once the newest snapshot was recorded `interval` ago or earlier (or, when the stream has
    /// none, its first event was): a command that changes an aggregate whose snapshot is
    /// older than that saves a new one, however few events it folded since.
    pub fn every(interval: Duration) -> Self {
        SnapshotPolicy {
            events: None,
            interval: Some(interval),
        }
    }

    /// This policy, and also every `events` events.
    pub fn or_every_events(mut self, events: u64) -> Self {
        self.events = Some(events.max(1));
        self
    }

    /// This policy, and also every `interval`.
    pub fn or_every(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Whether a snapshot is due after `folded` events since the last one (or the start),
    /// that one (or the first event) recorded at `since_us` (µs since the Unix epoch), at
    /// `now_us`.
    pub(crate) fn due(&self, folded: u64, since_us: Option<u64>, now_us: u64) -> bool {
        let by_count = self.events.is_some_and(|every| folded >= every);
        let by_time = match (self.interval, since_us) {
            (Some(interval), Some(since)) => {
                folded > 0 && now_us.saturating_sub(since) >= interval.as_micros() as u64
            }
            _ => false,
        };
        by_count || by_time
    }
}

/// How a repository takes and reads snapshots of states of type `S`: the policy, and the state's
/// JSON encoding (fixed where `S` is known to be serde).
pub(crate) struct Snapshots<S> {
    /// When to save one.
    pub policy: SnapshotPolicy,
    /// The state's schema version today.
    pub version: u32,
    pub encode: fn(&S) -> serde_json::Result<Vec<u8>>,
    pub decode: fn(&[u8]) -> serde_json::Result<S>,
}

/// A usable snapshot: the state after the event at `revision`.
pub(crate) struct Found<S> {
    pub state: S,
    pub revision: u64,
    /// When the snapshot was recorded (µs since the Unix epoch).
    pub recorded_at_us: u64,
}

impl<S> Snapshots<S> {
    /// The newest snapshot of `stream`, if there is one this code can use.
    pub async fn load(
        &self,
        store: &dyn EventStore,
        stream: &StreamName,
    ) -> Result<Option<Found<S>>, StoreError> {
        // A stream name too long to prefix has no snapshots.
        let Ok(beside) = snapshot_stream(stream) else {
            return Ok(None);
        };
        let newest = match store
            .read_stream(&beside, u64::MAX, Direction::Backwards, 1)
            .await
        {
            Ok(mut page) => match page.pop() {
                Some(event) => event,
                None => return Ok(None),
            },
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta: SnapshotMeta = match serde_json::from_slice(&newest.metadata) {
            Ok(meta) => meta,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot metadata unreadable; replaying");
                return Ok(None);
            }
        };
        if meta.state_version != self.version {
            tracing::debug!(
                %stream,
                stored = meta.state_version,
                current = self.version,
                "snapshot of another state version; replaying"
            );
            return Ok(None);
        }
        // The event the snapshot was taken after must still be there, as it was.
        let at = match store
            .read_stream(stream, meta.revision, Direction::Forwards, 1)
            .await
        {
            Ok(page) => page,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !at
            .first()
            .is_some_and(|e| e.revision == meta.revision && e.id == meta.event_id)
        {
            tracing::debug!(%stream, revision = meta.revision, "snapshot no longer matches the stream; replaying");
            return Ok(None);
        }
        let opened = match crate::personal::open_bytes(store, &newest.data).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot's personal data does not open; replaying");
                return Ok(None);
            }
        };
        match (self.decode)(opened.as_deref().unwrap_or(&newest.data)) {
            Ok(state) => Ok(Some(Found {
                state,
                revision: meta.revision,
                recorded_at_us: newest.recorded_at_us,
            })),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot state does not decode; replaying");
                Ok(None)
            }
        }
    }

    /// Saves `state`, the state after event `event_id` at `revision` of `stream`.
    pub async fn save(
        &self,
        store: &dyn EventStore,
        stream: &StreamName,
        state: &S,
        revision: u64,
        event_id: Uuid,
    ) -> Result<(), StoreError> {
        let Ok(beside) = snapshot_stream(stream) else {
            return Ok(());
        };
        let data = (self.encode)(state)
            .map_err(|e| StoreError::invalid(format!("state does not serialise: {e}")))?;
        // Personal data in the state is stored sealed, as in the events.
        let data = crate::personal::seal_bytes(store, data)
            .await
            .map_err(|e| StoreError::invalid(e.to_string()))?;
        let metadata = serde_json::to_vec(&SnapshotMeta {
            state_version: self.version,
            revision,
            event_id,
        })
        .map_err(|e| StoreError::invalid(e.to_string()))?;
        let event = NewEvent {
            id: Uuid::now_v7(),
            event_type: SNAPSHOT_EVENT_TYPE.to_owned(),
            content_type: ContentType::Json,
            data: Bytes::from(data),
            metadata: Bytes::from(metadata),
            tags: Vec::new(),
        };
        store
            .append(&beside, factum_core::ExpectedState::Any, vec![event])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_US: u64 = 3_600_000_000;

    #[test]
    fn a_policy_is_due_by_count_or_by_age_whichever_it_names() {
        let count = SnapshotPolicy::every_events(10);
        assert!(!count.due(9, Some(0), 10 * HOUR_US));
        assert!(count.due(10, None, 0));

        let age = SnapshotPolicy::every(Duration::from_secs(3600));
        assert!(
            !age.due(1_000_000, Some(0), HOUR_US - 1),
            "count is not its trigger"
        );
        assert!(age.due(1, Some(0), HOUR_US));
        assert!(!age.due(0, Some(0), 2 * HOUR_US), "nothing folded since");
        assert!(!age.due(5, None, HOUR_US), "nothing to be old yet");
        assert!(
            !age.due(1, Some(2 * HOUR_US), HOUR_US),
            "a clock behind is not old"
        );

        let both = count.or_every(Duration::from_secs(3600));
        assert!(both.due(10, Some(HOUR_US), HOUR_US));
        assert!(both.due(1, Some(0), HOUR_US));
        assert!(!both.due(9, Some(1), HOUR_US));
        assert_eq!(both, age.or_every_events(10));
        assert_eq!(
            SnapshotPolicy::every_events(0),
            SnapshotPolicy::every_events(1)
        );
    }
}
