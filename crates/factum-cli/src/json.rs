//! The JSON-lines shapes of the command line: events in (`append`), recorded events out
//! (`read`, `read-all`, `tail`, `export`) and back in (`import`). Data and metadata travel as
//! the raw JSON text that was stored, so an export imports back byte for byte.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use factum_core::{ContentType, NewEvent, RecordedEvent, StreamName};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// One line of `factum append` input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<Uuid>,
}

/// Parses one input line of `factum append` into an event (validated).
pub fn parse_event_line(line: &str) -> Result<NewEvent> {
    let parsed: EventLine = serde_json::from_str(line)?;
    let metadata = match parsed.metadata {
        Some(raw) if raw.get() != "null" => {
            if !raw.get().trim_start().starts_with('{') {
                bail!("metadata must be a JSON object");
            }
            Bytes::copy_from_slice(raw.get().as_bytes())
        }
        _ => Bytes::new(),
    };
    let event = NewEvent {
        id: parsed.id.unwrap_or_else(Uuid::now_v7),
        event_type: parsed.event_type,
        content_type: ContentType::Json,
        data: Bytes::copy_from_slice(parsed.data.get().as_bytes()),
        metadata,
    };
    event.validate(false)?;
    Ok(event)
}

/// A recorded event as printed.
#[derive(Serialize, Deserialize)]
pub struct RecordedLine {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// JSON data as stored; binary data as a hex string (with `content_type`).
    pub data: Box<RawValue>,
    pub metadata: Box<RawValue>,
    pub recorded_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

const BINARY: &str = "application/octet-stream";

fn raw(text: String) -> Result<Box<RawValue>> {
    Ok(RawValue::from_string(text)?)
}

/// Formats microseconds since the epoch as RFC 3339 with microseconds.
pub fn format_time(recorded_at_us: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(recorded_at_us);
    humantime::format_rfc3339_micros(time).to_string()
}

fn parse_time(text: &str) -> Result<u64> {
    let time: SystemTime = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("recorded_at '{text}' is not an RFC 3339 time"))?;
    Ok(time.duration_since(UNIX_EPOCH)?.as_micros() as u64)
}

/// The printed form of a recorded event.
pub fn to_line(event: &RecordedEvent) -> Result<String> {
    let (data, content_type) = match event.content_type {
        ContentType::Json => (String::from_utf8_lossy(&event.data).into_owned(), None),
        ContentType::Binary => (
            serde_json::to_string(&hex(&event.data))?,
            Some(BINARY.to_owned()),
        ),
    };
    let metadata = if event.metadata.is_empty() {
        "null".to_owned()
    } else {
        String::from_utf8_lossy(&event.metadata).into_owned()
    };
    let line = RecordedLine {
        stream: event.stream.to_string(),
        revision: event.revision,
        position: event.position,
        id: event.id,
        event_type: event.event_type.clone(),
        data: raw(data)?,
        metadata: raw(metadata)?,
        recorded_at: format_time(event.recorded_at_us),
        content_type,
    };
    Ok(serde_json::to_string(&line)?)
}

/// Parses a line of `factum export` output back into the recorded event.
pub fn from_line(line: &str) -> Result<RecordedEvent> {
    let parsed: RecordedLine = serde_json::from_str(line)?;
    let (content_type, data) = match parsed.content_type.as_deref() {
        None => (
            ContentType::Json,
            Bytes::copy_from_slice(parsed.data.get().as_bytes()),
        ),
        Some(BINARY) => {
            let text: String = serde_json::from_str(parsed.data.get())?;
            (ContentType::Binary, Bytes::from(unhex(&text)?))
        }
        Some(other) => bail!("unknown content_type '{other}'"),
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
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        bail!("hex data has an odd length");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("data is not hex"))
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
    }
}
