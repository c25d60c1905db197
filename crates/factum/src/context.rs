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
        let command_id = Uuid::now_v7();
        CommandContext {
            command_id,
            correlation_id: command_id.to_string(),
            causation_id: command_id.to_string(),
            user: None,
        }
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
