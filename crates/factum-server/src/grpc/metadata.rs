//! Stream metadata the way KurrentDB's clients write and read it: a `$metadata` event in
//! `$$stream` whose JSON has `$maxCount`, `$maxAge` (seconds), `$tb` (truncate before) and any
//! other keys (`$acl`, `$cacheControl`, the application's own). Factum keeps the first three as
//! its own settings, which it enforces, and the rest in `custom`; both ways round trip.
//!
//! Factum's `$$stream` also records soft deletes and tombstones. Read through the protocol,
//! each record of `$$stream` is a `$metadata` event: a soft delete shows `$tb` as KurrentDB
//! writes it — `i64::MAX` while the stream stays deleted, the first revision written again
//! once it has been.

use factum_core::backend::catalog::{DELETED_TYPE, METADATA_TYPE, TOMBSTONE_TYPE};
use factum_core::{RecordedEvent, StreamMetadata};
use serde_json::{Map, Value};

/// KurrentDB's event type of a metadata event.
pub(crate) const KURRENT_METADATA_TYPE: &str = "$metadata";
/// KurrentDB's event type of a tombstone.
const KURRENT_TOMBSTONE_TYPE: &str = "$streamDeleted";
/// `$tb` of a stream deleted and not written since.
const DELETED_TB: u64 = i64::MAX as u64;

const MAX_COUNT: &str = "$maxCount";
const MAX_AGE: &str = "$maxAge";
const TRUNCATE_BEFORE: &str = "$tb";

/// A client's metadata JSON as Factum's metadata.
pub(crate) fn from_kurrent(data: &[u8]) -> Result<StreamMetadata, String> {
    let value: Value =
        serde_json::from_slice(data).map_err(|e| format!("stream metadata is not JSON: {e}"))?;
    let Value::Object(mut object) = value else {
        return Err("stream metadata must be a JSON object".into());
    };
    let mut number = |key: &str| -> Result<Option<u64>, String> {
        match object.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .filter(|n| *n <= i64::MAX as u64)
                .map(Some)
                .ok_or_else(|| format!("{key} must be a whole number from 0 to {}", i64::MAX)),
        }
    };
    let max_count = number(MAX_COUNT)?;
    let max_age_secs = number(MAX_AGE)?;
    let truncate_before = number(TRUNCATE_BEFORE)?;
    Ok(StreamMetadata {
        max_count,
        max_age_secs,
        truncate_before,
        custom: (!object.is_empty()).then_some(Value::Object(object)),
    })
}

/// Factum's metadata as a client's JSON. A `custom` that is not an object is under `custom`.
pub(crate) fn to_kurrent(metadata: &StreamMetadata) -> Map<String, Value> {
    let mut object = match &metadata.custom {
        Some(Value::Object(custom)) => custom.clone(),
        Some(other) => Map::from_iter([("custom".to_owned(), other.clone())]),
        None => Map::new(),
    };
    for (key, value) in [
        (MAX_COUNT, metadata.max_count),
        (MAX_AGE, metadata.max_age_secs),
        (TRUNCATE_BEFORE, metadata.truncate_before),
    ] {
        if let Some(value) = value {
            object.insert(key.to_owned(), value.into());
        }
    }
    object
}

/// Renders the records of a `$$stream` as KurrentDB's clients read them. `next_revision` is
/// the described stream's next revision: a soft delete the stream was written past shows the
/// revision it starts again at.
pub(crate) struct MetadataRenderer {
    metadata: StreamMetadata,
    next_revision: u64,
}

impl MetadataRenderer {
    /// A renderer for a stream whose next revision is `next_revision`, from the metadata in
    /// force before the first record read (`None`: read from the stream's first record).
    pub(crate) fn new(before: Option<StreamMetadata>, next_revision: u64) -> Self {
        MetadataRenderer {
            metadata: before.unwrap_or_default(),
            next_revision,
        }
    }

    /// The record as a client sees it: its type and JSON data.
    pub(crate) fn render(&mut self, record: &RecordedEvent) -> (String, Vec<u8>) {
        match record.event_type.as_str() {
            METADATA_TYPE => {
                if let Ok(metadata) = serde_json::from_slice::<StreamMetadata>(&record.data) {
                    self.metadata = metadata;
                }
                let json = Value::Object(to_kurrent(&self.metadata));
                (
                    KURRENT_METADATA_TYPE.to_owned(),
                    json.to_string().into_bytes(),
                )
            }
            DELETED_TYPE => {
                let before = serde_json::from_slice::<Value>(&record.data)
                    .ok()
                    .and_then(|v| v.get("deleted_before").and_then(Value::as_u64))
                    .unwrap_or(0);
                let mut object = to_kurrent(&self.metadata);
                let tb = if self.next_revision > before {
                    before.max(self.metadata.truncate_before.unwrap_or(0))
                } else {
                    DELETED_TB
                };
                object.insert(TRUNCATE_BEFORE.to_owned(), tb.into());
                (
                    KURRENT_METADATA_TYPE.to_owned(),
                    Value::Object(object).to_string().into_bytes(),
                )
            }
            TOMBSTONE_TYPE => (KURRENT_TOMBSTONE_TYPE.to_owned(), b"{}".to_vec()),
            other => (other.to_owned(), record.data.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_clients_metadata_round_trips_and_its_limits_become_factums() {
        let json = br#"{"$maxCount":10,"$maxAge":3600,"$tb":4,"$acl":{"$r":"$all"},"owner":"ann"}"#;
        let metadata = from_kurrent(json).unwrap();
        assert_eq!(metadata.max_count, Some(10));
        assert_eq!(metadata.max_age_secs, Some(3600));
        assert_eq!(metadata.truncate_before, Some(4));
        let back = Value::Object(to_kurrent(&metadata));
        let original: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn factums_metadata_reads_back_in_the_clients_keys() {
        let metadata = StreamMetadata {
            max_count: Some(100),
            custom: Some(serde_json::json!({"owner": "checkout"})),
            ..StreamMetadata::default()
        };
        assert_eq!(
            Value::Object(to_kurrent(&metadata)),
            serde_json::json!({"$maxCount": 100, "owner": "checkout"})
        );
        let scalar = StreamMetadata {
            custom: Some(serde_json::json!("note")),
            ..StreamMetadata::default()
        };
        assert_eq!(
            Value::Object(to_kurrent(&scalar)),
            serde_json::json!({"custom": "note"})
        );
    }

    #[test]
    fn bad_metadata_is_refused_with_the_key() {
        for (json, says) in [
            (&br#"[1]"#[..], "JSON object"),
            (br#"{"$maxCount":-1}"#, "$maxCount"),
            (br#"{"$maxAge":"1h"}"#, "$maxAge"),
            (br#"{"$tb":1.5}"#, "$tb"),
            (br#"nope"#, "not JSON"),
        ] {
            let error = from_kurrent(json).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }
}
