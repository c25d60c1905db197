use uuid::Uuid;

/// Who sent a command and why: carried into the metadata of every event the command produces
/// (`$correlationId`, `$causationId`, `$user`, and the trace context as `$traceparent`).
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
    /// The trace context the command runs in (W3C Trace Context `traceparent`), if any: the
    /// events it produces carry it, relays put it in their messages' headers, and the
    /// commands they cause elsewhere continue the trace.
    pub traceparent: Option<String>,
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

    /// [`CommandContext::new`], in the trace of the current `tracing` span (when an
    /// OpenTelemetry layer gave it one): a request handler's span, say.
    pub fn in_current_trace() -> Self {
        let context = Self::new();
        match crate::trace::traceparent_of(&tracing::Span::current()) {
            Some(trace) => context.in_trace(&trace),
            None => context,
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
            traceparent: None,
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
            traceparent: None,
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

    /// Runs the command in the trace `traceparent` (W3C Trace Context, as a request's
    /// `traceparent` header carries it). One that is not a valid `traceparent` is ignored, as
    /// the standard asks.
    pub fn in_trace(mut self, traceparent: &str) -> Self {
        self.traceparent = valid_traceparent(traceparent).map(str::to_owned);
        self
    }

    /// Continues the trace of `traceparent` (the context of a message or an event that caused
    /// the command): the same trace, a new span of its own whose parent is that one. Nothing
    /// changes when it is not a valid `traceparent`.
    pub fn continuing(mut self, traceparent: &str) -> Self {
        if let Some(child) = child_traceparent(traceparent) {
            self.traceparent = Some(child);
        }
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
            traceparent: metadata
                .get(TRACEPARENT_KEY)
                .and_then(|v| v.as_str())
                .and_then(child_traceparent),
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
        if let Some(map) = metadata.as_object_mut() {
            if let Some(user) = &self.user {
                map.insert("$user".into(), serde_json::Value::from(user.clone()));
            }
            if let Some(trace) = &self.traceparent {
                map.insert(
                    TRACEPARENT_KEY.into(),
                    serde_json::Value::from(trace.clone()),
                );
            }
        }
        metadata
    }
}

/// The metadata key of the trace context an event was recorded in (W3C `traceparent`).
pub const TRACEPARENT_KEY: &str = "$traceparent";

/// `text` if it is a `traceparent` of version `00`: `00-{32 hex trace id}-{16 hex parent
/// id}-{2 hex flags}`, lower case, neither id all zeros.
pub fn valid_traceparent(text: &str) -> Option<&str> {
    traceparent_parts(text).map(|_| text)
}

/// The trace id, parent id and flags of a valid `traceparent` ([`valid_traceparent`]).
pub(crate) fn traceparent_parts(text: &str) -> Option<(&str, &str, &str)> {
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |part: &str| part.bytes().any(|b| b != b'0');
    (parts.next().is_none()
        && version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && nonzero(trace)
        && nonzero(parent))
    .then_some((trace, parent, flags))
}

/// A child of `traceparent`: the same trace id and flags, a new random parent id.
pub fn child_traceparent(traceparent: &str) -> Option<String> {
    let (trace, _, flags) = traceparent_parts(traceparent)?;
    let random = Uuid::new_v4();
    let mut span = [0u8; 8];
    span.copy_from_slice(&random.as_bytes()[..8]);
    if span == [0; 8] {
        span[7] = 1;
    }
    let span: String = span.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("00-{trace}-{span}-{flags}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_contexts_are_checked_and_continued() {
        assert_eq!(valid_traceparent(TRACE), Some(TRACE));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(valid_traceparent(bad), None, "{bad}");
            assert_eq!(CommandContext::new().in_trace(bad).traceparent, None);
        }
        let child = child_traceparent(TRACE).unwrap();
        assert!(valid_traceparent(&child).is_some());
        assert_eq!(&child[..36], &TRACE[..36], "the same trace");
        assert_ne!(&child[36..52], &TRACE[36..52], "a span of its own");
        assert_eq!(&child[52..], "-01", "the same flags");

        let context = CommandContext::new().in_trace(TRACE);
        assert_eq!(context.metadata(1)[TRACEPARENT_KEY], TRACE);
        assert!(
            CommandContext::new()
                .metadata(1)
                .get(TRACEPARENT_KEY)
                .is_none()
        );
        let continued = CommandContext::from_message("m-1", None).continuing(TRACE);
        assert_eq!(&continued.traceparent.unwrap()[..36], &TRACE[..36]);
    }
}
