//! What leaves the service: external events, translated from domain events, and the messages a
//! publisher sends for them.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use factum_core::RecordedEvent;
use factum_toolkit::TRACEPARENT_KEY;
use uuid::Uuid;

/// An event as other services see it: its external type and its payload. A
/// [`Translator`] makes it from a domain event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalEvent {
    /// The type other services know it by.
    pub event_type: String,
    /// The payload's MIME type.
    pub content_type: String,
    /// The payload.
    pub payload: Bytes,
}

/// Decides what leaves the service (SPEC R5.3): a domain event becomes an external event, or
/// `None`, and then it does not leave. Every translator is explicit about what it lets out.
pub trait Translator: Send + Sync {
    /// The external form of `event`, or `None` to keep it inside.
    fn translate(&self, event: &RecordedEvent) -> Option<ExternalEvent>;

    /// The domain event types that can leave, if the translator knows them in advance; the
    /// relay then reads only those from the log.
    fn event_types(&self) -> Option<Vec<String>> {
        None
    }
}

impl<F> Translator for F
where
    F: Fn(&RecordedEvent) -> Option<ExternalEvent> + Send + Sync,
{
    fn translate(&self, event: &RecordedEvent) -> Option<ExternalEvent> {
        self(event)
    }
}

/// The zero-payload form of an event: its ids, type and place, none of its data.
pub fn zero_payload(event: &RecordedEvent, event_type: &str) -> ExternalEvent {
    let body = serde_json::json!({
        "id": event.id,
        "type": event_type,
        "stream": event.stream.as_str(),
        "revision": event.revision,
        "position": event.position,
        "recorded_at_us": event.recorded_at_us,
    });
    ExternalEvent {
        event_type: event_type.to_owned(),
        content_type: "application/json".into(),
        payload: Bytes::from(body.to_string()),
    }
}

/// Every event leaves in its zero-payload form ([`zero_payload`]): other services learn that
/// something happened and where, and read the details through the API if they may.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZeroPayload;

impl Translator for ZeroPayload {
    fn translate(&self, event: &RecordedEvent) -> Option<ExternalEvent> {
        Some(zero_payload(event, &event.event_type))
    }
}

/// What of a mapped event's data leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Payload {
    /// Its data, as stored.
    Data,
    /// Only its ids, type and place ([`zero_payload`]).
    Zero,
}

/// An explicit map from domain event types to external ones: only the types named leave.
///
/// ```
/// # mod factum { pub use factum_core::*; pub use factum_toolkit::*; pub use factum_relay::*; }
/// use factum::{Payload, TypeMap};
/// let translator = TypeMap::new()
///     .map("OrderPlaced", "order.placed.v1", Payload::Data)
///     .map("OrderCancelled", "order.cancelled.v1", Payload::Zero);
/// # let _ = translator;
/// ```
#[derive(Clone, Debug, Default)]
pub struct TypeMap {
    types: HashMap<String, (Arc<str>, Payload)>,
}

