//! The JSON shapes of events, shared by the HTTP API and the command line: events in (an
//! append), recorded events out (reads, subscriptions, `factum export`) and back in
//! (`factum import`). Data and metadata travel as the raw JSON text that was stored, so an
//! export imports back byte for byte.

use bytes::Bytes;
use factum_core::{ContentType, NewEvent, RecordedEvent, StoreError, StreamName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

type Result<T> = std::result::Result<T, StoreError>;

fn bad(message: impl std::fmt::Display) -> StoreError {
    StoreError::invalid(message.to_string())
}

/// An event to append, as JSON: `type`, `data`, optional `metadata` (an object), `id` and
/// `tags`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventLine {
    /// The event type: 1 to 256 characters, not starting with `$` (reserved for the system).
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\$]")]
    event_type: String,
    /// Any JSON value; stored as sent, byte for byte.
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
    /// A JSON object, or `null` for none; stored as sent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
    /// The event id; appending an id the stream already holds is idempotent. A new UUIDv7
    /// when missing.
    #[serde(default)]
    id: Option<Uuid>,
    /// Tags for dynamic consistency boundaries (`course:c-7`): at most 32, each 1 to 128
    /// characters with no control character, none twice.
    #[serde(default)]
    #[schema(schema_with = factum_core::dcb::schemas::tags)]
    tags: Vec<String>,
}

/// An event of a DCB append, as JSON: an event as [`EventLine`] has it, with its `tags`, and
/// the `stream` it goes to (`dcb` when none is named) and its `content_type`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DcbEventLine {
    /// The event type: 1 to 256 characters, not starting with `$`.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\$]")]
    event_type: String,
    /// Any JSON value, stored as sent; with `content_type` `application/octet-stream`, the
    /// bytes as a hex string.
    #[schema(value_type = serde_json::Value)]
    data: Box<RawValue>,
    /// A JSON object, or `null` for none; stored as sent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
    /// The event id (a new UUIDv7 when missing): the same ids again after a success answer
    /// the original position.
    #[serde(default)]
    id: Option<Uuid>,
    /// Tags: at most 32, each 1 to 128 characters with no control character, none twice.
    #[serde(default)]
    #[schema(schema_with = factum_core::dcb::schemas::tags)]
    tags: Vec<String>,
    /// The stream the event goes to; `dcb` when none is named.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 512, pattern = r"^[^\$\x00][^\x00]*$")]
    stream: Option<String>,
    /// `application/json` (default) or `application/octet-stream`.
    #[serde(default)]
    #[schema(value_type = Option<DcbContentType>)]
    content_type: Option<String>,
}

/// The content types of a DCB event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum DcbContentType {
    /// JSON data.
    #[schema(rename = "application/json")]
    Json,
    /// Binary data, sent as a hex string.
    #[schema(rename = "application/octet-stream")]
    Binary,
}

impl DcbEventLine {
    /// What is wrong with binary data that is not a hex string (the request is well formed,
    /// and cannot be carried out).
    pub fn binary_data_problem(&self) -> Option<String> {
        if self.content_type.as_deref() != Some(BINARY) {
            return None;
        }
        match serde_json::from_str::<String>(self.data.get()) {
            Ok(text) if unhex(&text).is_ok() => None,
            _ => Some("binary data (application/octet-stream) must be a hex string".into()),
        }
    }

    /// The event and its stream (validated).
    pub fn into_event(self) -> Result<factum_core::DcbEvent> {
        let stream = match &self.stream {
            Some(name) => StreamName::user(name.clone())?,
            None => factum_core::dcb::default_stream(),
        };
        let line = EventLine {
            event_type: self.event_type,
            data: self.data,
            metadata: self.metadata,
            id: self.id,
            tags: self.tags,
        };
        let event = match self.content_type.as_deref() {
            None | Some("application/json") => line.into_event()?,
            Some(BINARY) => {
                let text: String = serde_json::from_str(line.data.get())
                    .map_err(|_| bad("binary data must be a hex string"))?;
                let data = Bytes::from(unhex(&text)?);
                line.with_data(ContentType::Binary, data)?
            }
            Some(other) => {
                return Err(bad(format!(
                    "content_type '{other}' is not application/json or {BINARY}"
                )));
            }
        };
        Ok(factum_core::DcbEvent { stream, event })
    }
}

