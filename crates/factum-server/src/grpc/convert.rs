//! Factum's model in the protocol's terms and back: positions, revisions, ids, events, expected
//! states, and errors as the statuses a KurrentDB node answers with (docs/kurrentdb.md).

use ::uuid::Uuid;
use bytes::Bytes;
use factum_core::{
    ContentType, CurrentRevision, ExpectedState, NewEvent, RecordedEvent, StoreError, StreamName,
};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use super::proto::event_store::client::{StreamIdentifier, Uuid as ProtoUuid, uuid};
pub(crate) use super::wire::UuidForm;
use super::wire::{self, CONTENT_TYPE_KEY, NameBytes, TYPE_KEY};

/// Factum's position `p` as the protocol's commit (and prepare) position: `p + 1`, so that 0
/// stays before the first event (a subscription from position `c` starts after `c`).
pub(crate) fn commit_of(position: u64) -> u64 {
    position.saturating_add(1)
}

pub(crate) fn uuid_to_proto(id: Uuid, form: UuidForm) -> ProtoUuid {
    let value = match form {
        UuidForm::Text => uuid::Value::String(id.to_string()),
        UuidForm::Structured => {
            let (high, low) = id.as_u64_pair();
            uuid::Value::Structured(uuid::Structured {
                most_significant_bits: high as i64,
                least_significant_bits: low as i64,
            })
        }
    };
    ProtoUuid { value: Some(value) }
}

/// An event id from a client; a missing one is made here, as KurrentDB does.
pub(crate) fn uuid_from_proto(id: Option<&ProtoUuid>) -> Result<Uuid, Status> {
    match id.and_then(|id| id.value.as_ref()) {
        None => Ok(Uuid::now_v7()),
        Some(uuid::Value::String(text)) => Uuid::parse_str(text)
            .map_err(|e| invalid(format!("event id '{text}' is not a UUID: {e}"))),
        Some(uuid::Value::Structured(s)) => Ok(Uuid::from_u64_pair(
            s.most_significant_bits as u64,
            s.least_significant_bits as u64,
        )),
    }
}

/// The stream a request names.
pub(crate) fn stream_name(identifier: Option<&StreamIdentifier>) -> Result<String, Status> {
    let identifier = identifier.ok_or_else(|| invalid("the request names no stream"))?;
    String::from_utf8(identifier.stream_name.to_vec())
        .map_err(|_| invalid("the stream name is not UTF-8"))
}

pub(crate) fn stream_identifier(stream: &str) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: Bytes::copy_from_slice(stream.as_bytes()),
    }
}

/// A stream name a client may use: checked as Factum checks it.
pub(crate) fn parse_stream(name: &str) -> Result<StreamName, Status> {
    StreamName::new(name).map_err(|e| status_of(&e))
}

/// An event a client proposes, as Factum appends it. KurrentDB takes any bytes as custom
/// metadata; Factum's event metadata is empty or a JSON object, and anything else is refused.
pub(crate) fn new_event(
    id: Option<&ProtoUuid>,
    metadata: &std::collections::HashMap<String, String>,
    custom_metadata: Bytes,
    data: Bytes,
) -> Result<NewEvent, Status> {
    let event_type = metadata
        .get(TYPE_KEY)
        .cloned()
        .ok_or_else(|| invalid("a proposed event has no 'type' in its metadata"))?;
    let content_type = match metadata.get(CONTENT_TYPE_KEY).map(String::as_str) {
        Some("application/json") => ContentType::Json,
        Some("application/octet-stream") | None => ContentType::Binary,
        Some(other) => {
            return Err(invalid(format!(
                "content-type '{other}' is not application/json or application/octet-stream"
            )));
        }
    };
    Ok(NewEvent {
        id: uuid_from_proto(id)?,
        event_type,
        content_type,
        data,
        metadata: custom_metadata,
        tags: Vec::new(),
    })
}