impl TypeMap {
    /// An empty map: nothing leaves.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `domain_type` leave as `external_type`, with `payload`.
    pub fn map(
        mut self,
        domain_type: impl Into<String>,
        external_type: impl Into<String>,
        payload: Payload,
    ) -> Self {
        self.types.insert(
            domain_type.into(),
            (Arc::from(external_type.into()), payload),
        );
        self
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

impl Translator for TypeMap {
    fn translate(&self, event: &RecordedEvent) -> Option<ExternalEvent> {
        let (external, payload) = self.types.get(&event.event_type)?;
        Some(match payload {
            Payload::Zero => zero_payload(event, external),
            Payload::Data => ExternalEvent {
                event_type: external.to_string(),
                content_type: event.content_type.mime().to_owned(),
                payload: event.data.clone(),
            },
        })
    }

    fn event_types(&self) -> Option<Vec<String>> {
        Some(self.types.keys().cloned().collect())
    }
}

/// One message for a broker: an external event with the ids and place of the domain event it
/// comes from. Its id is the event's id, so brokers and consumers can de-duplicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The message id: the domain event's id.
    pub id: Uuid,
    /// The domain event's stream.
    pub stream: String,
    /// Its revision in that stream.
    pub revision: u64,
    /// Its position in `$all`.
    pub position: u64,
    /// The stream's category: its name up to the first `-` (`order` for `order-17`).
    pub category: String,
    /// The correlation id the event carries in its metadata, if any.
    pub correlation_id: Option<String>,
    /// The causation id the event carries in its metadata, if any.
    pub causation_id: Option<String>,
    /// The trace context (W3C `traceparent`) of the command that recorded the event, if its
    /// metadata carries a valid one (`$traceparent`).
    pub traceparent: Option<String>,
    /// What leaves.
    pub event: ExternalEvent,
}

impl OutboundMessage {
    /// The message for `event` in its external form `external`.
    pub fn new(event: &RecordedEvent, external: ExternalEvent) -> Self {
        let metadata = event.metadata_json();
        let text = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        OutboundMessage {
            id: event.id,
            stream: event.stream.as_str().to_owned(),
            revision: event.revision,
            position: event.position,
            category: category(event.stream.as_str()).to_owned(),
            correlation_id: text("$correlationId"),
            causation_id: text("$causationId"),
            traceparent: text(TRACEPARENT_KEY)
                .filter(|t| factum_toolkit::valid_traceparent(t).is_some()),
            event: external,
        }
    }

    /// The subject (NATS) or routing key (RabbitMQ): `{prefix}.{category}.{type}`, each part
    /// made a single token (`.`, `*`, `>`, `#` and white space become `_`). An empty prefix is
    /// left out.
    pub fn subject(&self, prefix: &str) -> String {
        let mut subject = String::with_capacity(
            prefix.len() + self.category.len() + self.event.event_type.len() + 2,
        );
        if !prefix.is_empty() {
            subject.push_str(prefix);
            subject.push('.');
        }
        subject.push_str(&token(&self.category));
        subject.push('.');
        subject.push_str(&token(&self.event.event_type));
        subject
    }
}

/// A stream's category: its name up to the first `-`, or all of it.
pub(crate) fn category(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

/// `text` as one subject or routing-key token: `.`, `*`, `>`, `#` and whitespace become `_`, and
/// an empty text becomes `_`.
pub(crate) fn token(text: &str) -> String {
    if text.is_empty() {
        return "_".into();
    }
    text.chars()
        .map(|c| match c {
            '.' | '*' | '>' | '#' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// The header names a message carries besides its id (`Nats-Msg-Id` on NATS, the
/// `message_id` property on RabbitMQ).
pub mod headers {
    /// The external event type.
    pub const TYPE: &str = "Factum-Type";
    /// The domain event's stream.
    pub const STREAM: &str = "Factum-Stream";
    /// Its revision.
    pub const REVISION: &str = "Factum-Revision";
    /// Its position in `$all`.
    pub const POSITION: &str = "Factum-Position";
    /// The correlation id.
    pub const CORRELATION_ID: &str = "Factum-Correlation-Id";
    /// The causation id.
    pub const CAUSATION_ID: &str = "Factum-Causation-Id";
    /// The message id (on RabbitMQ it is also the `message_id` property).
    pub const MESSAGE_ID: &str = "Factum-Message-Id";
    /// The trace context of the command that recorded the event (W3C Trace Context).
    pub const TRACEPARENT: &str = "traceparent";
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subjects_are_tokens() {
        assert_eq!(category("order-17-a"), "order");
        assert_eq!(category("ledger"), "ledger");
        assert_eq!(token("order.placed v1"), "order_placed_v1");
        assert_eq!(token(""), "_");
        assert_eq!(token("a>*#"), "a___");
    }
}
