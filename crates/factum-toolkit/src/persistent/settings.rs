//! What a persistent subscription group is: its source, its settings, and the answers about it.

use std::fmt;
use std::time::Duration;

use factum_core::{StoreError, StreamName, SubscriptionFilter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a group reads: one stream, or `$all` through a filter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupSource {
    /// One stream, by revision.
    Stream(StreamName),
    /// The whole log, by position, through a filter (stream prefixes, event types, system
    /// events left out). The groups' own streams (`$persistentsubscription-…`) and their
    /// checkpoints are never delivered.
    All(FilterSpec),
}

/// A [`SubscriptionFilter`] that can be stored, compared and ordered.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FilterSpec {
    /// Deliver events whose stream starts with one of these (all when empty).
    #[serde(default)]
    pub stream_prefixes: Vec<String>,
    /// Deliver events of one of these types (all when empty).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Deliver events whose type starts with one of these (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_type_prefixes: Vec<String>,
    /// Deliver events whose stream's name matches this regular expression (look-around
    /// allowed, as in KurrentDB's filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_regex: Option<String>,
    /// Deliver events whose type matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type_regex: Option<String>,
    /// Leave out events of system streams (`$…`).
    #[serde(default)]
    pub exclude_system: bool,
}

/// The regular expressions of a filter, compiled once.
pub(crate) struct Matcher {
    filter: FilterSpec,
    stream: Option<fancy_regex::Regex>,
    event_type: Option<fancy_regex::Regex>,
}

impl Matcher {
    /// Whether the event passes every part of the filter. A regular expression that fails
    /// while it runs (its backtracking limit) lets nothing through.
    pub(crate) fn matches(&self, event: &factum_core::RecordedEvent) -> bool {
        let f = &self.filter;
        let stream = event.stream.as_str();
        let prefixed = |prefixes: &[String], text: &str| {
            prefixes.is_empty() || prefixes.iter().any(|p| text.starts_with(p.as_str()))
        };
        let regex = |regex: &Option<fancy_regex::Regex>, text: &str| {
            regex
                .as_ref()
                .is_none_or(|r| r.is_match(text).unwrap_or(false))
        };
        !(f.exclude_system && event.stream.is_system())
            && prefixed(&f.stream_prefixes, stream)
            && (f.event_types.is_empty() || f.event_types.contains(&event.event_type))
            && prefixed(&f.event_type_prefixes, &event.event_type)
            && regex(&self.stream, stream)
            && regex(&self.event_type, &event.event_type)
    }
}

impl FilterSpec {
    /// What the store's subscription filters itself (prefixes, types, system streams).
    pub(crate) fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter {
            stream_prefixes: self.stream_prefixes.clone(),
            event_types: self.event_types.clone(),
            exclude_system: self.exclude_system,
        }
    }

    /// The filter with its regular expressions compiled, or why one does not compile.
    pub(crate) fn matcher(&self) -> Result<Matcher, String> {
        let compile = |what: &str, regex: &Option<String>| {
            regex
                .as_deref()
                .map(fancy_regex::Regex::new)
                .transpose()
                .map_err(|e| {
                    format!(
                        "{what} '{}' is not a valid regular expression: {e}",
                        regex.as_deref().unwrap_or_default()
                    )
                })
        };
        Ok(Matcher {
            stream: compile("stream_regex", &self.stream_regex)?,
            event_type: compile("event_type_regex", &self.event_type_regex)?,
            filter: self.clone(),
        })
    }
}

impl GroupSource {
    /// A group on one stream.
    pub fn stream(name: &str) -> Result<GroupSource, StoreError> {
        Ok(GroupSource::Stream(StreamName::new(name)?))
    }

    /// A group on `$all` with no filter.
    pub fn all() -> GroupSource {
        GroupSource::All(FilterSpec::default())
    }

    /// The source's name: the stream's, or `$all`.
    pub fn name(&self) -> &str {
        match self {
            GroupSource::Stream(stream) => stream.as_str(),
            GroupSource::All(_) => "$all",
        }
    }
}

/// A group: its source and its name, unique together.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// `$all` or a stream (a filter on `$all` is a setting of the group, not part of its name).
    pub source: String,
    /// The group's name.
    pub group: String,
}

