use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{StoreError, limits};

/// A validated stream name: 1 to 512 characters, no NUL (a system stream's name, starting with
/// `$`, may be 64 characters longer).
///
/// Names starting with `$` are reserved for the system: `$$name` holds the metadata of stream
/// `name`, `$checkpoint-consumer` holds a consumer's checkpoints, and `$all` is the log itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// Validates a name for any stream, system streams included.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        if name.is_empty() {
            return Err(StoreError::invalid("stream name is empty"));
        }
        let chars = name.chars().count();
        let limit = if name.starts_with('$') {
            limits::STREAM_NAME_CHARS_MAX + limits::SYSTEM_PREFIX_CHARS_MAX
        } else {
            limits::STREAM_NAME_CHARS_MAX
        };
        if chars > limit {
            return Err(StoreError::invalid(format!(
                "stream name is {chars} characters, the limit is {limit}"
            )));
        }
        if name.contains('\0') {
            return Err(StoreError::invalid("stream name contains a NUL character"));
        }
        if name == "$all" {
            return Err(StoreError::invalid("'$all' is the log, not a stream"));
        }
        Ok(StreamName(name.into()))
    }

    /// Validates a name a user may write to: not reserved (`$…`).
    pub fn user(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = Self::new(name)?;
        if name.is_system() {
            return Err(StoreError::invalid(format!(
                "stream name '{}' starts with '$', which is reserved for the system",
                name.0
            )));
        }
        Ok(name)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name is reserved for the system.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// Whether this is a system stream that the toolkit writes with ordinary appends: dead
    /// letters (`$deadletter-…`), inboxes (`$inbox-…`), saga instances (`$saga-…`) and their
    /// indexes (`$sagas-…`), snapshots (`$snapshot-…`), and persistent subscriptions' groups
    /// and parked messages (`$persistentsubscription-…`).
    pub fn is_toolkit_stream(&self) -> bool {
        [
            "$deadletter-",
            "$inbox-",
            "$saga-",
            "$sagas-",
            "$snapshot-",
            "$persistentsubscription-",
        ]
        .iter()
        .any(|prefix| self.0.len() > prefix.len() && self.0.starts_with(prefix))
    }

    /// The stream holding this stream's metadata, deletion and tombstone records.
    pub fn metadata_stream(&self) -> StreamName {
        StreamName(format!("$${}", self.0).into())
    }

    /// For a metadata stream `$$name`, the stream `name` it describes.
    pub fn described_stream(&self) -> Option<StreamName> {
        self.0
            .strip_prefix("$$")
            .filter(|rest| !rest.is_empty())
            .map(|rest| StreamName(rest.into()))
    }

    /// The stream holding the checkpoints of a consumer.
    pub fn checkpoint_stream(consumer: &str) -> Result<StreamName, StoreError> {
        if consumer.is_empty() {
            return Err(StoreError::invalid("checkpoint consumer name is empty"));
        }
        StreamName::new(format!("$checkpoint-{consumer}"))
    }

    /// For a checkpoint stream, the consumer it belongs to.
    pub fn checkpoint_consumer(&self) -> Option<&str> {
        self.0.strip_prefix("$checkpoint-")
    }
}

// Lets maps keyed by stream name be searched with a `&str` (no allocation); `Arc<str>`
// hashes and compares exactly as `str` does.
impl std::borrow::Borrow<str> for StreamName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl TryFrom<String> for StreamName {
    type Error = StoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        StreamName::new(value)
    }
}

impl From<StreamName> for String {
    fn from(value: StreamName) -> Self {
        value.0.to_string()
    }
}

impl std::str::FromStr for StreamName {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamName::new(s)
    }
}

/// What the caller believes about a stream when appending to it (optimistic concurrency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedState {
    /// Append whatever the stream's state.
    Any,
    /// The stream must not exist (never written, or soft-deleted).
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl fmt::Display for ExpectedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedState::Any => f.write_str("any"),
            ExpectedState::NoStream => f.write_str("no stream"),
            ExpectedState::StreamExists => f.write_str("stream exists"),
            ExpectedState::Exact(revision) => write!(f, "revision {revision}"),
        }
    }
}

impl std::str::FromStr for ExpectedState {
    type Err = StoreError;
    /// Parses `any`, `no-stream`, `exists` or a revision number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" => Ok(ExpectedState::Any),
            "no-stream" => Ok(ExpectedState::NoStream),
            "exists" => Ok(ExpectedState::StreamExists),
            other => other.parse::<u64>().map(ExpectedState::Exact).map_err(|_| {
                StoreError::invalid(format!(
                    "expected revision '{other}' is not any, no-stream, exists or a revision number"
                ))
            }),
        }
    }
}

impl ExpectedState {
    /// Whether a stream at `current` is in this state.
    pub fn holds(self, current: CurrentRevision) -> bool {
        match self {
            ExpectedState::Any => true,
            ExpectedState::NoStream => current.0.is_none(),
            ExpectedState::StreamExists => current.0.is_some(),
            ExpectedState::Exact(revision) => current.0 == Some(revision),
        }
    }
}

/// The current revision of a stream: `None` when it does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CurrentRevision(pub Option<u64>);

impl fmt::Display for CurrentRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("no stream"),
            Some(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// Settings of a stream, stored as a `$metadata` event in the stream `$$name`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamMetadata {
    /// Keep only the newest `max_count` events visible.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::backend::json::whole_number"
    )]
    pub max_count: Option<u64>,
    /// Hide events older than this many seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::backend::json::whole_number"
    )]
    pub max_age_secs: Option<u64>,
    /// Hide events with a revision below this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::backend::json::whole_number"
    )]
    pub truncate_before: Option<u64>,
    /// Anything the application wants to keep with the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_numbers_are_whole_and_within_int64() {
        let parse = |json: &str| serde_json::from_str::<StreamMetadata>(json);
        assert_eq!(parse(r#"{"max_count": 56.0}"#).unwrap().max_count, Some(56));
        assert_eq!(
            parse(r#"{"truncate_before": 9223372036854775807}"#)
                .unwrap()
                .truncate_before,
            Some(i64::MAX as u64)
        );
        assert_eq!(
            parse(r#"{"max_age_secs": null}"#).unwrap().max_age_secs,
            None
        );
        // Parsed exactly: a whole number in exponent form is not read one step off.
        assert_eq!(
            parse(r#"{"max_count": 4.234676970811786e15}"#)
                .unwrap()
                .max_count,
            Some(4_234_676_970_811_786)
        );
        for bad in [
            r#"{"max_count": 1.5}"#,
            r#"{"max_count": -1}"#,
            r#"{"truncate_before": 9223372036854775808}"#,
            r#"{"truncate_before": 9.3e18}"#,
            r#"{"max_age_secs": "5"}"#,
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(
                error.contains("whole number") || error.contains("invalid type"),
                "{bad}: {error}"
            );
        }
    }
}