/// The ticks (100 ns) since the Unix epoch that the clients read as an event's creation time.
pub(crate) fn ticks_of(recorded_at_us: u64) -> u64 {
    recorded_at_us.saturating_mul(10)
}

/// A recorded event on the wire.
pub(crate) fn recorded_event(event: RecordedEvent, form: UuidForm) -> wire::RecordedEvent {
    wire::RecordedEvent {
        id: event.id,
        form,
        stream: Bytes::from_owner(NameBytes(event.stream)),
        stream_revision: event.revision,
        commit_position: commit_of(event.position),
        event_type: event.event_type,
        content_type: event.content_type,
        created: ticks_of(event.recorded_at_us),
        custom_metadata: event.metadata,
        data: event.data,
    }
}

/// An expected state as KurrentDB writes it in messages: a revision, or -1 (no stream), -2
/// (any), -4 (the stream exists).
pub(crate) fn expected_number(expected: ExpectedState) -> i64 {
    match expected {
        ExpectedState::Exact(revision) => i64::try_from(revision).unwrap_or(i64::MAX),
        ExpectedState::NoStream => -1,
        ExpectedState::Any => -2,
        ExpectedState::StreamExists => -4,
    }
}

/// A current revision as KurrentDB writes it: the revision, or -1 when there is no stream.
pub(crate) fn actual_number(actual: CurrentRevision) -> i64 {
    actual
        .0
        .map_or(-1, |r| i64::try_from(r).unwrap_or(i64::MAX))
}

pub(crate) fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// `Status` with KurrentDB's `exception` trailer (and more), which the clients match on.
pub(crate) fn with_exception(
    code: Code,
    message: String,
    pairs: &[(&'static str, String)],
) -> Status {
    let mut status = Status::new(code, message);
    for (key, value) in pairs {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            status.metadata_mut().insert(*key, value);
        }
    }
    status
}

/// A wrong expected revision of a delete or tombstone, as KurrentDB words it.
pub(crate) fn wrong_expected(
    stream: &str,
    expected: ExpectedState,
    actual: CurrentRevision,
) -> Status {
    let (expected, actual) = (expected_number(expected), actual_number(actual));
    with_exception(
        Code::FailedPrecondition,
        format!(
            "Append failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {expected}, Actual version: {actual}"
        ),
        &[
            ("exception", "wrong-expected-version".to_owned()),
            ("stream-name", stream.to_owned()),
            ("expected-version", expected.to_string()),
            ("actual-version", actual.to_string()),
        ],
    )
}

pub(crate) fn stream_deleted(stream: &str) -> Status {
    with_exception(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        &[
            ("exception", "stream-deleted".to_owned()),
            ("stream-name", stream.to_owned()),
        ],
    )
}

pub(crate) fn access_denied(message: String) -> Status {
    with_exception(
        Code::PermissionDenied,
        message,
        &[("exception", "access-denied".to_owned())],
    )
}

/// A store error as the status a KurrentDB node answers with.
pub(crate) fn status_of(error: &StoreError) -> Status {
    match error {
        StoreError::WrongExpectedRevision {
            stream,
            expected,
            actual,
        } => wrong_expected(stream, *expected, *actual),
        StoreError::StreamDeleted(stream) => stream_deleted(stream),
        StoreError::NotFound(stream) => {
            wrong_expected(stream, ExpectedState::Any, CurrentRevision(None))
        }
        StoreError::InvalidInput(message) => invalid(message.clone()),
        StoreError::CheckpointBehind { .. } | StoreError::ConditionFailed { .. } => {
            Status::failed_precondition(error.to_string())
        }
        StoreError::Corrupted { .. } => Status::data_loss(error.to_string()),
        StoreError::Unavailable(_) | StoreError::Poisoned(_) | StoreError::Closed => {
            Status::unavailable(error.to_string())
        }
        _ => Status::internal(error.to_string()),
    }
}