impl GroupKey {
    /// The key of `group` on `source` (a stream name or `$all`).
    pub fn new(source: impl Into<String>, group: impl Into<String>) -> GroupKey {
        GroupKey {
            source: source.into(),
            group: group.into(),
        }
    }

    /// The stream its parked messages go to: `$persistentsubscription-{source}::{group}-parked`.
    pub fn parked_stream(&self) -> Result<StreamName, StoreError> {
        StreamName::new(format!(
            "$persistentsubscription-{}::{}-parked",
            self.source, self.group
        ))
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{}", self.source, self.group)
    }
}

/// Where a new group starts. In JSON: `"start"`, `"end"`, or the revision or position as a
/// number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The first event.
    #[default]
    Start,
    /// After the last event at the time the group is created.
    End,
    /// A revision (a stream's group) or a position (a group on `$all`), inclusive.
    At(u64),
}

impl Serialize for StartFrom {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StartFrom::Start => s.serialize_str("start"),
            StartFrom::End => s.serialize_str("end"),
            StartFrom::At(at) => s.serialize_u64(*at),
        }
    }
}

impl<'de> Deserialize<'de> for StartFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const LIMIT: u64 = i64::MAX as u64;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(text) if text == "start" => Ok(StartFrom::Start),
            serde_json::Value::String(text) if text == "end" => Ok(StartFrom::End),
            serde_json::Value::Number(n) => {
                let at = n
                    .as_u64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && (0.0..9.3e18).contains(f))
                            .map(|f| f as u64)
                    })
                    .filter(|at| *at <= LIMIT)
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "start_from {n} is not a whole number from 0 to {LIMIT}"
                        ))
                    })?;
                Ok(StartFrom::At(at))
            }
            other => Err(serde::de::Error::custom(format!(
                "start_from {other} is not \"start\", \"end\" or a revision or position"
            ))),
        }
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for StartFrom {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::new(Type::String))
                    .enum_values(Some(["start", "end"])),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::new(Type::Integer))
                    .minimum(Some(0))
                    .maximum(Some(i64::MAX)),
            )
            .description(Some(
                "\"start\", \"end\", or a revision (a stream's group) or position (on $all)",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for StartFrom {}

/// How a group shares its messages among its consumers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ConsumerStrategy {
    /// Each message to the next consumer in turn that has room.
    #[default]
    RoundRobin,
    /// Every message to the first consumer that connected, while it has room; the next one
    /// takes what it has no room for.
    DispatchToSingle,
    /// One stream's messages to one consumer at a time (chosen by the stream's hash), in
    /// order, while it stays connected.
    Pinned,
    /// As [`ConsumerStrategy::Pinned`], by the events' correlation id (`$correlationId`
    /// in their metadata; the stream's name for events with none).
    PinnedByCorrelation,
}

impl ConsumerStrategy {
    /// KurrentDB's name for the strategy (`RoundRobin`, `DispatchToSingle`, `Pinned`,
    /// `PinnedByCorrelation`).
    pub fn name(self) -> &'static str {
        match self {
            ConsumerStrategy::RoundRobin => "RoundRobin",
            ConsumerStrategy::DispatchToSingle => "DispatchToSingle",
            ConsumerStrategy::Pinned => "Pinned",
            ConsumerStrategy::PinnedByCorrelation => "PinnedByCorrelation",
        }
    }

    /// The strategy of a KurrentDB name (case-insensitive).
    pub fn from_name(name: &str) -> Option<ConsumerStrategy> {
        [
            ConsumerStrategy::RoundRobin,
            ConsumerStrategy::DispatchToSingle,
            ConsumerStrategy::Pinned,
            ConsumerStrategy::PinnedByCorrelation,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// A group's settings, as KurrentDB has them. In JSON the durations are milliseconds
/// (`message_timeout_ms`, `checkpoint_after_ms`); a setting left out takes its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupSettings {
    /// Where the group starts when it is created.
    pub start_from: StartFrom,
    /// A message not acknowledged this long after it was sent is tried again.
    #[serde(with = "millis", rename = "message_timeout_ms")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64, minimum = 1, maximum = 86_400_000))]
    pub message_timeout: Duration,
    /// How many times a message is tried again before it is parked: it is delivered at most
    /// `max_retry_count + 1` times.
    #[serde(deserialize_with = "whole::u32")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1_000_000))]
    pub max_retry_count: u32,
    /// How many messages the group holds read ahead and in flight.
    #[serde(deserialize_with = "whole::usize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100_000))]
    pub live_buffer_size: usize,
    /// How many events one read of the store takes (at most `live_buffer_size`).
    #[serde(deserialize_with = "whole::usize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100_000))]
    pub read_batch_size: usize,
    /// The checkpoint is stored at most this often …
    #[serde(with = "millis", rename = "checkpoint_after_ms")]
    #[cfg_attr(feature = "openapi", schema(value_type = u64, minimum = 1, maximum = 86_400_000))]
    pub checkpoint_after: Duration,
    /// … once at least this many messages were settled since the last one (at most
    /// `checkpoint_max_count`) …
    #[serde(deserialize_with = "whole::usize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 100_000))]
    pub checkpoint_min_count: usize,
    /// … and at once when this many were.
    #[serde(deserialize_with = "whole::usize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100_000))]
    pub checkpoint_max_count: usize,
    /// At most this many consumers at a time (0: no limit).
    #[serde(deserialize_with = "whole::usize")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1_000_000))]
    pub max_subscriber_count: usize,
    /// How messages are shared among the consumers.
    pub strategy: ConsumerStrategy,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            start_from: StartFrom::Start,
            message_timeout: Duration::from_secs(30),
            max_retry_count: 10,
            live_buffer_size: 500,
            read_batch_size: 20,
            checkpoint_after: Duration::from_secs(2),
            checkpoint_min_count: 10,
            checkpoint_max_count: 1000,
            max_subscriber_count: 0,
            strategy: ConsumerStrategy::RoundRobin,
        }
    }
}

