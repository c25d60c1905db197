use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{StoreError, StreamName, limits};

/// How an event's data is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContentType {
    /// `application/json` (the default).
    Json,
    /// `application/octet-stream`: opaque bytes.
    Binary,
}

impl ContentType {
    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Binary => "application/octet-stream",
        }
    }
}

/// An event to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Unique id; appending the same ids again with the same expected state is idempotent.
    pub id: Uuid,
    /// The event's type, past tense by convention (`OrderPlaced`).
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The payload.
    pub data: Bytes,
    /// A JSON object by convention: `$correlationId`, `$causationId` and user keys. May be empty.
    pub metadata: Bytes,
    /// Tags for dynamic consistency boundaries (`course:c-7`); see [`crate::dcb`]. Usually
    /// empty.
    pub tags: Vec<String>,
}

impl NewEvent {
    /// An event with a fresh UUIDv7 id and JSON data serialised from `data`. The type is
    /// checked here (1 to 256 characters), so a bad one is refused before any append.
    pub fn json<T: Serialize + ?Sized>(
        event_type: impl Into<String>,
        data: &T,
    ) -> Result<Self, StoreError> {
        let event_type = event_type.into();
        check_event_type(&event_type)?;
        let data = serde_json::to_vec(data)
            .map_err(|e| StoreError::invalid(format!("event data does not serialise: {e}")))?;
        Ok(NewEvent {
            id: Uuid::now_v7(),
            event_type,
            content_type: ContentType::Json,
            data: Bytes::from(data),
            metadata: Bytes::new(),
            tags: Vec::new(),
        })
    }

    /// An event with a fresh UUIDv7 id and the given bytes as data; the type is checked as by
    /// [`NewEvent::json`].
    pub fn binary(
        event_type: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<Self, StoreError> {
        let event_type = event_type.into();
        check_event_type(&event_type)?;
        Ok(NewEvent {
            id: Uuid::now_v7(),
            event_type,
            content_type: ContentType::Binary,
            data: data.into(),
            metadata: Bytes::new(),
            tags: Vec::new(),
        })
    }

    /// Gives the event tags (checked when it is appended).
    pub fn with_tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata to a serialised JSON value.
    pub fn with_metadata<T: Serialize + ?Sized>(
        mut self,
        metadata: &T,
    ) -> Result<Self, StoreError> {
        let bytes = serde_json::to_vec(metadata)
            .map_err(|e| StoreError::invalid(format!("event metadata does not serialise: {e}")))?;
        self.metadata = Bytes::from(bytes);
        Ok(self)
    }

    /// Checks the limits and, for JSON events, that data and metadata parse.
    pub fn validate(&self, allow_system_type: bool) -> Result<(), StoreError> {
        check_event_type(&self.event_type)?;
        crate::dcb::check_tags(&self.tags)?;
        if !allow_system_type && self.event_type.starts_with('$') {
            return Err(StoreError::invalid(format!(
                "event type '{}' starts with '$', which is reserved for the system",
                self.event_type
            )));
        }
        for (what, bytes) in [("data", &self.data), ("metadata", &self.metadata)] {
            if bytes.len() > limits::EVENT_PAYLOAD_BYTES_MAX {
                return Err(StoreError::invalid(format!(
                    "event {what} is {} bytes, the limit is {}",
                    bytes.len(),
                    limits::EVENT_PAYLOAD_BYTES_MAX
                )));
            }
        }
        if self.content_type == ContentType::Json && !crate::backend::json::is_valid(&self.data) {
            return Err(StoreError::invalid(format!(
                "event '{}' says its data is JSON but it does not parse",
                self.event_type
            )));
        }
        let is_object = |bytes: &[u8]| {
            bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
                && crate::backend::json::is_valid(bytes)
        };
        if !self.metadata.is_empty() && !is_object(&self.metadata) {
            return Err(StoreError::invalid(format!(
                "metadata of event '{}' is not a JSON object",
                self.event_type
            )));
        }
        Ok(())
    }

    /// Bytes this event takes, roughly, for size limits.
    pub fn size_bytes(&self) -> usize {
        self.event_type.len()
            + self.data.len()
            + self.metadata.len()
            + self.tags.iter().map(|t| t.len() + 2).sum::<usize>()
            + 32
    }
}

/// Checks an event type's length: 1 to [`limits::EVENT_TYPE_CHARS_MAX`] characters.
pub(crate) fn check_event_type(event_type: &str) -> Result<(), StoreError> {
    if event_type.is_empty() {
        return Err(StoreError::invalid("event type is empty"));
    }
    let chars = event_type.chars().count();
    if chars > limits::EVENT_TYPE_CHARS_MAX {
        return Err(StoreError::invalid(format!(
            "event type is {chars} characters, the limit is {}",
            limits::EVENT_TYPE_CHARS_MAX
        )));
    }
    Ok(())
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream: StreamName,
    /// Its 0-based place in the stream.
    pub revision: u64,
    /// Its 0-based place in the whole log (`$all`).
    pub position: u64,
    /// Its id.
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// The payload.
    pub data: Bytes,
    /// The metadata (a JSON object by convention, or empty).
    pub metadata: Bytes,
    /// When it was recorded: microseconds since the Unix epoch, UTC.
    pub recorded_at_us: u64,
    /// Its tags (see [`crate::dcb`]); usually empty.
    pub tags: Vec<String>,
}

impl RecordedEvent {
    /// The metadata parsed as a JSON object (empty when there is none).
    pub fn metadata_json(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_slice(&self.metadata).unwrap_or_default()
    }

    /// About how many bytes the event takes (its stream's name, type, data and metadata, and
    /// a fixed part), to bound batches.
    pub fn size_bytes(&self) -> usize {
        self.stream.as_str().len()
            + self.event_type.len()
            + self.data.len()
            + self.metadata.len()
            + self.tags.iter().map(|t| t.len() + 2).sum::<usize>()
            + 64
    }

    /// The event as it would be appended again (same id, type, data and metadata).
    pub fn to_new_event(&self) -> NewEvent {
        NewEvent {
            id: self.id,
            event_type: self.event_type.clone(),
            content_type: self.content_type,
            data: self.data.clone(),
            metadata: self.metadata.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{EventStore, ExpectedState, MemoryStore, StreamName};

    #[test]
    fn an_empty_or_too_long_type_is_refused_when_the_event_is_made() {
        for event_type in [String::new(), "t".repeat(257), "ü".repeat(300)] {
            let json = NewEvent::json(event_type.clone(), &1).unwrap_err();
            let binary = NewEvent::binary(event_type.clone(), vec![1u8]).unwrap_err();
            for error in [json, binary] {
                assert!(matches!(error, StoreError::InvalidInput(_)), "{error}");
                assert!(error.to_string().contains("event type"), "{error}");
            }
        }
        let longest = "ü".repeat(limits::EVENT_TYPE_CHARS_MAX);
        assert!(NewEvent::json(longest.clone(), &1).is_ok());
        assert!(NewEvent::binary(longest, vec![1u8]).is_ok());
    }

    #[tokio::test]
    async fn a_refused_append_says_invalid_input_once_and_writes_nothing() {
        let store = MemoryStore::new();
        let mut bad = NewEvent::json("Ok", &1).unwrap();
        bad.event_type = String::new();
        let good = NewEvent::json("Ok", &1).unwrap();
        let stream = StreamName::user("s-1").unwrap();
        let error = store
            .append(&stream, ExpectedState::Any, vec![good, bad])
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid input: event 1: event type is empty"
        );
        assert_eq!(store.head(), 0);
    }
}
