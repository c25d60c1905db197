use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{StoreError, limits};

/// A validated stream name: UTF-8, 1..=512 bytes, no NUL.
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
        if name.len() > limits::STREAM_NAME_BYTES_MAX {
            return Err(StoreError::invalid(format!(
                "stream name is {} bytes, the limit is {}",
                name.len(),
                limits::STREAM_NAME_BYTES_MAX
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
    /// letters (`$deadletter-…`), inboxes (`$inbox-…`) and snapshots (`$snapshot-…`).
    pub fn is_toolkit_stream(&self) -> bool {
        ["$deadletter-", "$inbox-", "$snapshot-"]
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
#[serde(deny_unknown_fields)]
pub struct StreamMetadata {
    /// Keep only the newest `max_count` events visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Hide events older than this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// Hide events with a revision below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Anything the application wants to keep with the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Value>,
}