/// The longest message timeout and checkpoint interval accepted (a day).
const LONGEST: Duration = Duration::from_secs(86_400);
/// The largest buffer and batch sizes accepted.
const BUFFER_MAX: usize = 100_000;
/// The most retries accepted.
const RETRIES_MAX: u32 = 1_000_000;
/// The largest limit of consumers accepted.
const SUBSCRIBERS_MAX: usize = 1_000_000;

impl GroupSettings {
    /// Checks the settings; the error says which one is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        let duration = |what: &str, d: Duration| {
            if d.is_zero() || d > LONGEST {
                Err(format!(
                    "{what} is {} ms; it must be between 1 ms and a day",
                    d.as_millis()
                ))
            } else {
                Ok(())
            }
        };
        duration("message_timeout", self.message_timeout)?;
        duration("checkpoint_after", self.checkpoint_after)?;
        let size = |what: &str, n: usize| {
            if n == 0 || n > BUFFER_MAX {
                Err(format!(
                    "{what} is {n}; it must be between 1 and {BUFFER_MAX}"
                ))
            } else {
                Ok(())
            }
        };
        size("live_buffer_size", self.live_buffer_size)?;
        size("read_batch_size", self.read_batch_size)?;
        size("checkpoint_max_count", self.checkpoint_max_count)?;
        if self.max_retry_count > RETRIES_MAX {
            return Err(format!(
                "max_retry_count is {}; it must be at most {RETRIES_MAX}",
                self.max_retry_count
            ));
        }
        if self.max_subscriber_count > SUBSCRIBERS_MAX {
            return Err(format!(
                "max_subscriber_count is {}; it must be at most {SUBSCRIBERS_MAX} (0: no limit)",
                self.max_subscriber_count
            ));
        }
        if self.read_batch_size > self.live_buffer_size {
            return Err(format!(
                "read_batch_size ({}) is larger than live_buffer_size ({})",
                self.read_batch_size, self.live_buffer_size
            ));
        }
        if self.checkpoint_min_count > self.checkpoint_max_count {
            return Err(format!(
                "checkpoint_min_count ({}) is larger than checkpoint_max_count ({})",
                self.checkpoint_min_count, self.checkpoint_max_count
            ));
        }
        Ok(())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(super::whole::u64(d)?))
    }
}

