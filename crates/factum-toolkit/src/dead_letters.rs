//! Dead letters: what an event processor's handler or a broker consumer could not take, parked
//! in the stream `$deadletter-{name}` with the reason, until a replay resolves it. Processors
//! park [`DeadLetter`]s, consumers parked messages (`MESSAGE_DEAD_LETTERED`); both are
//! counted, resolved and replayed through [`DeadLetters`].

use std::collections::HashSet;

use factum_core::{
    Direction, EventStore, ExpectedState, NewEvent, RecordedEvent, StoreError, StreamName,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::replay_stream;

/// A parked event: which handler of which processor failed on which event, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The id of the dead-letter record itself.
    #[serde(default)]
    pub id: Uuid,
    /// The processor.
    pub processor: String,
    /// The handler that failed.
    pub handler: String,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// The failed event's position in `$all`.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// Its revision.
    pub revision: u64,
    /// Its id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
}

/// What a replay of dead letters did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters whose handler (or command) now succeeded.
    pub resolved: usize,
    /// Dead letters that failed again (they stay parked).
    pub failed: usize,
}

/// The event type of a processor's [`DeadLetter`].
pub const DEAD_LETTERED: &str = "DeadLettered";
/// The event type of a broker message that a consumer parked. It is counted, resolved and
/// replayed like a processor's dead letter.
pub const MESSAGE_DEAD_LETTERED: &str = "MessageDeadLettered";
/// The event type that marks a dead letter resolved (its replay succeeded).
const RESOLVED: &str = "DeadLetterResolved";
/// The event type `factum deadletters replay` records to ask for a replay.
pub const REPLAY_REQUESTED: &str = "DeadLetterReplayRequested";
/// The event type that answers a replay request with what the replay did.
const REPLAY_DONE: &str = "DeadLetterReplayDone";

/// The dead-letter stream of a processor or consumer, `$deadletter-{name}`; refused when `name`
/// cannot name a stream.
pub fn dead_letter_stream(name: &str) -> Result<StreamName, StoreError> {
    crate::toolkit_stream("deadletter", name)
}

/// The dead-letter stream of one processor or consumer, `$deadletter-{name}`: parking, the
/// letters no replay has resolved, resolving them, and replay requests.
pub struct DeadLetters<'a> {
    store: &'a dyn EventStore,
    stream: StreamName,
}

impl<'a> DeadLetters<'a> {
    /// The dead letters of `name` in `store`; refused when `name` cannot name a stream.
    pub fn of(store: &'a dyn EventStore, name: &str) -> Result<Self, StoreError> {
        Ok(DeadLetters {
            store,
            stream: dead_letter_stream(name)?,
        })
    }

    /// The dead-letter stream, `$deadletter-{name}`.
    pub fn stream(&self) -> &StreamName {
        &self.stream
    }

    /// Parks a record (a [`DeadLetter`] as `DEAD_LETTERED`, a consumer's message as
    /// `MESSAGE_DEAD_LETTERED`).
    pub async fn park(&self, record: NewEvent) -> Result<(), StoreError> {
        self.append(record).await.map(drop)
    }

    /// Every parked record (processors' and consumers') that no replay has resolved yet,
    /// oldest first; none when the stream does not exist.
    pub async fn unresolved(&self) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut parked = Vec::new();
        let mut resolved: HashSet<Uuid> = HashSet::new();
        replay_stream(self.store, &self.stream, 0, |record| {
            match record.event_type.as_str() {
                DEAD_LETTERED | MESSAGE_DEAD_LETTERED => parked.push(record.clone()),
                RESOLVED => {
                    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&record.data)
                        && let Some(id) = value["dead_letter"].as_str().and_then(|s| s.parse().ok())
                    {
                        resolved.insert(id);
                    }
                }
                _ => {}
            }
            Ok::<_, StoreError>(())
        })
        .await?;
        parked.retain(|record| !resolved.contains(&record.id));
        Ok(parked)
    }

    /// The unresolved records of type `event_type`, decoded, each with `set_id` given the
    /// record's id; records that do not decode are left out.
    pub async fn unresolved_of<T: serde::de::DeserializeOwned>(
        &self,
        event_type: &str,
        set_id: impl Fn(&mut T, Uuid),
    ) -> Result<Vec<T>, StoreError> {
        Ok(self
            .unresolved()
            .await?
            .into_iter()
            .filter(|record| record.event_type == event_type)
            .filter_map(|record| {
                let mut letter = serde_json::from_slice::<T>(&record.data).ok()?;
                set_id(&mut letter, record.id);
                Some(letter)
            })
            .collect())
    }

    /// A processor's dead letters that no replay has resolved yet, oldest first.
    pub async fn processor_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.unresolved_of(DEAD_LETTERED, |letter: &mut DeadLetter, id| letter.id = id)
            .await
    }

    /// Marks the dead letter `dead_letter` resolved (its replay succeeded); `detail` is stored
    /// with the mark.
    pub async fn resolve(
        &self,
        dead_letter: Uuid,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut data = serde_json::json!({"dead_letter": dead_letter.to_string()});
        if let (Some(data), serde_json::Value::Object(detail)) = (data.as_object_mut(), detail) {
            data.extend(detail);
        }
        self.append(NewEvent::json(RESOLVED, &data)?)
            .await
            .map(drop)
    }

    /// Records a request that the processor or consumer replay its dead letters when it next
    /// starts (what `factum deadletters replay` does); returns the request's position.
    pub async fn request_replay(&self) -> Result<u64, StoreError> {
        let request = NewEvent::json(REPLAY_REQUESTED, &serde_json::json!({}))?;
        Ok(self.append(request).await?.position)
    }

    /// Whether a replay was requested and no replay has answered yet.
    pub async fn replay_requested(&self) -> Result<bool, StoreError> {
        match self
            .store
            .read_stream(&self.stream, u64::MAX, Direction::Backwards, 1)
            .await
        {
            Ok(last) => Ok(last
                .first()
                .is_some_and(|e| e.event_type == REPLAY_REQUESTED)),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Answers a replay request with what the replay did.
    pub async fn answer_replay(&self, report: &ReplayReport) -> Result<(), StoreError> {
        let done = NewEvent::json(
            REPLAY_DONE,
            &serde_json::json!({"resolved": report.resolved, "failed": report.failed}),
        )?;
        self.append(done).await.map(drop)
    }

    async fn append(&self, record: NewEvent) -> Result<factum_core::AppendResult, StoreError> {
        self.store
            .append(&self.stream, ExpectedState::Any, vec![record])
            .await
    }
}