/// Parses one input line of `factum append` into an event (validated).
pub fn parse_event_line(line: &str) -> Result<NewEvent> {
    serde_json::from_str::<Object<EventLine>>(line)
        .map_err(bad)?
        .0
        .into_event()
}

/// A `T` read from a JSON object only. (serde's derive also takes an array of the fields in
/// order, which the API does not document and must not accept.)
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

impl EventLine {
    /// The event to append (validated); an event without an id gets a new UUIDv7.
    pub fn into_event(self) -> Result<NewEvent> {
        let data = Bytes::copy_from_slice(self.data.get().as_bytes());
        self.with_data(ContentType::Json, data)
    }

    /// The event with `data` of `content_type` in place of the line's (validated).
    fn with_data(self, content_type: ContentType, data: Bytes) -> Result<NewEvent> {
        let metadata = match self.metadata {
            Some(raw) if raw.get() != "null" => {
                if !raw.get().trim_start().starts_with('{') {
                    return Err(bad("metadata must be a JSON object"));
                }
                Bytes::copy_from_slice(raw.get().as_bytes())
            }
            _ => Bytes::new(),
        };
        let event = NewEvent {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            event_type: self.event_type,
            content_type,
            data,
            metadata,
            tags: self.tags,
        };
        event.validate(false)?;
        Ok(event)
    }
}

/// A recorded event as printed.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordedLine {
    /// The stream.
    pub stream: String,
    /// Its revision in the stream.
    pub revision: u64,
    /// Its position in `$all`.
    pub position: u64,
    /// The event id.
    pub id: Uuid,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// JSON data as stored; binary data as a hex string (with `content_type`).
    #[schema(value_type = serde_json::Value)]
    pub data: Box<RawValue>,
    /// The metadata object as stored, or `null`.
    #[schema(value_type = Option<Object>, required = true)]
    pub metadata: Box<RawValue>,
    /// When it was recorded, RFC 3339 with microseconds.
    pub recorded_at: String,
    /// `application/octet-stream` for binary data; absent for JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Its tags (dynamic consistency boundaries); absent when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

const BINARY: &str = "application/octet-stream";

fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(bad)
}

/// Formats microseconds since the epoch as RFC 3339 with microseconds.
pub fn format_time(recorded_at_us: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(recorded_at_us);
    humantime::format_rfc3339_micros(time).to_string()
}

fn parse_time(text: &str) -> Result<u64> {
    let time: SystemTime = humantime::parse_rfc3339_weak(text)
        .map_err(|_| bad(format!("recorded_at '{text}' is not an RFC 3339 time")))?;
    Ok(time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad(format!("recorded_at '{text}' is before 1970")))?
        .as_micros() as u64)
}

/// The printed form of a recorded event.
pub fn to_line(event: &RecordedEvent) -> Result<String> {
    serde_json::to_string(&recorded(event)?).map_err(bad)
}

/// A recorded event in its JSON shape.
pub fn recorded(event: &RecordedEvent) -> Result<RecordedLine> {
    let (data, content_type) = match event.content_type {
        ContentType::Json => (String::from_utf8_lossy(&event.data).into_owned(), None),
        ContentType::Binary => (
            serde_json::to_string(&hex(&event.data)).map_err(bad)?,
            Some(BINARY.to_owned()),
        ),
    };
    let metadata = if event.metadata.is_empty() {
        "null".to_owned()
    } else {
        String::from_utf8_lossy(&event.metadata).into_owned()
    };
    Ok(RecordedLine {
        stream: event.stream.to_string(),
        revision: event.revision,
        position: event.position,
        id: event.id,
        event_type: event.event_type.clone(),
        data: raw(data)?,
        metadata: raw(metadata)?,
        recorded_at: format_time(event.recorded_at_us),
        content_type,
        tags: event.tags.clone(),
    })
}