/// Whole numbers as JSON may write them (`20` or `20.0`), in range for their type.
mod whole {
    use serde::{Deserialize, Deserializer};

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let number = serde_json::Number::deserialize(d)?;
        match (number.as_u64(), number.as_f64()) {
            (Some(n), _) => Ok(n),
            // 2^64 is the first float past the limit.
            (None, Some(f))
                if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) =>
            {
                Ok(f as u64)
            }
            _ => Err(serde::de::Error::custom(format!(
                "{number} is not a whole number from 0"
            ))),
        }
    }

    pub fn usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let n = u64(d)?;
        n.try_into()
            .map_err(|_| serde::de::Error::custom(format!("{n} is too large")))
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = u64(d)?;
        n.try_into()
            .map_err(|_| serde::de::Error::custom(format!("{n} is larger than {}", u32::MAX)))
    }
}

/// What a consumer does with a message it could not handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NackAction {
    /// Park it now, whatever its retry count.
    Park,
    /// Try it again (a retry: it is parked when it has none left).
    Retry,
    /// Leave it: it counts as settled.
    Skip,
    /// Give it back untried and disconnect this consumer.
    Stop,
}

/// One message of a group, sent to one consumer.
#[derive(Clone, Debug)]
pub struct GroupMessage {
    /// The id to acknowledge it by: the event's id.
    pub id: Uuid,
    /// The event.
    pub event: factum_core::RecordedEvent,
    /// How many times it was tried before (0 the first time).
    pub retry_count: u32,
}

/// One connected consumer, as the group sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsumerInfo {
    /// The connection's id within the group.
    pub id: u64,
    /// The name the consumer gave.
    pub name: String,
    /// How many messages it may hold unacknowledged.
    pub capacity: usize,
    /// How many it holds now.
    pub in_flight: usize,
    /// Messages sent to it.
    pub delivered: u64,
    /// Messages it acknowledged.
    pub acked: u64,
    /// Messages it gave back with a nack.
    pub nacked: u64,
}

/// A group as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupInfo {
    /// `$all` or the stream.
    pub source: String,
    /// The group's name.
    pub group: String,
    /// For a group on `$all`, its filter.
    pub filter: Option<FilterSpec>,
    /// Its settings.
    pub settings: GroupSettings,
    /// `live`, `catching up`, or `failed: …` when its source cannot be read.
    pub status: String,
    /// The connected consumers.
    pub consumers: Vec<ConsumerInfo>,
    /// The stored checkpoint: every message below it (a revision, or a position on `$all`)
    /// is settled. `None` before the first one.
    pub checkpoint: Option<u64>,
    /// The revision or position the group reads next.
    pub read_next: u64,
    /// The end of the source (next revision or head): `lag` is this minus the checkpoint.
    pub source_end: u64,
    /// How far the checkpoint is behind the source's end.
    pub lag: u64,
    /// Messages sent and not yet settled.
    pub in_flight: usize,
    /// Messages read and waiting for a consumer.
    pub waiting: usize,
    /// Messages in the parked stream not replayed yet.
    pub parked: u64,
    /// Messages sent since the group started (retries included).
    pub delivered: u64,
    /// Messages acknowledged since the group started.
    pub acked: u64,
    /// Messages tried again since the group started (timeouts, nacks, lost consumers).
    pub retried: u64,
    /// Messages parked since the group started.
    pub parked_total: u64,
    /// Whether a replay of parked messages is under way.
    pub replaying: bool,
}

/// Why a group operation failed. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No group of that name on that source.
    #[error("no persistent subscription group '{0}'")]
    NotFound(GroupKey),
    /// A group of that name exists on that source already.
    #[error("a persistent subscription group '{0}' exists already")]
    Exists(GroupKey),
    /// The settings or the request are not valid.
    #[error("invalid persistent subscription request: {0}")]
    Invalid(String),
    /// An ack or nack named a message the group has not sent or has settled.
    #[error("group '{group}' has no message {id} in flight")]
    UnknownMessage {
        /// The group.
        group: GroupKey,
        /// The id given.
        id: Uuid,
    },
    /// The group has its maximum number of consumers.
    #[error("group '{0}' has its maximum number of consumers")]
    Full(GroupKey),
    /// A replay of parked messages is under way already.
    #[error("group '{0}' is replaying its parked messages already")]
    Replaying(GroupKey),
    /// The group is served by another process sharing the store.
    #[error("group '{0}' is served by another process that shares the store")]
    ServedElsewhere(GroupKey),
    /// The group stopped (it was updated, deleted, or the server is shutting down).
    #[error("group '{0}' stopped")]
    Stopped(GroupKey),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
