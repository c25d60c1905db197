use uuid::Uuid;

/// Who sent a command and why: carried into the metadata of every event the command produces
/// (`$correlationId`, `$causationId`, `$user`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandContext {
    /// The command's own id.
    pub command_id: Uuid,
    /// The id shared by everything one request set off.
    pub correlation_id: String,
    /// The id of what caused this command (the command itself when a user sent it).
    pub causation_id: String,
    /// Who sent it, if known.
    pub user: Option<String>,
    /// The command id names the request, not one attempt at it: a repository executes the
    /// command at most once per aggregate, and a second delivery with the same id finds the
    /// first one's events and changes nothing ([`Executed::duplicate`](crate::Executed)).
    pub idempotent: bool,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandContext {
    /// A context for a command a user sent: a fresh id that is also its correlation and
    /// causation id.
    pub fn new() -> Self {
        CommandContext {
            idempotent: false,
            ..Self::with_id(Uuid::now_v7())
        }
    }

    /// A context whose command id is `id`, chosen by the sender so that a retry or a
    /// redelivery of the same request carries it again: the command is executed at most once
    /// per aggregate.
    ///
    /// ```
    /// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
    /// use factum::{CommandContext, Decider, MemoryStore, Repository};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)]
    /// # enum Event { Incremented }
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("never")]
    /// # struct Never;
    /// # struct Counter;
    /// # impl Decider for Counter {
    /// #     type State = u64; type Command = (); type Event = Event; type Error = Never;
    /// #     const CATEGORY: &'static str = "counter";
    /// #     fn initial_state(&self) -> u64 { 0 }
    /// #     fn decide(&self, _: &u64, _: &()) -> Result<Vec<Event>, Never> { Ok(vec![Event::Incremented]) }
    /// #     fn evolve(&self, n: u64, _: &Event) -> u64 { n + 1 }
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let counters = Repository::new(MemoryStore::new(), Counter);
    /// let request = CommandContext::with_id(uuid::Uuid::now_v7());
    /// let first = counters.execute("c-1", (), &request).await.unwrap();
    /// let again = counters.execute("c-1", (), &request).await.unwrap();
    /// assert!(!first.duplicate && again.duplicate);
    /// assert_eq!(counters.load("c-1").await.unwrap().state, 1);
    /// # });
    /// ```
    pub fn with_id(id: Uuid) -> Self {
        CommandContext {
            command_id: id,
            correlation_id: id.to_string(),
            causation_id: id.to_string(),
            user: None,
            idempotent: true,
        }
    }

    /// A context for the command a received message asks for: its id is derived from the
    /// message id (so every delivery of the message carries the same one, and the command is
    /// executed at most once per aggregate), it is caused by the message, and it carries the
    /// message's correlation id (the message id when it has none).
    pub fn from_message(message_id: &str, correlation_id: Option<&str>) -> Self {
        CommandContext {
            command_id: Self::derived_id(message_id, "message"),
            correlation_id: correlation_id.unwrap_or(message_id).to_owned(),
            causation_id: message_id.to_owned(),
            user: None,
            idempotent: true,
        }
    }

    /// A deterministic command id for `purpose` in reaction to `source`: the same pair always
    /// gives the same id.
    pub fn derived_id(source: &str, purpose: &str) -> Uuid {
        let source = Uuid::new_v5(&Uuid::NAMESPACE_OID, source.as_bytes());
        Uuid::new_v5(&source, purpose.as_bytes())
    }

    /// Names the user who sent it.
    pub fn by(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// A context for a command caused by a recorded event (a process manager, a saga): same
    /// correlation as the event, caused by the event.
    ///
    /// ```
    /// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; }
    /// use factum::{CommandContext, Direction, EventStore, ExpectedState, MemoryStore, StreamName};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let user = CommandContext::new().by("ann");
    /// let placed = factum::NewEvent::json("OrderPlaced", &serde_json::json!({})).unwrap()
    ///     .with_metadata(&user.metadata(1)).unwrap();
    /// let stream = StreamName::user("order-1").unwrap();
    /// store.append(&stream, ExpectedState::Any, vec![placed]).await.unwrap();
    /// let event = store.read_stream(&stream, 0, Direction::Forwards, 1).await.unwrap().remove(0);
    ///
    /// let follow_up = CommandContext::caused_by(&event);
    /// assert_eq!(follow_up.correlation_id, user.correlation_id);
    /// assert_eq!(follow_up.causation_id, event.id.to_string());
    /// assert_eq!(follow_up.user.as_deref(), Some("ann"));
    /// # });
    /// ```
    pub fn caused_by(event: &factum_core::RecordedEvent) -> Self {
        let metadata = event.metadata_json();
        let correlation_id = metadata
            .get("$correlationId")
            .and_then(|v| v.as_str())
            .map_or_else(|| event.id.to_string(), str::to_owned);
        CommandContext {
            command_id: Uuid::now_v7(),
            correlation_id,
            causation_id: event.id.to_string(),
            user: metadata
                .get("$user")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            idempotent: false,
        }
    }

    /// The metadata every event this command produces carries.
    pub fn metadata(&self, schema_version: u32) -> serde_json::Value {
        let mut metadata = serde_json::json!({
            "$correlationId": self.correlation_id,
            "$causationId": self.causation_id,
            "$commandId": self.command_id.to_string(),
            "$schemaVersion": schema_version,
        });
        if let (Some(user), Some(map)) = (&self.user, metadata.as_object_mut()) {
            map.insert("$user".into(), serde_json::Value::from(user.clone()));
        }
        metadata
    }
}