/// Parses a line of `factum export` output back into the recorded event.
pub fn from_line(line: &str) -> Result<RecordedEvent> {
    let parsed: RecordedLine = serde_json::from_str(line).map_err(bad)?;
    let (content_type, data) = match parsed.content_type.as_deref() {
        None => (
            ContentType::Json,
            Bytes::copy_from_slice(parsed.data.get().as_bytes()),
        ),
        Some(BINARY) => {
            let text: String = serde_json::from_str(parsed.data.get()).map_err(bad)?;
            (ContentType::Binary, Bytes::from(unhex(&text)?))
        }
        Some(other) => return Err(bad(format!("unknown content_type '{other}'"))),
    };
    let metadata = match parsed.metadata.get() {
        "null" => Bytes::new(),
        text => Bytes::copy_from_slice(text.as_bytes()),
    };
    Ok(RecordedEvent {
        stream: StreamName::new(parsed.stream)?,
        revision: parsed.revision,
        position: parsed.position,
        id: parsed.id,
        event_type: parsed.event_type,
        content_type,
        data,
        metadata,
        recorded_at_us: parse_time(&parsed.recorded_at)?,
        tags: parsed.tags,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err(bad("data is not hex"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad("data is not hex")))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn recorded_lines_round_trip_byte_for_byte() {
        for (content_type, data) in [
            (
                ContentType::Json,
                Bytes::from_static(b"{ \"b\": 1,  \"a\": [2, 3.50] }"),
            ),
            (
                ContentType::Binary,
                Bytes::from((0..=255u8).collect::<Vec<_>>()),
            ),
        ] {
            let event = RecordedEvent {
                stream: StreamName::new("s-1").unwrap(),
                revision: 4,
                position: 9,
                id: Uuid::now_v7(),
                event_type: "Happened".into(),
                content_type,
                data,
                metadata: Bytes::from_static(b"{\"$correlationId\":\"x\"}"),
                recorded_at_us: 1_790_000_000_123_456,
                tags: vec!["course:c-7".into(), "student:s-3".into()],
            };
            assert_eq!(from_line(&to_line(&event).unwrap()).unwrap(), event);
        }
    }

    #[test]
    fn event_lines_are_validated() {
        assert!(parse_event_line(r#"{"type":"A","data":{"x":1}}"#).is_ok());
        assert!(parse_event_line(r#"{"data":{"x":1}}"#).is_err());
        assert!(parse_event_line(r#"{"type":"","data":1}"#).is_err());
        assert!(parse_event_line(r#"{"type":"A","data":1,"metadata":[1]}"#).is_err());
        assert!(parse_event_line(r#"{"type":"A","data":1,"id":"nope"}"#).is_err());
        assert!(parse_event_line(r#"{"type":"A","data":1,"extra":true}"#).is_err());
        assert!(parse_event_line(r#"{"type":"A","data":1"#).is_err());
        let tagged = parse_event_line(r#"{"type":"A","data":1,"tags":["a","b"]}"#).unwrap();
        assert_eq!(tagged.tags, ["a", "b"]);
        assert!(parse_event_line(r#"{"type":"A","data":1,"tags":[""]}"#).is_err());
        assert!(parse_event_line(r#"{"type":"A","data":1,"tags":["a","a"]}"#).is_err());
        let array = parse_event_line(r#"["A", 1, null, null]"#).unwrap_err();
        assert!(
            array.to_string().contains("expected a JSON object"),
            "{array}"
        );
    }
}
