//! An inbox makes a handler idempotent by event id: an event whose id the inbox has seen is
//! not handled again. The ids are kept in the stream `$inbox-{name}`, so they survive restarts.
//!
//! The effect and the record of it are two steps: a crash between them lets the effect happen
//! again. Where the effect is itself an append to the store, prefer deterministic event ids
//! (for example [`Inbox::derived_id`]), which make the append idempotent on its own.

use factum_core::IntoStore;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use factum_core::{EventStore, ExpectedState, NewEvent, RecordedEvent, StoreError, StreamName};
use uuid::Uuid;

use crate::replay::replay_stream;

/// Remembers which events were handled, so that a handler runs its effect once per event id.
/// The ids are kept in the stream `$inbox-{name}`, so they survive restarts.
///
/// The effect and the record of it are two steps: a crash between them lets the effect happen
/// again. Where the effect is itself an append to the store, prefer deterministic event ids
/// (for example [`Inbox::derived_id`]), which make the append idempotent on its own.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
/// use std::sync::Arc;
/// use factum::{Direction, EventStore, ExpectedState, Inbox, MemoryStore, NewEvent, StoreError,
///              StreamName};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
/// let vip = NewEvent::json("CustomerBecameVip", &serde_json::json!({})).unwrap();
/// let stream = StreamName::user("history-ann").unwrap();
/// store.append(&stream, ExpectedState::Any, vec![vip]).await.unwrap();
/// let event = store.read_stream(&stream, 0, Direction::Forwards, 1).await.unwrap().remove(0);
///
/// let inbox = Inbox::open(store.clone(), "congratulations").await.unwrap();
/// let mut sent = 0;
/// for _delivery in 0..2 {
///     inbox.once(&event, || async { sent += 1; Ok::<_, StoreError>(()) }).await.unwrap();
/// }
/// assert_eq!(sent, 1);
/// // A restarted service opens the inbox again and still knows.
/// let inbox = Inbox::open(store, "congratulations").await.unwrap();
/// let again = inbox.once(&event, || async { Ok::<_, StoreError>(()) }).await.unwrap();
/// assert!(again.is_none());
/// # });
/// ```
pub struct Inbox {
    store: Arc<dyn EventStore>,
    stream: StreamName,
    // Held across the effect, so that two deliveries of one event at once run it once.
    seen: tokio::sync::Mutex<HashSet<Uuid>>,
}

impl Inbox {
    /// Opens the inbox `name`, loading the ids it has recorded.
    pub async fn open(store: impl IntoStore, name: &str) -> Result<Self, StoreError> {
        let store = store.into_store();
        let stream = crate::toolkit_stream("inbox", name)?;
        let mut seen = HashSet::new();
        replay_stream(store.as_ref(), &stream, 0, |record| {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&record.data)
                && let Some(id) = value["event_id"].as_str().and_then(|s| s.parse().ok())
            {
                seen.insert(id);
            }
            Ok::<_, StoreError>(())
        })
        .await?;
        Ok(Inbox {
            store,
            stream,
            seen: tokio::sync::Mutex::new(seen),
        })
    }

    /// Runs `effect` for `event` unless this inbox has already seen the event; records it
    /// when the effect succeeds. Returns `Ok(None)` for an event seen before.
    pub async fn once<T, E, F, Fut>(&self, event: &RecordedEvent, effect: F) -> Result<Option<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<StoreError>,
    {
        let mut seen = self.seen.lock().await;
        if seen.contains(&event.id) {
            return Ok(None);
        }
        let value = effect().await?;
        let record = NewEvent::json(
            "Handled",
            &serde_json::json!({ "event_id": event.id.to_string() }),
        )
        .map_err(E::from)?;
        self.store
            .append(&self.stream, ExpectedState::Any, vec![record])
            .await
            .map_err(E::from)?;
        seen.insert(event.id);
        Ok(Some(value))
    }

    /// A deterministic id for an event a handler appends in reaction to `source`: the same
    /// source and purpose always give the same id.
    pub fn derived_id(source: &RecordedEvent, purpose: &str) -> Uuid {
        Uuid::new_v5(&source.id, purpose.as_bytes())
    }
}
